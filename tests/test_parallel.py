"""Work split over a forked helper process gives exactly what one process gives."""

from __future__ import annotations

import json
import mmap
import os
import shutil
import signal
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from conftest import Cli, age, write_samples
from datarepo import parallel, worktree as wt
from datarepo.porcelain import snapshot, storing
from datarepo.porcelain.ingest import ingest
from datarepo.porcelain.maintenance import fsck
from datarepo.index import Index
from datarepo.porcelain.stage import add
from datarepo.repo import Repo
from datarepo.tree import iter_tree
from datarepo.writer import DatumSink


@pytest.fixture
def split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every add and scan here splits its work, whatever the machine's core count."""
    monkeypatch.setenv("DATAREPO_WORKERS", "2")
    monkeypatch.setattr(storing, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(wt, "PARALLEL_STAT_MIN", 0)
    monkeypatch.setattr(storing, "SIZE_SAMPLES", 16)  # the split is judged from a few keys, as with many keys


def _samples(root: Path) -> None:
    write_samples(root, 300, seed=3)
    # The same datum at the start, in the middle and at the end of the keys: in batches
    # of both processes, however they share them.
    for key in ("a-first/0000", "train/dog/0000a", "z-last/9999"):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{key}.txt").write_bytes(b"the same datum twice")


def _add_and_commit(root: Path, *init: str) -> tuple[Repo, str]:
    cli = Cli(root)
    cli("init", *init)
    cli("add", ".")
    cli("commit", "-m", "first")
    repo = Repo.open(root)
    return repo, repo.read_commit(repo.head()).tree


def _shard_datums(repo: Repo) -> list[list[str]]:
    """The datum ids of every shard, in file order."""
    return [[d.datum for d in repo.store.read_index(shard).datums] for shard in repo.store.iter_shards()]


def _assert_shards_in_key_order(repo: Repo, tree: str) -> None:
    """Every shard holds its datums in key order; a datum several keys name lies at the place
    of one of them (not always the first: one the helper logged first is left to it)."""
    keys: dict[str, list[str]] = {}
    for entry in iter_tree(repo.store, tree):  # in key order
        keys.setdefault(entry.datum, []).append(entry.key)
    for shard in _shard_datums(repo):
        last = ""
        for datum in shard:
            later = [k for k in keys[datum] if k > last]
            assert later, f"{keys[datum]} come before {last!r} in a shard"
            last = later[0]


def _queue_hook(monkeypatch: pytest.MonkeyPatch, here: Hook | None = None, there: Hook | None = None) -> None:
    """Runs each process's batches through ``here`` (this process) or ``there`` (the
    helper): a hook gets the queue and its real batches, and yields the batches to store.
    It is resumed once the one it yielded is stored (and its datums logged)."""
    parent, real = os.getpid(), storing._Queue.batches

    def batches(self: storing._Queue) -> Iterator[list[str]]:
        hook = here if os.getpid() == parent else there
        return hook(self, real(self)) if hook is not None else real(self)

    monkeypatch.setattr(storing._Queue, "batches", batches)


Hook = Callable[[storing._Queue, Iterator[list[str]]], Iterator[list[str]]]


def _wait_for(marker: Path) -> None:
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _one_takes_all(monkeypatch: pytest.MonkeyPatch, marker: Path, helper: bool) -> None:
    """The helper (or this process) takes every batch before the other takes one."""

    def takes_all(queue: storing._Queue, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        taken = list(batches)
        marker.touch()
        yield from taken

    def waits(queue: storing._Queue, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        _wait_for(marker)
        yield from batches

    _queue_hook(monkeypatch, *((waits, takes_all) if helper else (takes_all, waits)))


def _in_halves(monkeypatch: pytest.MonkeyPatch, marker: Path) -> None:
    """This process stores the first half of the batches; then the helper takes the rest."""

    def first_half(queue: storing._Queue, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        for batch in batches:
            yield batch
            if len(queue.taken) >= queue.count // 2:
                break
        marker.touch()
        _wait_for(marker.with_suffix(".done"))
        yield from batches  # (none are left)

    def the_rest(queue: storing._Queue, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        _wait_for(marker)
        yield from batches
        marker.with_suffix(".done").touch()

    _queue_hook(monkeypatch, first_half, the_rest)


def _helper_looks_too_early(monkeypatch: pytest.MonkeyPatch, marker: Path) -> None:
    """The helper, beginning only once this process has published the shard holding the shared
    datum, still writes that datum: as when both come to it at once, before either has
    logged it, let alone published it."""
    _in_halves(monkeypatch, marker)
    parent, real, real_log = os.getpid(), Index.stored, storing._Written.taken_in

    def stored(self: Index, datums: Iterable[str]) -> set[str]:
        return set() if os.getpid() != parent else real(self, datums)

    def taken_in(self: storing._Written) -> set[str]:
        return set() if os.getpid() != parent else real_log(self)

    monkeypatch.setattr(Index, "stored", stored)
    monkeypatch.setattr(storing._Written, "taken_in", taken_in)


@pytest.mark.parametrize("timing", ["as it comes", "in halves", "helper takes all", "this process takes all", "helper looks too early"])
def test_split_add_stores_what_a_single_process_stores(
    tmp_path: Path, split: None, monkeypatch: pytest.MonkeyPatch, timing: str
) -> None:
    _samples(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    monkeypatch.setenv("DATAREPO_WORKERS", "1")
    single, single_tree = _add_and_commit(tmp_path / "one")
    monkeypatch.setenv("DATAREPO_WORKERS", "2")
    monkeypatch.setattr(storing, "STORE_BATCH", 8)
    monkeypatch.setattr(storing, "STAT_SAVE_ROWS", 16)  # both processes write stat rows as they go
    marker = tmp_path / "marker"
    if timing == "in halves":
        _in_halves(monkeypatch, marker)
    elif timing in ("helper takes all", "this process takes all"):
        _one_takes_all(monkeypatch, marker, helper=timing == "helper takes all")
    elif timing == "helper looks too early":
        _helper_looks_too_early(monkeypatch, marker)
    adopted = []  # the keys the helper stored, and the datums it answered for them
    real_adopt = storing._adopt

    def adopt(sink: object, hasher: object, out: storing.Stored, did: list[str], answer: storing._Answer) -> object:
        adopted.append((did, answer.ids))
        return real_adopt(sink, hasher, out, did, answer)

    monkeypatch.setattr(storing, "_adopt", adopt)
    # Small shards: both processes publish many while the other is at work.
    both, both_tree = _add_and_commit(tmp_path / "two", "--shard-size", "4K" if timing == "helper looks too early" else "64K")

    assert both_tree == single_tree
    assert fsck(both).problems == []
    shards = _shard_datums(both)
    held = [d for shard in shards for d in shard]
    assert len(held) == len(set(held))  # every datum stored once, the shared one too
    assert sorted(held) == sorted(d for shard in _shard_datums(single) for d in shard)
    _assert_shards_in_key_order(both, both_tree)
    assert not list(both.store.iter_garbage())
    for entry in iter_tree(both.store, both_tree):  # the location cache finds every datum in a shard holding it
        shard, loc = both.index.locate(entry.datum)
        assert entry.datum in {d.datum for d in both.store.read_index(shard).datums}
    [(did, ids)] = adopted
    assert len(did) == len(ids) and did == sorted(did)  # it took its batches in key order
    expected = {e.key: e.datum for e in iter_tree(single.store, single_tree)}
    assert [expected[k] for k in did] == ids
    if timing in ("in halves", "helper looks too early"):
        assert did == sorted(expected)[-len(did) :] and 0 < len(did) < len(expected)
    elif timing == "helper takes all":
        assert len(did) == len(expected)
    elif timing == "this process takes all":
        assert did == []
    cached = {rel: entry[4] for rel, entry in both.index.load_stats().items()}  # the stat cache is whole
    assert cached == {rel: entry[4] for rel, entry in single.index.load_stats().items()} and len(cached) == 603
    assert json.loads(Cli(tmp_path / "two")("status", "--json").output) == {"added": [], "modified": [], "deleted": []}


def test_a_datum_written_but_not_yet_published_is_not_written_again(
    tmp_path: Path, split: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helper begins once this process has written the first half of the keys (the shared
    datum among them) into a shard it has not published (shards of 256 MiB): it leaves that
    datum alone, so none of its shards is copied to drop a second copy."""
    _samples(tmp_path)
    monkeypatch.setattr(storing, "STORE_BATCH", 8)
    _in_halves(monkeypatch, tmp_path / "marker")
    copied = []
    real_copy = DatumSink.copy_shard
    monkeypatch.setattr(DatumSink, "copy_shard", lambda self, shard: copied.append(shard) or real_copy(self, shard))
    repo, tree = _add_and_commit(tmp_path)
    assert copied == []
    held = [d for shard in _shard_datums(repo) for d in shard]
    assert len(held) == len(set(held)) == len({e.datum for e in iter_tree(repo.store, tree)}) == 301
    assert fsck(repo).problems == []


def test_a_datum_left_to_a_helper_that_dies_is_stored_by_the_add(
    tmp_path: Path, split: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helper writes a datum (for a key in its batches) and is killed before it publishes
    it; this process, which left that datum to it for a key of a later batch, stores it: it
    stores the helper's keys, that one among them."""
    _samples(tmp_path)
    shared = "train/dog/0000b"  # the same datum as z-last/9998, a key of a later batch
    for key in (shared, "z-last/9998"):
        (tmp_path / f"{key}.txt").write_bytes(b"only in the second half")
    logged = tmp_path / "logged"

    def waits(queue: storing._Queue, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        _wait_for(logged)
        yield from batches

    def killed(queue: storing._Queue, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        for batch in batches:
            yield batch
            if shared in batch:
                assert "z-last/9998" not in batch
                logged.touch()  # _put logs a batch's datums before it asks for the next
                os.kill(os.getpid(), signal.SIGKILL)

    _queue_hook(monkeypatch, waits, killed)
    repo, tree = _add_and_commit(tmp_path)
    assert logged.exists()  # the helper did log that datum before it was killed
    assert fsck(repo).problems == []
    for entry in iter_tree(repo.store, tree):
        shard, loc = repo.index.locate(entry.datum)
        assert entry.datum in {d.datum for d in repo.store.read_index(shard).datums}


def test_a_failed_helper_leaves_its_half_to_the_parent(tmp_path: Path, split: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _samples(tmp_path)
    Cli(tmp_path)("init")
    repo = Repo.open(tmp_path)

    def broken(*args: object) -> Repo:
        if os.getpid() == parent:
            raise AssertionError("only the helper opens a second Repo")
        raise OSError("the helper fails")

    parent = os.getpid()
    monkeypatch.setattr(storing, "Repo", broken)
    ticks: list[int] = []

    class Bar:
        def start(self, total: int | None) -> None:
            ticks.append(-(total or 0))

        def advance(self, n: int) -> None:
            ticks.append(n)

    result = add(repo, progress=Bar())
    assert result.hashed == 603
    assert sum(ticks[1:]) == -ticks[0] == 303
    assert fsck(repo).problems == []
    assert not list(repo.store.iter_garbage())


def test_a_helper_killed_midway_leaves_its_keys_to_the_parent(
    tmp_path: Path, split: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _samples(tmp_path)
    cli = Cli(tmp_path)
    cli("init", "--shard-size", "4K")  # the helper publishes shards before it is killed
    monkeypatch.setattr(storing, "STORE_BATCH", 8)
    marker = tmp_path / "marker"

    def waits(queue: storing._Queue, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        _wait_for(marker)
        yield from batches

    def killed(queue: storing._Queue, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        yield next(batches)  # it does one batch, publishing its datums, and is killed
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)

    _queue_hook(monkeypatch, waits, killed)
    result = add(Repo.open(tmp_path))
    assert result.hashed == 603  # all read here: the helper never reported
    cli("commit", "-m", "first")
    repo = Repo.open(tmp_path)
    assert fsck(repo).problems == []
    # A killed helper leaves at most the temporary file of the shard it was writing: gc's to remove.
    assert all(p.name.startswith(".tmp-") for p in repo.store.iter_garbage())
    cli("gc")
    assert not list(repo.store.iter_garbage())
    # What the helper published before it was killed counts as stored by this add, once.
    spans = {d.datum: d.length for shard in repo.store.iter_shards() for d in repo.store.read_index(shard).datums}
    assert (result.stored, result.stored_bytes) == (len(spans), sum(spans.values()))
    _assert_shards_in_key_order(repo, repo.read_commit(repo.head()).tree)
    assert json.loads(cli("status", "--json").output) == {"added": [], "modified": [], "deleted": []}


def test_a_first_add_stats_each_file_as_it_reads_it(tmp_path: Path, split: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no snapshot and no stat cache, the scan stats nothing: each process stats a file
    once it has it open, and the ``add`` takes the helper's stats, stat'ing by path only
    what no process read. What is saved is what a stat'ing scan gives, so nothing is read again."""
    _samples(tmp_path)
    (tmp_path / "README").write_bytes(b"no extension: grouped into no datum, never read")
    age(tmp_path)
    Cli(tmp_path)("init")
    repo = Repo.open(tmp_path)

    def no_stat_pass(*args: object) -> None:
        raise AssertionError("a first add stats files by path")

    monkeypatch.setattr(wt, "_stat_files", no_stat_pass)
    by_path: list[str] = []
    real_lstat = wt.lstat
    monkeypatch.setattr(wt, "lstat", lambda path, rel: by_path.append(rel) or real_lstat(path, rel))
    assert add(repo).hashed == 603
    # By path: the files of the keys sampled to size the cut (``SIZE_SAMPLES``), and the README.
    assert by_path[-1] == "README" and len(by_path) <= 2 * (storing.SIZE_SAMPLES + 1) + 1
    monkeypatch.undo()
    full = wt.scan(tmp_path)
    assert len(full.files) == 604
    snap = snapshot.load(repo, snapshot.token(repo, follow=False))
    assert snap is not None and snap.files == full.files and snap.digest == snapshot.digest(full)
    cache = repo.index.load_stats()
    assert len(cache) == 603 and all(entry[:3] == full.files[path] for path, entry in cache.items())
    assert add(Repo.open(tmp_path)).hashed == 0


def test_split_scan_equals_a_single_process_scan(tmp_path: Path, split: None, monkeypatch: pytest.MonkeyPatch) -> None:
    write_samples(tmp_path, 200, seed=5)
    (tmp_path / "link").symlink_to("train")
    both = wt.scan(tmp_path)
    monkeypatch.setenv("DATAREPO_WORKERS", "1")
    single = wt.scan(tmp_path)
    assert both.files == single.files and len(both.files) == 400
    assert both.packed == single.packed == wt.pack_files(single.files)  # what a snapshot saves and digests
    assert both.notes == single.notes


def test_a_scan_whose_helper_fails_stats_its_half_itself(tmp_path: Path, split: None, monkeypatch: pytest.MonkeyPatch) -> None:
    write_samples(tmp_path, 200, seed=6)
    single = wt.scan(tmp_path)
    parent, stats = os.getpid(), wt._stats

    def fails_in_the_helper(root: Path, listed: list[tuple[str, list[str]]]) -> array:
        if os.getpid() != parent:
            raise OSError("the helper fails")
        return stats(root, listed)

    monkeypatch.setattr(wt, "_stats", fails_in_the_helper)
    both = wt.scan(tmp_path)
    assert both.files == single.files and len(both.files) == 400 and both.packed == single.packed


@pytest.mark.parametrize("half", [0, 1, 2, 3, 4, 5, 6])
def test_the_scan_is_cut_between_the_processes_after_half_its_files(half: int) -> None:
    listed = [("a/", ["1", "2"]), ("b/", ["3", "4", "5"]), ("", ["6"])]
    mine, theirs = wt._halves(listed, half)
    assert [d + n for d, names in mine for n in names] == [d + n for d, names in listed for n in names][:half]
    assert [(d, n) for d, names in mine + theirs for n in names] == [(d, n) for d, names in listed for n in names]


def test_both_returns_none_when_the_helper_fails() -> None:
    def fails() -> bytes:
        raise RuntimeError("boom")

    assert parallel.both(lambda: 1, lambda: b"x" * 100_000) == (1, b"x" * 100_000)
    assert parallel.both(lambda: 2, fails) == (2, None)
    assert parallel.both(lambda: 3, lambda: os.kill(os.getpid(), signal.SIGKILL) or b"") == (3, None)


def test_a_helper_answers_without_waiting_for_this_process_to_read() -> None:
    """A helper's answer, however large, is whole before this process comes to read it:
    the helper is done (a zombie, not blocked writing) while this process is still busy."""
    shared = mmap.mmap(-1, 8)
    payload = os.urandom(1 << 22)  # far more than a pipe holds

    def there() -> bytes:
        shared[:] = os.getpid().to_bytes(8, "little")
        return payload

    def here() -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if pid := int.from_bytes(shared[:], "little"):
                with open(f"/proc/{pid}/stat") as f:
                    if (state := f.read().rsplit(")", 1)[1].split()[0]) == "Z":
                        return state
            time.sleep(0.01)
        return "still running"

    assert parallel.both(here, there) == ("Z", payload)


def test_an_error_here_kills_the_helper() -> None:
    marker = []

    def here() -> None:
        marker.append(time.monotonic())
        raise KeyError("here")

    started = time.monotonic()
    with pytest.raises(KeyError):
        parallel.both(here, lambda: time.sleep(30) or b"")
    assert time.monotonic() - started < 10  # the helper was killed, not waited for
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # and reaped: no child is left


@pytest.mark.parametrize("count", [1, 10, 63, 64, 65, 1_000, 16_384, 300_001])
def test_the_queue_cuts_the_keys_into_batches_in_order(count: int) -> None:
    keys = [f"{i:07d}" for i in range(count)]
    queue = storing._Queue(keys)
    try:
        batches = list(queue.batches())
    finally:
        queue.close()
    assert [k for batch in batches for k in batch] == keys and list(queue.taken) == list(range(len(batches)))
    assert min(count, storing.FEWEST_BATCHES) <= len(batches) <= storing._Queue.MOST
    assert all(0 < len(batch) <= max(storing.STORE_BATCH, -(-count // storing._Queue.MOST)) for batch in batches)


def test_two_processes_take_every_batch_once_each_in_key_order() -> None:
    keys = [f"{i:05d}" for i in range(20_000)]
    queue = storing._Queue(keys)

    def take() -> list[str]:
        taken = []
        for batch in queue.batches():
            taken.extend(batch)
            time.sleep(0.0005)  # (so that both take some)
        return taken

    try:
        mine, theirs = parallel.both(take, lambda: json.dumps(take()).encode())
    finally:
        queue.close()
    assert theirs is not None
    theirs = json.loads(theirs)
    assert mine == sorted(mine) and theirs == sorted(theirs) and mine and theirs
    assert sorted(mine + theirs) == keys


def test_split_folder_ingest_stores_what_a_single_process_stores(
    tmp_path: Path, split: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    _samples(src)
    age(src)
    adopted = []
    real_adopt = storing._adopt
    monkeypatch.setattr(storing, "_adopt", lambda *args: adopted.append(args) or real_adopt(*args))
    trees = []
    for name, workers in (("one", "1"), ("two", "2")):
        monkeypatch.setenv("DATAREPO_WORKERS", workers)
        (tmp_path / name).mkdir()
        Cli(tmp_path / name)("init", "--bare")
        repo = Repo.open(tmp_path / name)
        result = ingest(repo, str(src), "extra/")
        assert (result.stored, result.reused_files) == (301, 0)  # 303 keys, one datum three times
        trees.append(repo.read_commit(repo.head()).tree)
        assert fsck(repo).problems == []
        held = [d for shard in _shard_datums(repo) for d in shard]
        assert len(held) == len(set(held)) == 301
        assert len(repo.index.load_stats(f"ingest:{src.resolve()}")) == 603  # the helper's rows too
        again = ingest(Repo.open(tmp_path / name), str(src), "extra/")
        assert (again.commit, again.stored, again.reused_files) == (None, 0, 603)  # nothing read again
    assert trees[0] == trees[1]
    assert len(adopted) == 1  # the second repository's first ingest was split over two processes
