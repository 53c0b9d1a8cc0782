"""``DeviceLoader``: batches moved to the accelerator while the model works on the one
before (pinned host memory, a copy on a side CUDA stream, one batch ahead), and the
training loop's side of the count that a resumable dataset's state is made of."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from datarepo.errors import InvalidInputError


class DeviceLoader:
    """Wraps a DataLoader (any iterable of batches): on a CUDA device, each batch's tensors
    are pinned, copied on a side stream, and the next batch is fetched and copied while the
    loop works on this one; on the CPU, batches pass through unchanged.

    It also tells the loader's :class:`DatumDataset` (``loader.dataset``) which batches
    the loop received, so that ``dataset.state_dict()`` is exact with workers that
    prefetch.

    Args:
        loader: a DataLoader, or any iterable of batches (dicts, lists, tuples, tensors).
        device: where batches go (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
    """

    def __init__(self, loader: Iterable[Any], device: str | torch.device = "cuda") -> None:
        if isinstance(loader, (str, bytes, Mapping)) or not isinstance(loader, Iterable):
            raise InvalidInputError(f"loader must be a DataLoader or an iterable of batches, not {loader!r:.60}")
        self.loader = loader
        self.device = _device(device)
        self.dataset = getattr(loader, "dataset", None)
        self._cuda = self.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        observe = getattr(self.dataset, "received", None)
        if observe is not None:
            self.dataset.observed(True)  # type: ignore[union-attr]
        try:
            pairs = self._to_device(iter(self.loader)) if self._cuda else ((b, b) for b in self.loader)
            for host, batch in pairs:
                if observe is not None:
                    observe(host)  # (the host batch: its positions need no copy back)
                yield batch
        finally:
            if observe is not None:
                self.dataset.observed(False)  # type: ignore[union-attr]

    def _to_device(self, batches: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
        """(host batch, device batch) pairs, the next one's copy started before this one
        is handed over; the loop's stream waits for this batch's copy only."""
        stream = torch.cuda.Stream(self.device)
        ahead = self._copy(next(batches, None), stream)
        while ahead is not None:
            host, moved, copied = ahead
            ahead = self._copy(next(batches, None), stream)
            current = torch.cuda.current_stream(self.device)
            current.wait_event(copied)
            _record(moved, current)
            yield host, moved

    def _copy(self, batch: Any, stream: torch.cuda.Stream) -> tuple[Any, Any, torch.cuda.Event] | None:
        if batch is None:
            return None
        with torch.cuda.stream(stream):
            moved = move(batch, self.device)
            copied = torch.cuda.Event()
            copied.record(stream)
        return batch, moved, copied


def _device(device: Any) -> torch.device:
    """The CPU or a CUDA device this process has (any other would be passed by silently)."""
    if not isinstance(device, (str, torch.device)):
        raise InvalidInputError(f"device must be a str or a torch.device, not {device!r:.60}")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise InvalidInputError(f"device: {str(e).splitlines()[0]}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device: no CUDA device for {device}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidInputError(f"device: {device} is not one of the {torch.cuda.device_count()} CUDA devices")
    if device.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"device must be the CPU or a CUDA device, not {device}")
    return device


def move(batch: Any, device: torch.device) -> Any:
    """A batch's tensors pinned and copied to ``device`` without blocking: dicts (any
    mapping), lists and tuples followed at any depth (a named tuple stays one); anything
    else kept as it is."""
    if isinstance(batch, torch.Tensor):
        host = batch if batch.is_pinned() or batch.device.type != "cpu" else batch.pin_memory()
        return host.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and any(isinstance(v, _HOLDERS) for v in batch):
        moved = [move(v, device) for v in batch]
        if isinstance(batch, list):
            return moved
        return type(batch)(*moved) if hasattr(batch, "_fields") else tuple(moved)
    return batch


_HOLDERS = (torch.Tensor, Mapping, list, tuple)  # what may hold a tensor (a list of bytes holds none)


def _record(batch: Any, stream: torch.cuda.Stream) -> None:
    """Marks a batch's tensors as used on ``stream``: their memory, allocated on the side
    stream, is not reused before the loop's work on them is done."""
    if isinstance(batch, torch.Tensor):
        if batch.device.type == "cuda":
            batch.record_stream(stream)
    elif isinstance(batch, Mapping):
        for v in batch.values():
            _record(v, stream)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            _record(v, stream)
