"""Streaming a repository's shards into PyTorch (docs/loader.md).

``from datarepo.torch import DatumDataset, DeviceLoader``. torch is imported by the
modules that need it, when one of these names is first used: ``import datarepo`` and the
``datarepo`` command never load it (the ``runs`` command reads records through
:mod:`datarepo.torch.runs`, which needs only numpy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datarepo.torch.dataset import DatumDataset, SkippedSampleWarning
    from datarepo.torch.device import DeviceLoader
    from datarepo.torch.reader import SampleError

__all__ = ["DatumDataset", "DeviceLoader", "SampleError", "SkippedSampleWarning"]

_WHERE = {
    "DatumDataset": "datarepo.torch.dataset",
    "SkippedSampleWarning": "datarepo.torch.dataset",
    "DeviceLoader": "datarepo.torch.device",
    "SampleError": "datarepo.torch.reader",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'datarepo.torch' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
