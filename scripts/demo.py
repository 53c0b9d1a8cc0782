"""The datarepo demo: the whole user flow, run through the real ``datarepo`` CLI.

Makes a small synthetic image dataset in a fresh temporary directory, then
calls ``datarepo`` as a subprocess for every step, printing each command
(``== datarepo …``) and its output. Exits non-zero on the first failure.

Run it with ``bash scripts/demo.sh`` (which sets up .venv first), or
``.venv/bin/python scripts/demo.py [--keep]``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

import datarepo as datarepo_api
from datarepo.statcache import RACY_NS

DATAREPO = Path(sys.executable).with_name("datarepo")
EXAMPLES = Path(__file__).resolve().parent.parent / "pipelines"
TRAIN_EXAMPLE = Path(__file__).resolve().parent / "train_example.py"
CLASSES = ("cat", "dog", "bird", "fish")
SHAPES = {"cat": "circle", "dog": "square", "bird": "triangle", "fish": "ellipse"}
MAX_LINES = 14
ENV_AUTHOR = "Demo User <demo@example.com>"


class DemoFailed(Exception):
    """A step did not do what the demo expects."""


# ---------------------------------------------------------------- output ---
def say(text: str) -> None:
    print(f"\n-- {text}", flush=True)


def show(text: str, limit: int = MAX_LINES) -> None:
    lines = text.rstrip("\n").splitlines()
    for line in lines[:limit]:
        print(f"   {line}")
    if len(lines) > limit:
        print(f"   … ({len(lines) - limit} more lines)")
    sys.stdout.flush()


def check(ok: bool, what: str) -> None:
    if not ok:
        raise DemoFailed(f"check failed: {what}")
    print(f"   ok: {what}", flush=True)


def datarepo(*args: str, cwd: Path, limit: int = MAX_LINES) -> str:
    """Runs one ``datarepo`` command, prints it and its output, returns its stdout."""
    print(f"\n== datarepo {' '.join(shlex.quote(a) for a in args)}", flush=True)
    env = {**os.environ, "DATAREPO_AUTHOR": ENV_AUTHOR}
    proc = subprocess.run([str(DATAREPO), *args], cwd=cwd, capture_output=True, env=env)
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    show("\n".join(part.rstrip("\n") for part in (out, err) if part), limit)
    if proc.returncode != 0:
        raise DemoFailed(f"`datarepo {' '.join(args)}` exited with status {proc.returncode}")
    return out


# ------------------------------------------------------------------ data ---
def age(root: Path, seconds: float = 3600) -> None:
    """Backdates every file under ``root`` (or ``root`` itself).

    datarepo trusts a cached hash only for files last changed more than two
    seconds before it looked at them (git's "racy" rule, by the later of the
    mtime and the ctime); real sources are older than that, freshly generated
    demo files are not. A ctime cannot be set back: this waits until the
    newest is two seconds old.
    """
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        st = path.stat()
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))
    newest = max((path.stat().st_ctime_ns for path in files), default=0)
    while time.time_ns() <= newest + RACY_NS:
        time.sleep((newest + RACY_NS - time.time_ns()) / 1e9 + 0.01)


def image_bytes(rng: random.Random, shape: str, size: int = 32) -> bytes:
    """A small JPEG of one coloured shape on a coloured background."""
    bg = tuple(rng.randrange(0, 256) for _ in range(3))
    fg = tuple(rng.randrange(0, 256) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    a, b = rng.randrange(2, 10), rng.randrange(size - 10, size - 2)
    if shape == "circle":
        draw.ellipse((a, a, b, b), fill=fg)
    elif shape == "square":
        draw.rectangle((a, a, b, b), fill=fg)
    elif shape == "triangle":
        draw.polygon(((size // 2, a), (a, b), (b, b)), fill=fg)
    else:
        draw.ellipse((a, size // 4, b, 3 * size // 4), fill=fg)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_datum(root: Path, key: str, rng: random.Random, cls: str, label: int, meta: bool) -> None:
    """Writes ``key.jpg``, ``key.cls`` and (sometimes) ``key.json`` under ``root``."""
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".jpg").write_bytes(image_bytes(rng, SHAPES[cls]))
    path.with_suffix(".cls").write_text(f"{label}\n")
    if meta:
        info = {"shape": SHAPES[cls], "class": cls, "source": "synthetic"}
        path.with_suffix(".json").write_text(json.dumps(info) + "\n")


def make_dataset(root: Path, rng: random.Random, per_class: int = 50) -> None:
    """train/<class>/NNNN.{jpg,cls[,json]}; train/cat/0000–0009 are labelled 1 (dog) by mistake."""
    for label, cls in enumerate(CLASSES):
        for i in range(per_class):
            wrong = cls == "cat" and i < 10
            write_datum(root, f"train/{cls}/{i:04d}", rng, cls, 1 if wrong else label, meta=i % 4 == 0)


def make_jsonl(path: Path, rng: random.Random, n: int = 8) -> None:
    """One datum a line: a label, a base64 JPEG and a caption."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            cls = CLASSES[i % len(CLASSES)]
            jpg = base64.b64encode(image_bytes(rng, SHAPES[cls])).decode()
            line = {"__key__": f"captions/{i:04d}", "cls": str(i % len(CLASSES)), "jpg": {"base64": jpg},
                    "txt": {"text": f"a {SHAPES[cls]} drawn for the class {cls}"}}
            f.write(json.dumps(line) + "\n")


# ------------------------------------------------------------------ flow ---
def first_commit(repo: Path) -> None:
    say("a synthetic dataset: 200 JPEGs of coloured shapes with a .cls label each, a .json for every 4th")
    make_dataset(repo, random.Random(0))
    age(repo)
    (repo / ".datarepoignore").write_text("*.tmp\n")
    (repo / "scratch.tmp").write_text("ignored by .datarepoignore\n")
    show("\n".join(sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*.*") if p.is_file())), 6)
    datarepo("init", cwd=repo)
    datarepo("add", ".", cwd=repo)
    datarepo("status", cwd=repo, limit=6)
    datarepo("commit", "-m", "first 200 images", cwd=repo)


def second_commit(repo: Path) -> None:
    say("fix 10 wrong labels (train/cat/0000–0009), delete 2 birds, add 5 fish")
    for i in range(10):
        (repo / f"train/cat/{i:04d}.cls").write_text("0\n")
    for i in range(2):
        for f in (repo / "train/bird").glob(f"{i:04d}.*"):
            f.unlink()
    rng = random.Random(1)
    for i in range(50, 55):
        write_datum(repo, f"train/fish/{i:04d}", rng, "fish", 3, meta=False)
    datarepo("status", cwd=repo, limit=20)
    datarepo("add", ".", cwd=repo)
    datarepo("commit", "-m", "fix labels", cwd=repo)


def history(repo: Path) -> None:
    datarepo("log", cwd=repo)
    datarepo("show", "HEAD", cwd=repo, limit=24)
    datarepo("diff", "HEAD~1", "HEAD", cwd=repo, limit=20)
    datarepo("ls", "HEAD~1", "--prefix", "train/cat/", cwd=repo, limit=5)
    old = datarepo("cat", "HEAD~1:train/cat/0003.cls", cwd=repo)
    check(old == "1\n", "HEAD~1 still has the wrong label 1 for train/cat/0003")


def time_travel(repo: Path) -> None:
    label = repo / "train/cat/0003.cls"
    datarepo("checkout", "HEAD~1", cwd=repo)
    check(label.read_text() == "1\n", "train/cat/0003.cls is back to its old content")
    check((repo / "train/bird/0000.jpg").exists(), "the deleted train/bird/0000.jpg is back")
    check(not (repo / "train/fish/0050.jpg").exists(), "the added train/fish/0050.jpg is gone")
    datarepo("status", cwd=repo)
    datarepo("checkout", "main", cwd=repo)
    check(label.read_text() == "0\n", "back on main, train/cat/0003.cls has the fixed label")
    datarepo("branch", "exp", cwd=repo)
    datarepo("checkout", "exp", cwd=repo)
    datarepo("tag", "v1", cwd=repo)
    datarepo("branch", cwd=repo)
    datarepo("tag", cwd=repo)


def ingests(repo: Path, tmp: Path) -> None:
    say("a second folder, ingested under extra/ without copying it into the work tree")
    extra = tmp / "extra"
    rng = random.Random(2)
    for cls in CLASSES:
        for i in range(5):
            write_datum(extra, f"val/{cls}/{i:04d}", rng, cls, CLASSES.index(cls), meta=False)
    age(extra)
    datarepo("ingest", "../extra", "--prefix", "extra/", cwd=repo)
    datarepo("ls", "HEAD", "--prefix", "extra/", cwd=repo, limit=4)
    datarepo("status", cwd=repo)
    check(not (repo / "extra").exists(), "extra/ is not materialised in the work tree")

    say("main exported as a WebDataset shard set, then ingested back under copy/ (same content: nothing new stored)")
    datarepo("export", "main", "../shards-out", "--shards", "--shard-size", "200K", cwd=repo)
    age(tmp / "shards-out")
    tars = sorted(p.name for p in (tmp / "shards-out").glob("*.tar"))
    show("\n".join(tars))
    pattern = f"../shards-out/{{000000..{len(tars) - 1:06d}}}.tar"
    datarepo("ingest", pattern, "--prefix", "copy/", cwd=repo)

    say("a JSON-lines file, one datum a line, under text/")
    make_jsonl(tmp / "captions.jsonl", random.Random(3))
    age(tmp / "captions.jsonl")
    show((tmp / "captions.jsonl").read_text()[:160] + "…", 1)
    datarepo("ingest", "../captions.jsonl", "--prefix", "text/", cwd=repo)
    datarepo("cat", "HEAD:text/captions/0001.txt", cwd=repo)

    say("the same sources again: nothing is hashed from scratch or stored twice")
    out = datarepo("ingest", "../extra", "--prefix", "extra/", cwd=repo)
    check(out.startswith("no change;") and " 0 newly stored" in out and " 40 source files unchanged" in out,
          "re-ingesting the folder stores nothing and re-reads none of its 40 files")
    out = datarepo("ingest", pattern, "--prefix", "copy/", cwd=repo)
    check(out.startswith("no change;") and " 0 newly stored" in out and f" {len(tars)} source files unchanged" in out,
          "re-ingesting the shards stores nothing and re-reads none of them")
    out = datarepo("ingest", "../captions.jsonl", "--prefix", "text/", cwd=repo)
    check(out.startswith("no change;") and " 0 newly stored" in out and " 1 source files unchanged" in out,
          "re-ingesting the JSON lines stores nothing and re-reads nothing")
    datarepo("log", "--oneline", cwd=repo)


def maintenance(repo: Path) -> None:
    datarepo("fsck", cwd=repo)
    datarepo("gc", cwd=repo)
    datarepo("repack", cwd=repo)
    datarepo("fsck", cwd=repo)


def export_and_read(repo: Path, tmp: Path) -> None:
    datarepo("export", "HEAD", "../export-train", "--prefix", "train/", cwd=repo)
    files = sorted((tmp / "export-train").rglob("*.*"))
    show("\n".join(p.relative_to(tmp).as_posix() for p in files), 4)
    check(len(files) == sum(1 for p in (repo / "train").rglob("*.*")), "the export has every file of train/")

    import webdataset as wds

    shard = tmp / "shards-out" / "000000.tar"
    print(f"\n== python: webdataset.WebDataset({shard.relative_to(tmp).as_posix()!r})", flush=True)
    for sample in list(wds.WebDataset(str(shard), shardshuffle=False))[:3]:
        print(f"   __key__={sample['__key__']}  members={sorted(k for k in sample if not k.startswith('__'))}")
    inner = next(iter(sorted((repo / ".datarepo" / "shards").rglob("*.tar"))))
    print(f"\n== python: webdataset.WebDataset({inner.relative_to(repo).as_posix()!r})  (a repository shard)")
    for sample in list(wds.WebDataset(str(inner), shardshuffle=False))[:3]:
        print(f"   __key__={sample['__key__']}  members={sorted(k for k in sample if not k.startswith('__'))}")
    sys.stdout.flush()


def pipelines(repo: Path) -> None:
    say("the example pipelines (pipelines/ of this project): drop corrupt images, thumbnails, a card per "
        "thumbnail by a command, tokens of the captions")
    shutil.copytree(EXAMPLES, repo / "pipelines")
    show("\n".join(sorted(p.name for p in (repo / "pipelines").iterdir())))
    bird = repo / "train/bird/0010.jpg"
    bird.write_bytes(bird.read_bytes()[:40])  # a truncated JPEG, for the filter to drop
    datarepo("add", "train", cwd=repo)
    datarepo("commit", "-m", "a truncated image", cwd=repo)
    datarepo("dag", cwd=repo)
    first = datarepo("run", cwd=repo)
    check("clean_images: 203 processed, 0 reused, 0 failed, 0 deleted, 1 dropped" in first,
          "the filter read all 203 images and dropped the truncated one")
    check("thumbnails: 202 processed" in first and "image_cards: 202 processed" in first, "202 thumbnails and cards made")
    out = datarepo("run", cwd=repo)
    check(out.count("0 processed") == 4 and "nothing to commit" in out, "a second run finds nothing to do")

    say("change 1% of the raw images (2 of 203), then run again: only those 2 are processed")
    rng = random.Random(4)
    for key in ("train/dog/0001", "train/fish/0002"):
        (repo / f"{key}.jpg").write_bytes(image_bytes(rng, "square"))
    datarepo("add", "train", cwd=repo)
    datarepo("commit", "-m", "redraw two images", cwd=repo)
    datarepo("run", "--dry-run", cwd=repo)
    out = datarepo("run", cwd=repo)
    for name in ("clean_images", "thumbnails", "image_cards"):
        check(f"{name}: 2 processed, " in out, f"{name} processed only the 2 changed images")
    check("tokens: 0 processed, 8 reused" in out, "tokens, whose input did not change, processed nothing")
    log = datarepo("log", "--oneline", "-n", "4", cwd=repo)
    run_id = log.split("(run-", 1)[1].split(")", 1)[0]
    made = datarepo("show", f"run-{run_id}", cwd=repo)
    check(len(made.splitlines()) == 3, "the run made one commit for each of the 3 image pipelines (show RUN-ID)")

    say("the lineage of one output, back to the raw image; and what was made from a raw image")
    datarepo("lineage", "cards/dog/0001", cwd=repo)
    datarepo("lineage", "train/bird/0010", "--downstream", cwd=repo)
    datarepo("pipelines", cwd=repo)


def training(repo: Path) -> None:
    say("train a small CNN straight from the shards of the thumbnails: stopped mid-epoch, resumed, "
        "recorded, and replayed in the same order (scripts/train_example.py)")
    proc = subprocess.run([sys.executable, str(TRAIN_EXAMPLE), str(repo), "--prefix", "thumbs/"],
                          capture_output=True, text=True)
    show(proc.stdout + proc.stderr)
    check(proc.returncode == 0, "the training example ran, resumed and replayed the same order")
    datarepo("runs", cwd=repo)
    keys = datarepo("runs", "show", "train-example", "--keys", cwd=repo, limit=5)
    check(len(keys.splitlines()) == 202, "the recorded run lists the exact order of its 202 samples")


def remotes(repo: Path, tmp: Path) -> None:
    say("share it through a DVC remote: push to a local-path remote (s3://, gs://, ... work alike), "
        "clone it, and train straight from the remote's URL, without a clone")
    store, clone = tmp / "remote-store", tmp / "clone"
    datarepo("remote", "add", "origin", str(store), "-d", cwd=repo)
    datarepo("remote", "list", cwd=repo)
    datarepo("push", cwd=repo)
    datarepo("clone", str(store), str(clone), cwd=tmp)
    datarepo("log", "-n", "1", cwd=clone)
    with datarepo_api.open(repo) as ours, datarepo_api.open(clone) as theirs:
        check(theirs.head() == ours.head(), "the clone is at the commit pushed")
    proc = subprocess.run([sys.executable, str(TRAIN_EXAMPLE), str(repo), "--prefix", "thumbs/",
                           "--remote", store.as_uri(), "--run", "from-remote"], capture_output=True, text=True)
    show(proc.stdout + proc.stderr)
    check(proc.returncode == 0, "training read the remote by its URL: the same samples, in the same order, "
          "as the repository's own shards")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="datarepo-demo-"))
    repo = tmp / "repo"
    repo.mkdir()
    print(f"datarepo demo in {tmp} (work tree: repo/)")
    try:
        first_commit(repo)
        second_commit(repo)
        history(repo)
        time_travel(repo)
        ingests(repo, tmp)
        maintenance(repo)
        export_and_read(repo, tmp)
        pipelines(repo)
        training(repo)
        remotes(repo, tmp)
    except DemoFailed as e:
        print(f"\ndemo FAILED: {e}\n(files kept in {tmp})", file=sys.stderr)
        return 1
    if args.keep:
        print(f"\ndemo finished; files kept in {tmp}")
    else:
        shutil.rmtree(tmp)
        print("\ndemo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
