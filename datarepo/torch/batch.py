"""Batches: samples (dicts of fields) collated into one dict of columns, in the worker, so
that a batch crosses to the training process as a few tensors and lists rather than as
samples one by one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from datarepo.torch.transport import shared

# Tensors up to this size cross from a worker as bytes in the batch's pickle: torch would
# hand each over in shared memory, through a file descriptor sent over a socket, which
# costs more than copying a few kilobytes (labels, positions; measured: two small tensors
# a batch halved the batches a second two workers delivered).
SMALL_TENSOR = 1 << 16

# A DataLoader worker hands a column of bytes over through shared memory (transport.py)
# from this many bytes in all; a smaller one goes in the batch's pickle.
SHARED_BYTES = 1 << 16


class Record(dict):  # type: ignore[type-arg]
    """A sample (a dict of fields) or a batch (a dict of columns). Through a
    multiprocessing queue (a DataLoader worker's hand-over) its small tensors travel as
    plain arrays (rebuilt as tensors on arrival; see SMALL_TENSOR), and a DataLoader
    worker's columns of bytes through shared memory (:mod:`datarepo.torch.transport`).
    Pickled otherwise, it is a plain dict. A DataLoader that batches samples keeps the
    type of the first: the batches of Records are Records.

    A batch rebuilt in the training process keeps its ``__index__`` tensor's numpy array
    as ``arrived`` (the tensor and the array, which share their memory), for
    :func:`position_range`, run every step: ``Tensor.numpy()`` there, out of the caches a
    training step leaves cold, was about half of what ``state_dict(after=batch)`` cost."""

    __slots__ = ("arrived",)

    def __getstate__(self) -> None:
        return None  # (pickled or copied, its items alone)


def _reduce(batch: Record) -> tuple[Any, ...]:
    """How a batch crosses a multiprocessing queue (registered with its pickler below)."""
    worker = get_worker_info() is not None
    return _rebuild, ({k: _packed(v, worker) for k, v in batch.items()},)


ForkingPickler.register(Record, _reduce)


class _Small:
    """A small tensor, packed as a numpy array for the trip."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def _packed(value: Any, worker: bool) -> Any:
    if isinstance(value, Column):
        value = value.items
    if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.nbytes <= SMALL_TENSOR:
        try:
            return _Small(value.numpy())
        except (TypeError, RuntimeError):  # a dtype numpy has not (bfloat16), or one that needs grad
            return value
    if worker and type(value) is list and value and all(type(v) is bytes for v in value) and sum(map(len, value)) >= SHARED_BYTES:
        return shared(value)
    return value


def _rebuild(columns: dict[str, Any]) -> Record:
    batch = Record({k: torch.from_numpy(v.array) if isinstance(v, _Small) else v for k, v in columns.items()})
    index = columns.get("__index__")
    if isinstance(index, _Small):
        batch.arrived = (batch["__index__"], index.array)
    return batch


class Column:
    """A list column of a batch on its way out of a DataLoader worker: not a Sequence, so
    that the DataLoader's ``default_convert`` passes it by instead of visiting every
    value (a quarter of a worker's time, measured); a plain list again on arrival."""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: Any) -> Any:
        return self.items[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


def for_the_queue(batch: Record) -> Record:
    """The batch with its lists wrapped as :class:`Column`: what a worker yields."""
    return Record({k: Column(v) if type(v) is list else v for k, v in batch.items()})


def collate(samples: list[dict[str, Any]], skipped: list[tuple[int, str]]) -> dict[str, Any]:
    """One dict of columns: tensors stacked (where their shapes agree), ints and floats as
    a tensor, numpy arrays stacked into a tensor, anything else (bytes, text, JSON values,
    images) as a list. ``__skipped__`` lists the (position, message) of the samples
    ``on_error="skip"`` left out of the batch. A field some samples lack is a list with
    None for them."""
    names: dict[str, None] = {}
    for s in samples:
        names.update(dict.fromkeys(s))
    batch = Record({name: column([s.get(name) for s in samples]) for name in names})
    batch.setdefault("__key__", [])
    batch.setdefault("__index__", torch.zeros(0, dtype=torch.int64))
    batch["__skipped__"] = skipped
    return batch


def columns(read: list[tuple[str, int, dict[str, Any]]], skipped: list[tuple[int, str]]) -> Record:
    """:func:`collate` of samples given as (key, position, fields), without making a dict
    a sample first."""
    first = read[0][2].keys() if read else {}.keys()
    names: dict[str, None] = dict.fromkeys(first)
    if not all(fields.keys() == first for _, _, fields in read):  # (datums have the same members, mostly)
        for _, _, fields in read:
            names.update(dict.fromkeys(fields))
    batch = Record(
        {
            "__key__": [k for k, _, _ in read],
            "__index__": torch.from_numpy(np.array([p for _, p, _ in read], dtype=np.int64)),
        }
    )
    fields = [f for _, _, f in read]
    for name in names:
        batch[name] = column([f.get(name) for f in fields])
    batch["__skipped__"] = skipped
    return batch


def column(values: list[Any]) -> Any:
    """A column of one field's values."""
    if not values:
        return values
    kinds = set(map(type, values))
    if len(kinds) != 1:
        return values
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(values) if len({v.shape for v in values}) == 1 else values
    if isinstance(first, np.ndarray):
        return torch.from_numpy(np.stack(values)) if len({v.shape for v in values}) == 1 and first.dtype != object else values
    if kinds <= {int}:  # (through numpy: torch.tensor of a list is several times slower)
        return torch.from_numpy(np.array(values, dtype=np.int64))
    if kinds <= {float}:
        return torch.from_numpy(np.array(values, dtype=np.float64))
    return values


def position_range(batch: Mapping[str, Any] | Any, step: int = 1) -> tuple[int, int] | None:
    """The first and last global positions a batch (or one sample) stands for: of its
    samples and of the samples skipped in it; None for anything else.

    Taken every step, on a batch just received: its positions are in order as the
    dataset yields them, so the first and the last are read, and the rest only where
    those two cannot be the ends (positions ``step`` apart, ``n`` of them, span at least
    ``(n - 1) * step``): a batch put in another order is still read right."""
    index = batch.get("__index__") if isinstance(batch, dict) or isinstance(batch, Mapping) else None
    if index is None:
        return None
    arrived = getattr(batch, "arrived", None)
    if arrived is not None and arrived[0] is index:
        index = arrived[1]
    elif isinstance(index, torch.Tensor):
        index = index.numpy() if index.is_cpu else index.cpu().numpy()
    found = index if isinstance(index, np.ndarray) and index.ndim == 1 else np.asarray(index, dtype=np.int64).reshape(-1)
    ends = None
    if len(found):
        lo, hi = int(found.item(0)), int(found.item(-1))  # (item: a Python number, without a numpy scalar)
        if hi < lo or (hi - lo) // step + 1 < len(found):
            lo, hi = int(found.min()), int(found.max())
        ends = (lo, hi)
    skipped = batch.get("__skipped__")
    if not skipped:
        return ends
    positions = [int(p) for p, *_ in skipped] + list(ends or ())
    return min(positions), max(positions)
