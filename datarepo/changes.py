"""Keys that differ between two states: what status, add and diff report."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field


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

    def only(self, keep: Container[str] | None) -> Changes:
        """The changes of the keys in ``keep`` (None: of all)."""
        if keep is None:
            return self
        return Changes(*([k for k in keys if k in keep] for keys in (self.added, self.modified, self.deleted)))

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
