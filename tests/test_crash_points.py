"""SIGKILL at a sweep of points of commands that write (gc, repack, checkout, export,
push, fetch, ingest), and two writers at once. Whatever point the kill finds (the
assertions hold at every one), ``fsck`` is clean, nothing committed is lost, the next
run of the command succeeds, and what the killed one left is removed or named
``.tmp-…``."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resources import ENV, copy_of, datarepo, ok

POINTS = (0.4, 0.8)  # of how long the command takes when left alone


def committed(work: Path) -> tuple[list[str], str]:
    """The history's messages and HEAD's keys with their datum ids (``fsck`` re-hashes them):
    a command run twice makes commits of other ids (their times), holding the same."""
    return [line.split(" ", 1)[1] for line in ok(work, "log", "--oneline").splitlines()], ok(work, "ls", "-l", "HEAD")


def _samples(folder: Path, n: int, stem: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:03d}.bin").write_bytes(f"{stem} {i} ".encode() * (500 + 37 * i))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash")
    work = root / "work"
    _samples(work / "a", 150, "a")
    ok(work, "init", "--shard-size", "64K")
    ok(work, "add", ".")
    ok(work, "commit", "-m", "a")
    ok(work, "tag", "a")
    _samples(work / "b", 150, "b")
    ok(work, "add", ".")
    ok(work, "commit", "-m", "b")
    ok(work, "remote", "add", "origin", str(root / "remote"), "-d")
    _samples(root / "src", 150, "src")
    (root / "other").mkdir()
    ok(root / "other", "init")
    ok(root / "other", "remote", "add", "origin", str(root / "remote"), "-d")
    return root


# (folder it runs in, arguments, what to do first, the repository to check, what it leaves)
COMMANDS = {
    "gc": ("work", ["gc", "--prune", "now"], [["repack", "--all"]], "work", None),
    "repack": ("work", ["repack", "--all"], [], "work", None),
    "checkout": ("work", ["checkout", "main"], [["checkout", "a"]], "work", None),
    "checkout-back": ("work", ["checkout", "a"], [], "work", None),
    "export": ("work", ["export", "HEAD", "../out"], [], "work", "out"),
    "export-shards": ("work", ["export", "HEAD", "../out", "--shards", "--shard-size", "64K"], [], "work", "out"),
    "ingest": ("work", ["ingest", "../src", "--prefix", "src/"], [], "work", None),
    "push": ("work", ["push"], [], "work", None),
    "fetch": ("other", ["fetch"], [["push"]], "other", None),
    "clone": (".", ["clone", "remote", "copy"], [["push"]], "work", "copy"),
}


def _prepared(template: Path, root: Path, first: list[list[str]]) -> Path:
    """A copy of the template at ``root``, with the command's first steps run."""
    copy_of(template, root)
    for step in first:
        ok(root / "work", *step)
    return root


def _left_alone(template: Path, root: Path, command: str) -> tuple[float, tuple[list[str], str]]:
    """How long a command of ``COMMANDS`` takes when left alone, and what it leaves committed."""
    folder, args, first, repo, _ = COMMANDS[command]
    _prepared(template, root, first)
    started = time.monotonic()
    ok(root / folder, *args)
    return time.monotonic() - started, committed(root / repo)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_killed_at_any_point_leaves_a_whole_repository(template: Path, tmp_path: Path, command: str) -> None:
    folder, args, first, repo, dest = COMMANDS[command]
    took, expected = _left_alone(template, tmp_path / "fresh", command)
    for point in POINTS:
        root = _prepared(template, tmp_path / f"at-{point}", first)
        before = committed(root / repo)
        proc = subprocess.Popen([sys.executable, "-m", "datarepo.cli", *args], cwd=root / folder, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(took * point)
        proc.kill()
        _, err = proc.communicate()
        assert proc.returncode in (0, -9), err
        ok(root / repo, "fsck")
        assert committed(root / repo) in (before, expected)
        if dest is not None:  # the destination is whole or absent; a temporary folder beside it is named so
            assert {p.name for p in root.iterdir()} - {"work", "src", "other", "remote", dest} <= {
                p.name for p in root.glob(".tmp-*")}
        if dest is None or not (root / dest).exists():
            ok(root / folder, *args)
        if dest is not None:  # the next run removed what the killed one left beside it
            assert not list(root.glob(".tmp-*"))
        if command == "clone":
            assert ok(root / dest, "ls", "-l", "main") == ok(root / "work", "ls", "-l", "main")
            assert ok(root / dest, "status").endswith("nothing to commit, work tree clean\n")
            ok(root / dest, "fsck")
        ok(root / repo, "gc")
        # (on a remote there is no gc; at the top of .datarepo, where status writes its caches
        # without the lock, gc removes a temporary file once it is an hour old)
        assert [p for p in root.rglob(".tmp-*") if "remote" not in p.parts and p.parent.name != ".datarepo"] == []
        assert committed(root / repo) == expected
        if command == "fetch":
            assert ok(root / "other", "ls", "-l", "origin/main") == ok(root / "work", "ls", "-l", "main")
        if command.startswith("checkout"):  # (a killed one left changes that are what it was writing)
            assert ok(root / "work", "status").endswith("nothing to commit, work tree clean\n")


def test_an_export_left_by_a_killed_one_is_removed_a_live_one_is_not(template: Path, tmp_path: Path) -> None:
    """A killed export left its ``.tmp-export-*`` folder beside the destination for ever."""
    root = copy_of(template, tmp_path / "t")
    work = root / "work"
    dead = root / ".tmp-export-000000000000"
    dead.mkdir()
    (dead / "a").mkdir()
    (dead / "a" / "000.bin").write_bytes(b"half")
    live = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                             "from datarepo.fsutil import claim_temp_dir\n"
                             "from pathlib import Path\n"
                             "fd, tmp = claim_temp_dir(Path(sys.argv[1]), 'export')\n"
                             "print(tmp.name, flush=True)\n"
                             "time.sleep(60)\n", str(root)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        held = live.stdout.readline().strip()
        ok(work, "export", "HEAD", "../out")
        assert not dead.exists()
        assert (root / held).is_dir()  # a live export's folder is left alone
    finally:
        live.kill()
        live.wait()
    ok(work, "export", "HEAD", "../out2")
    assert not list(root.glob(".tmp-export-*"))
    assert sorted(p.name for p in (root / "out").rglob("*")) == sorted(p.name for p in (root / "out2").rglob("*"))


PAIRS = {
    "add+gc": (["add", "."], ["gc", "--prune", "now"]),
    "repack+add": (["repack", "--all"], ["add", "."]),
    "ingest+ingest": (["ingest", "../src", "--prefix", "one/"], ["ingest", "../src", "--prefix", "two/"]),
    "checkout+add": (["checkout", "a"], ["add", "."]),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_two_writers_at_once_lose_no_update(template: Path, tmp_path: Path, pair: str) -> None:
    root = copy_of(template, tmp_path / "t")
    work = root / "work"
    _samples(work / "c", 40, "c")
    first, second = PAIRS[pair]
    procs = [subprocess.Popen([sys.executable, "-m", "datarepo.cli", *args], cwd=work, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in (first, second)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0 or len(err.strip().splitlines()) == 1, err
    ok(work, "fsck")
    if pair == "ingest+ingest":
        listed = ok(work, "ls", "HEAD")
        assert "one/000" in listed and "two/000" in listed
    if pair != "checkout+add":
        ok(work, "add", ".")
        ok(work, "commit", "-m", "c")
        assert "c/039" in ok(work, "ls", "HEAD")
        assert datarepo(work, "cat", "HEAD:c/039.bin").stdout == (work / "c" / "039.bin").read_text()


def test_a_fetch_killed_between_a_shard_s_tar_and_its_index_is_completed(template: Path, tmp_path: Path) -> None:
    """A killed fetch can leave a shard's tar published without its ``.idx`` (put in that
    order); the next fetch took the shard for one it had and said the remote lacked its datums."""
    root = copy_of(template, tmp_path / "t")
    ok(root / "work", "push")
    tar = next((root / "remote" / "shards").rglob("*.tar"))
    into = root / "other" / ".datarepo" / "shards" / tar.parent.name
    into.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tar, into / tar.name)  # as the killed fetch left it: the tar alone
    ok(root / "other", "fetch")
    ok(root / "other", "fsck")
    assert ok(root / "other", "ls", "-l", "origin/main") == ok(root / "work", "ls", "-l", "main")


def test_a_checkout_killed_half_way_is_not_refused_by_its_own_files(template: Path, tmp_path: Path) -> None:
    """What a killed checkout wrote (or removed) are changes to HEAD, which the same checkout
    refused as 'uncommitted changes would be overwritten'; a file unlike the revision's still is."""
    root = copy_of(template, tmp_path / "t")
    work = root / "work"
    b = {p.name: p.read_bytes() for p in (work / "b").iterdir()}
    ok(work, "checkout", "a")
    (work / "b").mkdir()
    for name in sorted(b)[:40]:  # as far as the killed `checkout main` got
        (work / "b" / name).write_bytes(b[name])
    (work / "b" / "100.bin").write_bytes(b"mine")
    refused = datarepo(work, "checkout", "main")
    assert refused.returncode == 1 and "b/100 would be overwritten" in refused.stderr
    (work / "b" / "100.bin").unlink()
    ok(work, "checkout", "main")
    assert {p.name: p.read_bytes() for p in (work / "b").iterdir()} == b
    for name in sorted(b)[:40]:  # as far as a killed `checkout a` got
        (work / "b" / name).unlink()
    ok(work, "checkout", "a")
    assert not (work / "b").exists()
    assert ok(work, "status").endswith("nothing to commit, work tree clean\n")


def test_a_killed_clone_leaves_no_destination_and_the_next_clone_removes_its_folder(template: Path, tmp_path: Path) -> None:
    """A killed clone left DIR half made (a .datarepo, no branch), and the next clone was refused:
    'DIR exists and is not empty'. It is made beside DIR and renamed once whole."""
    root = copy_of(template, tmp_path / "t")
    ok(root / "work", "push")
    dead = root / ".tmp-clone-000000000000"
    (dead / ".datarepo").mkdir(parents=True)  # as a killed clone left it
    ok(root, "clone", "remote", "copy")
    assert not dead.exists() and not list(root.glob(".tmp-*"))
    assert ok(root / "copy", "ls", "-l", "main") == ok(root / "work", "ls", "-l", "main")
    failed = datarepo(root, "clone", "nowhere", "nested/copy")  # a clone that fails: nothing left
    assert failed.returncode == 1 and not (root / "nested").exists() and not list(root.glob(".tmp-*"))


@pytest.mark.parametrize("command", ["fetch", "push", "clone"])
def test_ctrl_c_of_a_transfer_leaves_no_temporary_file_and_the_next_run_completes(
        template: Path, tmp_path: Path, command: str) -> None:
    """Ctrl-C at a sweep of points of a fetch, push or clone (their files written in durable
    batches: under temporary names, then fsynced and renamed together): the files of the
    batch not yet renamed are removed as the command stops, here and in the remote, so
    nothing is left for gc; whatever was renamed is whole (``fsck``), and the next run
    completes."""
    from conftest import with_ctrl_c

    folder, args, first, repo, dest = COMMANDS[command]
    took, expected = _left_alone(template, tmp_path / "fresh", command)
    for point in POINTS:
        root = _prepared(template, tmp_path / f"at-{point}", first)
        proc = subprocess.Popen([sys.executable, "-m", "datarepo.cli", *args], cwd=root / folder, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=with_ctrl_c)
        time.sleep(took * point)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate()
        assert proc.returncode in (0, 130), err
        assert proc.returncode == 0 or err.strip().splitlines() == ["interrupted"], err
        assert [p for p in root.rglob(".tmp-*") if p.parent.name != ".datarepo"] == []
        if dest is None or not (root / dest).exists():
            ok(root / repo, "fsck")
            ok(root / folder, *args)
        ok(root / (dest or repo), "fsck")
        assert committed(root / repo) == expected
        if command == "fetch":
            assert ok(root / "other", "ls", "-l", "origin/main") == ok(root / "work", "ls", "-l", "main")
        if command == "clone":
            assert ok(root / dest, "ls", "-l", "main") == ok(root / "work", "ls", "-l", "main")
