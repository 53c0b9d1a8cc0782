"""push, clone and an incremental push/pull, to a local-path remote and to S3 on loopback
(moto's server, started here), against ``cp -r`` of the store as the floor.

    .venv/bin/python benchmarks/remotes.py                       # 20,000 samples, 10 commits
    .venv/bin/python benchmarks/remotes.py --samples 2000 --commits 200

A work tree of ``--samples`` samples (a 4-16 KiB ``.jpg`` of random bytes and a ``.cls``
label each) is committed in ``--commits`` commits of equal parts. Each row is one command
as a user runs it (a new process), timed once, with a warm page cache:

* ``push`` of the whole history to an empty remote, then ``clone`` of it;
* after 50 ``.jpg`` files were rewritten and committed: ``push`` (one shard and a few
  pages), and ``pull`` in the clone;
* a push with nothing new (the remote's listing, one read of its ref);
* for the local remote, ``cp -r`` of ``.datarepo/objects`` and ``shards``: what copying
  the same bytes costs;
* an epoch of ``DatumDataset`` (raw bytes, shuffled, batch 256, two DataLoader workers)
  read straight from the remote's URL without a clone, against the repository's own
  shards: the first (S3: each shard downloaded into the cache folder), and a second
  (from the cache; a ``file://`` remote is read in place both times).

moto's server is Python answering one request at a time on this machine, so its rows
show the number of requests more than any real S3 would; the local rows the bytes.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATAREPO = str(Path(sys.executable).with_name("datarepo"))


def sh(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return took, done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""


def make_repo(root: Path, samples: int, commits: int) -> None:
    rng = random.Random(0)
    root.mkdir()
    sh([DATAREPO, "init", "--shard-size", str(64 << 20)], root)
    per = max(1, samples // commits)
    for c in range(commits):
        for i in range(c * per, min(samples, (c + 1) * per)):
            base = root / "train" / ["cat", "dog"][i % 2] / f"{i:06d}"
            base.parent.mkdir(parents=True, exist_ok=True)
            base.with_suffix(".jpg").write_bytes(rng.randbytes(rng.randint(4096, 16384)))
            base.with_suffix(".cls").write_text(str(i % 2))
        sh([DATAREPO, "add", "."], root)
        sh([DATAREPO, "commit", "-m", f"part {c}"], root)


def change(root: Path, seed: int, n: int = 50) -> None:
    rng = random.Random(seed)
    jpgs = sorted(root.glob("train/*/*.jpg"))
    for p in rng.sample(jpgs, min(n, len(jpgs))):
        p.write_bytes(rng.randbytes(8192))
    sh([DATAREPO, "add", "."], root)
    sh([DATAREPO, "commit", "-m", "changed"], root)


def rows(name: str, work: Path, url: str, tmp: Path, env: dict[str, str], setup: list[list[str]]) -> None:
    for args in setup:
        sh([DATAREPO, *args], work, env)
    t, out = sh([DATAREPO, "push", "-r", name], work, env)
    print(f"{name:6} push (whole history)   {t:7.2f} s   {out}")
    t, out = sh([DATAREPO, "clone", url, f"clone-{name}"], tmp, env)
    print(f"{name:6} clone                  {t:7.2f} s   {out}")
    change(work, seed=len(name) + 1)
    t, out = sh([DATAREPO, "push", "-r", name], work, env)
    print(f"{name:6} push (50 changed)      {t:7.2f} s   {out}")
    t, out = sh([DATAREPO, "pull"], tmp / f"clone-{name}", env)
    print(f"{name:6} pull (50 changed)      {t:7.2f} s   {out}")
    t, out = sh([DATAREPO, "push", "-r", name], work, env)
    print(f"{name:6} push (nothing new)     {t:7.2f} s   {out}")


def epoch_rate(source: str, cache: str | None = None) -> float:
    """Samples a second of one epoch of raw bytes, shuffled, through a DataLoader of two
    workers (batch 256), read from a repository's path or a remote's URL."""
    import torch

    from datarepo.torch import DatumDataset

    ds = DatumDataset(source, prefix="train/", batch_size=256, seed=0, cache=cache)
    start = time.perf_counter()
    n = sum(len(b["__key__"]) for b in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2))
    return n / (time.perf_counter() - start)


def epochs(name: str, work: Path, url: str, tmp: Path) -> None:
    """Epochs read straight from the remote's URL (no clone), against the repository's own
    shards: with a kept cache folder, the first (each shard of a network remote downloaded
    into it) and the second (none downloaded)."""
    local = epoch_rate(str(work))
    cache = str(tmp / f"cache-{name}")
    first, second = epoch_rate(url, cache), epoch_rate(url, cache)
    print(f"{name:6} epoch from the URL     {first:7.0f} samples/s, again {second:.0f}  "
          f"(the repository's own shards: {local:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--commits", type=int, default=10)
    ap.add_argument("--no-s3", action="store_true", help="Only the local-path remote.")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="datarepo-remotes-") as t:
        tmp = Path(t)
        work = tmp / "work"
        start = time.perf_counter()
        make_repo(work, a.samples, a.commits)
        size = sum(p.stat().st_size for p in (work / ".datarepo").rglob("*") if p.is_file())
        print(f"{a.samples} samples in {a.commits} commits, {size / 1e6:.0f} MB in .datarepo "
              f"(made in {time.perf_counter() - start:.0f} s)")
        start = time.perf_counter()
        for sub in ("objects", "shards"):
            shutil.copytree(work / ".datarepo" / sub, tmp / "copy" / sub)
        print(f"local  cp -r objects shards    {time.perf_counter() - start:7.2f} s")
        env = dict(os.environ)
        rows("local", work, str(tmp / "store"), tmp, env, [["remote", "add", "local", str(tmp / "store")]])
        epochs("local", work, (tmp / "store").as_uri(), tmp)
        if a.no_s3:
            return
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line a request otherwise

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{port}"
            env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
                       AWS_DEFAULT_REGION="us-east-1")
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                              aws_secret_access_key="x")
            s3.create_bucket(Bucket="bench")
            rows("s3", work, "s3://bench/repo", tmp, env, [["remote", "add", "s3", "s3://bench/repo"]])
            os.environ.update(env)  # (the dataset reads in this process and its workers)
            epochs("s3", work, "s3://bench/repo", tmp)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
