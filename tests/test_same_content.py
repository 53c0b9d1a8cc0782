"""Keys that hold the same content share one datum, stored once: every reader gives it back
under each of its keys (a manifest has a row a key, their ranges repeated)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import datarepo
from datarepo.manifest import ShardReader
from tests.conftest import Cli
from tests.test_pipelines import UPPER, run, write_pipeline

SAME = {"raw/a/000.txt": b"same", "raw/b/001.txt": b"same", "raw/c/002.txt": b"other", "raw/d/003.txt": b"same"}


def _commit(worktree: Path, cli: Cli) -> None:
    cli("init")
    for rel, data in SAME.items():
        (worktree / rel).parent.mkdir(parents=True, exist_ok=True)
        (worktree / rel).write_bytes(data)
    cli("add", ".")
    cli("commit", "-m", "same content under three keys")


def test_export_gives_every_key_of_a_shared_datum(worktree: Path, cli: Cli, tmp_path: Path) -> None:
    _commit(worktree, cli)
    cli("export", "HEAD", str(tmp_path / "files"))
    assert {str(p.relative_to(tmp_path / "files")): p.read_bytes() for p in (tmp_path / "files").rglob("*.txt")} == SAME
    cli("export", "HEAD", str(tmp_path / "shards"), "--shards")
    got = {}
    for shard in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            got.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})  # type: ignore[union-attr]
    assert got == SAME


def test_the_shard_reader_takes_a_range_repeated_for_each_key(worktree: Path, cli: Cli) -> None:
    _commit(worktree, cli)
    with datarepo.open(worktree) as repo:
        manifest = repo.manifest(repo.tree().select(prefix="raw/"))
        read = {}
        for i, shard in enumerate(manifest.shards):
            data = io.BytesIO(repo.store.open_shard(shard).read())
            read.update(ShardReader(data, manifest.ranges(i), shard, verify=True))
    assert {k: m["txt"] for k, m in read.items()} == {rel.removesuffix(".txt"): data for rel, data in SAME.items()}


def test_a_pipeline_over_keys_that_share_a_datum_makes_each_output(worktree: Path, cli: Cli) -> None:
    _commit(worktree, cli)
    write_pipeline(worktree, "upper.py", UPPER)
    assert run(cli)["upper"] == {"processed": 4, "reused": 0, "failed": 0, "deleted": 0}
    for rel, data in SAME.items():
        key = "up/" + rel.removeprefix("raw/").removesuffix(".txt")
        assert cli("cat", f"HEAD:{key}.txt").stdout_bytes == data.upper()
