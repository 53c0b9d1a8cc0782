"""Peak memory (RSS) of the everyday commands at two sizes side by side, to see what grows
with the wrong thing: the size of one member, the number of datums, the length of a stream.

    .venv/bin/python benchmarks/memory.py                          # every shape
    .venv/bin/python benchmarks/memory.py --shapes member --large-member 4096

Shapes, each built twice (at its small and its large size) in a temporary folder:

* ``member``: one file of ``--small-member`` and ``--large-member`` MiB (default 64 and
  1,024; made sparse with ``truncate``, so only the repository's shards fill the disk)
  beside a small one, through add, commit, cat, checkout, export, repack, fsck, push,
  clone and ingest (of its folder and of a tar of it);
* ``datums``: ``--datums`` and 4x as many one-line files in 100 folders (default 20,000),
  added and committed, then a few files added, half of them changed, and the commands that
  read or move the whole repository;
* ``spout``: ``ingest - --commit-every 1000`` of ``--lines`` and 4x as many JSON lines
  (default 50,000): a long-lived stream, whose peak must not follow its length.

Each figure is the peak RSS of one ``datarepo`` process (``wait4``'s ``ru_maxrss``), in MiB;
``ratio`` is large over small. A Python process that has imported datarepo's CLI holds
about 20 MiB before it does anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

DATAREPO = str(Path(sys.executable).with_name("datarepo"))


def peak(cwd: Path, *args: str, stdin: bytes | None = None) -> float:
    """The peak RSS of ``datarepo ARGS`` run in ``cwd``, in MiB."""
    proc = subprocess.Popen([DATAREPO, *args], cwd=cwd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"datarepo {' '.join(args)} failed in {cwd}:\n{err.decode()}")
    return usage.ru_maxrss / 1024


def member_rows(root: Path, mib: int) -> dict[str, float]:
    w = root / "w"
    w.mkdir(parents=True)
    big = w / "big.bin"
    with open(big, "wb") as f:
        f.truncate(mib << 20)
    (w / "small.txt").write_text("x")
    rows = {}
    peak(w, "init")
    rows["add"] = peak(w, "add", ".")
    rows["commit"] = peak(w, "commit", "-m", "one")
    rows["status"] = peak(w, "status")
    rows["cat"] = peak(w, "cat", "HEAD:big.bin")
    with open(big, "r+b") as f:
        f.seek((mib << 20) - 1)
        f.write(b"y")
    peak(w, "add", ".")
    peak(w, "commit", "-m", "two")
    rows["diff HEAD~1 HEAD"] = peak(w, "diff", "HEAD~1", "HEAD")
    rows["checkout HEAD~1"] = peak(w, "checkout", "HEAD~1")
    peak(w, "checkout", "main")
    rows["export"] = peak(w, "export", "HEAD", str(root / "exported"))
    shutil.rmtree(root / "exported")
    rows["export --shards"] = peak(w, "export", "HEAD", str(root / "shards"), "--shards")
    shutil.rmtree(root / "shards")
    rows["repack"] = peak(w, "repack")
    rows["fsck"] = peak(w, "fsck")
    (root / "remote").mkdir()
    peak(w, "remote", "add", "o", str(root / "remote"))
    rows["push"] = peak(w, "push", "-r", "o")
    rows["clone"] = peak(root, "clone", str(root / "remote"), "clone")
    shutil.rmtree(root / "clone")
    (root / "src").mkdir()
    os.link(big, root / "src" / "x.bin")
    rows["ingest FOLDER"] = peak(w, "ingest", str(root / "src"), "--prefix", "folder/")
    subprocess.run(["tar", "cf", str(root / "src.tar"), "-C", str(root / "src"), "x.bin"], check=True)
    rows["ingest TAR"] = peak(w, "ingest", str(root / "src.tar"), "--prefix", "tar/")
    return rows


def datum_rows(root: Path, n: int) -> dict[str, float]:
    w = root / "w"
    for i in range(n):
        folder = w / f"d{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:07d}.txt").write_text(str(i))
    rows = {}
    peak(w, "init")
    rows["add . (all)"] = peak(w, "add", ".")
    rows["commit (all)"] = peak(w, "commit", "-m", "all")
    rows["status (nothing changed)"] = peak(w, "status")
    (w / "d00" / "new.txt").write_text("new")
    rows["status PATH (one new file)"] = peak(w, "status", "d00/new.txt")
    rows["add PATH (one new file)"] = peak(w, "add", "d00/new.txt")
    rows["commit (one file)"] = peak(w, "commit", "-m", "one")
    rows["ls"] = peak(w, "ls")
    rows["log"] = peak(w, "log")
    for i in range(0, n, 2):
        (w / f"d{i % 100:02d}" / f"f{i:07d}.txt").write_text(f"changed {i}")
    rows["status (half changed)"] = peak(w, "status")
    peak(w, "add", ".")
    peak(w, "commit", "-m", "half")
    rows["diff HEAD~2 HEAD (half)"] = peak(w, "diff", "HEAD~2", "HEAD")
    rows["checkout HEAD~2 (half)"] = peak(w, "checkout", "HEAD~2")
    peak(w, "checkout", "main")
    rows["export"] = peak(w, "export", "HEAD", str(root / "exported"))
    shutil.rmtree(root / "exported")
    rows["fsck"] = peak(w, "fsck")
    rows["gc"] = peak(w, "gc")
    rows["repack"] = peak(w, "repack")
    (root / "remote").mkdir()
    peak(w, "remote", "add", "o", str(root / "remote"))
    rows["push (all)"] = peak(w, "push", "-r", "o")
    rows["clone"] = peak(root, "clone", str(root / "remote"), "clone")
    (w / "d01" / "again.txt").write_text("again")
    peak(w, "add", "d01/again.txt")
    peak(w, "commit", "-m", "again")
    rows["push (one datum)"] = peak(w, "push", "-r", "o")
    rows["pull (one datum)"] = peak(root / "clone", "pull")
    return rows


def lines(n: int) -> bytes:
    return "".join(json.dumps({"__key__": f"k{i:08d}", "txt": f"v{i}"}) + "\n" for i in range(n)).encode()


def spout_rows(root: Path, n: int) -> dict[str, float]:
    root.mkdir(parents=True)
    peak(root, "init")
    return {"ingest - --commit-every 1000": peak(root, "ingest", "-", "--prefix", "s/", "--commit-every", "1000", stdin=lines(n))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="member,datums,spout")
    ap.add_argument("--small-member", type=int, default=64, metavar="MIB")
    ap.add_argument("--large-member", type=int, default=1024, metavar="MIB")
    ap.add_argument("--datums", type=int, default=20_000)
    ap.add_argument("--lines", type=int, default=50_000)
    a = ap.parse_args()
    shapes: dict[str, tuple[Callable[[Path, int], dict[str, float]], int, int, str]] = {
        "member": (member_rows, a.small_member, a.large_member, "MiB"),
        "datums": (datum_rows, a.datums, 4 * a.datums, "datums"),
        "spout": (spout_rows, a.lines, 4 * a.lines, "lines"),
    }
    for shape in a.shapes.split(","):
        build, small, large, unit = shapes[shape]
        with tempfile.TemporaryDirectory(prefix=f"memory-{shape}-") as tmp:
            at_small = build(Path(tmp, "small"), small)
            shutil.rmtree(Path(tmp, "small"))
            at_large = build(Path(tmp, "large"), large)
        head = f"{small:,} {unit}", f"{large:,} {unit}"
        print(f"\n{shape:7} {'command':30} {head[0]:>14} {head[1]:>14}  ratio")
        for label, before in at_small.items():
            after = at_large[label]
            print(f"{shape:7} {label:30} {before:10.1f} MiB {after:10.1f} MiB  {after / before:5.2f}", flush=True)


if __name__ == "__main__":
    main()
