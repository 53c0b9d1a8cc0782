"""The Python API used from threads, and over its lifetime (docs/api.md, "Threads and
lifetime"): a Repo opened in one thread and read from a thread pool, a prefetching thread
or a web server's threads; readers in threads while another process commits; a Repo
closed (from any thread), pickled, or dropped without a close.

Real threads, real SQLite, real shards. A race is made likely (the interpreter switches
threads every microsecond) rather than certain: each test asserts what must hold
whatever the interleaving, and counts results, never time."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from loader_fixtures import add_commit, labelled, make_repo

import datarepo
from datarepo.errors import ClosedError, DataRepoError
from datarepo.repo import Repo

ENV = {**os.environ, "DATAREPO_AUTHOR": "Test <test@example.com>", "PYTHONPATH": str(Path(__file__).parent.parent)}


@pytest.fixture(autouse=True)
def _switch_often() -> Iterator[None]:
    """Threads switch every microsecond (as on a loaded machine, at random places)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` for i < n, each on a thread of its own, all at once; their results."""
    start = threading.Barrier(n)

    def run(i: int) -> Any:
        start.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(run, i) for i in range(n)]]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_repo_opened_in_one_thread_reads_in_a_thread_pool(tmp_path: Path) -> None:
    """The reported case: open, read once, then read from a ThreadPoolExecutor (raised
    sqlite3.ProgrammingError: objects created in a thread can only be used in it)."""
    samples = labelled(300)
    make_repo(tmp_path, samples)
    repo = datarepo.open(tmp_path)
    entries = list(repo.tree())
    assert repo.read(entries[0].datum) == samples[entries[0].key]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda e: repo.read(e.datum, verify=True), entries))
    assert got == [samples[e.key] for e in entries]
    assert in_threads(4, lambda i: len(repo.manifest(repo.tree()))) == [300] * 4  # (its size test asks the cache)
    repo.close()


def test_trees_read_from_many_threads_give_their_entries(tmp_path: Path) -> None:
    """Trees of many commits (more pages than the store keeps decoded), from threads at
    once: two threads making room in the store's cache at once raised RuntimeError
    ('dictionary changed size during iteration') or KeyError."""
    make_repo(tmp_path, {"k/0000": {"txt": b"0"}})
    with datarepo.open(tmp_path) as repo, repo.lock:
        for c in range(1, 100):
            with repo.writer() as w:
                w.put(f"k/{c:04d}", {"txt": b"%d" % c})
            repo.commit(w.entries, f"commit {c}")
    repo = datarepo.open(tmp_path)
    commits = [repo.resolve(f"HEAD~{i}") for i in range(100)]
    want = {c: list(repo.tree(c)) for c in commits}

    def walk(i: int) -> int:
        for j in range(400):
            c = commits[(i * 13 + j) % len(commits)]
            assert list(repo.tree(c)) == want[c]
        return j

    for _ in range(5):
        assert in_threads(8, walk) == [399] * 8
    repo.close()


def test_threads_iterating_one_dataset_at_once_get_every_sample(tmp_path: Path) -> None:
    """A DatumDataset iterated by several threads at once, over more shards than a reader
    keeps open: one thread closed the mapped shard another was reading (ValueError: mmap
    closed or invalid)."""
    from datarepo.torch import DatumDataset

    samples = labelled(700)
    make_repo(tmp_path, samples, shard_size=4096)
    with datarepo.open(tmp_path) as repo:
        assert len(list(repo.store.iter_shards())) > 64
    ds = DatumDataset(tmp_path, shuffle=True, seed=3)

    def epoch(i: int) -> int:
        count = 0
        for sample in ds:
            assert sample["bin"] == samples[sample["__key__"]]["bin"]
            count += 1
        return count

    assert in_threads(4, epoch) == [700] * 4


def test_a_dataset_dropped_without_a_close_warns_of_no_open_file(tmp_path: Path) -> None:
    """A DatumDataset read and dropped (or a thread that read it ending) left its 64 open
    shards to the collector, which warned of each unclosed file."""
    from datarepo.torch import DatumDataset

    make_repo(tmp_path, labelled(300), shard_size=4096)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datasets = [DatumDataset(tmp_path)]
        assert in_threads(2, lambda i: sum(1 for _ in datasets[0])) == [300, 300]
        assert sum(1 for _ in datasets[0]) == 300
        datasets.clear()
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_two_threads_writing_through_one_repo_take_turns(tmp_path: Path) -> None:
    """``with repo.lock`` on two threads of one Repo: the second counted it as taken again
    and both wrote at once. Each thread's commits land, none lost to the other's."""
    make_repo(tmp_path, {"seed/0": {"txt": b"0"}})
    repo = datarepo.open(tmp_path)
    inside: list[int] = []
    overlaps: list[tuple[int, ...]] = []

    def write(i: int) -> int:
        for n in range(5):
            with repo.lock:
                inside.append(i)
                if len(inside) > 1:
                    overlaps.append(tuple(inside))
                with repo.lock:  # (taken again by the thread that holds it)
                    with repo.writer() as w:
                        w.put(f"t{i}/{n}", {"txt": b"%d %d" % (i, n)})
                    repo.commit(w.entries, f"thread {i} commit {n}")
                inside.remove(i)
        return n

    assert in_threads(4, write) == [4] * 4
    assert overlaps == []
    tree = repo.tree()
    assert len(tree) == 21
    assert all(repo.read(tree[f"t{i}/{n}"].datum) == {"txt": b"%d %d" % (i, n)} for i in range(4) for n in range(5))
    repo.close()


def test_runs_recorded_from_threads_are_all_there(tmp_path: Path) -> None:
    from datarepo.torch import DatumDataset
    from datarepo.torch.runs import list_runs

    make_repo(tmp_path, labelled(50))
    repo = datarepo.open(tmp_path)
    ds = DatumDataset(repo, seed=1)
    oids = in_threads(6, lambda i: repo.record_run(f"run-{i}", ds, extra={"i": i}))
    assert len(set(oids)) == 6
    assert sorted(r.name for r in list_runs(repo)) == [f"run-{i}" for i in range(6)]
    assert all(len(DatumDataset.from_run(repo, f"run-{i}")) == 50 for i in range(6))
    repo.close()


def test_readers_in_threads_while_other_processes_commit_see_whole_states(tmp_path: Path) -> None:
    """Threads read (trees, datums checked against their ids, manifests) while the CLI, in
    other processes, adds, commits, repacks and collects garbage: each reader sees the
    tree it resolved whole, never a traceback."""
    work = tmp_path / "work"
    work.mkdir()
    for i in range(60):
        (work / f"f{i:02d}.bin").write_bytes(os.urandom(300 + i))
    cli = [sys.executable, "-m", "datarepo.cli"]

    def datarepo_cli(*args: str) -> None:
        done = subprocess.run([*cli, *args], cwd=work, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    datarepo_cli("init", "--shard-size", "4K")
    datarepo_cli("add", ".")
    datarepo_cli("commit", "-m", "first")
    repo = datarepo.open(work)
    stop = threading.Event()

    def read(i: int) -> int:
        rounds = 0
        while not stop.is_set() or rounds == 0:
            tree = repo.tree()
            entries = list(tree)
            for e in entries[i::4]:
                assert repo.read(e.datum, verify=True)  # (its bytes checked against its id)
            assert len(repo.manifest(tree)) == len(entries)
            rounds += 1
        return rounds

    with ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(read, i) for i in range(4)]
        try:
            for n in range(6):
                (work / f"new{n}.bin").write_bytes(os.urandom(500))
                (work / f"f{n:02d}.bin").unlink()
                datarepo_cli("add", ".")
                datarepo_cli("commit", "-m", f"change {n}")
                if n % 2:
                    datarepo_cli("repack")
                    datarepo_cli("gc")
        finally:
            stop.set()
        assert all(f.result() > 0 for f in readers)
    assert sorted(e.key for e in repo.tree()) == sorted(p.stem for p in work.glob("*.bin"))
    repo.close()


def test_close_from_any_thread_and_use_after_it(tmp_path: Path) -> None:
    """close() from a thread other than the one that opened the cache (raised
    sqlite3.ProgrammingError), twice, and after the with block: a later read opens the
    cache again."""
    samples = labelled(20)
    make_repo(tmp_path, samples)
    repo = datarepo.open(tmp_path)
    entry = next(iter(repo.tree()))
    assert repo.read(entry.datum) == samples[entry.key]
    in_threads(1, lambda i: repo.close())
    repo.close()
    assert in_threads(3, lambda i: repo.read(entry.datum)) == [samples[entry.key]] * 3
    in_threads(1, lambda i: repo.close())
    assert repo.read(entry.datum) == samples[entry.key]
    with datarepo.open(tmp_path) as again:
        again.read(entry.datum)
    assert again.read(entry.datum) == samples[entry.key] and len(again.tree()) == 20
    again.close()
    repo.close()


def test_what_holds_a_closed_cache_gets_one_clear_error(tmp_path: Path) -> None:
    make_repo(tmp_path, labelled(20))
    repo = datarepo.open(tmp_path)
    datum = next(iter(repo.tree())).datum
    index = repo.index
    repo.close()
    for use in (lambda: index.locations.locate(datum), lambda: in_threads(1, lambda i: index.locations.locate(datum))):
        with pytest.raises(ClosedError, match="the repository was closed"):
            use()
    assert repo.read(datum)  # (the Repo opens it again)
    repo.close()


CLOSING = textwrap.dedent('''
    import sys, threading
    import datarepo
    from datarepo.errors import ClosedError
    sys.setswitchinterval(1e-6)
    repo = datarepo.open(sys.argv[1])
    datums = [e.datum for e in repo.tree()]
    stop, counts, other = threading.Event(), [0, 0], []
    def read():
        while not stop.is_set():
            for d in datums:
                try:
                    repo.read(d)
                    counts[0] += 1
                except ClosedError:
                    counts[1] += 1
                except BaseException as e:
                    other.append(repr(e))
    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(300):
        repo.close()
        repo.read(datums[0])
    stop.set()
    for t in threads:
        t.join()
    print(counts[0] > 0, other[:3])
''')


def test_closed_while_threads_read_each_read_gives_its_bytes_or_closed_error(tmp_path: Path) -> None:
    """close() again and again while four threads read: each read gives the datum or
    ClosedError. (Closed from another thread under a running statement, sqlite3 crashed the
    process: it runs in a process of its own.)"""
    make_repo(tmp_path, labelled(50))
    done = subprocess.run([sys.executable, "-c", CLOSING, str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=600)
    assert (done.returncode, done.stdout) == (0, "True []\n"), done.stderr[-2000:]


def test_threads_that_come_and_go_leave_no_connection_open(tmp_path: Path) -> None:
    """A thread a request (a threading web server): each thread's connection is closed as
    it ends, not left to a collection of cycles."""
    make_repo(tmp_path, labelled(20))
    repo = datarepo.open(tmp_path)
    datum = next(iter(repo.tree())).datum
    repo.read(datum)
    gc.collect()
    before = open_fds()
    read: list[dict[str, bytes]] = []
    gc.disable()
    try:
        for _ in range(200):
            thread = threading.Thread(target=lambda: read.append(repo.read(datum)))
            thread.start()
            thread.join()
        assert open_fds() <= before + 4
        assert len(read) == 200
    finally:
        gc.enable()
    repo.close()


MANY_OPENS = textwrap.dedent('''
    import resource, sys
    import datarepo
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    datum = None
    for i in range(2000):
        repo = datarepo.open(sys.argv[1])
        datum = datum or next(iter(repo.tree())).datum
        assert repo.read(datum)
    print("read", i + 1)
''')


def test_two_thousand_opens_without_a_close_keep_within_128_files(tmp_path: Path) -> None:
    make_repo(tmp_path, labelled(20))
    done = subprocess.run([sys.executable, "-c", MANY_OPENS, str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=600)
    assert (done.returncode, done.stdout) == (0, "read 2000\n"), done.stderr[-2000:]


def test_a_repo_pickles_as_what_opens_it_again(tmp_path: Path) -> None:
    """A Repo whose cache is open (pickling raised TypeError), or whose lock is held, is
    unpickled as the same repository opened afresh; a tree pickles with its store."""
    samples = labelled(20)
    make_repo(tmp_path / "work", samples)
    Repo.init(tmp_path / "bare", bare=True).close()
    add_commit(tmp_path / "bare", samples, "bare")
    for repo in (datarepo.open(tmp_path / "work"), datarepo.open(tmp_path / "bare")):
        entry = next(iter(repo.tree()))
        repo.read(entry.datum)
        with repo.lock:
            copy = pickle.loads(pickle.dumps(repo))
        assert (copy.dotdir, copy.worktree) == (repo.dotdir, repo.worktree)
        assert copy.read(entry.datum) == samples[entry.key]
        with copy.lock:  # (not held by the copy)
            pass
        tree = pickle.loads(pickle.dumps(repo.tree()))
        assert list(tree) == list(repo.tree())
        copy.close()
        repo.close()


def test_a_repo_dropped_without_a_close_leaves_no_warning_and_no_file(tmp_path: Path) -> None:
    make_repo(tmp_path, labelled(20))
    before = sorted(p.name for p in tmp_path.joinpath(".datarepo").iterdir())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(50):
            repos = [datarepo.open(tmp_path)]
            entries = list(repos[0].tree())
            in_threads(2, lambda i: repos[0].read(entries[i].datum))
            repos.clear()
        gc.collect()
    assert [str(w.message) for w in caught] == []
    after = sorted(p.name for p in tmp_path.joinpath(".datarepo").iterdir() if not p.name.startswith("index.sqlite-"))
    assert after == before


def test_errors_from_threads_are_datarepo_errors(tmp_path: Path) -> None:
    """A missing datum read from a thread pool is the same one clear error as in the main thread."""
    make_repo(tmp_path, labelled(5))
    repo = datarepo.open(tmp_path)
    errors = in_threads(3, lambda i: _error_of(lambda: repo.read("0" * 32)))
    assert [type(e).__name__ for e in errors] == ["ObjectNotFoundError"] * 3
    assert all(isinstance(e, DataRepoError) for e in errors)
    repo.close()


def _error_of(fn: Callable[[], object]) -> BaseException | None:
    try:
        fn()
    except BaseException as e:  # (returned for the test to look at)
        return e
    return None


def test_a_repository_read_from_its_url_reads_in_threads_and_pickles(tmp_path: Path, worktree: Path, cli: Any) -> None:
    for i in range(40):
        (worktree / f"f{i:02d}.bin").write_bytes(os.urandom(200 + i))
    cli("init", "--shard-size", "4K")
    cli("add", ".")
    cli("commit", "-m", "first")
    cli("remote", "add", "origin", f"file://{tmp_path / 'remote'}")
    cli("push", "-r", "origin")
    repo = datarepo.open(f"file://{tmp_path / 'remote'}")
    entries = list(repo.tree())
    assert len(entries) == 40
    got = in_threads(4, lambda i: [repo.read(e.datum, verify=True)["bin"] for e in entries])
    assert got == [[(worktree / f"{e.key}.bin").read_bytes() for e in entries]] * 4
    copy = pickle.loads(pickle.dumps(repo))
    assert (type(copy), copy.url, copy.cache) == (type(repo), repo.url, repo.cache)
    assert copy.read(entries[0].datum) == repo.read(entries[0].datum)
    in_threads(1, lambda i: repo.close())
    repo.close()
    assert repo.read(entries[0].datum)["bin"] == (worktree / f"{entries[0].key}.bin").read_bytes()
    copy.close()
    repo.close()


READ_ONLY = textwrap.dedent('''
    import gc, os, sys, tempfile
    from concurrent.futures import ThreadPoolExecutor
    import datarepo
    copies = lambda: sorted(n for n in os.listdir(tempfile.gettempdir()) if n.startswith("datarepo-index-"))
    for round in range(20):
        repo = datarepo.open(sys.argv[1])
        entries = list(repo.tree())
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda e: repo.read(e.datum, verify=True)["bin"], entries))
        assert repo.index.private and len(got) == len(entries) == 30
        if round % 2:
            repo.close()
        del repo
    gc.collect()
    print(len(copies()))
''')


def test_a_read_only_repository_reads_in_threads_and_leaves_no_private_copy(tmp_path: Path) -> None:
    """Another user's repository: its cache is a private copy, which every thread reads;
    a Repo closed, or dropped without a close, removes its copy."""
    from conftest import without_file_override
    from test_read_only import make_read_only, make_writable

    make_repo(tmp_path / "shared", labelled(30))
    (tmp_path / "tmp").mkdir()
    make_read_only(tmp_path / "shared")
    try:
        done = subprocess.run([sys.executable, "-c", READ_ONLY, str(tmp_path / "shared")], env={**ENV, "TMPDIR": str(tmp_path / "tmp")},
                              capture_output=True, text=True, timeout=600, preexec_fn=without_file_override)
    finally:
        make_writable(tmp_path / "shared")
    assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr[-2000:]
