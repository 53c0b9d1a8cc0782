"""Running out of resources in the middle of a write: a full disk (a file size limit, so
writes fail with EFBIG as on a full disk), too few file descriptors, and two writers at
once. Each command runs as the real ``datarepo`` process; afterwards the error is one line,
nothing committed is lost (``fsck`` clean, ``log`` and ``ls -l`` as before), no temporary
file is left (``gc`` removes what a killed helper left in the store), and the same command
succeeds once the limit is lifted."""

from __future__ import annotations

import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

BIG = 1_200_000  # a member bigger than the larger limit below
ENV = {**os.environ, "DATAREPO_AUTHOR": "Test <test@example.com>", "DATAREPO_LOCK_TIMEOUT": "20"}
ENV["PYTHONPATH"] = str(Path(__file__).parent.parent)


def datarepo(cwd: Path, *args: str, fsize: int | None = None, nofile: int | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The ``datarepo`` command, with a file size limit (a write past it fails with EFBIG,
    SIGXFSZ ignored as a shell may) or a limit on open files."""

    def limits() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=cwd, env={**ENV, **(env or {})},
                          capture_output=True, text=True, preexec_fn=limits, timeout=120)


def ok(cwd: Path, *args: str) -> str:
    done = datarepo(cwd, *args)
    assert done.returncode == 0, f"datarepo {' '.join(args)}: {done.stderr}"
    return done.stdout


def assert_one_error_line(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "[Errno" not in lines[0], done.stderr


def temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".tmp-*"))


def committed(work: Path) -> tuple[str, str]:
    """What a repository holds: its history and the datum ids of HEAD (``fsck`` re-hashes them)."""
    return ok(work, "log", "--oneline"), ok(work, "ls", "-l", "HEAD")


def copy_of(template: Path, root: Path) -> Path:
    """A copy of a template folder whose ``work`` and ``other`` repositories name the copy's
    ``remote`` (a remote's path is kept as the absolute path it was added with)."""
    shutil.copytree(template, root, symlinks=True)
    for name in ("work", "other"):
        ok(root / name, "remote", "modify", "origin", "url", str(root / "remote"))
    return root


def _pipeline(work: Path) -> None:
    (work / "pipelines").mkdir()
    (work / "pipelines" / "double.py").write_text(
        "from datarepo import pipeline\n\n\n"
        '@pipeline(input="big/**", output="double/", version="1")\n'
        "def double(datum):\n"
        '    return {"bin": datum["bin"] * 2}\n'
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work tree with two commits (small files, then two big ones, a shard each), pushed
    to a folder remote; a folder, a tar and JSON lines to ingest, each with a big member."""
    root = tmp_path_factory.mktemp("template")
    work = root / "work"
    rng = random.Random(7)
    for i in range(6):
        (work / "small").mkdir(parents=True, exist_ok=True)
        (work / "small" / f"{i}.txt").write_text(f"small {i}")
    _pipeline(work)
    ok(work, "init")
    ok(work, "add", "small")
    ok(work, "commit", "-m", "small")
    ok(work, "tag", "small")
    (work / "big").mkdir()
    for i in range(2):
        (work / "big" / f"{i}.bin").write_bytes(rng.randbytes(BIG))
    ok(work, "add", "big")
    ok(work, "commit", "-m", "big")
    ok(work, "remote", "add", "origin", str(root / "remote"), "-d")
    ok(work, "push")
    (root / "src").mkdir()
    (root / "src" / "new.bin").write_bytes(rng.randbytes(BIG))
    with tarfile.open(root / "src.tar", "w") as tar:
        data = rng.randbytes(BIG)
        info = tarfile.TarInfo("t/0.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (root / "src.jsonl").write_text(json.dumps({"__key__": "j/0", "txt": "x" * BIG}) + "\n")
    (work / "big" / "2.bin").write_bytes(rng.randbytes(BIG))  # not added yet
    (root / "other").mkdir()
    ok(root / "other", "init")
    ok(root / "other", "remote", "add", "origin", str(root / "remote"), "-d")
    return root


# Each command as (folder it runs in, arguments, what to do first unlimited, the repository it
# writes); every one writes a file bigger than 1,000,000 bytes but for commit, gc and fsck.
COMMANDS = {
    "add": ("work", ["add", "big"], [], "work"),
    "commit": ("work", ["commit", "-m", "third"], [["add", "big"]], "work"),
    "ingest-folder": ("work", ["ingest", "../src", "--prefix", "src/"], [], "work"),
    "ingest-tar": ("work", ["ingest", "../src.tar", "--prefix", "tar/"], [], "work"),
    "ingest-jsonl": ("work", ["ingest", "../src.jsonl", "--prefix", "jsonl/"], [], "work"),
    "checkout": ("work", ["checkout", "main"], [["checkout", "small"]], "work"),
    "export": ("work", ["export", "HEAD", "../out"], [], "work"),
    "export-shards": ("work", ["export", "HEAD", "../out", "--shards"], [], "work"),
    "repack": ("work", ["repack", "--all"], [], "work"),
    "gc": ("work", ["gc", "--prune", "now"], [], "work"),
    "fsck-rebuild": ("work", ["fsck", "--rebuild-index"], [], "work"),
    "run": ("work", ["run"], [], "work"),
    "push": ("work", ["push", "-r", "empty"], [["remote", "add", "empty", "../empty"]], "work"),
    "fetch": ("other", ["fetch"], [], "other"),
    "clone": (".", ["clone", "remote", "copy"], [], "work"),
}
SMALL_WRITES = {"commit", "gc", "fsck-rebuild"}


# Every command past index.sqlite's size, where its own files do not fit; a few where
# index.sqlite does not either (the same failure for every command: at its first write there).
CASES = [(command, 1_000_000) for command in COMMANDS] + [
    (command, 60_000) for command in ("add", "ingest-folder", "checkout", "export", "fetch")]


@pytest.mark.parametrize(("command", "limit"), CASES)
def test_a_full_disk_fails_one_line_and_loses_nothing(template: Path, tmp_path: Path, command: str, limit: int) -> None:
    root = copy_of(template, tmp_path / "t")
    folder, args, first, repo = COMMANDS[command]
    cwd, work = root / folder, root / repo
    for step in first:
        ok(root / "work", *step)
    before = committed(work)
    status = ok(root / "work", "status")
    done = datarepo(cwd, *args, fsize=limit)
    if limit < 100_000 or command not in SMALL_WRITES:  # (index.sqlite alone is bigger than 60,000)
        assert_one_error_line(done)
    elif done.returncode == 0:  # it wrote nothing as big as the limit
        ok(work, "fsck")
        return
    else:
        assert_one_error_line(done)
    if done.stderr.startswith("Error: committed "):  # the branch moved before the disk was full: it says so
        assert command == "commit" and "big/2" in ok(work, "ls", "HEAD")
        return
    assert committed(work) == before
    if done.returncode and command != "checkout":
        assert ok(root / "work", "status") == status
    ok(work, "fsck")
    assert not (root / "out").exists() and not (root / "copy").exists()
    assert [p for p in temporaries(root) if ".datarepo/shards/" not in p] == []
    ok(work, "gc")
    assert temporaries(root) == []  # (what killed pipeline workers left in the store, gc removes)
    ok(cwd, *args)  # the limit lifted
    if command == "commit":
        assert "big/2" in ok(work, "ls", "HEAD")
    if command == "checkout":
        assert (root / "work" / "big" / "1.bin").stat().st_size == BIG
    ok(work, "fsck")


def test_a_commit_that_finds_the_disk_full_keeps_the_staging_area(template: Path, tmp_path: Path) -> None:
    """SQLite's 'disk I/O error' was taken for a damaged index.sqlite: the file was set aside
    and an empty one made, so the staged changes were gone ('nothing to commit')."""
    root = copy_of(template, tmp_path / "t")
    work = root / "work"
    ok(work, "add", "big")
    assert_one_error_line(datarepo(work, "commit", "-m", "third", fsize=0))
    assert not list((work / ".datarepo").glob("index.sqlite*.damaged"))
    assert "big/2" in ok(work, "status")
    ok(work, "commit", "-m", "third")
    assert "big/2" in ok(work, "ls", "HEAD")


@pytest.mark.parametrize("command", [
    ["add", "."],
    ["ingest", "../src", "--prefix", "src/"],
    ["export", "HEAD", "../out"],
    ["export", "HEAD", "../out", "--shards", "--shard-size", "1K"],
    ["run"],
])
def test_few_file_descriptors_give_the_result_or_one_error_line(tmp_path: Path, command: list[str]) -> None:
    """``ulimit -n 16`` with many files and shards, over worker processes: an export of
    shards held 64 shards open whatever the limit, and failed with none left to write with."""
    work, src = tmp_path / "work", tmp_path / "src"
    for folder, stem in ((work / "t", "t"), (src, "s")):
        folder.mkdir(parents=True)
        for i in range(200):
            (folder / f"{i:03d}.txt").write_text(f"{stem}{i}")
    _pipeline(work)
    (work / "pipelines" / "double.py").write_text((work / "pipelines" / "double.py").read_text().replace("big/", "t/").replace("bin", "txt"))
    ok(work, "init", "--shard-size", "2K")
    ok(work, "add", "t")
    ok(work, "commit", "-m", "many shards")
    before = committed(work)
    parallel = {"DATAREPO_WORKERS": "2", "DATAREPO_PARALLEL_MIN_BYTES": "0"}
    done = datarepo(work, *command, nofile=16, env=parallel)
    if command[0] == "export":
        assert done.returncode == 0, done.stderr
        assert "exported 200 datums" in done.stdout
    elif done.returncode:
        assert_one_error_line(done)
    if command[0] != "add" and done.returncode:
        assert committed(work) == before
    ok(work, "fsck")
    if done.returncode:
        ok(work, *command)


def test_a_commit_made_before_the_disk_filled_says_so_and_is_not_made_twice(template: Path, tmp_path: Path) -> None:
    """The branch moved, then clearing the staging area failed: the error said the commit
    failed, and the next commit made a second one of the same tree ('1 keys changed')."""
    root = copy_of(template, tmp_path / "t")
    work = root / "work"
    ok(work, "add", "big")
    before = ok(work, "log", "--oneline")
    done = datarepo(work, "commit", "-m", "third", fsize=60_000)  # (index.sqlite is bigger, the commit's objects smaller)
    assert_one_error_line(done)
    assert done.stderr.startswith("Error: committed ") and "staging area could not be cleared" in done.stderr
    assert ok(work, "log", "--oneline").count("\n") == before.count("\n") + 1
    assert "big/2" in ok(work, "ls", "HEAD")
    again = datarepo(work, "commit", "-m", "fourth")
    assert again.returncode == 1 and "nothing to commit" in again.stderr
    assert ok(work, "log", "--oneline").count("\n") == before.count("\n") + 1
    assert ok(work, "status").startswith("On branch main\nChanges not staged")  # (pipelines/, never added)
    ok(work, "fsck")


def test_only_damage_sets_the_index_aside(template: Path, tmp_path: Path) -> None:
    """A full disk keeps index.sqlite (and the staging area in it); a folder where it should be
    is damage, set aside as a file SQLite cannot read is."""
    root = copy_of(template, tmp_path / "t")
    work = root / "work"
    ok(work, "add", "big")
    for command in (["status"], ["add", "big"], ["ls", "HEAD"]):
        datarepo(work, *command, fsize=0)
    assert not list((work / ".datarepo").glob("*.damaged")) and "big/2" in ok(work, "status")
    ok(work, "commit", "-m", "third")
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (work / ".datarepo" / name).unlink(missing_ok=True)
    (work / ".datarepo" / "index.sqlite").mkdir()
    ok(work, "status")
    assert (work / ".datarepo" / "index.sqlite.damaged").is_dir()



@pytest.mark.parametrize("command", [["status"], ["diff", "HEAD"], ["fsck"], ["cat", "HEAD:small/0.txt"], ["pipelines"], ["dag"]])
def test_read_commands_work_on_a_full_disk(template: Path, tmp_path: Path, command: list[str]) -> None:
    """status (and diff, which runs it) failed on a full disk: the stat cache and the status
    snapshot it saves, which only spare the next command work, could not be written; fsck
    failed writing the list of damaged shards it found as the last one had left it, and
    pipelines and dag making the table where they cache the pipelines' heads."""
    root = copy_of(template, tmp_path / "t")
    work = root / "work"
    (work / "small" / "new.txt").write_text("new")
    for i in range(6):  # (changed, to be hashed again: the stat cache has more to record)
        (work / "small" / f"{i}.txt").write_text(f"changed {i}")
    # Room for SQLite's shared memory file as it is (a limit is stricter than a full disk: it
    # refuses even a write in place past it), none for the write-ahead log to grow.
    done = datarepo(work, *command, fsize=100_000)
    assert done.returncode == 0, done.stderr
    if command[0] in ("status", "diff"):
        assert "small/new" in done.stdout and "small/5" in done.stdout
    assert ok(work, *command) == done.stdout  # and what it gave is what it gives with room
