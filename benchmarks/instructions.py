"""Instructions a first add spends in user space, counted by valgrind: a figure that does
not move with this VM's spells.

Wall-clock times of the same first add vary by 20% and more from one run to the next
here, which hides most changes to its Python work. ``valgrind --tool=callgrind`` counts
the instructions a process executes in user space instead: the same total, to a few
parts in 10,000, for the same code, files and environment, whatever else the machine
is doing. It does not count the kernel's work (opens, reads, writes, fsyncs), which
tar's time is made of, so it measures only the part datarepo can change.

    .venv/bin/python benchmarks/instructions.py                 # 5,000 samples
    .venv/bin/python benchmarks/instructions.py --samples 2000

The add runs in one process (``DATAREPO_WORKERS=1``: callgrind would count a forked
helper apart), under valgrind, about 20 s for 5,000 samples. The script prints the
instructions of the add and of an add in an empty work tree (start-up, imports and the
fixed steps), and their difference per datum.
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import make_samples  # noqa: E402  (the same samples as the ingest benchmark)

DATAREPO = [sys.executable, "-m", "datarepo.cli"]


def instructions(work: Path) -> int:
    """User-space instructions of one ``datarepo add .`` in a new repository at ``work``."""
    shutil.rmtree(work / ".datarepo", ignore_errors=True)
    subprocess.run([*DATAREPO, "init"], cwd=work, check=True, capture_output=True)
    out = work.parent / "callgrind.out"
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *DATAREPO, "add", "."],
        cwd=work, env={**os.environ, "DATAREPO_WORKERS": "1"}, capture_output=True, text=True, check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    # As in the ingest benchmark: modules compiled once, not at every start.
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "datarepo", quiet=1)
    with tempfile.TemporaryDirectory(prefix="datarepo-instr-") as tmp:
        empty, samples = Path(tmp, "empty"), Path(tmp, "samples")
        empty.mkdir()
        make_samples(samples, args.samples, args.seed)
        fixed, total = instructions(empty), instructions(samples)
    print(f"first add of {args.samples} samples, one process: {total / 1e6:,.0f} M instructions")
    print(f"an add of an empty work tree: {fixed / 1e6:,.0f} M instructions")
    print(f"per datum: {(total - fixed) / args.samples / 1e3:,.1f} k instructions")


if __name__ == "__main__":
    main()
