"""The user's verbs. They return records and never print; ``datarepo.cli`` renders them."""

from __future__ import annotations

from datarepo.changes import Changes, compare
from datarepo.progress import Progress, Reporter, begin, tick

__all__ = ["Changes", "Progress", "Reporter", "begin", "compare", "retain", "retain_until_exit", "tick"]


# What commands built, kept until the process ends, where :func:`retain_until_exit` asked for
# it: the CLI ends its process with ``os._exit``, and freeing a first add's containers of
# 100,000 files (dicts, lists, strings) one by one as the add returned cost it 60 ms.
_retained: list[object] | None = None


def retain_until_exit() -> None:
    """Makes :func:`retain` keep what it is given (the CLI's processes; not the Python API's)."""
    global _retained
    _retained = []


def retain(*objects: object) -> None:
    if _retained is not None:
        _retained.extend(objects)
