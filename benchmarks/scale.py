"""The everyday commands on shapes of data the other benchmarks do not cover: where a
command's cost grows with the wrong thing (the length of the history, the number of refs
or shards, the width or depth of a folder, the number of members of a datum).

    .venv/bin/python benchmarks/scale.py                          # every shape, median of 3
    .venv/bin/python benchmarks/scale.py --shapes refs,history --repeat 1

Shapes (each built with the CLI, and the refs with the Python API, in a few seconds to a
couple of minutes):

* ``history``: ``--commits`` commits (default 3,000) made by ``ingest - --prefix s/
  --commit-every 1`` from JSON lines, so one small shard a commit;
* ``refs``: 50 commits, then ``--refs`` branches and as many tags (default 2,000 each);
* ``wide``: ``--files`` files in one folder (default 200,000);
* ``deep``: 200 files 30 folders deep, one datum of 500 members and a key of 200 characters.

Each row is one command as a user runs it (a new process), with a warm page cache: the
median of ``--repeat`` runs, each after its own untimed set-up (a fresh remote for a push,
say). ``loader`` is ``DatumDataset`` start-up and first batch (64) in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

DATAREPO = str(Path(sys.executable).with_name("datarepo"))


def dr(cwd: Path, *args: str, stdin: bytes | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run([DATAREPO, *args], cwd=cwd, input=stdin, capture_output=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"datarepo {' '.join(args)} failed in {cwd}:\n{done.stdout.decode()}{done.stderr.decode()}")
    return took


def lines(n: int) -> bytes:
    return "".join(json.dumps({"__key__": f"k{i}", "txt": f"v{i}"}) + "\n" for i in range(n)).encode()


def build_history(root: Path, a: argparse.Namespace) -> None:
    dr(root, "init")
    dr(root, "ingest", "-", "--prefix", "s/", "--commit-every", "1", stdin=lines(a.commits))


def build_refs(root: Path, a: argparse.Namespace) -> None:
    import datarepo

    build_history(root, argparse.Namespace(commits=50))
    with datarepo.open(root) as repo:
        head = repo.refs.read("HEAD")
        for i in range(a.refs):
            repo.refs.update(f"refs/heads/b{i}", head, expected=None, message="branch: created")
            repo.refs.update(f"refs/tags/t{i}", head, expected=None, message="tag")


def build_wide(root: Path, a: argparse.Namespace) -> None:
    (root / "w").mkdir(parents=True)
    for i in range(a.files):
        (root / "w" / f"f{i:06d}.txt").write_text(str(i))
    dr(root, "init")
    dr(root, "add", ".")
    dr(root, "commit", "-m", "wide")


def build_deep(root: Path, a: argparse.Namespace) -> None:
    deep = root.joinpath(*(f"d{i}" for i in range(30)))
    for j in range(200):
        (deep / f"x{j % 10}").mkdir(parents=True, exist_ok=True)
        (deep / f"x{j % 10}" / f"f{j}.txt").write_text(str(j))
    (root / "m").mkdir()
    for e in range(500):
        (root / "m" / f"one.e{e}").write_text(str(e))
    (root / "m" / ("L" * 200 + ".txt")).write_text("long")
    dr(root, "init")
    dr(root, "add", ".")
    dr(root, "commit", "-m", "deep")


BUILD = {"history": build_history, "refs": build_refs, "wide": build_wide, "deep": build_deep}
CAT = {"history": "HEAD:s/k7.txt", "refs": "HEAD:s/k7.txt", "wide": "HEAD:w/f000007.txt", "deep": "HEAD:m/one.e499"}


def first_batch(root: Path) -> float:
    from datarepo.torch import DatumDataset

    start = time.perf_counter()
    next(iter(DatumDataset(str(root), "HEAD", batch_size=64)))
    return time.perf_counter() - start


def rows(shape: str, root: Path, tmp: Path) -> list[tuple[str, Callable[[int], float]]]:
    """(label, run): ``run(i)`` does its untimed set-up, then times the command."""
    counter = iter(range(10**6))

    def fresh_remote() -> str:
        name = f"r{next(counter)}"
        (tmp / name).mkdir()
        dr(root, "remote", "add", name, str(tmp / name))
        return name

    def push_all(i: int) -> float:
        return dr(root, "push", "--all", "-r", fresh_remote())

    def fetch(i: int) -> float:
        name = fresh_remote()
        dr(root, "push", "--all", "-r", name)
        return dr(root, "fetch", "-r", name)

    def clone(i: int) -> float:
        name = fresh_remote()
        dr(root, "push", "--all", "-r", name)
        return dr(tmp, "clone", str(tmp / name), f"clone{i}-{name}")

    def add_one(i: int) -> float:
        (root / f"one{i}.txt").write_text(str(i))
        return dr(root, "add", f"one{i}.txt")

    def commit(i: int) -> float:
        (root / f"c{i}.txt").write_text(str(i))
        dr(root, "add", f"c{i}.txt")
        return dr(root, "commit", "-m", f"c{i}")

    def checkout(i: int) -> float:
        dr(root, "branch", f"co{i}", "HEAD~1")
        took = dr(root, "checkout", f"co{i}")
        dr(root, "checkout", "main")
        return took

    def simple(*args: str) -> Callable[[int], float]:
        return lambda i: dr(root, *args)

    return [
        ("status", simple("status")),
        ("add (one file)", add_one),
        ("commit", commit),
        ("log", simple("log")),
        ("log -n 1", simple("log", "-n", "1")),
        ("show", simple("show")),
        ("diff HEAD~1 HEAD", simple("diff", "HEAD~1", "HEAD")),
        ("ls", simple("ls")),
        ("cat", simple("cat", CAT[shape])),
        ("branch (list)", simple("branch")),
        ("tag (list)", simple("tag")),
        ("branch NAME", lambda i: dr(root, "branch", f"nb{i}")),
        ("checkout (HEAD~1 and back)", checkout),
        ("fsck", simple("fsck")),
        ("gc", simple("gc")),
        ("repack", simple("repack")),
        ("push --all (new remote)", push_all),
        ("fetch (all new refs)", fetch),
        ("clone", clone),
        ("loader first batch", lambda i: first_batch(root)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="history,refs,wide,deep")
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--refs", type=int, default=2000)
    ap.add_argument("--files", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="Comma-separated row labels to time (default: all).")
    a = ap.parse_args()
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    print(f"{'shape':8} {'command':28} {'median':>8}  runs")
    for shape in a.shapes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"scale-{shape}-") as t:
            tmp = Path(t)
            root = tmp / "repo"
            root.mkdir()
            start = time.perf_counter()
            BUILD[shape](root, a)
            print(f"{shape:8} {'(build)':28} {time.perf_counter() - start:7.2f}s")
            for label, run in rows(shape, root, tmp):
                if only and label not in only:
                    continue
                runs = [run(i) for i in range(a.repeat)]
                print(f"{shape:8} {label:28} {statistics.median(runs):7.2f}s  {' '.join(f'{r:.2f}' for r in runs)}", flush=True)
            shutil.rmtree(tmp / "repo", ignore_errors=True)
    os.sync()


if __name__ == "__main__":
    main()
