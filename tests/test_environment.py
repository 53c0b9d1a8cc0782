"""The real ``datarepo`` process under the environments and invocations of real machines:
odd umasks, HOME, TMPDIR and XDG_CONFIG_HOME, a user id without a name, a current folder
gone, ``-C``, standard streams that fail or do not block, SIGCHLD ignored, a file size
limit, folders too deep, numbers too long for ``int``, odd values of the variables
datarepo reads."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import one_error_line

ROOT = Path(__file__).resolve().parents[1]


def datarepo(cwd: Path, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """The real program in a process of its own, with ``env`` added to this environment."""
    full = {**os.environ, "DATAREPO_AUTHOR": "t", "DATAREPO_LOCK_TIMEOUT": "20", "PYTHONPATH": str(ROOT), **(env or {})}
    kw.setdefault("capture_output", "stdout" not in kw)
    return subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=cwd, env=full, text=True, **kw)


@pytest.fixture
def committed(worktree: Path) -> Path:
    """A work tree of three files, committed."""
    for i in range(3):
        (worktree / "a").mkdir(exist_ok=True)
        (worktree / "a" / f"{i}.txt").write_text(f"{i}\n")
    for args in (("init",), ("add", "."), ("commit", "-m", "first")):
        assert datarepo(worktree, *args).returncode == 0
    return worktree


@pytest.mark.parametrize("args", [("log",), ("ls", "HEAD"), ("cat", "HEAD:a/1.txt"), ("--help",), ("--version",),
                                  ("log", "--help")])
def test_stdout_that_cannot_be_written_is_one_error_line(committed: Path, args: tuple[str, ...]) -> None:
    """``> /dev/full``: every write to stdout fails with ENOSPC; the command says so in one
    line and fails, as ``git log > /dev/full`` does, whether the failure comes while the
    command prints or when what it printed is flushed as it ends."""
    with open("/dev/full", "w") as full:
        result = datarepo(committed, *args, stdout=full, stderr=subprocess.PIPE)
    one_error_line(result, "No space left on device: standard output")


def _flow_under_umask(work: Path, mask: int) -> None:
    """init, add, commit, tag, a branch, checkouts, an export of files and of shards, fsck."""
    (work / "a").mkdir()
    (work / "a" / "1.txt").write_text("1\n")
    steps = [("init",), ("add", "."), ("commit", "-m", "one"), ("tag", "v1"), ("checkout", "-b", "b2"),
             ("rm", "a/1.txt"), ("commit", "-m", "two"), ("checkout", "main"),
             ("export", "HEAD", "../files"), ("export", "HEAD", "../shards", "--shards"), ("fsck",)]
    for args in steps:
        result = datarepo(work, *args, preexec_fn=lambda: os.umask(mask))
        assert result.returncode == 0, (args, result.stderr)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("mask", "mutable", "stored", "users"), [(0o077, 0o600, 0o400, 0o600),
                                                                  (0o000, 0o644, 0o444, 0o666),
                                                                  (0o022, 0o644, 0o444, 0o644)])
def test_files_follow_the_umask(tmp_path: Path, mask: int, mutable: int, stored: int, users: int) -> None:
    """Every file is made with its kind's mode less the umask's bits, as git makes files:
    under umask 077 no one else may read any of it (and the repository works for its
    owner); no umask makes a file of the repository writable by others (umask 000); the
    files checked out and exported are the user's, 0666 less the umask."""
    work = tmp_path / "work"
    work.mkdir()
    _flow_under_umask(work, mask)
    modes = _modes(work / ".datarepo")
    for rel, mode in modes.items():
        if rel.startswith(("objects/", "shards/")):
            assert mode == stored, rel
        elif rel != "index.sqlite-shm":  # (SQLite's shared memory takes the mode of the file it is for)
            assert mode == mutable, (rel, oct(mode))
    assert any(rel.endswith(".tar") for rel in modes) and any(rel.endswith(".idx") for rel in modes)
    assert (work / "a" / "1.txt").stat().st_mode & 0o777 == users  # (written again by the checkout of main)
    assert (tmp_path / "files" / "a" / "1.txt").stat().st_mode & 0o777 == users
    assert (tmp_path / "shards" / "000000.tar").stat().st_mode & 0o777 == users


def test_a_user_id_without_a_login_name_needs_an_author(committed: Path) -> None:
    """Under a user id with no name (no password-file entry, no LOGNAME or USER), a commit
    says in one line how to name its author; DATAREPO_AUTHOR or the config's name does."""
    (committed / "a" / "9.txt").write_text("9\n")
    assert datarepo(committed, "add", ".").returncode == 0
    env = {k: v for k, v in os.environ.items() if k not in ("LOGNAME", "USER", "LNAME", "USERNAME", "DATAREPO_AUTHOR")}
    # (a user namespace of its own maps id 54321 to this user)
    unknown = ["unshare", "--user", "--map-user=54321", "--map-group=54321", sys.executable, "-m", "datarepo.cli"]
    run = lambda *a, **e: subprocess.run([*unknown, *a], cwd=committed, env={**env, "PYTHONPATH": str(ROOT), **e},  # noqa: E731
                                         capture_output=True, text=True)
    if shutil.which("unshare") is None or run("--version").returncode != 0:
        pytest.skip("no user namespaces here")
    one_error_line(run("commit", "-m", "x"), "no author", "54321", "DATAREPO_AUTHOR")
    assert run("commit", "-m", "x", DATAREPO_AUTHOR="Ann").returncode == 0
    assert datarepo(committed, "log", "-n", "1").stdout.count("Ann") == 1


def test_a_current_directory_that_was_deleted_is_one_error_line(committed: Path, tmp_path: Path) -> None:
    """Started in a folder deleted under the shell (``cd x && rm -rf ../x``): every command
    says so in one line, ``datarepo.open('.')`` in its error; ``-C`` to a folder that
    exists works from there."""
    gone = tmp_path / "gone"
    gone.mkdir()
    child = subprocess.Popen(["sleep", "60"], cwd=gone)  # (a process whose cwd is the folder, to start from)
    try:
        gone.rmdir()
        cwd = f"/proc/{child.pid}/cwd"
        for args in (("status",), ("log",), ("init",), ("clone", str(committed), "copy")):
            one_error_line(datarepo(Path(cwd), *args), "current directory no longer exists")
        assert datarepo(Path(cwd), "-C", str(committed), "log", "--oneline").stdout.count("first") == 1
        script = "import datarepo\ntry:\n    datarepo.open('.')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
        out = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
        assert out == "InvalidInputError cannot open '.': the current directory no longer exists (it was deleted)\n"
    finally:
        child.kill()
        child.wait()


def test_a_checkout_keeps_the_current_directory(committed: Path) -> None:
    """A checkout run from a folder whose files the revision lacks removes the files but
    keeps the folder, as git does: the shell in it is not left in a folder that is gone,
    and the next command from there works. Another folder so emptied is removed."""
    (committed / "b").mkdir()
    (committed / "b" / "x.txt").write_text("x\n")
    for args in (("add", "."), ("commit", "-m", "b"), ("checkout", "-b", "none"), ("rm", "-r", "a", "b"),
                 ("commit", "-m", "none"), ("checkout", "main")):
        assert datarepo(committed, *args).returncode == 0, args
    result = datarepo(committed / "a", "checkout", "none")
    assert result.returncode == 0, result.stderr
    assert (committed / "a").is_dir() and not any((committed / "a").iterdir())
    assert not (committed / "b").exists()
    assert datarepo(committed / "a", "status").returncode == 0
    assert datarepo(committed / "a", "checkout", "main").returncode == 0
    assert (committed / "b" / "x.txt").read_text() == "x\n" and (committed / "a" / "1.txt").read_text() == "1\n"


def test_a_blank_author_variable_is_unset(committed: Path) -> None:
    """DATAREPO_AUTHOR of blanks is taken as unset, as every other variable is (it made
    commits by an author of two spaces): the config's name is the author."""
    config = committed / ".datarepo" / "config.toml"
    config.write_text(config.read_text() + '\n[user]\nname = "Ann"\n')
    (committed / "a" / "9.txt").write_text("9\n")
    assert datarepo(committed, "add", ".").returncode == 0
    assert datarepo(committed, "commit", "-m", "x", env={"DATAREPO_AUTHOR": "  "}).returncode == 0
    assert "Author: Ann\n" in datarepo(committed, "log", "-n", "1").stdout


def test_a_bad_shared_memory_switch_is_told_when_the_dataset_is_made(committed: Path) -> None:
    """DATAREPO_SHM_RING takes 0 or 1: another value (``false`` left the rings on) is an
    error naming it when the dataset is made, not in a DataLoader worker."""
    pytest.importorskip("torch")
    script = ("import os, datarepo.torch as t\n"
              "from torch.utils.data import DataLoader\n"
              "for value in ('false', 'off', '-1', '2'):\n"
              "    os.environ['DATAREPO_SHM_RING'] = value\n"
              "    try:\n        t.DatumDataset('.', shuffle=False)\n"
              "    except Exception as e:\n        print(type(e).__name__, e)\n"
              "for value in ('0', '1', ''):\n"
              "    os.environ['DATAREPO_SHM_RING'] = value\n"
              "    loader = DataLoader(t.DatumDataset('.', shuffle=False), batch_size=None, num_workers=1)\n"
              "    print(sorted(s['__key__'] for s in loader))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=committed, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.splitlines() == [f"InvalidInputError DATAREPO_SHM_RING must be 0 or 1, not {v!r}"
                                       for v in ("false", "off", "-1", "2")] + ["['a/0', 'a/1', 'a/2']"] * 3, out.stderr


HUGE = "9" * 5000  # (int() refuses a string of over 4,300 digits)


@pytest.mark.parametrize(("args", "env", "words"), [
    (("add", "."), {"DATAREPO_WORKERS": HUGE}, ["DATAREPO_WORKERS must be a whole number"]),
    (("add", "."), {"DATAREPO_PARALLEL_MIN_BYTES": HUGE}, ["DATAREPO_PARALLEL_MIN_BYTES must be a whole number"]),
    (("add", "."), {"DATAREPO_LOCK_TIMEOUT": HUGE}, ["DATAREPO_LOCK_TIMEOUT", "'9999"]),
    (("log", "-n", HUGE), {}, ["-n"]),
    (("log", "-n", "-" + HUGE), {}, ["-n"]),
    (("log", f"HEAD~{HUGE}"), {}, ["no such ancestor"]),
    (("log", f"HEAD^{HUGE}"), {}, ["no such parent"]),
])
def test_numbers_of_thousands_of_digits_are_one_error_line(committed: Path, args: tuple[str, ...],
                                                            env: dict[str, str], words: list[str]) -> None:
    """A number too long for ``int`` in a variable, an option or a revision is out of range,
    told in one line (each was a ValueError traceback); a variable's value is quoted cut short."""
    (committed / "a" / "9.txt").write_text("9\n")
    result = datarepo(committed, *args, env=env)
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr[-300:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: ") and (len(line) < 200 or not env), line[:300]
    for w in words:
        assert w in line


@pytest.mark.parametrize("size", [HUGE, "²"])
def test_a_tar_whose_pax_size_int_refuses_is_not_readable(committed: Path, tmp_path: Path, size: str) -> None:
    """A shard set whose PAX size has 5,000 digits, or a digit int() does not take, is a
    tar that cannot be read, told in one line (it was a ValueError traceback)."""
    import io
    import tarfile

    record = f" size={size}\n".encode()
    n = len(record) + 1
    while len(str(n)) + len(record) != n:
        n = len(str(n)) + len(record)
    payload = str(n).encode() + record
    with tarfile.open(tmp_path / "x.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        header = tarfile.TarInfo("././@PaxHeader")
        header.type, header.size = tarfile.XHDTYPE, len(payload)
        tar.addfile(header, io.BytesIO(payload))
        member = tarfile.TarInfo("k.txt")
        member.size = 2
        tar.addfile(member, io.BytesIO(b"hi"))
    one_error_line(datarepo(committed, "ingest", str(tmp_path / "x.tar"), "--prefix", "p/"), "not a readable tar")


def test_a_file_size_limit_on_the_index_says_what_it_may_be(committed: Path) -> None:
    """Under ``ulimit -f`` (EFBIG), SQLite says only "disk I/O error": the line says what
    that may mean; nothing committed is lost."""
    import resource

    for i in range(200):
        (committed / "a" / f"n{i:03d}.txt").write_text(f"{i}\n")
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # noqa: E731
    result = datarepo(committed, "add", ".", preexec_fn=limit)
    one_error_line(result, "index.sqlite", "file size or quota limit")
    assert datarepo(committed, "log", "--oneline").stdout.count("first") == 1
    assert "0 problems" in datarepo(committed, "fsck").stdout


def test_a_parent_that_ignored_sigchld(committed: Path) -> None:
    """Started by a parent that ignored SIGCHLD (passed on through exec), a pipeline's
    program that fails is told as failed, one that works is committed (the waits for the
    workers failed with "No child processes")."""
    import signal

    (committed / "pipelines").mkdir()
    (committed / "pipelines" / "p.toml").write_text(
        '[pipeline.fails]\ninput = "a/**"\noutput = "bad/"\ncommand = ["sh", "-c", "exit 3"]\n\n'
        '[pipeline.copies]\ninput = "a/**"\noutput = "good/"\ncommand = ["sh", "-c", "cp \\"$DATAREPO_IN\\"/* \\"$DATAREPO_OUT\\""]\n')
    ignore = lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # noqa: E731
    failed = datarepo(committed, "run", "fails", preexec_fn=ignore)
    assert failed.returncode == 1 and "exited with status 3" in failed.stderr
    assert "No child processes" not in failed.stderr
    result = datarepo(committed, "run", "copies", preexec_fn=ignore)
    assert result.returncode == 0, result.stderr
    assert datarepo(committed, "cat", "HEAD:good/1.txt").stdout == "1\n"


def _nonblocking_pipe(size: int | None = None) -> tuple[int, int]:
    import fcntl

    r, w = os.pipe()
    if size is not None:
        fcntl.fcntl(w, 1031, size)  # F_SETPIPE_SZ: a small pipe fills at the first write
    return r, w


def test_a_nonblocking_stdout_gets_all_the_output(committed: Path) -> None:
    """A parent that set O_NONBLOCK on the pipe it gives as stdout (it shares the flag): a
    write that finds the pipe full waits, as git's do (it failed: 'write could not complete
    without blocking', and the rest of the listing was lost)."""
    lines = "".join(f'{{"__key__": "k{i:05d}", "txt": "x"}}\n' for i in range(3000))
    assert datarepo(committed, "ingest", "-", "--prefix", "many/", input=lines).returncode == 0
    r, w = _nonblocking_pipe(4096)
    os.set_blocking(w, False)
    proc = subprocess.Popen([sys.executable, "-m", "datarepo.cli", "ls", "HEAD", "--prefix", "many/"], cwd=committed,
                            stdout=w, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(w)
    readable = select.poll()  # (not select(): this process may hold descriptors over 1023)
    readable.register(r, select.POLLIN)
    readable.poll()
    time.sleep(0.3)  # (its writes fill the pipe meanwhile)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert b"".join(chunks).decode().splitlines() == [f"many/k{i:05d}" for i in range(3000)]


def test_a_nonblocking_stdin_is_read_to_its_end(committed: Path) -> None:
    """``ingest -`` from a pipe a parent set O_NONBLOCK on: a read that finds no data yet
    waits for it (the first such read ended the input, and the prefix was committed empty)."""
    import fcntl
    import termios

    r, w = _nonblocking_pipe()
    os.set_blocking(r, False)
    proc = subprocess.Popen([sys.executable, "-m", "datarepo.cli", "ingest", "-", "--prefix", "s/"], cwd=committed,
                            stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "DATAREPO_AUTHOR": "t", "PYTHONPATH": str(ROOT)})
    os.write(w, b'{"__key__": "first", "txt": "1"}\n')
    while fcntl.ioctl(r, termios.FIONREAD, b"\0\0\0\0") != b"\0\0\0\0":  # until it has read that
        time.sleep(0.01)
    time.sleep(0.2)  # (its next read finds nothing)
    os.write(w, b'{"__key__": "second", "txt": "2"}\n')
    os.close(w)
    os.close(r)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert datarepo(committed, "ls", "HEAD", "--prefix", "s/").stdout.splitlines() == ["s/first", "s/second"]


def _folder_of_length(base: Path, size: int) -> Path:
    """A path below ``base`` of ``size`` bytes, in parts of up to 200."""
    path = base
    while (left := size - len(os.fsencode(path)) - 1) > 0:
        path = path / ("d" * (left if left <= 200 else 150 if left == 201 else 200))  # (no part left without a name)
    assert len(os.fsencode(path)) == size
    return path


def test_a_folder_too_deep_for_sqlite(tmp_path: Path) -> None:
    """SQLite opens no file whose path is over 512 bytes: a repository whose index would lie
    deeper is refused by init, and a repository moved there says why in one line (each
    command said only "unable to open database file"); at the deepest it may be, it works."""
    deepest = 491 - len("/.datarepo")  # (512, less index.sqlite-journal and the folder's name)
    work, too_deep = _folder_of_length(tmp_path / "a", deepest), _folder_of_length(tmp_path / "b", deepest + 1)
    for folder in (work, too_deep):
        folder.mkdir(parents=True)
        (folder / "x.txt").write_text("x\n")
    one_error_line(datarepo(too_deep, "init"), "too deep for SQLite", "shorter path")
    for args in (("init",), ("add", "."), ("commit", "-m", "x"), ("status",)):
        assert datarepo(work, *args).returncode == 0, args
    (too_deep / "x.txt").unlink()
    too_deep.rmdir()
    work.rename(too_deep)
    one_error_line(datarepo(too_deep, "status"), "too deep for SQLite", "shorter path")


def test_a_login_name_that_cannot_be_an_author_is_named_as_such(committed: Path) -> None:
    """The author taken from LOGNAME, which holds a line break: the error line says it is the
    login name, and how to name another author (it blamed user.name, which is not set)."""
    (committed / "a" / "9.txt").write_text("9\n")
    assert datarepo(committed, "add", ".").returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "DATAREPO_AUTHOR"}
    result = subprocess.run([sys.executable, "-m", "datarepo.cli", "commit", "-m", "x"], cwd=committed, text=True,
                            capture_output=True, env={**env, "PYTHONPATH": str(ROOT), "LOGNAME": "two\nlines"})
    line = one_error_line(result, "the login name", "DATAREPO_AUTHOR", "'two\\nlines'")
    assert "user.email" not in line


def test_dash_c_as_git_takes_it(committed: Path) -> None:
    """``-C`` given several times: each from the one before (the last alone was taken, from
    the first folder); ``-C ""`` changes nothing; one that is a file or missing is one line."""
    top = committed.parent
    assert datarepo(top.parent, "-C", str(top), "-C", committed.name, "log", "--oneline").stdout.count("first") == 1
    assert datarepo(committed, "-C", "", "log", "--oneline").stdout.count("first") == 1
    assert datarepo(top, "-C", committed.name, "-C", "a", "status").returncode == 0
    one_error_line(datarepo(committed, "-C", "a/1.txt", "log"), "Not a directory")
    one_error_line(datarepo(committed, "-C", "missing", "log"), "No such file or directory", "missing")


def test_dvcs_own_config_files_that_cannot_be_read(committed: Path, tmp_path: Path) -> None:
    """DVC reads its user config under XDG_CONFIG_HOME (or HOME) for every remote: where
    that is a file, the error line says it is DVC's config files and names the path (it
    blamed the repository's .dvc/config)."""
    pytest.importorskip("dvc")
    store = tmp_path / "store"
    assert datarepo(committed, "remote", "add", "origin", str(store), "-d").returncode == 0
    a_file = tmp_path / "file"
    a_file.write_text("")
    one_error_line(datarepo(committed, "push", env={"XDG_CONFIG_HOME": str(a_file)}),
                   "DVC's config files", "Not a directory", str(a_file))
    assert datarepo(committed, "push").returncode == 0


@pytest.mark.parametrize("env", [{"HOME": None}, {"HOME": "/nonexistent"}, {"TMPDIR": "/nonexistent"},
                                 {"TMPDIR": "file"}, {"XDG_CONFIG_HOME": "relative"}])
def test_home_and_tmpdir_that_lead_nowhere(committed: Path, tmp_path: Path, env: dict[str, str | None]) -> None:
    """No HOME, or a HOME, TMPDIR or XDG_CONFIG_HOME that leads nowhere (a temporary file
    goes to the next usable folder, as Python's tempfile has it): commands work, a
    pipeline's program (which runs in a temporary folder) too."""
    (tmp_path / "file").write_text("")
    full = {k: v for k, v in os.environ.items() if k not in env}
    full.update({k: str(tmp_path / v) if v == "file" else v for k, v in env.items() if v is not None})
    (committed / "pipelines").mkdir()
    (committed / "pipelines" / "p.toml").write_text(
        '[pipeline.copies]\ninput = "a/**"\noutput = "b/"\ncommand = ["sh", "-c", "cp \\"$DATAREPO_IN\\"/* \\"$DATAREPO_OUT\\""]\n')
    (committed / "a" / "9.txt").write_text("9\n")
    for args in (("add", "a"), ("commit", "-m", "x"), ("status",), ("log",), ("export", "HEAD", "../out"), ("run",)):
        result = subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=committed, capture_output=True,
                                text=True, env={**full, "DATAREPO_AUTHOR": "t", "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, (args, result.stderr)
    assert datarepo(committed, "cat", "HEAD:b/9.txt").stdout == "9\n"


def test_a_command_param_that_no_environment_variable_can_hold(committed: Path) -> None:
    """A command's params reach it as DATAREPO_PARAM_<NAME>: a string param holding a NUL
    (which no environment variable can) is one line naming it when the pipelines are read,
    not a ValueError for every datum at run time."""
    (committed / "pipelines").mkdir()
    (committed / "pipelines" / "p.toml").write_text(
        '[pipeline.c]\ninput = "a/**"\noutput = "b/"\ncommand = ["true"]\nparams = {mark = "x\\u0000y"}\n')
    for args in (("run",), ("run", "--dry-run")):
        one_error_line(datarepo(committed, *args), "p.toml: pipeline 'c': params: mark holds a NUL")


def _block_signals() -> None:
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGINT, signal.SIGTERM})


def test_signals_a_parent_blocked(committed: Path, tmp_path: Path) -> None:
    """Started with SIGALRM, SIGINT and SIGTERM blocked (a mask passes through exec): a
    transform past its timeout still fails with DatumTimeout (it ran on, as long as it
    took), and SIGTERM still ends the command (it did nothing)."""
    import signal

    started = tmp_path / "started"
    (committed / "pipelines").mkdir()
    (committed / "pipelines" / "slow.py").write_text(
        "import pathlib, time\nfrom datarepo import pipeline\n\n"
        "@pipeline(input='a/**', output='slow/', timeout=1, workers=1)\n"
        "def slow(datum):\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(20)\n"
        "    return {'txt': b'x'}\n")
    result = datarepo(committed, "run", preexec_fn=_block_signals)
    assert result.returncode == 1 and "DatumTimeout" in result.stderr, result.stderr
    (committed / "pipelines" / "slow.py").write_text((committed / "pipelines" / "slow.py").read_text()
                                                     .replace("timeout=1", "timeout=600"))
    started.unlink()
    proc = subprocess.Popen([sys.executable, "-m", "datarepo.cli", "run"], cwd=committed, preexec_fn=_block_signals,
                            env={**os.environ, "DATAREPO_AUTHOR": "t", "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not started.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 143  # (stopped as SIGTERM stops a command: 128 + 15)
