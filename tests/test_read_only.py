"""A repository this user may read but not write: a dataset another user keeps, a team's
shared copy, a read-only mount. Every command that only reads, the Python API and the
loader (DataLoader workers included) work there and answer as they do for the repository's
owner; every command that would write fails in one line, and nothing is changed or left
behind. The caches they would fill (``index.sqlite``, the status snapshot) are kept in a
private copy for the process, or given up.

The reader is a real process the kernel refuses writes to: the files and folders lose
their write permissions; run as root, the process also loses the capabilities that let
root past file permissions (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``), as an ordinary
user has none."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import without_file_override

ENV = {**os.environ, "DATAREPO_AUTHOR": "Test <test@example.com>", "DATAREPO_LOCK_TIMEOUT": "5",
       "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}

PIPELINE = '''
from datarepo import pipeline

@pipeline(input="raw/**", output="up/", version="1")
def up(datum):
    return {"txt": datum["txt"].upper()}
'''

READS = [
    ("status",), ("log",), ("log", "--oneline", "v1"), ("show", "HEAD"), ("diff", "HEAD~1", "HEAD"),
    ("ls", "-l"), ("ls", "HEAD~1"), ("cat", "raw/k07.txt"), ("cat", "up/k07"), ("lineage", "up/k07"),
    ("lineage", "raw/k07", "--downstream"), ("lineage", "up/k07", "--json"), ("fsck",),
    ("pipelines",), ("dag",), ("run", "--dry-run"), ("branch",), ("tag",), ("runs",), ("remote", "list"),
]
WRITES = [
    ("add", "raw"), ("commit", "-m", "more"), ("rm", "raw/k01.txt"), ("tag", "v2"), ("branch", "other"),
    ("checkout", "-b", "other"), ("run",), ("gc",), ("repack",), ("fsck", "--rebuild-index"),
    ("ingest", "raw", "--prefix", "copy/"), ("remote", "add", "origin", "../elsewhere"),
]


def run(cwd: Path, args: tuple[str, ...] | list[str], reader: bool, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**ENV, "TMPDIR": str(tmp), "HOME": str(tmp)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=without_file_override if reader else None)


def datarepo(cwd: Path, *args: str, reader: bool, tmp: Path) -> subprocess.CompletedProcess[str]:
    return run(cwd, [sys.executable, "-m", "datarepo.cli", *args], reader, tmp)


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)


def make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o200)


def listing(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root``: its size, modification time and bytes."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A repository with two commits, a pipeline's output and a tag, made by its owner; and
    an empty folder for the reader's temporary files. Made writable again at the end."""
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    for folder in (work / "raw", work / "pipelines", tmp):
        folder.mkdir(parents=True)
    for i in range(40):
        (work / "raw" / f"k{i:02d}.txt").write_text(f"datum {i}\n")
    (work / "pipelines" / "up.py").write_text(PIPELINE)

    def owner(*args: str) -> None:
        done = datarepo(work, *args, reader=False, tmp=tmp)
        assert done.returncode == 0, done.stderr

    owner("init")
    owner("add", *(f"raw/k{i:02d}.txt" for i in range(10)))
    owner("commit", "-m", "first ten")
    owner("add", "raw")
    owner("commit", "-m", "all forty")
    owner("tag", "v1")
    owner("run")
    (work / "raw" / "k39.txt").write_text("changed, not added\n")
    yield work, tmp
    make_writable(tmp_path)


def test_read_commands_answer_as_for_the_owner(shared: tuple[Path, Path]) -> None:
    work, tmp = shared
    expected = {args: datarepo(work, *args, reader=False, tmp=tmp) for args in READS}
    assert all(done.returncode == 0 for done in expected.values()), {a: d.stderr for a, d in expected.items()}
    before = listing(work)
    make_read_only(work)
    assert datarepo(work, "tag", "probe", reader=True, tmp=tmp).returncode != 0  # (the reader cannot write)
    for args in READS:
        done = datarepo(work, *args, reader=True, tmp=tmp)
        assert (done.returncode, done.stdout) == (0, expected[args].stdout), (args, done.stderr)
        assert list(tmp.iterdir()) == [], args  # the private copy of the index is removed
    assert listing(work) == before


def test_write_commands_fail_in_one_line_and_change_nothing(shared: tuple[Path, Path]) -> None:
    work, tmp = shared
    before = listing(work)
    make_read_only(work)
    for args in WRITES:
        done = datarepo(work, *args, reader=True, tmp=tmp)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, (args, done.stderr)
        assert lines[0].startswith("Error: ") and ("not written" in lines[0] or "Permission denied" in lines[0]), args
        assert list(tmp.iterdir()) == [], args
    assert listing(work) == before
    make_writable(work)
    assert datarepo(work, "fsck", reader=False, tmp=tmp).returncode == 0


READER = textwrap.dedent('''
    import json, sys
    import torch
    import datarepo
    from datarepo.torch import DatumDataset

    class ByRead(torch.utils.data.Dataset):
        """User code in DataLoader workers that reads through the repository it was given."""
        def __init__(self, repo, datums):
            self.repo, self.datums = repo, datums
        def __len__(self):
            return len(self.datums)
        def __getitem__(self, i):
            return self.repo.read(self.datums[i], verify=True)["txt"].decode()

    path = sys.argv[1]
    out = {}
    with datarepo.open(path) as repo:
        tree = repo.tree("v1")
        out["tree"] = [[e.key, e.datum, e.size] for e in tree]
        manifest = repo.manifest(repo.tree("HEAD").select("up/"))
        out["manifest"] = [len(manifest), sorted(manifest.keys.tolist() if hasattr(manifest.keys, "tolist") else list(manifest.keys))]
        datums = [e.datum for e in tree]
        loader = torch.utils.data.DataLoader(ByRead(repo, datums), batch_size=8, num_workers=2)
        out["read"] = [text for batch in loader for text in batch]
    ds = DatumDataset(path, rev="HEAD", prefix="up/", decode={"txt": "bytes"}, shuffle=True, seed=3)
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
        out[f"loader{workers}"] = [[s["__key__"], s["txt"].decode()] for s in loader]
    print(json.dumps(out))
''')


@pytest.mark.parametrize("index", ["kept", "deleted"])
def test_api_and_loader_read_as_for_the_owner(shared: tuple[Path, Path], index: str) -> None:
    """The API and the loader, with DataLoader workers, as the owner and as a reader; a
    repository shared without its ``index.sqlite`` is read through the shard indexes."""
    work, tmp = shared
    script = tmp.parent / "reader.py"
    script.write_text(READER)
    expected = run(work, [sys.executable, str(script), str(work)], reader=False, tmp=tmp)
    assert expected.returncode == 0, expected.stderr
    assert len(json.loads(expected.stdout)["loader2"]) == 40
    if index == "deleted":
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            (work / ".datarepo" / name).unlink(missing_ok=True)
    make_read_only(work)
    done = run(work, [sys.executable, str(script), str(work)], reader=True, tmp=tmp)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(expected.stdout)
    assert list(tmp.iterdir()) == []


def test_a_reader_sees_what_a_writer_still_at_work_committed(shared: tuple[Path, Path]) -> None:
    """The owner's processes hold the index open (one reads in a transaction, so what
    ``add`` writes stays in the write-ahead log, not yet copied into the file; the log and
    shared-memory files are not the reader's to write): the reader's status shows what the
    owner staged."""
    work, tmp = shared
    index = work / ".datarepo" / "index.sqlite"
    held = sqlite3.connect(index, isolation_level=None)
    try:
        held.execute("BEGIN")  # a read under way: what is written after it stays in the log
        held.execute("SELECT count(*) FROM meta").fetchone()
        assert datarepo(work, "add", "raw/k39.txt", reader=False, tmp=tmp).returncode == 0
        assert (work / ".datarepo" / "index.sqlite-wal").stat().st_size > 0
        expected = datarepo(work, "status", reader=False, tmp=tmp)
        assert "modified: raw/k39" in expected.stdout and "to be committed" in expected.stdout
        make_read_only(work)
        done = datarepo(work, "status", reader=True, tmp=tmp)
        assert (done.returncode, done.stdout) == (0, expected.stdout), done.stderr
    finally:
        held.close()


def test_a_read_only_folder_remote_is_cloned_pulled_and_read_by_url(shared: tuple[Path, Path]) -> None:
    """A team's remote on a share the reader may not write: clone, pull and reading by URL
    (the loader included) work; a push fails in one line and leaves the remote as it was."""
    work, tmp = shared
    remote, mine = tmp.parent / "remote", tmp.parent / "mine"
    mine.mkdir()
    for args in (("remote", "add", "team", str(remote)), ("push", "-r", "team", "--all")):
        assert datarepo(work, *args, reader=False, tmp=tmp).returncode == 0
    before = listing(remote)
    make_read_only(remote)

    done = datarepo(mine, "clone", str(remote), "copy", reader=True, tmp=tmp)
    assert done.returncode == 0, done.stderr
    clone = mine / "copy"
    assert datarepo(clone, "pull", reader=True, tmp=tmp).returncode == 0
    ls = [datarepo(where, "ls", "-l", "v1", reader=True, tmp=tmp) for where in (work, clone)]
    assert ls[0].stdout == ls[1].stdout and ls[0].stdout.count("\n") == 40
    assert datarepo(clone, "tag", "mine", reader=True, tmp=tmp).returncode == 0
    pushed = datarepo(clone, "push", "mine", reader=True, tmp=tmp)
    assert pushed.returncode == 1 and len(pushed.stderr.strip().splitlines()) == 1, pushed.stderr
    assert "not written" in pushed.stderr

    script = ("import sys, torch, datarepo\nfrom datarepo.torch import DatumDataset\n"
              "with datarepo.open(sys.argv[1]) as repo:\n"
              "    print(sum(len(repo.read(e.datum)['txt']) for e in repo.tree('v1')))\n"
              "ds = DatumDataset(sys.argv[1], rev='HEAD', prefix='up/', decode={'txt': 'bytes'})\n"
              "print(sorted(s['txt'].decode() for s in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)))\n")
    read = run(mine, [sys.executable, "-c", script, remote.as_uri()], reader=True, tmp=tmp)
    assert read.returncode == 0, read.stderr
    texts = sorted(f"DATUM {i}\n" for i in range(40))
    assert read.stdout.splitlines() == [str(sum(len(t) for t in texts)), str(texts)]
    assert listing(remote) == before
    assert list(tmp.iterdir()) == []
