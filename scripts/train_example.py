"""A training run straight from a repository's shards: a small CNN trains on the images
under a prefix, is stopped mid-epoch and resumed from its checkpoint (on another number
of DataLoader workers), records its run, and a replay of the recorded run proves that it
reads the same samples in the same order, bit for bit.

    .venv/bin/python scripts/train_example.py REPO [--prefix train/] [--rev HEAD] [--remote URL]

With ``--remote``, the samples are read from the URL of a remote REPO was pushed to
(``s3://…``, ``file://…``), straight from object storage (each shard downloaded once into
a temporary cache folder); the run is recorded in REPO, and the replay from REPO's own
shards proves that the remote gave the same bytes in the same order.

The images (``.jpg``) are decoded to 32 x 32 in the DataLoader workers, the labels
(``.cls``) are ints. Exits non-zero if the replay differs.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterable
from typing import Any

import torch
import xxhash
from torch import nn
from torch.utils.data import DataLoader

import datarepo
from datarepo.repo import Repo
from datarepo.torch import DatumDataset, DeviceLoader

SIZE = 32
BATCH = 16
LR = 0.05


def model(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * (SIZE // 4) ** 2, classes),
    )  # fmt: skip


def dataset(repo: str | Repo, rev: str, prefix: str) -> DatumDataset:
    return DatumDataset(repo, rev=rev, prefix=prefix, decode={"jpg": ["rgb", SIZE], "cls": "int"}, batch_size=BATCH, seed=0)


def digest(batch: dict[str, Any]) -> str:
    """The batch's keys, images and labels, hashed: two equal digests are the same bytes."""
    h = xxhash.xxh3_64("\n".join(batch["__key__"]).encode())
    h.update(batch["jpg"].cpu().numpy().tobytes())
    h.update(batch["cls"].cpu().numpy().tobytes())
    return h.hexdigest()


def train(net: nn.Module, batches: Iterable[dict[str, Any]], steps: int | None) -> list[str]:
    """Trains on the batches (``steps`` of them at most) by plain SGD (torch.optim's
    first use costs more than this whole run); returns the batches' digests."""
    seen = []
    for batch in batches:
        loss = nn.functional.cross_entropy(net(batch["jpg"]), batch["cls"])
        net.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= LR * p.grad
        seen.append(digest(batch))
        if len(seen) % 4 == 0:
            print(f"   step {len(seen):3d}  loss {loss.item():.3f}")
        if steps is not None and len(seen) == steps:
            break
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo")
    parser.add_argument("--prefix", default="train/")
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--run", default="train-example", help="The name the run is recorded under.")
    parser.add_argument("--remote", metavar="URL", help="Read the samples from this remote's URL (REPO was pushed there).")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # A remote opened once: its datasets share one cache folder (each shard downloaded once).
    return run(args, datarepo.open(args.remote) if args.remote else args.repo, device)


def run(args: argparse.Namespace, source: str | Repo, device: str) -> int:
    ds = dataset(source, args.rev, args.prefix)
    only_labels = {"cls": "int", "jpg": None, "json": None}
    labels = DatumDataset(source, rev=args.rev, prefix=args.prefix, decode=only_labels, batch_size=256)
    classes = 1 + max(int(batch["cls"].max()) for batch in DataLoader(labels, batch_size=None))
    print(f"{ds.spec.count} samples under {args.prefix!r} at {ds.commit[:12]} of {args.remote or args.repo}, "
          f"{len(ds)} batches of {BATCH}, {classes} classes")
    net = model(classes).to(device)

    stop = len(ds) // 2
    print(f"-- epoch 0 on 2 workers, stopped after {stop} steps")
    first = train(net, DeviceLoader(DataLoader(ds, batch_size=None, num_workers=2), device), stop)
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "data": ds.state_dict()}, buf)  # our own checkpoint
    print(f"   checkpoint: data state {ds.state_dict()}")

    print("-- resumed from the checkpoint, in a fresh dataset, on 1 worker")
    checkpoint = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    resumed = dataset(source, args.rev, args.prefix)
    resumed.load_state_dict(checkpoint["data"])
    net.load_state_dict(checkpoint["model"])
    rest = train(net, DeviceLoader(DataLoader(resumed, batch_size=None, num_workers=1), device), None)

    with datarepo.open(args.repo) as repo:
        extra = {"script": "train_example.py", "steps": len(first) + len(rest)}
        oid = repo.record_run(args.run, resumed, extra=extra, force=True)
    print(f"-- recorded run {args.run!r} ({oid[:12]}): datarepo runs show {args.run} --keys")

    replay = [digest(b) for b in DataLoader(DatumDataset.from_run(args.repo, args.run), batch_size=None, num_workers=0)]
    same = replay == first + rest
    verdict = "the same samples in the same order, bit for bit" if same else "DIFFERENT"
    print(f"-- replay of the run: {len(replay)} batches, {verdict}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
