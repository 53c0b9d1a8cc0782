"""The user's verbs. They return records and never print; ``datarepo.cli`` renders them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Progress = Callable[[int], None] | None


def tick(progress: Progress, n: int = 1) -> None:
    if progress is not None:
        progress(n)


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
    changes = Changes()
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        (changes.added if a is None else changes.deleted if b is None else changes.modified).append(key)
    return changes
