"""The example pipelines of the top-level ``pipelines/`` folder, on a small image and text set."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image

import datarepo
from tests.conftest import Cli
from tests.test_pipelines import run

EXAMPLES = Path(__file__).resolve().parent.parent / "pipelines"


def jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, format="JPEG")
    return out.getvalue()


def test_the_example_pipelines(worktree: Path, cli: Cli) -> None:
    for i in range(6):
        for cls, label in (("cat", 0), ("dog", 1)):
            (worktree / "train" / cls).mkdir(parents=True, exist_ok=True)
            (worktree / f"train/{cls}/{i:04d}.jpg").write_bytes(jpeg((40 * i, 100 * label, 50)))
            (worktree / f"train/{cls}/{i:04d}.cls").write_text(str(label))
    (worktree / "train/dog/0002.jpg").write_bytes(b"\xff\xd8 truncated")
    (worktree / "text/notes").mkdir(parents=True)
    (worktree / "text/notes/a.txt").write_text("Hello,\u00a0  WORLD!\tIt's\x07 fine")
    cli("init", "--shard-size", "64K")
    cli("add", "train", "text")
    cli("commit", "-m", "raw")
    shutil.copytree(EXAMPLES, worktree / "pipelines")

    out = run(cli)
    assert out["clean_images"] == {"processed": 12, "reused": 0, "failed": 0, "deleted": 0, "dropped": 1}
    assert out["thumbnails"]["processed"] == 11 and out["image_cards"]["processed"] == 11
    assert out["tokens"]["processed"] == 1
    with datarepo.open(worktree) as repo:
        tree = repo.tree()
        thumb = repo.read(tree["thumbs/cat/0003"].datum)
        assert Image.open(io.BytesIO(thumb["jpg"])).size == (16, 16) and thumb["cls"] == b"0"
        card = json.loads(repo.read(tree["cards/cat/0003"].datum)["json"])
        assert card == {"format": "card-v1", "key": "cards/cat/0003", "label": "0", "bytes": {"cls": 1, "jpg": len(thumb["jpg"])}}
        tokens = repo.read(tree["tokens/notes/a"].datum)
        assert tokens["txt"] == b"hello, world! it's fine"
        assert json.loads(tokens["json"])["tokens"] == ["hello", "world", "it's", "fine"]
        assert "thumbs/dog/0002" not in tree
    down = json.loads(cli("lineage", "train/dog/0002", "--downstream", "--json").output)
    assert down["links"][0]["dropped"] == "corrupt image (UnidentifiedImageError)"
    chain = json.loads(cli("lineage", "cards/dog/0004", "--json").output)
    names = []
    while chain["links"]:
        names.append(chain["pipeline"])
        chain = chain["links"][0]
    assert names == ["image_cards", "thumbnails", "clean_images"] and chain["key"] == "train/dog/0004"
