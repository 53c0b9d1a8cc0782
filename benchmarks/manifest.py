"""The manifest of a large repository: time and peak memory.

    .venv/bin/python benchmarks/manifest.py                     # 1,000,000 datums
    .venv/bin/python benchmarks/manifest.py --datums 100000 --keep /tmp/m

Builds a repository of ``--datums`` one-member datums (a few bytes each) in
shards of ``--per-shard`` datums, written straight through ``ShardWriter``,
indexed by ``repo.sync_locations`` and committed with ``repo.commit`` (no
files, no ``add``), then measures in a
fresh process each: ``repo.manifest(repo.tree())`` (the whole tree) and
``repo.manifest(tree.select(prefix=...))`` (a tenth of it), best of
``--runs``. Peak memory is the process's maximum resident set size
(``ru_maxrss``, the whole process, and its growth while the manifest was built),
and tracemalloc's peak of Python (and numpy) allocations in a separate run. The
import of ``datarepo.manifest`` (numpy) comes first and is timed apart.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import xxhash

import datarepo
from datarepo.hashing import datum_id_of_digests
from datarepo.objects import TreeEntry
from datarepo.repo import Repo

CLASSES = 10


def key_of(i: int) -> str:
    return f"train/class{i % CLASSES:02d}/{i:07d}"


def build(path: Path, count: int, per_shard: int) -> None:
    """A repository of ``count`` datums; keys in key order fill the shards in turn."""
    repo = Repo.init(path)
    keys = sorted(key_of(i) for i in range(count))
    entries = {}
    with repo.lock:
        for start in range(0, count, per_shard):
            writer = repo.store.new_shard()
            for key in keys[start : start + per_shard]:
                data = key.encode()
                datum = datum_id_of_digests([("cls", xxhash.xxh3_128_digest(data))])
                writer.add(datum, [("cls", data)])
                entries[key] = TreeEntry(key, datum, len(data))
            tmp, index = writer.finish()
            repo.store.put_shard(tmp, index)
        repo.sync_locations()  # the location cache learns the new shards from their .idx
        repo.commit(entries, "base", parent=None)
    repo.close()


def measure(path: Path, prefix: str, trace: bool) -> dict[str, float]:
    """Runs in a fresh process: one manifest, its time and memory. The manifest's module
    (and numpy) is imported first, as a loader imports it once; that is timed apart."""
    start = time.perf_counter()
    importlib.import_module("datarepo.manifest")

    imported = time.perf_counter() - start
    if trace:
        import tracemalloc

        tracemalloc.start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with datarepo.open(path) as repo:
        start, cpu = time.perf_counter(), time.process_time()
        tree = repo.tree()
        manifest = repo.manifest(tree.select(prefix=prefix) if prefix else tree)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "seconds": seconds,
        "cpu": cpu,
        "import": imported,
        "datums": len(manifest),
        "shards": len(manifest.shards),
        "maxrss_mb": after / 1024,
        "growth_mb": (after - before) / 1024,
    }
    if trace:
        out["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    return out


def run_child(path: Path, prefix: str, trace: bool) -> dict[str, float]:
    args = [sys.executable, __file__, "--measure", str(path), "--prefix", prefix] + (["--trace"] if trace else [])
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datums", type=int, default=1_000_000)
    parser.add_argument("--per-shard", type=int, default=25_000, help="datums a shard (25,000 10 KiB samples fill 256 MiB)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build here (or reuse what is here) and keep it")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.prefix, args.trace)))
        return
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="datarepo-manifest-"))
    try:
        if not (workdir / ".datarepo").exists():
            workdir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            build(workdir, args.datums, args.per_shard)
            print(f"built {args.datums} datums in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        for label, prefix in (("whole tree", ""), ("prefix train/class03/", "train/class03/")):
            runs = [run_child(workdir, prefix, False) for _ in range(args.runs)]
            best = min(runs, key=lambda r: r["seconds"])
            median = sorted(r["seconds"] for r in runs)[len(runs) // 2]
            traced = run_child(workdir, prefix, True)
            print(
                f"manifest, {label}: {best['datums']} datums in {best['shards']} shards: "
                f"best {best['seconds']:.3f} s (cpu {best['cpu']:.3f} s, both threads), median {median:.3f} s, "
                f"of {', '.join(format(r['seconds'], '.3f') for r in runs)}; "
                f"peak RSS {max(r['maxrss_mb'] for r in runs):.0f} MB (+{max(r['growth_mb'] for r in runs):.0f} MB "
                f"while it was built); tracemalloc peak {traced['traced_peak_mb']:.0f} MB; "
                f"import of datarepo.manifest {best['import'] * 1000:.0f} ms apart"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
