"""The one write path: its executors, and the same results from every executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import RAY, age, shard_file, write_samples

from datarepo import executor as executors
from datarepo.executor import Executor, ProcessExecutor, SerialExecutor
from datarepo.porcelain.maintenance import fsck
from datarepo.rayexec import RayExecutor
from datarepo.repo import Repo
from datarepo.worktree import group, scan
from datarepo.write import store_files

DATAREPO = str(Path(sys.executable).parent / "datarepo")
EXECUTORS = {"serial": SerialExecutor, "processes": lambda: ProcessExecutor(2), "ray": lambda: RayExecutor(2)}


@pytest.fixture(params=["serial", "processes", pytest.param("ray", marks=RAY)])
def executor(request: pytest.FixtureRequest) -> Executor:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    made = EXECUTORS[request.param]()
    yield made
    made.close()


# --- the executor contract --------------------------------------------------------------------
def _double(n: int) -> tuple[int, int]:
    return n * 2, os.getpid()


def _fails_on_three(n: int) -> int:
    if n == 3:
        raise ValueError("three")
    return n


def _dies_in_a_worker(item: tuple[int, int]) -> int:
    n, driver = item
    if n % 2 and os.getpid() != driver:
        os.kill(os.getpid(), signal.SIGKILL)
    return n * 10


def test_map_gives_every_result_in_order(executor: Executor) -> None:
    results = list(executor.map(_double, range(20)))
    assert [r for r, _ in results] == [n * 2 for n in range(20)]
    pids = {pid for _, pid in results}
    assert (pids == {os.getpid()}) == isinstance(executor, SerialExecutor)


def test_an_error_in_an_item_reaches_the_caller_as_itself(executor: Executor) -> None:
    with pytest.raises(ValueError, match="three"):
        list(executor.map(_fails_on_three, range(6)))
    assert list(executor.map(_fails_on_three, [1, 2])) == [1, 2]  # the executor still works after it


def test_an_item_whose_worker_dies_is_run_by_the_driver(executor: Executor) -> None:
    items = [(n, os.getpid()) for n in range(5)]
    assert list(executor.map(_dies_in_a_worker, items)) == [n * 10 for n in range(5)]
    assert [r for r, _ in executor.map(_double, [5])] == [10]  # (on a new pool, where the old one broke)


def _lost(item: tuple[int, int]) -> int:
    return -item[0]


@pytest.mark.parametrize("kind", ["process", pytest.param("ray", marks=RAY)])
def test_an_item_whose_worker_dies_gives_what_lost_makes_of_it(kind: str, request: pytest.FixtureRequest) -> None:
    """A pipeline's batch that killed its worker (out of memory, say) must not run again in
    the driver: with ``lost``, the executor gives ``lost(item)`` for it instead."""
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    run = executors.open_executor(kind, 2, lost=_lost)
    try:
        items = [(n, os.getpid()) for n in range(5)]
        assert list(run.map(_dies_in_a_worker, items)) == [0, -1, 20, -3, 40]
    finally:
        run.close()


def _returns_a_stat(path: str) -> os.stat_result:
    return os.stat(path)


def _raises_a_foreign_error(n: int) -> int:
    import sqlite3

    raise sqlite3.OperationalError(f"no table {n}")


def test_worker_processes_hand_back_plain_data_only(tmp_path: Path) -> None:
    """What comes back from a worker is read as data: builtin values, arrays and
    datarepo's own records and errors. Anything else is refused, never built; an error of
    another kind comes back named, as a RuntimeError; a function crosses only by name."""
    import pickle

    pool = ProcessExecutor(2)
    try:
        with pytest.raises(pickle.UnpicklingError, match="os.stat_result is not plain data"):
            list(pool.map(_returns_a_stat, [str(tmp_path)]))
        with pytest.raises(RuntimeError, match="OperationalError: no table 7"):
            list(pool.map(_raises_a_foreign_error, [7]))
        with pytest.raises(TypeError, match="module-level functions"):
            list(pool.map(lambda n: n, [1]))
        assert [r for r, _ in pool.map(_double, [4, 5])] == [8, 10]  # still at work, on its two workers
        assert len({pid for _, pid in pool.map(_double, range(40))} - {os.getpid()}) <= 2  # none was lost to a refusal
    finally:
        pool.close()


def test_a_ray_cluster_that_cannot_be_reached_is_one_clear_error() -> None:
    from datarepo.errors import ExecutorUnavailableError

    with pytest.raises(ExecutorUnavailableError, match="cannot reach Ray at 127.0.0.1:9"):
        executors.open_executor("ray", 2, address="127.0.0.1:9")  # (nothing listens on the discard port)


def test_without_ray_installed_the_ray_executor_is_one_clear_error() -> None:
    code = (
        "import sys; sys.modules['ray'] = None  # what an import finds where Ray is not installed\n"
        "from datarepo.executor import open_executor\n"
        "open_executor('ray', 2)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    assert "ExecutorUnavailableError: the Ray executor needs Ray, which is not installed here" in done.stderr


def test_the_serial_executor_runs_an_item_only_when_its_result_is_asked_for() -> None:
    ran: list[int] = []
    results = SerialExecutor().map(lambda n: ran.append(n) or n, [1, 2, 3])
    assert ran == [] and next(results) == 1 and ran == [1]


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_a_bad_worker_count_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    from datarepo.errors import InvalidInputError

    monkeypatch.setenv("DATAREPO_WORKERS", raw)
    with pytest.raises(InvalidInputError, match="DATAREPO_WORKERS"):
        executors.worker_count()


# --- storing files: the same shards from every executor -----------------------------------------
def _store(path: Path, src: Path, executor: Executor, shard_size: int = 4096) -> tuple[Repo, dict[str, str]]:
    repo = Repo.init(path, bare=True, shard_size=shard_size)
    found = scan(src)
    members = group(sorted(found.names), "wds", [])
    with repo.lock:
        stored = store_files(repo, src, members, sorted(members), {}, {}, executor=executor)
    return repo, stored.datums


def _samples_with_twins(root: Path, n: int) -> tuple[dict[str, bytes], dict[str, str]]:
    """Samples, and copies of every seventh under ``twins/``: the same datums under keys far
    apart, which different batches store. Returns the files and each twin's original key."""
    files = write_samples(root, n)
    twins = {}
    for i in range(0, n, 7):
        key = f"train/{['cat', 'dog'][i % 2]}/{i:04d}"
        twins[f"twins/{i:04d}"] = key
        for ext in ("jpg", "cls"):
            (root / "twins").mkdir(exist_ok=True)
            (root / "twins" / f"{i:04d}.{ext}").write_bytes(files[f"{key}.{ext}"])
            files[f"twins/{i:04d}.{ext}"] = files[f"{key}.{ext}"]
    return files, twins


@RAY
def test_every_executor_stores_the_same_shards(tmp_path: Path, ray_cluster: object) -> None:
    src = tmp_path / "src"
    files, _ = _samples_with_twins(src, 60)
    results = {}
    for name, make in EXECUTORS.items():
        run = make()
        try:
            repo, datums = _store(tmp_path / name, src, run)
        finally:
            run.close()
        shards = sorted(repo.store.iter_shards())
        located = repo.index.db.execute("SELECT datum, shard, offset, length FROM location ORDER BY datum").fetchall()
        results[name] = (datums, shards, located)
        assert len(shards) > 3  # several batches, each with shards of its own
        assert fsck(repo).problems == []
        for key, datum in datums.items():
            members = repo.read(datum, verify=True)
            assert {f"{key}.{ext}": data for ext, data in members.items()} == {
                rel: data for rel, data in files.items() if rel.rsplit(".", 1)[0] == key
            }
    assert results["serial"] == results["processes"] == results["ray"]


def test_a_datum_two_batches_both_wrote_has_one_location(tmp_path: Path, executor: Executor) -> None:
    src = tmp_path / "src"
    _, twins = _samples_with_twins(src, 40)
    repo, datums = _store(tmp_path / "repo", src, executor, shard_size=2048)
    assert all(datums[twin] == datums[key] for twin, key in twins.items())
    held = {}  # datum → the shards whose index lists it
    for shard in repo.store.iter_shards():
        for loc in repo.store.read_index(shard).datums:
            held.setdefault(loc.datum, []).append(shard)
    for twin in twins:
        shard, _ = repo.locate(datums[twin])
        assert shard in held[datums[twin]]
        repo.read(datums[twin], verify=True)
    assert fsck(repo).problems == []


def test_of_a_datum_two_writers_both_published_the_first_adopted_copy_is_located(tmp_path: Path) -> None:
    from datarepo.hashing import datum_id, hash_bytes
    from datarepo.write import DatumWriter, adopt

    repo = Repo.init(tmp_path / "r", bare=True)
    shared, own = {"bin": b"shared"}, [{"bin": b"one"}, {"bin": b"two"}]
    ids = {name: datum_id({e: hash_bytes(d) for e, d in m.items()}) for name, m in (("shared", shared), ("one", own[0]), ("two", own[1]))}
    published = []
    for mine in own:  # two workers, each unaware of the other
        writer = DatumWriter(repo.store, 1 << 20)
        for members in (mine, shared):
            writer.write(ids["shared" if members is shared else ("one" if mine is own[0] else "two")], sorted(members.items()))
        published.extend(writer.close())
    assert len({s.oid for s in published}) == 2
    adopted: set[str] = set()
    with repo.lock:
        for shard in published:
            adopt(repo, [shard], adopted)
    assert repo.locate(ids["shared"])[0] == published[0].oid
    assert repo.locate(ids["two"])[0] == published[1].oid
    assert repo.read(ids["shared"], verify=True) == shared


def test_an_add_over_worker_processes_commits_what_a_serial_add_commits(tmp_path: Path) -> None:
    """Through the real program: a first add of over 32 MiB, over two worker processes
    (and again with every add spread), gives the commit a single process gives."""
    src = tmp_path / "src"
    for i in range(40):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"{i:03d}.bin").write_bytes(os.urandom(1 << 20))
        (src / f"d{i % 4}" / f"{i:03d}.txt").write_text(f"label {i}")
    age(src)
    trees = {}
    for workers, spread in (("1", ""), ("2", ""), ("2", "0")):
        work = tmp_path / f"w{workers}{spread}"
        subprocess.run(["cp", "-a", str(src), str(work)], check=True)
        env = {**os.environ, "DATAREPO_WORKERS": workers, "DATAREPO_PARALLEL_MIN_BYTES": spread or str(32 << 20)}
        env.setdefault("DATAREPO_TIME", "2026-01-01T00:00:00Z")
        for args in (["init", "--shard-size", "8M"], ["add", "."], ["commit", "-m", "x"]):
            subprocess.run([DATAREPO, *args], cwd=work, env=env, check=True, capture_output=True)
        repo = Repo.open(work)
        trees[(workers, spread)] = (repo.read_commit(repo.head()).tree, tuple(sorted(repo.store.iter_shards())))
        assert fsck(repo).problems == []
    assert len(set(trees.values())) == 1


def _committed_samples(worktree: Path, cli, n: int) -> dict[str, bytes]:
    """``n`` samples, old enough to be trusted, added and committed; returns their files."""
    files = write_samples(worktree, n)
    age(worktree)
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "first")
    return files


def _six_samples_in_one_shard(worktree: Path, cli) -> tuple[dict[str, bytes], Repo, str]:
    """Six samples added and committed: their files, the repository and its one shard."""
    files = _committed_samples(worktree, cli, 6)
    repo = Repo.open(worktree)
    (shard,) = list(repo.store.iter_shards())
    return files, repo, shard


def test_re_adding_restores_a_datum_whose_shard_is_gone(worktree: Path, cli) -> None:
    """``add`` of the same content stores a datum again when its shard is missing: the way
    to repair a repository from the original files."""
    _, repo, shard = _six_samples_in_one_shard(worktree, cli)
    repo.store.delete_shard(shard)
    out = cli("add", ".").output
    assert "stored 6 new datums" in out
    cli("cat", "train/cat/0000.cls")
    assert fsck(Repo.open(worktree)).problems == []


def test_a_scan_over_worker_processes_equals_a_serial_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datarepo import worktree

    monkeypatch.setattr(worktree, "PARALLEL_STAT_MIN", 300)  # (20,000 files, as a status spreads them, take long to make)
    root = tmp_path / "many"
    for d in range(7):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(worktree.PARALLEL_STAT_MIN // 7 + 3):
            (root / f"d{d}" / f"{i}.x").write_bytes(b"x" * (i % 5))
    monkeypatch.setenv("DATAREPO_WORKERS", "1")
    serial = scan(root)
    monkeypatch.setenv("DATAREPO_WORKERS", "3")
    spread = scan(root)
    assert spread.names == serial.names and spread.stats == serial.stats and not spread.errors


def test_a_pool_works_in_a_process_with_over_a_thousand_descriptors_open() -> None:
    """(``select`` refuses descriptors numbered 1024 or more: a long-lived process that has
    opened many files must still get its results.)"""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    pool = ProcessExecutor(2)
    try:
        assert [r for r, _ in pool.map(_double, range(5))] == [0, 2, 4, 6, 8]
    finally:
        pool.close()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_closing_a_pool_ends_its_workers_while_a_later_child_holds_their_pipes() -> None:
    """A process forked after the pool's workers (a DataLoader worker, any fork) inherits
    the pipes that hand them orders: closing the pool still ends them, rather than waiting
    as long as that process lives."""
    pool = ProcessExecutor(2)
    results = list(pool.map(_double, range(4)))
    assert [r for r, _ in results] == [0, 2, 4, 6]
    workers = {pid for _, pid in results} - {os.getpid()}
    assert workers
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # holds every descriptor it inherited until the test lets it go
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    try:
        done = threading.Event()
        closer = threading.Thread(target=lambda: (pool.close(), done.set()), daemon=True)
        closer.start()
        closer.join(60)  # (a guard against a hang, not a timing: it ends in milliseconds)
        assert done.is_set(), "close() waited on workers whose pipes another process holds"
        for pid in workers:
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaped
    finally:
        os.close(write)
        os.waitpid(child, 0)


def test_content_already_stored_is_not_stored_again_by_worker_processes(worktree: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-add over worker processes: of its changed files, those whose content some shard
    holds already (a copy, a file put back as it was) are hashed, found stored and not
    written again; the rest are stored, once."""
    files = _committed_samples(worktree, cli, 20)
    monkeypatch.setenv("DATAREPO_WORKERS", "2")
    monkeypatch.setenv("DATAREPO_PARALLEL_MIN_BYTES", "0")
    for i in range(4):  # copies of stored samples under new keys
        for ext in ("jpg", "cls"):
            (worktree / "copies").mkdir(exist_ok=True)
            (worktree / "copies" / f"{i}.{ext}").write_bytes(files[f"train/{['cat', 'dog'][i % 2]}/{i:04d}.{ext}"])
    (worktree / "new.bin").write_bytes(b"never stored")
    out = cli("add", ".").output
    assert "staged 5 added" in out and "stored 1 new datums" in out
    cli("commit", "-m", "copies")
    assert fsck(Repo.open(worktree)).problems == []


def test_re_adding_restores_datums_whose_shard_fsck_found_damaged(worktree: Path, cli) -> None:
    files, repo, shard = _six_samples_in_one_shard(worktree, cli)
    path = shard_file(repo, shard)
    raw = bytearray(path.read_bytes())
    raw[repo.store.read_index(shard).datums[0].members[0].offset] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(raw))
    out = cli("fsck", ok=False).output
    assert "is damaged and is the only copy of 6 reachable datums" in out
    assert "stored 6 new datums" in cli("add", ".").output  # those of the shard that failed its check
    for rel, data in files.items():
        assert cli("cat", rel).stdout_bytes == data
    assert "error" not in cli("fsck").output  # the same datums in the same order: the same shard, whole again
    assert "stored 0 new datums" in cli("add", ".").output  # its copies count as stored again


def test_gc_retires_a_damaged_shard_once_its_datums_are_stored_again(worktree: Path, cli) -> None:
    files, repo, shard = _six_samples_in_one_shard(worktree, cli)
    path = shard_file(repo, shard)
    raw = bytearray(path.read_bytes())
    raw[repo.store.read_index(shard).datums[-1].members[0].offset] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(raw))
    cli("fsck", ok=False)
    write_samples(worktree / "more", 1, seed=1)
    assert "stored 7 new datums" in cli("add", ".").output  # six again, beside a new one: another shard
    cli("commit", "-m", "one more")
    assert json.loads(cli("gc", "--json").output)["shards"] == 1  # the damaged one: nothing needs it now
    assert "error" not in cli("fsck").output
    for rel, data in files.items():
        assert cli("cat", rel).stdout_bytes == data
