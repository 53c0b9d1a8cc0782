"""Shared fixtures: real repositories in tmp_path, driven through the real CLI."""

from __future__ import annotations

import gc
import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from datarepo.cli import main
from datarepo.repo import Repo
from datarepo.statcache import RACY_NS


class Cli:
    """Runs ``datarepo`` in a directory the way a user would."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True, input: str | bytes | None = None) -> Result:
        old = os.getcwd()
        os.chdir(self.cwd)
        try:
            result = self.runner.invoke(main, list(args), input=input, catch_exceptions=False)
        finally:
            os.chdir(old)
            gc.enable()  # (a command turns the cyclic collector off for its short process)
        if ok:
            assert result.exit_code == 0, f"datarepo {' '.join(args)}\n{result.output}"
        return result


@pytest.fixture(autouse=True)
def _fixed_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAREPO_AUTHOR", "Test <test@example.com>")
    monkeypatch.setenv("DATAREPO_LOCK_TIMEOUT", "20")


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def cli(worktree: Path) -> Cli:
    return Cli(worktree)


def write_samples(root: Path, n: int, seed: int = 0, prefix: str = "train") -> dict[str, bytes]:
    """Writes n two-member samples (``.jpg`` random bytes + ``.cls`` label); returns path → bytes."""
    rng = random.Random(seed)
    files = {}
    for i in range(n):
        base = f"{prefix}/{['cat', 'dog'][i % 2]}/{i:04d}"
        files[f"{base}.jpg"] = rng.randbytes(rng.randint(100, 3000))
        files[f"{base}.cls"] = str(i % 2).encode()
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.fixture
def make_samples() -> Callable[..., dict[str, bytes]]:
    return write_samples


@pytest.fixture
def repo_with_commit(worktree: Path, cli: Cli) -> tuple[Repo, dict[str, bytes]]:
    """A work tree of 20 samples, added and committed."""
    files = write_samples(worktree, 20)
    cli("init", "--shard-size", "16K")
    cli("add", ".")
    cli("commit", "-m", "first")
    return Repo.open(worktree), files


def age(root: Path, seconds: float = 10, only: list[Path] | None = None) -> None:
    """Backdates files, so the stat cache trusts them (they are no longer 'racy'): their
    mtimes are set back, and, as a file's ctime cannot be, this waits until the newest of
    their ctimes is older than the racy rule asks."""
    paths = only or [
        Path(d, n) for d, _, names in os.walk(root) if ".datarepo" not in Path(d).parts for n in names
    ]
    for p in paths:
        st = os.stat(p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))
    newest = max((os.stat(p).st_ctime_ns for p in paths), default=0)
    while time.time_ns() <= newest + RACY_NS:
        time.sleep((newest + RACY_NS - time.time_ns()) / 1e9 + 0.01)


def shard_file(repo: Repo, shard: str, suffix: str = ".tar") -> Path:
    """Where a local repository keeps a shard's file (``.tar`` or ``.idx``), for tests
    that damage or remove it."""
    return repo.dotdir / "shards" / shard[:2] / (shard[2:] + suffix)


RAY = pytest.mark.xdist_group("ray")  # every test that uses Ray runs on one xdist worker, beside one Ray instance


@pytest.fixture(scope="session")
def ray_cluster() -> object:
    """A real local Ray instance (2 CPUs, no dashboard), started once for the tests that use
    it; a RayExecutor made while it runs joins it. Mark such tests with ``RAY``."""
    import ray

    tests = str(Path(__file__).parent)  # (the functions the tests map live in their modules)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": tests}})
    yield ray
    ray.shutdown()


def with_ctrl_c() -> None:
    """``preexec_fn`` of a child that a test stops with SIGINT: a shell without job control
    (a CI script run in the background) starts commands with SIGINT ignored, and a child
    inherits that; a command typed at a terminal gets it as it should be."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def without_file_override() -> None:
    """``preexec_fn`` of a child that must meet file permissions as an ordinary user does:
    run as root, it drops from its bounding set the capabilities that pass them
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so the program it starts has neither."""
    if os.geteuid() == 0:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one error line of a ``datarepo`` process that failed (status 1, no traceback),
    which holds each of ``words``."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def paths_under(root: Path) -> list[Path]:
    """Every path under ``root``, relative to it, sorted; without SQLite's write-ahead log
    and shared-memory files, which come and go with the connections open to the index."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if not p.name.endswith(("-wal", "-shm")))


def holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open now (waiting for a lock on it, say): False
    once it has ended, and a descriptor closed while it is looked at is passed over."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except FileNotFoundError:
            continue
    return False
