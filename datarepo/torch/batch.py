"""Batches: samples (dicts of fields) collated into one dict of columns, in the worker, so
that a batch crosses to the training process as a few tensors and lists rather than as
samples one by one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def collate(samples: list[dict[str, Any]], skipped: list[tuple[int, str]]) -> dict[str, Any]:
    """One dict of columns: tensors stacked (where their shapes agree), ints and floats as
    a tensor, numpy arrays stacked into a tensor, anything else (bytes, text, JSON values,
    images) as a list. ``__skipped__`` lists the (position, message) of the samples
    ``on_error="skip"`` left out of the batch. A field some samples lack is a list with
    None for them."""
    names: dict[str, None] = {}
    for s in samples:
        names.update(dict.fromkeys(s))
    batch = {name: column([s.get(name) for s in samples]) for name in names}
    batch.setdefault("__key__", [])
    batch.setdefault("__index__", torch.zeros(0, dtype=torch.int64))
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
    if kinds <= {int}:
        return torch.tensor(values, dtype=torch.int64)
    if kinds <= {float}:
        return torch.tensor(values, dtype=torch.float64)
    return values


def positions_of(batch: Mapping[str, Any] | Any) -> list[int]:
    """The global positions a batch (or one sample) stands for: its samples' and those of
    the samples skipped in it."""
    if not isinstance(batch, Mapping) or "__index__" not in batch:
        return []
    index = batch["__index__"]
    if isinstance(index, torch.Tensor):
        found = index.reshape(-1).tolist()
    elif isinstance(index, (list, tuple)):
        found = [int(i) for i in index]
    else:
        found = [int(index)]
    skipped = batch.get("__skipped__") or []
    return found + [int(p) for p, *_ in skipped if isinstance(p, (int, np.integer))]
