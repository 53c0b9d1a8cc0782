"""Memory that must grow with the right thing: a spout's commit with what it adds (not with
what its prefix holds), a long-lived process (``run --watch``, a map over many items)
with nothing per run or per item. The CLI runs with the cyclic collector off, so a
reference cycle made per item or per run is memory a long command never gets back: these
tests count what the collector finds with it off, as the CLI has it. Sizes are compared at
two scales in this process (counts of objects, bytes traced by tracemalloc), never against
a machine's absolute figures."""

from __future__ import annotations

import gc
import io
import json
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Cli
from test_pipelines import UPPER, write_pipeline, write_texts

import datarepo
from datarepo import store
from datarepo.executor import ProcessExecutor
from datarepo.pipeline.run import Options, watch
from datarepo.porcelain.ingest import spout


@contextmanager
def collector_off() -> Iterator[Callable[[], int]]:
    """The cyclic collector off, as the CLI runs; yields a count of the cycles left since."""
    gc.collect()
    gc.disable()
    try:
        yield gc.collect
    finally:
        gc.enable()


def lines(keys: range, prefix: str = "k") -> bytes:
    return "".join(json.dumps({"__key__": f"{prefix}{i:08d}", "txt": f"v{i}"}) + "\n" for i in keys).encode()


def test_a_spout_commit_holds_what_it_adds_not_what_its_prefix_holds(
    cli: Cli, worktree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spout's commit looks up the keys it adds, in the pages that can hold them: it read
    every page of its prefix into a dict of all its keys, each commit, which grew a spout's
    memory (and each commit's time) with the months it had run. The store's cache of
    decoded pages is held to two here, so that what is measured is what one commit holds."""
    monkeypatch.setattr(store, "DECODED_PAGES", 2)
    cli("init")

    def peak_of_one_commit(existing: int) -> int:
        prefix = f"p{existing}/"
        cli("ingest", "-", "--prefix", prefix, "--commit-every", "100000", input=lines(range(existing)))
        with datarepo.open(worktree) as repo:
            list(spout(repo, io.BytesIO(lines(range(5), "y")), prefix, every=5))  # (modules imported, caches filled)
            tracemalloc.start()
            try:
                results = list(spout(repo, io.BytesIO(lines(range(5), "z")), prefix, every=5))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        assert [r.changes.added for r in results] == [[f"{prefix}z{i:08d}" for i in range(5)]]
        return peak

    small, large = peak_of_one_commit(1_000), peak_of_one_commit(16_000)
    assert large < 2 * small, (small, large)  # (it was 2.8x: a prefix of one page against 16; now 1.5x)


def test_watch_keeps_nothing_from_one_run_to_the_next(cli: Cli, worktree: Path) -> None:
    """Each run of ``run --watch`` opens the repository afresh; what it leaves in reference
    cycles (the closed cache and its parts) is freed before the next look, so a watch that
    runs for weeks does not grow a run at a time."""
    cli("init", "--shard-size", "16K")
    write_texts(worktree, 4)
    cli("add", "raw")
    cli("commit", "-m", "raw")
    write_pipeline(worktree, "upper.py", UPPER)

    def cycles_left(runs: int) -> int:
        made = [0]

        def sleep(seconds: float) -> None:  # a look that found nothing new: a new datum lands
            made[0] += 1
            with datarepo.open(worktree) as repo, repo.lock:
                with repo.writer() as w:
                    w.put(f"raw/new/{runs}-{made[0]}", {"txt": b"one more"})
                repo.commit(w.entries, "one more")

        with collector_off() as collect:
            done = watch(worktree, (), Options(executor="serial"), None, 0.01, runs, lambda r: None, sleep)
            left = collect()
        assert done == runs
        return left

    few, many = cycles_left(2), cycles_left(6)
    assert many <= few + 10, (few, many)  # (it was about 10 objects more for each run)


def _square(n: int) -> int:
    return n * n


def test_a_map_over_worker_processes_makes_no_cycle_per_item() -> None:
    """Each answer from a worker process is read by one unpickler class, made once: a class
    made for each answer is a reference cycle, which a CLI command kept for every batch of
    a long ``run`` or ``add``."""
    pool = ProcessExecutor(2)
    try:
        list(pool.map(_square, range(4)))  # (the workers started, the class made)

        def cycles_left(items: int) -> int:
            with collector_off() as collect:
                assert list(pool.map(_square, range(items))) == [n * n for n in range(items)]
                return collect()

        few, many = cycles_left(20), cycles_left(80)
    finally:
        pool.close()
    assert many <= few + 10, (few, many)  # (it was about 12 objects more for each item)


LIMIT = 1 << 20  # the size from which a member is streamed, never held whole (here, for small tests)


def _traced_peak(command: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        command()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _peaks_of_a_member(cli: Cli, root: Path, size: int) -> dict[str, int]:
    """The traced peak of each command over a work tree whose one member is ``size`` bytes."""
    w = root / "w"
    w.mkdir(parents=True)
    big = w / "big.bin"
    big.write_bytes(bytes(range(256)) * (size >> 8))
    (w / "small.txt").write_text("x")
    run = Cli(w)
    run("init")
    peaks = {"add": _traced_peak(lambda: run("add", "."))}
    run("commit", "-m", "one")
    with open(big, "r+b") as f:
        f.write(b"changed")
    peaks["status (changed)"] = _traced_peak(lambda: run("status"))
    peaks["diff (changed)"] = _traced_peak(lambda: run("diff"))
    peaks["add (changed)"] = _traced_peak(lambda: run("add", "."))
    run("commit", "-m", "two")
    peaks["checkout HEAD~1"] = _traced_peak(lambda: run("checkout", "HEAD~1"))
    run("checkout", "main")
    peaks["export"] = _traced_peak(lambda: run("export", "HEAD", str(root / "files")))
    peaks["export --shards"] = _traced_peak(lambda: run("export", "HEAD", str(root / "shards"), "--shards"))
    peaks["repack"] = _traced_peak(lambda: run("repack"))
    peaks["fsck"] = _traced_peak(lambda: run("fsck"))
    run("remote", "add", "o", str(root / "remote"))
    peaks["push"] = _traced_peak(lambda: run("push", "-r", "o"))
    peaks["clone"] = _traced_peak(lambda: Cli(root)("clone", str(root / "remote"), "clone"))
    peaks["ingest FOLDER"] = _traced_peak(lambda: run("ingest", str(root / "files"), "--prefix", "folder/"))
    shards = sorted(str(p) for p in (root / "shards").glob("*.tar"))
    peaks["ingest TAR"] = _traced_peak(lambda: run("ingest", *shards[:1], "--prefix", "tar/"))
    with datarepo.open(w) as repo:
        datum = repo.tree()["big"].datum
        peaks["Repo.members"] = _traced_peak(lambda: repo.members(datum, LIMIT))
    return peaks


def test_a_member_over_the_limit_is_streamed_by_every_command(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From ``LARGE_FILE`` on, a member is streamed in chunks by every command that reads or
    writes it (hashing, shard writing, status, checkout, export, repack, fsck, push, clone,
    ingest, ``Repo.members``):
    a member 3x as large (4 and 12 MiB, the limit lowered to 1 MiB) takes no more memory."""
    from datarepo import repo, shards, sources, write
    from datarepo.porcelain import checkout, export, history

    for module in (shards, sources, write, repo, checkout, export, history):
        monkeypatch.setattr(module, "LARGE_FILE", LIMIT)
    small = _peaks_of_a_member(cli, tmp_path / "small", 4 * LIMIT)
    large = _peaks_of_a_member(cli, tmp_path / "large", 12 * LIMIT)
    grew = {name: (small[name] >> 10, large[name] >> 10) for name in small if large[name] > small[name] + 2 * LIMIT}
    assert not grew, f"KiB at 4 and 12 MiB: {grew}"
