"""The real ``datarepo`` process under the environments and invocations of real machines:
odd umasks, HOME and TMPDIR, a current folder gone, standard streams that fail, odd
values of the variables datarepo reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def datarepo(cwd: Path, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """The real program in a process of its own, with ``env`` added to this environment."""
    full = {**os.environ, "DATAREPO_AUTHOR": "t", "DATAREPO_LOCK_TIMEOUT": "20", "PYTHONPATH": str(ROOT), **(env or {})}
    kw.setdefault("capture_output", "stdout" not in kw)
    return subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=cwd, env=full, text=True, **kw)


def one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


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
    one_error_line(result, "No space left on device")
