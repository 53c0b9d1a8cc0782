"""DeviceLoader on a CUDA device: its copy bandwidth against a plain pinned
``.to(device, non_blocking=True)``, with and without GPU work to overlap.

    .venv/bin/python benchmarks/device.py                  # 64 batches of 256 x 3x224x224 uint8
    .venv/bin/python benchmarks/device.py --step-ms 0,2,5  # GPU work a batch, in milliseconds

The batches are made once, in host memory, before any timing: what is measured is the
trip to the device, not a dataset. Rows, each over the same batches, in turns:

* **plain .to**: the batches already pinned (as ``DataLoader(pin_memory=True)`` gives
  them), ``x.to(device, non_blocking=True)`` in the loop, then the step: the copy runs on
  the compute stream, so it waits for the step before it and the step waits for it;
* **DeviceLoader, pinned**: ``DeviceLoader(batches, device)`` over the same pinned
  batches: each copy on a side stream while the loop's step works on the batch before;
* **DeviceLoader, pageable**: over batches not pinned: DeviceLoader pins each first
  (a host copy) and then copies it;
* **plain .to, pageable**: ``x.to(device)`` of batches not pinned (a blocking copy).

The step is ``--step-ms`` of matrix products on the compute stream (calibrated first).
Each row's figure is the time from the first batch to the device being idle, and the
bandwidth is the batches' bytes over that time; with a step, the time left over after the
steps' own time shows what the copies added. Every moved batch is checked against its
host copy once (by its sum on both sides). Without a CUDA device the script says so and
stops (CI has none).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe  # noqa: E402
from datarepo.torch import DeviceLoader  # noqa: E402


def calibrate(device: torch.device, ms: float) -> Callable[[], None]:
    """A step of about ``ms`` milliseconds of GPU work on the current stream."""
    if ms <= 0:
        return lambda: None
    a = torch.randn(2048, 2048, device=device)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize(device)
    each = (time.perf_counter() - start) / 20 * 1000
    n = max(1, round(ms / each))

    def step() -> None:
        for _ in range(n):
            a @ a

    return step


def timed(batches: Iterable[torch.Tensor], step: Callable[[], None], device: torch.device, move: bool) -> float:
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for x in batches:
        if move:
            x = x.to(device, non_blocking=x.is_pinned())
        step()
        x.sum()  # (the loop uses the batch on the compute stream)
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--step-ms", default="0,5", help="comma-separated milliseconds of GPU work a batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    for line in describe(Path(__file__).resolve().parents[1], f"torch {torch.__version__}"):
        print(line)
    if not torch.cuda.is_available():
        print("no CUDA device here: DeviceLoader passes batches through unchanged on the CPU; nothing to measure")
        return
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device)}")
    pageable = [torch.randint(0, 256, (args.batch_size, 3, 224, 224), dtype=torch.uint8) for _ in range(args.batches)]
    pinned = [b.pin_memory() for b in pageable]
    size = sum(b.numel() for b in pageable)
    print(f"{args.batches} batches of {tuple(pageable[0].shape)} uint8: {size / 1e9:.2f} GB in all")
    for got, want in zip(DeviceLoader(pinned, device), pinned):
        assert int(got.sum()) == int(want.sum()), "a batch changed on its way to the device"
    for ms in (float(x) for x in args.step_ms.split(",")):
        step = calibrate(device, ms)
        steps_alone = min(timed([torch.empty(0, device=device)] * args.batches, step, device, False) for _ in range(3))
        rows = {
            "plain .to, pinned": lambda: timed(pinned, step, device, True),
            "DeviceLoader, pinned": lambda: timed(DeviceLoader(pinned, device), step, device, False),
            "DeviceLoader, pageable": lambda: timed(DeviceLoader(pageable, device), step, device, False),
            "plain .to, pageable": lambda: timed(pageable, step, device, True),
        }
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, fn in rows.items():
                times[name].append(fn())
        print(f"\nstep: {ms:g} ms of GPU work a batch ({steps_alone * 1000:.1f} ms for the {args.batches} steps alone)")
        print(f"{'row':<24} {'best s':>8} {'median s':>9} {'GB/s best':>10} {'GB/s median':>12} {'beyond the steps, ms':>21}")
        for name, runs in times.items():
            best, median = min(runs), statistics.median(runs)
            print(f"{name:<24} {best:>8.4f} {median:>9.4f} {size / best / 1e9:>10.2f} {size / median / 1e9:>12.2f} "
                  f"{(median - steps_alone) * 1000:>21.1f}")
        ratio = statistics.median(times["plain .to, pinned"]) / statistics.median(times["DeviceLoader, pinned"])
        print(f"DeviceLoader (pinned) against plain .to (pinned), medians: {ratio:.2f}x")


if __name__ == "__main__":
    main()
