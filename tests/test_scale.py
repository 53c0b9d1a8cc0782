"""Costs that must grow with the right thing: what a command makes durable when it moves
many refs or retires many shards (counted as calls of ``os.fsync``, from every thread)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from conftest import Cli

import datarepo

REFS = 200


def fsyncs(command: Callable[[], object]) -> int:
    """How many times ``command`` (run in this process) calls ``os.fsync``, in any thread."""
    count = 0

    def seen(frame: object, event: str, arg: object) -> None:
        nonlocal count
        if event == "c_call" and arg is os.fsync:
            count += 1

    sys.setprofile(seen)
    threading.setprofile(seen)
    try:
        command()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    return count


def with_branches(cli: Cli, worktree: Path, n: int) -> None:
    cli("init")
    (worktree / "a.txt").write_text("a")
    cli("add", "a.txt")
    cli("commit", "-m", "one")
    with datarepo.open(worktree) as repo:
        head = repo.refs.read("HEAD")
        assert head is not None
        for i in range(n):
            repo.refs.update(f"refs/heads/b{i}", head, expected=None)


def test_push_and_fetch_of_many_refs_make_them_durable_together(cli: Cli, worktree: Path, tmp_path: Path) -> None:
    """Each ref file is fsync'ed once and its folder once for all: one fsync of each file and
    one of its folder made a push --all or fetch of 4,000 refs take twice as long."""
    with_branches(cli, worktree, REFS)
    cli("remote", "add", "o", str(tmp_path / "remote"))
    pushed = fsyncs(lambda: cli("push", "--all", "-r", "o"))
    other = tmp_path / "other"
    other.mkdir()
    again = Cli(other)
    again("init")
    again("remote", "add", "o", str(tmp_path / "remote"))
    fetched = fsyncs(lambda: again("fetch", "-r", "o"))
    with datarepo.open(other) as repo:
        assert len(list(repo.refs.names("refs/remotes/o/"))) == REFS + 1  # (and main)
    assert len(list((tmp_path / "remote" / "refs" / "heads").iterdir())) == REFS + 1
    # (a few more for the commit, its tree and page, the shard, and their folders)
    assert pushed < 1.2 * REFS, pushed
    assert fetched < 1.2 * REFS, fetched


def test_repack_of_many_shards_fsyncs_the_retired_folder_once(cli: Cli, worktree: Path) -> None:
    """Retiring a shard moves its tar and index aside: their folder is fsync'ed once for all
    the shards a repack retires (twice a shard took a sixth of a repack of 3,000 shards)."""
    cli("init")
    for i in range(30):
        (worktree / f"f{i}.txt").write_text(str(i))
        cli("add", f"f{i}.txt")
        cli("commit", "-m", f"c{i}")
    with datarepo.open(worktree) as repo:
        before = set(repo.store.iter_shards())
    count = fsyncs(lambda: cli("repack"))
    with datarepo.open(worktree) as repo:
        after = set(repo.store.iter_shards())
        assert len(before) == 30 and len(after) == 1 and not after & before
        assert len(list(repo.store.iter_retired())) == 30
    assert count < 10, count
