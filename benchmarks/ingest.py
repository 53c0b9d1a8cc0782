"""Ingest, status and commit benchmarks: datarepo against tar, git and DVC.

Run with the project's virtualenv::

    .venv/bin/python benchmarks/ingest.py                    # 50,000 samples (~500 MB)
    .venv/bin/python benchmarks/ingest.py --scale            # also the 1,000,000-datum repository
    .venv/bin/python benchmarks/ingest.py --samples 0 --scale --scale-datums 20000

The ingest part makes N samples (a 4-16 KiB ``.jpg`` of random bytes and a
``.cls`` label each, under ``train/<class>/``) and times, with a warm page
cache, on separate copies of the folder:

* the first ``datarepo add . && datarepo commit`` against ``tar cf``,
  ``dvc add`` and ``git add``;
* a no-op ``datarepo status`` against ``git status`` and ``dvc status``, and
  against ``git status`` again on a tree of 20,000 samples (``--status-sizes``);
* re-adding (``datarepo add .``, then also with the commit) after 50
  ``.jpg`` files were rewritten, against ``dvc add`` and against a no-op
  ``datarepo status``;
* ``datarepo --help``, and whether it imports torch or DVC;
* two in-process reference points: an ``os.scandir`` + stat walk, and a
  hand-written ustar writer that hashes every file and the tar with xxh3-128.

The scale part (``--scale``) builds a repository of ``--scale-datums`` tiny
datums through the Python API and times a commit that changes 10 keys and a
``diff`` of the two commits.

Progress goes to stderr; the tables go to stdout. Every command is a
subprocess timed by its wall clock; dirty pages are flushed (``sync``)
before each timed step so one tool's write-back does not slow the next, and
what a step wrote in its last run (a repository, a tar) is deleted before
it, not while it is timed.
Each figure is the best of 3 runs, or of 5 for the first add and the no-op
status, whose peers run in seconds. The runs of the figures a target compares
are taken in turns (tar, datarepo, tar, ...; the re-add and its no-op status
in the same round), so that a slow spell of a shared machine weighs on both;
every run is logged, and the medians of the turns are printed beside the bests.
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import machine  # (benchmarks/machine.py)
import xxhash
from machine import first_line

from datarepo.hashing import hash_bytes
from datarepo.objects import TreeEntry
from datarepo.porcelain.history import diff
from datarepo.repo import Repo
from datarepo.tree import read_root

BIN = Path(sys.executable).parent
DATAREPO = str(BIN / "datarepo")
DVC = str(BIN / "dvc")
CLASSES = 10
CHANGED_FILES = 50
CHANGED_KEYS = 10
RUNS = 3  # timings are the best of this many runs
TURNS = 5  # or of this many, taken in turns, for the first add and the no-op status against their peers
HELP_RUNS = 5
RACY_WAIT_S = 3.0
ENV = {
    **os.environ,
    "DVC_NO_ANALYTICS": "1",
    "DATAREPO_AUTHOR": "bench <bench@example.com>",
}
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# measuring ------------------------------------------------------------------


@dataclass
class Row:
    """One line of a result table: our figure, a peer's, and the target if any."""

    operation: str
    ours: float
    peer_label: str = ""
    peer: float | None = None
    target: str = ""
    met: bool | None = None
    unit: str = "s"


def run(cmd: list[str], cwd: Path) -> str:
    """Runs a command; on failure stops the benchmark with the command's stderr."""
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"benchmark: `{' '.join(cmd)}` failed in {cwd} (exit {done.returncode}):\n{done.stderr}")
    return done.stdout


def timed(*steps: tuple[list[str], Path]) -> float:
    """Flushes dirty pages, then returns the wall time of the commands run one after another."""
    os.sync()
    start = time.perf_counter()
    for cmd, cwd in steps:
        run(cmd, cwd)
    return time.perf_counter() - start


def best_of(n: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(n))


def in_turns(n: int, measures: dict[str, Callable[[], float]]) -> list[list[float]]:
    """``n`` runs of each measure, run in turns (a, b, a, b, ...): the speed of a shared VM
    comes in spells of a minute or more, and a target is a ratio of two of these. Every
    run is logged, so the spread behind each best is on record."""
    times: list[list[float]] = [[] for _ in measures]
    for _ in range(n):
        for runs, measure in zip(times, measures.values()):
            runs.append(measure())
    for name, runs in zip(measures, times):
        log(f"  {name}: " + ", ".join(f"{t:.3f}" for t in runs) + " s")
    return times


def clock(fn: Callable[[], object], setup: Callable[[], object] = lambda: None) -> float:
    setup()
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# the sample folder ------------------------------------------------------------


def make_samples(root: Path, count: int, seed: int) -> list[Path]:
    """Writes ``count`` samples under ``root/train/<class>/``; returns the ``.jpg`` paths."""
    rng = random.Random(seed)
    jpgs = []
    for cls in range(CLASSES):
        (root / "train" / f"class{cls:02d}").mkdir(parents=True)
    for i in range(count):
        cls = i % CLASSES
        stem = root / "train" / f"class{cls:02d}" / f"{i:06d}"
        jpg = stem.with_suffix(".jpg")
        jpg.write_bytes(rng.randbytes(rng.randint(4 << 10, 16 << 10)))
        stem.with_suffix(".cls").write_bytes(b"%d" % cls)
        jpgs.append(jpg)
    return jpgs


def walk_files(root: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """Yields (relative path, entry) for every regular file under ``root``, skipping dot-directories."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        for entry in os.scandir(root / rel_dir):
            rel = rel_dir + entry.name
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith("."):
                    stack.append(rel + "/")
            elif entry.is_file(follow_symlinks=False):
                yield rel, entry


def read_all(root: Path) -> int:
    """Reads every file once (to warm the page cache); returns the bytes read."""
    total = 0
    for _, entry in walk_files(root):
        with open(entry.path, "rb") as f:
            total += len(f.read())
    return total


def copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    run(["cp", "-a", f"{src}/.", str(dst)], src)


def rewrite(paths: list[Path], roots: list[Path], src: Path, rng: random.Random) -> None:
    """Replaces each file in ``paths`` (under ``src``) by the same new random bytes in every root.

    The old file is unlinked first, so a tool that linked it to its cache keeps its copy intact.
    """
    for path in paths:
        data = rng.randbytes(rng.randint(4 << 10, 16 << 10))
        for root in roots:
            target = root / path.relative_to(src)
            target.unlink()
            target.write_bytes(data)


def wait_until_not_racy(since: float) -> None:
    """Sleeps until files written before ``since`` are old enough for stat caches to trust."""
    left = since + RACY_WAIT_S - time.time()
    if left > 0:
        time.sleep(left)


# reference points -------------------------------------------------------------


def scandir_walk(root: Path) -> tuple[int, int]:
    """The floor of a status: list every file and stat it."""
    files = size = 0
    for _, entry in walk_files(root):
        files += 1
        size += entry.stat(follow_symlinks=False).st_size
    return files, size


def ustar_header(name: str, size: int) -> bytes:
    header = bytearray(512)
    for offset, value in (
        (0, name.encode()),
        (100, b"0000444\x00"),
        (108, b"0000000\x00"),
        (116, b"0000000\x00"),
        (124, b"%011o\x00" % size),
        (136, b"00000000000\x00"),
        (148, b" " * 8),
        (156, b"0"),
        (257, b"ustar\x0000"),
    ):
        header[offset : offset + len(value)] = value
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def ustar_xxh3(root: Path, out_path: Path) -> int:
    """The floor of a first add: one tar of every file, each file and the tar hashed with xxh3-128, fsync'ed."""
    tar_hash = xxhash.xxh3_128()
    member_hashes = []
    with open(out_path, "wb", buffering=1 << 20) as out:
        for rel, entry in walk_files(root):
            with open(entry.path, "rb") as f:
                data = f.read()
            member_hashes.append(xxhash.xxh3_128_hexdigest(data))
            for block in (ustar_header(rel, len(data)), data, bytes(-len(data) % 512)):
                tar_hash.update(block)
                out.write(block)
        out.write(bytes(1024))
        tar_hash.update(bytes(1024))
        out.flush()
        os.fsync(out.fileno())
    return len(member_hashes)


# the ingest benchmark --------------------------------------------------------


@dataclass
class Copies:
    """One copy of the sample folder per tool, so none sees another's metadata."""

    src: Path
    datarepo: Path
    git: Path
    dvc: Path  # the DVC project; the samples are its ``train/``

    @classmethod
    def make(cls, workdir: Path, samples: int, seed: int) -> tuple[Copies, list[Path]]:
        copies = cls(workdir / "src", workdir / "datarepo", workdir / "git", workdir / "dvc")
        log(f"writing {samples} samples to {copies.src}")
        jpgs = make_samples(copies.src, samples, seed)
        created = time.time()
        for dst in (copies.datarepo, copies.git, copies.dvc):
            log(f"copying to {dst}")
            copy_tree(copies.src, dst)
        os.sync()
        for root in (copies.src, copies.datarepo, copies.git, copies.dvc):
            log(f"warming the page cache: read {read_all(root) / 1e6:.0f} MB under {root}")
        wait_until_not_racy(created)
        return copies, jpgs


def reinit(root: Path, remove: tuple[str, ...], init: list[str]) -> None:
    """Throws away a tool's metadata in ``root`` and makes a fresh, empty repository."""
    for name in remove:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    run(init, root)


def first_add_once(root: Path, remove: tuple[str, ...], init: list[str], *steps: list[str]) -> Callable[[], float]:
    """A measure of one first add into a fresh repository (the last one is kept)."""

    def once() -> float:
        reinit(root, remove, init)
        return timed(*((cmd, root) for cmd in steps))

    return once


def removed(path: Path) -> Path:
    """Deletes the output a step wrote in its last run, before the step is timed: writing
    over a 511 MB tar first frees its blocks, which took `tar cf` 0.4-0.8 s more (1.26-1.68 s
    into a new file, 1.94-2.47 s over the old one, 5 pairs), as a first add's repository is
    deleted before it is timed (``reinit``)."""
    path.unlink(missing_ok=True)
    return path


def first_add(copies: Copies, workdir: Path) -> list[Row]:
    out = workdir / "reference.tar"
    log(f"first add, best of {TURNS} each, in turns: tar cf, datarepo add . && datarepo commit, ustar writer + xxh3-128 in Python")
    tar_runs, our_runs, ref_runs = in_turns(TURNS, {
        "tar cf": lambda: timed((["tar", "cf", str(removed(workdir / "out.tar")), "train"], copies.src)),
        "datarepo add + commit": first_add_once(
            copies.datarepo, (".datarepo",), [DATAREPO, "init"], [DATAREPO, "add", "."], [DATAREPO, "commit", "-m", "x"]
        ),
        "py ustar+xxh3": lambda: clock(lambda: ustar_xxh3(copies.src / "train", out), setup=lambda: removed(out)),
    })
    tar, ours, ref = min(tar_runs), min(our_runs), min(ref_runs)
    log("dvc add train")
    dvc = best_of(
        RUNS, first_add_once(copies.dvc, (".dvc", "train.dvc"), [DVC, "init", "--no-scm", "-q"], [DVC, "add", "-q", "train"])
    )
    log("git add .")
    git = best_of(RUNS, first_add_once(copies.git, (".git",), ["git", "init", "-q"], ["git", "add", "."]))
    return [
        Row("first add + commit", ours, "tar cf", tar, "<= 1.5x tar cf", ours <= 1.5 * tar),
        Row("first add + commit, median", median(our_runs), "tar cf, median", median(tar_runs)),
        Row("first add + commit", ours, "dvc add", dvc),
        Row("first add + commit", ours, "git add", git),
        Row("first add + commit", ours, "py ustar+xxh3 (fsync)", ref),
    ]


def noop_status(copies: Copies) -> list[Row]:
    log(f"no-op status, best of {TURNS} each, in turns")
    our_runs, git_runs, dvc_runs, walk_runs = in_turns(TURNS, {
        "datarepo status": lambda: timed(([DATAREPO, "status"], copies.datarepo)),
        "git status": lambda: timed((["git", "status"], copies.git)),
        "dvc status": lambda: timed(([DVC, "status", "-q"], copies.dvc)),
        "py scandir+stat walk": lambda: clock(lambda: scandir_walk(copies.src / "train")),
    })
    ours, git, dvc, walk = min(our_runs), min(git_runs), min(dvc_runs), min(walk_runs)
    return [
        Row("no-op status", ours, "git status", git, "<= 2x git status", ours <= 2 * git),
        Row("no-op status, median", median(our_runs), "git status, median", median(git_runs)),
        Row("no-op status", ours, "dvc status", dvc),
        Row("no-op status", ours, "py scandir+stat walk", walk),
    ]


def readd(copies: Copies, jpgs: list[Path], seed: int) -> list[Row]:
    """The best of RUNS rounds; each round rewrites another 50 files, re-adds them, commits,
    then times a no-op status, the target's yardstick, in the same spell of the machine.
    The target is the issue's "re-add": ``datarepo add .``, as ``dvc add`` is timed; the
    add and the commit together are reported beside it."""
    rng = random.Random(seed + 1)
    add, add_commit, status, dvc = [], [], [], []
    for round_ in range(RUNS):
        log(f"re-add round {round_ + 1}: rewriting {CHANGED_FILES} .jpg files in the datarepo and DVC copies")
        rewrite(rng.sample(jpgs, CHANGED_FILES), [copies.datarepo, copies.dvc], copies.src, rng)
        wait_until_not_racy(time.time())
        log("re-add: datarepo add ., datarepo commit, a no-op datarepo status, then dvc add train")
        add.append(timed(([DATAREPO, "add", "."], copies.datarepo)))
        add_commit.append(add[-1] + timed(([DATAREPO, "commit", "-m", "50"], copies.datarepo)))
        status.append(timed(([DATAREPO, "status"], copies.datarepo)))
        dvc.append(timed(([DVC, "add", "-q", "train"], copies.dvc)))
        log(f"  add {add[-1]:.3f} s, add + commit {add_commit[-1]:.3f} s, no-op status {status[-1]:.3f} s, dvc add {dvc[-1]:.3f} s")
    status_s = min(status)
    return [
        Row(f"re-add {CHANGED_FILES} changed", min(add), "dvc add", min(dvc)),
        Row(f"re-add {CHANGED_FILES} changed", min(add), "datarepo no-op status", status_s,
            "<= 1.5x no-op status", min(add) <= 1.5 * status_s),
        Row(f"re-add {CHANGED_FILES} changed, median", median(add), "no-op status, median", median(status)),
        Row(f"re-add {CHANGED_FILES} changed + commit", min(add_commit), "datarepo no-op status", status_s),
    ]


def status_at_size(workdir: Path, samples: int, seed: int) -> list[Row]:
    """A no-op status against ``git status`` on a tree of another size: the target holds at
    every size, and at small ones the start-up of each program weighs more."""
    datarepo_copy, git_copy = workdir / f"status-{samples}-datarepo", workdir / f"status-{samples}-git"
    log(f"status at {samples} samples: writing them, then a first add and commit in each copy")
    make_samples(datarepo_copy, samples, seed)
    created = time.time()
    copy_tree(datarepo_copy, git_copy)
    run([DATAREPO, "init"], datarepo_copy)
    run([DATAREPO, "add", "."], datarepo_copy)
    run([DATAREPO, "commit", "-m", "first"], datarepo_copy)
    run(["git", "init", "-q"], git_copy)
    run(["git", "add", "."], git_copy)
    run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-qm", "first"], git_copy)
    wait_until_not_racy(created)
    for root in (datarepo_copy, git_copy):  # each status saves what it saw: the timed ones find it
        run([DATAREPO, "status"] if root == datarepo_copy else ["git", "status"], root)
    log(f"no-op status at {samples} samples, best of {TURNS} each, in turns")
    ours, git = in_turns(TURNS, {
        "datarepo status": lambda: timed(([DATAREPO, "status"], datarepo_copy)),
        "git status": lambda: timed((["git", "status"], git_copy)),
    })
    label = f"no-op status, {samples} samples"
    return [
        Row(label, min(ours), "git status", min(git), "<= 2x git status", min(ours) <= 2 * min(git)),
        Row(f"{label}, median", median(ours), "git status, median", median(git)),
    ]


def cli_start(workdir: Path) -> tuple[list[Row], str]:
    log(f"datarepo --help, best of {HELP_RUNS}")
    ours = best_of(HELP_RUNS, lambda: timed(([DATAREPO, "--help"], workdir)))
    python = best_of(HELP_RUNS, lambda: timed(([sys.executable, "-c", "pass"], workdir)))
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "datarepo.cli", "--help"],
        cwd=workdir, env=ENV, capture_output=True, text=True, check=True,
    ).stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in trace.splitlines() if line.startswith("import time:")}
    heavy = sorted({m.split(".")[0] for m in modules} & {"torch", "dvc", "numpy", "webdataset"})
    note = f"imports {len(modules)} modules; heavy ones: {', '.join(heavy) or 'none (no torch, no dvc)'}"
    return [Row("datarepo --help", ours, "python -c pass", python, "< 0.15 s", ours < 0.15)], note


def bench_ingest(workdir: Path, samples: int, seed: int, status_sizes: list[int]) -> tuple[list[Row], list[str]]:
    copies, jpgs = Copies.make(workdir, samples, seed)
    rows = first_add(copies, workdir)
    rows += noop_status(copies)
    for size in status_sizes:
        rows += status_at_size(workdir, size, seed)
    rows += readd(copies, jpgs, seed)
    help_rows, note = cli_start(workdir)
    rows += help_rows
    size = sum(p.stat().st_size for p in jpgs) + samples
    return rows, [f"{samples} samples, {2 * samples} files, {size / 1e6:.0f} MB", f"datarepo --help {note}"]


# the scale benchmark ----------------------------------------------------------


def tree_usage(root: Path) -> tuple[int, int]:
    """(files, bytes) under a directory."""
    files = size = 0
    for _, entry in walk_files(root):
        files += 1
        size += entry.stat().st_size
    return files, size


def scale_key(i: int) -> str:
    return f"train/class{i % CLASSES:02d}/{i:07d}"


def store_datums(repo: Repo, items: list[tuple[str, bytes]]) -> dict[str, TreeEntry]:
    """Stores one-member datums (``key`` → ``.cls`` bytes); returns key → TreeEntry. Hold the lock."""
    with repo.writer() as writer:
        return {key: writer.put(key, {"cls": data}, {"cls": hash_bytes(data)}) for key, data in items}


def bench_scale(workdir: Path, count: int, seed: int) -> tuple[list[Row], list[str]]:
    path = workdir / "scale"
    objects = path / ".datarepo" / "objects"
    repo = Repo.init(path)
    log(f"scale: storing {count} datums through repo.writer()")
    start = time.perf_counter()
    with repo.lock:
        entries = store_datums(repo, [(scale_key(i), b"%d" % i) for i in range(count)])
        stored_s = time.perf_counter() - start
        log(f"scale: writing the first commit ({count} keys)")
        start = time.perf_counter()
        commit_a = repo.commit(entries, "base", parent=None)
        base_s = time.perf_counter() - start
    pages = len(read_root(repo.store, repo.read_commit(commit_a).tree).pages)

    rng = random.Random(seed)
    with repo.lock:
        changed = store_datums(repo, [(k, b"changed-%s" % k.encode()) for k in rng.sample(sorted(entries), CHANGED_KEYS)])
        log(f"scale: commit of {CHANGED_KEYS} changed keys (repo.commit)")
        before = tree_usage(objects)
        commit_s = clock(lambda: repo.commit(changed, f"change {CHANGED_KEYS} keys", parent=commit_a))
        after = tree_usage(objects)
    commit_b = repo.head()
    new_files, new_bytes = after[0] - before[0], after[1] - before[1]

    log(f"scale: staging {CHANGED_KEYS} more changed keys for `datarepo commit`")
    with repo.lock:
        staged = store_datums(repo, [(k, b"staged-%s" % k.encode()) for k in rng.sample(sorted(entries), CHANGED_KEYS)])
        with repo.index.transaction():
            repo.index.staging.stage(tuple(e) for e in staged.values())
    repo.close()
    cli_before = tree_usage(objects)
    cli_commit_s = timed(([DATAREPO, "commit", "-m", "staged"], path))
    cli_new_bytes = tree_usage(objects)[1] - cli_before[1]

    log(f"scale: diff A B, best of {RUNS}")
    repo = Repo.open(path)
    found = len(list(diff(repo, commit_a, commit_b)))
    if found != CHANGED_KEYS:
        sys.exit(f"benchmark: diff found {found} changed keys, expected {CHANGED_KEYS}")
    diff_api_s = best_of(RUNS, lambda: clock(lambda: list(diff(repo, commit_a, commit_b))))
    diff_cli_s = best_of(RUNS, lambda: timed(([DATAREPO, "diff", commit_a, commit_b], path)))
    repo.close()

    mib = 1 << 20
    rows = [
        Row(f"commit {CHANGED_KEYS} keys: new object bytes", new_bytes, target="< 1 MiB", met=new_bytes < mib, unit="B"),
        Row(f"commit {CHANGED_KEYS} keys: repo.commit", commit_s, target="< 0.5 s", met=commit_s < 0.5),
        Row(f"commit {CHANGED_KEYS} staged keys: CLI", cli_commit_s, target="< 0.5 s", met=cli_commit_s < 0.5),
        Row(f"commit {CHANGED_KEYS} staged keys: CLI object bytes", cli_new_bytes, target="< 1 MiB",
            met=cli_new_bytes < mib, unit="B"),
        Row("datarepo diff A B (CLI)", diff_cli_s, target="< 0.2 s", met=diff_cli_s < 0.2),
        Row("diff A B (porcelain.history.diff)", diff_api_s, target="< 0.2 s", met=diff_api_s < 0.2),
    ]
    notes = [
        f"{count} datums, {pages} tree pages; storing them took {stored_s:.1f} s, the first commit {base_s:.1f} s",
        f"the {CHANGED_KEYS}-key commit wrote {new_files} object files ({new_bytes} bytes)",
    ]
    return rows, notes


# output -----------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B":
        return f"{value / 1024:.1f} KiB"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def print_table(title: str, rows: list[Row], notes: list[str]) -> None:
    header = ("operation", "datarepo", "peer", "ratio", "target", "met")
    lines = [
        (
            r.operation,
            fmt(r.ours, r.unit),
            f"{r.peer_label}: {fmt(r.peer, r.unit)}" if r.peer is not None else "-",
            f"{r.ours / r.peer:.2f}x" if r.peer else "-",
            r.target or "-",
            "-" if r.met is None else "yes" if r.met else "MISSED",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *lines)) for i in range(len(header))]
    print(f"\n## {title}\n")
    for line in (header, tuple("-" * w for w in widths), *lines):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")
    for note in notes:
        print(f"- {note}")


def describe(repo_root: Path) -> list[str]:
    """The code and the machine the figures belong to."""
    tools = [first_line(["git", "--version"], repo_root, ENV), f"dvc {first_line([DVC, '--version'], repo_root, ENV)}",
             first_line(["tar", "--version"], repo_root, ENV)]
    return machine.describe(repo_root, ", ".join(tools))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50_000, help="samples to make (0 skips the ingest part)")
    parser.add_argument("--workdir", type=Path, help="where to work (default: a new temporary directory, removed after)")
    parser.add_argument("--scale", action="store_true", help="also benchmark a large repository built through the API")
    parser.add_argument("--scale-datums", type=int, default=1_000_000, help="datums in the --scale repository")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--status-sizes", type=int, nargs="*", default=[20_000],
                        help="sample counts of further trees whose no-op status is timed against git status")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    repo_root = Path(__file__).resolve().parents[1]
    workdir = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="datarepo-bench-"))
    if workdir.is_relative_to(repo_root):
        sys.exit(f"benchmark: the workdir must be outside the repository ({repo_root})")
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        sys.exit(f"benchmark: the workdir is not empty: {workdir}")
    log(f"working in {workdir}")
    # An installed package runs from bytecode; compile it here too, in case this
    # environment (PYTHONDONTWRITEBYTECODE) would otherwise compile it on every run.
    compileall.compile_dir(repo_root / "datarepo", quiet=1)
    print("# datarepo ingest benchmark\n\n" + "\n".join(f"- {line}" for line in describe(repo_root)))
    try:
        if args.samples:
            rows, notes = bench_ingest(workdir, args.samples, args.seed, args.status_sizes)
            print_table("ingest", rows, notes)
        if args.scale:
            rows, notes = bench_scale(workdir, args.scale_datums, args.seed)
            print_table(f"scale ({args.scale_datums} datums)", rows, notes)
        print("\n- load average at end (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
