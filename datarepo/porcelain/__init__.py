"""The user's verbs. They return records and never print; ``datarepo.cli`` renders them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Reporter(Protocol):
    """Told how much work there is and how much is done; the CLI draws it as a bar."""

    def start(self, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...


Progress = Reporter | None


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


def begin(progress: Progress, total: int | None) -> None:
    if progress is not None:
        progress.start(total)


def tick(progress: Progress, n: int = 1) -> None:
    if progress is not None:
        progress.advance(n)


@dataclass
class Changes:
    """Keys that differ between two states."""

    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.deleted)

    def keys(self) -> set[str]:
        return {*self.added, *self.modified, *self.deleted}

    def to_json(self) -> dict[str, list[str]]:
        return {"added": self.added, "modified": self.modified, "deleted": self.deleted}


def compare(old: dict[str, str], new: dict[str, str]) -> Changes:
    """The changes from ``old`` to ``new`` (key → datum id maps), keys sorted."""
    if not old or not new:  # a first add or a first commit: no set of pairs to build
        return Changes(sorted(new), [], sorted(old))
    if old == new:  # a clean tree, or a first add's index against its files: one pass in C
        return Changes()
    differ = new.items() - old.items()  # set operations: done in C, for maps of any size
    return Changes(
        sorted(new.keys() - old.keys()),
        sorted(key for key, _ in differ if key in old),
        sorted(old.keys() - new.keys()),
    )
