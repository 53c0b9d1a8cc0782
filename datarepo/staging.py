"""The staging area (a table of ``index.sqlite``): the changes ``add`` and ``rm`` recorded
for the next commit, and the tree ``add`` built for it (docs/format.md, "index.sqlite")."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from datarepo.hashing import Oid, is_oid
from datarepo.sqlrows import insert_rows

if TYPE_CHECKING:
    from datarepo.index import Index

# A staged change: the key, its new datum (None: deleted) and the datum's size.
StagedRow = tuple[str, Oid | None, int]


class Staging:
    """The staged changes, each a :data:`StagedRow`."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def rows(self) -> list[StagedRow]:
        """Every staged change, in key order."""
        return self.index.db.execute("SELECT key, datum, size FROM staged ORDER BY key").fetchall()

    def changes(self) -> dict[str, tuple[Oid | None, int]]:
        """key → (datum or None, size) of every staged change."""
        return {key: (datum, size) for key, datum, size in self.rows()}

    def changes_for(self, keys: Iterable[str]) -> dict[str, tuple[Oid | None, int]]:
        """:meth:`changes`, of ``keys`` only."""
        found = {}
        batch = list(keys)
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            rows = self.index.db.execute(f"SELECT key, datum, size FROM staged WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((r[0], (r[1], r[2])) for r in rows)
        return found

    def count(self) -> int:
        return self.index.db.execute("SELECT count(*) FROM staged").fetchone()[0]

    def stage(self, changes: Iterable[StagedRow]) -> None:
        insert_rows(self.index.db, "staged", 3, changes)
        self._bump()

    def unstage(self, keys: Iterable[str] | None = None) -> None:
        """Drops the staged changes of ``keys`` (None: all)."""
        if keys is None:
            self.index.db.execute("DELETE FROM staged")
        else:
            self.index.db.executemany("DELETE FROM staged WHERE key=?", ((k,) for k in keys))
        self._bump()

    def unstored(self) -> list[str]:
        """Staged datums no shard holds (one join, not one lookup per datum)."""
        rows = self.index.db.execute(
            "SELECT s.datum FROM staged s LEFT JOIN location l ON l.datum = s.datum"
            " WHERE s.datum IS NOT NULL AND l.datum IS NULL"
        )
        return [r[0] for r in rows]

    def datums(self) -> Iterator[str]:
        for (datum,) in self.index.db.execute("SELECT datum FROM staged WHERE datum IS NOT NULL"):
            yield datum

    def tree(self, head: Oid | None) -> Oid | None:
        """The tree ``add`` stored for HEAD with the staging area applied, if HEAD is still
        ``head`` and the staging area has not changed since; else None."""
        raw = self.index.get_meta("staged_tree")
        try:
            base, version, tree = json.loads(raw) if raw is not None else (None, None, None)
        except (ValueError, TypeError):
            return None
        fresh = base == head and version == str(self.index.get_meta("staged_version"))
        return Oid(tree) if fresh and isinstance(tree, str) and is_oid(tree) else None

    def set_tree(self, head: Oid | None, tree: Oid) -> None:
        """Records ``tree`` as HEAD with the staging area, as it is now, applied: written in
        the transaction that stages, after the tree's objects are stored and every datum
        it adds is in a shard. ``commit`` then writes it as it is, without checking."""
        self.index.set_meta("staged_tree", json.dumps([head, str(self.index.get_meta("staged_version")), tree]))

    def withdraw_tree(self) -> None:
        """Forgets the staged tree. Its datums were all stored when it was recorded; once a
        shard leaves the location table that may no longer hold, and ``commit`` goes back
        to checking every staged datum."""
        self.index.db.execute("DELETE FROM meta WHERE name='staged_tree'")

    def _bump(self) -> None:
        # Lets caches built on the staging area (the status snapshot) notice any change to it.
        self.index.db.execute(
            "INSERT INTO meta VALUES ('staged_version', '1') ON CONFLICT(name) DO UPDATE SET value = value + 1"
        )
