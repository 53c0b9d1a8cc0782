"""Pipelines: a full run, a re-run after a 1% change, a no-op run, lineage; beside a plain
``multiprocessing.Pool.map`` and ``dvc repro`` of the same transform.

    .venv/bin/python benchmarks/pipelines.py                    # 20,000 datums, ~1 ms each
    .venv/bin/python benchmarks/pipelines.py --executors process,ray
    .venv/bin/python benchmarks/pipelines.py --scale            # also the 1,000,000-datum rows

Every row runs the same transform (``work``: about 1 ms of CPU a datum, spinning on
``time.perf_counter``) over the same datums (``--datums`` one-member datums of ~100
bytes, in shards of the repository's size):

* **full run**: ``datarepo.pipeline.run.run`` (the driver ``datarepo run`` calls) on a
  fresh copy of the input repository, with each executor of ``--executors``;
* **Pool.map**: a ``multiprocessing.Pool`` of as many processes maps a function over
  runs of the input's datums (from ``repo.manifest``, four runs a process, as the
  pipeline's batches); each task reads its run from its shard with ``ShardReader``, applies ``work`` and writes the outputs with ``DatumWriter``; the
  parent adopts the shards and commits the outputs. No planning, lineage or run cache:
  the floor a pipeline run is held to;
* **1% changed**: 1% of the input datums rewritten (one commit), then a run: spread at
  random over the keys (every tree and lineage page is touched), and as a run of
  consecutive keys (a folder of new images: a few pages are);
* **no-op**: a run with nothing changed, through the API and through the CLI (a new
  process: interpreter start and imports included, bytecode cache on);
* **dvc repro**: the inputs as files, one DVC stage whose script maps ``work`` over all
  of them with a Pool of as many processes; the same 1% of the files changed, then
  ``dvc repro`` (DVC re-runs the whole stage);
* with ``--scale``: a repository of ``--scale-datums`` (1,000,000) datums, a pipeline
  with a trivial transform run once over it (timed, for the record), then a no-op run
  and ``lineage`` of one output key (API and CLI).

Each timed row is run ``--runs`` times; the table shows the median and the best.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import datarepo
from datarepo.errors import DataRepoError
from datarepo.repo import Repo

BIN = Path(sys.executable).parent
TRANSFORM = '''
import time

from datarepo import pipeline


def work(data: bytes) -> bytes:
    """About {ms} ms of CPU, then the bytes reversed."""
    end = time.perf_counter() + {seconds}
    while time.perf_counter() < end:
        pass
    return data[::-1]


@pipeline(input="raw/**", output="out/", version="1")
def spin(datum):
    return {{"txt": work(datum["txt"])}}
'''


def key_of(i: int) -> str:
    return f"raw/c{i % 10}/{i:07d}"


def text_of(i: int, salt: str = "") -> bytes:
    return f"sample {i}{salt} ".encode() * 6


def build(path: Path, count: int, ms: float) -> None:
    """A repository of ``count`` datums under raw/, and a pipelines folder with ``spin``."""
    path.mkdir(parents=True)
    Repo.init(path, shard_size=4 << 20).close()
    with datarepo.open(path) as repo, repo.lock:
        with repo.writer() as w:
            for i in sorted(range(count), key=key_of):
                w.put(key_of(i), {"txt": text_of(i)})
        repo.commit(w.entries, f"{count} datums")
    (path / "pipelines").mkdir()
    (path / "pipelines" / "spin.py").write_text(TRANSFORM.format(ms=ms, seconds=ms / 1000))


def change(path: Path, share: float, seed: int = 0, contiguous: bool = False) -> int:
    """Rewrites ``share`` of the datums (one commit): spread at random over the keys, or
    (``contiguous``) a run of consecutive keys; returns how many."""
    with datarepo.open(path) as repo, repo.lock:
        count = sum(1 for _ in repo.tree().select(prefix="raw/"))
        n = max(1, int(count * share))
        if contiguous:
            keys = sorted(range(count), key=key_of)
            start = random.Random(seed).randrange(count - n)
            chosen = keys[start : start + n]
        else:
            chosen = random.Random(seed).sample(range(count), n)
        with repo.writer() as w:
            for i in sorted(chosen, key=key_of):
                w.put(key_of(i), {"txt": text_of(i, f"-changed{seed}")})
        repo.commit(w.entries, f"change {len(chosen)}")
    return len(chosen)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_pipeline(path: Path, executor: str, workers: int) -> dict[str, int]:
    from datarepo.pipeline.run import Options, run

    with datarepo.open(path) as repo:
        result = run(repo, (), Options(executor, workers))
    p = result.pipelines[0]
    return {"processed": p.processed, "reused": p.reused, "failed": p.failed}


def cli(path: Path, *args: str) -> str:
    """Runs the ``datarepo`` command, with Python's bytecode cache on (as an installed
    package has it: without it every start compiles every module it imports)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([str(BIN / "datarepo"), *args], cwd=path, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"datarepo {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
    return proc.stdout


# --- the Pool.map floor --------------------------------------------------------------------------
_work: Callable[[bytes], bytes] | None = None


def pool_task(item: tuple[str, str, list[tuple[str, str, int, int]], int, str]) -> tuple[list, list]:  # type: ignore[type-arg]
    """One input shard: read, transform, write the outputs into new shards."""
    global _work
    from datarepo.hashing import datum_id, hash_bytes
    from datarepo.shardreader import DatumRange, ShardReader
    from datarepo.store import Store
    from datarepo.write import DatumWriter

    dotdir, shard, ranges, shard_size, module = item
    if _work is None:
        from datarepo.pipeline.spec import import_module

        _work = import_module(Path(module), "spin.py").work
    store = Store(Path(dotdir))
    writer = DatumWriter(store, shard_size)
    entries = []
    with store.open_shard(shard) as f:
        for key, members in ShardReader(f, [DatumRange(*r) for r in ranges], shard):
            data = _work(members["txt"])
            datum = datum_id({"txt": hash_bytes(data)})
            writer.write(datum, [("txt", data)])
            entries.append(("out/" + key[4:], datum, len(data)))
    return entries, writer.close()


def pool_run(path: Path, workers: int) -> int:
    import multiprocessing

    from datarepo.objects import TreeEntry
    from datarepo.write import adopt

    with datarepo.open(path) as repo, repo.lock:
        m = repo.manifest(repo.tree().select(prefix="raw/"))
        chunk = max(1, -(-len(m) // (workers * 4)))  # as many tasks as the pipeline has batches
        items = [(str(repo.dotdir), shard, [tuple(r) for r in ranges[i : i + chunk]], repo.config.shard_size,
                  str(path / "pipelines" / "spin.py"))
                 for shard in m.shards for ranges in [m.ranges(shard)] for i in range(0, len(ranges), chunk)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(pool_task, items, chunksize=1)
        changes = {}
        for entries, shards in results:
            adopt(repo, shards, set())
            changes.update((k, TreeEntry(k, d, n)) for k, d, n in entries)
        repo.commit(changes, "pool")
    return len(changes)


# --- dvc repro ---------------------------------------------------------------------------------
DVC_STAGE = '''
import multiprocessing, sys
from pathlib import Path

sys.path.insert(0, "pipelines")
from spin import work


def one(path):
    out = Path("out") / path.relative_to("raw")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(work(path.read_bytes()))


if __name__ == "__main__":
    files = sorted(Path("raw").rglob("*.txt"))
    with multiprocessing.get_context("fork").Pool({workers}) as pool:
        pool.map(one, files, chunksize=64)
'''


def dvc_setup(path: Path, count: int, workers: int, ms: float) -> None:
    path.mkdir(parents=True)
    for i in range(count):
        f = path / f"{key_of(i)}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(text_of(i))
    (path / "pipelines").mkdir()
    (path / "pipelines" / "spin.py").write_text(TRANSFORM.format(ms=ms, seconds=ms / 1000))
    (path / "stage.py").write_text(DVC_STAGE.format(workers=workers))
    (path / "dvc.yaml").write_text(
        "stages:\n  spin:\n    cmd: python stage.py\n    deps:\n      - raw\n      - stage.py\n      - pipelines/spin.py\n"
        "    outs:\n      - out\n")
    dvc(path, "init", "--no-scm", "-q")
    dvc(path, "repro", "-q")


def dvc(path: Path, *args: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=path, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed: {proc.stdout}{proc.stderr}")


def dvc_change(path: Path, count: int, share: float, seed: int) -> None:
    for i in random.Random(seed).sample(range(count), max(1, int(count * share))):
        (path / f"{key_of(i)}.txt").write_bytes(text_of(i, f"-changed{seed}"))


# --- the table -------------------------------------------------------------------------------------
class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, list[float], str]] = []

    def add(self, name: str, times: list[float], note: str = "") -> None:
        self.rows.append((name, times, note))
        print(f"  {name}: median {fmt(statistics.median(times))}, best {fmt(min(times))}  {note}", flush=True)

    def median(self, name: str) -> float:
        return statistics.median(next(t for n, t, _ in self.rows if n == name))

    def show(self) -> None:
        width = max(len(n) for n, _, _ in self.rows)
        print(f"\n{'':{width}}  {'median':>10}  {'best':>10}  runs")
        for name, times, note in self.rows:
            print(f"{name:{width}}  {fmt(statistics.median(times)):>10}  {fmt(min(times)):>10}  {len(times):>4}  {note}")


def fmt(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datums", type=int, default=20_000)
    parser.add_argument("--ms", type=float, default=1.0, help="CPU milliseconds the transform spends a datum")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--executors", default="process", help="comma-separated: serial, process, ray")
    parser.add_argument("--no-dvc", action="store_true")
    parser.add_argument("--no-small", action="store_true", help="skip the --datums rows (with --scale)")
    parser.add_argument("--scale", action="store_true", help="also the 1,000,000-datum rows")
    parser.add_argument("--scale-datums", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="datarepo-bench-pipelines-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        table = Table()
        base = tmp / "base"
        if not base.exists():
            build(base, args.datums, args.ms)
        print(f"{args.datums} datums, transform ~{args.ms} ms, {args.workers} workers, {args.runs} runs; in {tmp}")
        if not args.no_small:
            measure_small(table, base, tmp, args)
        if not args.no_dvc:
            measure_dvc(table, tmp, args)
        if args.scale:
            measure_scale(table, tmp, args)
        table.show()
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


def measure_small(table: Table, base: Path, tmp: Path, args: argparse.Namespace) -> None:
    n, w = args.datums, args.workers
    pool = []
    for r in range(args.runs):
        shutil.rmtree(tmp / "pool", ignore_errors=True)
        shutil.copytree(base, tmp / "pool")
        pool.append(timed(lambda: pool_run(tmp / "pool", w)))
    table.add(f"Pool.map x{w} (read, transform, write, commit)", pool)
    for kind in args.executors.split(","):
        full, rerun, clustered, noop, noop_cli = [], [], [], [], []
        work = tmp / f"run-{kind}"
        try:
            if kind == "ray":  # a cluster is started once and joined by every run, as with --ray-address
                table.add(f"ray: start a local instance of {w} CPUs (once)", [timed(lambda: start_ray(w))])
            for r in range(args.runs):
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(base, work)
                full.append(timed(lambda: check(run_pipeline(work, kind, w), processed=n)))
                changed = change(work, 0.01, seed=r)
                rerun.append(timed(lambda: check(run_pipeline(work, kind, w), processed=changed)))
                changed = change(work, 0.01, seed=100 + r, contiguous=True)
                clustered.append(timed(lambda: check(run_pipeline(work, kind, w), processed=changed)))
                noop.append(timed(lambda: check(run_pipeline(work, kind, w), processed=0)))
                noop_cli.append(timed(lambda: cli(work, "run")))
        except (ImportError, DataRepoError) as e:
            print(f"  executor {kind}: not available here ({e})")
            continue
        ratio = statistics.median(full) / table.median(f"Pool.map x{w} (read, transform, write, commit)")
        local = f"datarepo run, process x{w}: full"
        versus = f", {statistics.median(full) / table.median(local):.2f}x process" if kind != "process" and any(n == local for n, _, _ in table.rows) else ""
        table.add(f"datarepo run, {kind} x{w}: full", full, f"{ratio:.2f}x Pool.map{versus}")
        table.add(f"datarepo run, {kind} x{w}: 1% changed ({n // 100})", rerun,
                  f"{100 * statistics.median(rerun) / statistics.median(full):.1f}% of full")
        table.add(f"datarepo run, {kind} x{w}: 1% changed, consecutive keys", clustered,
                  f"{100 * statistics.median(clustered) / statistics.median(full):.1f}% of full")
        table.add(f"datarepo run, {kind}: no-op (API)", noop, f"{1e6 * statistics.median(noop) / n:.2f} us a datum")
        table.add(f"datarepo run, {kind}: no-op (CLI process)", noop_cli, f"{1e6 * statistics.median(noop_cli) / n:.2f} us a datum")


def start_ray(workers: int) -> None:
    try:
        import ray
    except ImportError as e:
        raise DataRepoError(f"Ray is not installed ({e})") from None
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def check(counts: dict[str, int], processed: int) -> None:
    if counts["processed"] != processed or counts["failed"]:
        raise SystemExit(f"expected {processed} processed, got {counts}")


def measure_dvc(table: Table, tmp: Path, args: argparse.Namespace) -> None:
    path = tmp / "dvc"
    if not path.exists():
        dvc_setup(path, args.datums, args.workers, args.ms)
    times = []
    for r in range(args.runs):
        dvc_change(path, args.datums, 0.01, seed=r)
        times.append(timed(lambda: dvc(path, "repro", "-q")))
    note = ""
    rows = [name for name, _, _ in table.rows if name.endswith(f"1% changed ({args.datums // 100})")]
    if rows:
        note = f"{statistics.median(times) / table.median(rows[0]):.0f}x datarepo's re-run"
    table.add("dvc repro, one stage, after the same 1% change", times, note)


def measure_scale(table: Table, tmp: Path, args: argparse.Namespace) -> None:
    n = args.scale_datums
    path = tmp / "scale"
    if not path.exists():
        build(path, n, 0.0)
        table.add(f"scale: build {n} datums, first run (trivial transform)",
                  [timed(lambda: check(run_pipeline(path, "process", args.workers), processed=n))])
    noop = [timed(lambda: check(run_pipeline(path, "process", args.workers), processed=0)) for _ in range(args.runs)]
    table.add(f"scale: no-op over {n} (API)", noop, f"{1e6 * statistics.median(noop) / n:.3f} us a datum")
    table.add(f"scale: no-op over {n} (CLI process)", [timed(lambda: cli(path, "run")) for _ in range(args.runs)])
    from datarepo.pipeline.query import upstream

    key = "out/" + key_of(n // 2)[4:]
    with datarepo.open(path) as repo:
        api = [timed(lambda: upstream(repo, key)) for _ in range(max(args.runs, 5))]
    table.add(f"scale: lineage of one key of {n} (API)", api)
    table.add(f"scale: lineage of one key of {n} (CLI process)", [timed(lambda: cli(path, "lineage", key)) for _ in range(args.runs)])


if __name__ == "__main__":
    main()
