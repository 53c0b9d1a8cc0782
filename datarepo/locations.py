"""The location cache (tables of ``index.sqlite``): the shards the repository has and where
each datum lies in one, filled from the shards' ``.idx`` files (docs/format.md,
"index.sqlite")."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING

from datarepo.hashing import Oid
from datarepo.shards import DatumLoc, MemberLoc, ShardIndex
from datarepo.sqlrows import insert_rows

if TYPE_CHECKING:
    from datarepo.index import Index

# (datum, shard, offset, length, members as text): a ``location`` row as it is inserted.
LocationRow = tuple[str, str, int, int, str]
_DATUM = itemgetter(0)
_DAMAGED = "damaged-shards"




class Locations:
    """Which shards are known, and datum → (shard, offset, length, members)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def add_shard(self, shard: str, size: int, rows: Sequence[LocationRow]) -> None:
        """Records a shard and the locations of its datums (see :func:`location_rows`)."""
        self.index.db.execute("INSERT OR REPLACE INTO shard VALUES (?,?,?)", (shard, size, len(rows)))
        self.put(rows)

    def put(self, rows: Iterable[LocationRow]) -> None:
        """Points the datums of ``rows`` at the copies in the shards the rows name. The rows
        go in sorted by datum (a stable sort: of two rows for one datum, the later still
        wins): datum ids are random, and 22,000 rows in the order of a shard took 80-175 ms
        to insert, each touching a page of the table at random; sorted, 7-9 ms to sort
        and 24-34 ms to insert."""
        insert_rows(self.index.db, "location", 5, sorted(rows, key=_DATUM))

    def drop_shard(self, shard: str) -> None:
        self.index.db.execute("DELETE FROM shard WHERE shard=?", (shard,))
        self.index.db.execute("DELETE FROM location WHERE shard=?", (shard,))
        self.index.staging.withdraw_tree()

    def clear(self) -> None:
        self.index.db.execute("DELETE FROM location")
        self.index.db.execute("DELETE FROM shard")
        self.index.staging.withdraw_tree()

    def shards(self) -> set[str]:
        return {r[0] for r in self.index.db.execute("SELECT shard FROM shard")}

    def locate(self, datum: str) -> tuple[str, DatumLoc] | None:
        row = self.index.db.execute("SELECT shard, offset, length, members FROM location WHERE datum=?", (datum,)).fetchone()
        if row is None:
            return None
        return row[0], DatumLoc(Oid(datum), row[1], row[2], _parse_members(row[3]))

    def set_damaged(self, shards: set[str]) -> None:
        """Records the shards ``fsck`` found damaged (all of them, replacing the last list):
        their copies do not count as stored, so ``add`` of the same content stores it again."""
        self.index.set_meta(_DAMAGED, json.dumps(sorted(shards)))

    def damaged(self) -> set[str]:
        raw = self.index.get_meta(_DAMAGED)
        try:
            found = json.loads(raw) if raw is not None else []
        except ValueError:
            return set()
        return {s for s in found if isinstance(s, str)} if isinstance(found, list) else set()

    def relied_on(self, shards: set[str]) -> bool:
        """Whether any datum's location is in one of ``shards``."""
        marks = ",".join("?" * len(shards))
        return bool(shards) and self.index.db.execute(f"SELECT 1 FROM location WHERE shard IN ({marks}) LIMIT 1", sorted(shards)).fetchone() is not None

    def shards_of(self, datums: Iterable[str]) -> dict[str, str]:
        """The shard each of ``datums`` lies in, for those the table places."""
        found: dict[str, str] = {}
        batch = list(datums)
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self.index.db.execute(f"SELECT datum, shard FROM location WHERE datum IN ({marks})", chunk))
        return found


_DATUM = itemgetter(0)
_DAMAGED = "damaged-shards"


def location_rows(index: ShardIndex) -> list[LocationRow]:
    """The ``location`` rows of a shard's datums."""
    shard = index.shard
    return [(datum, shard, offset, length, _members_text(members)) for datum, offset, length, members in index.datums]


def _members_text(members: tuple[MemberLoc, ...]) -> str:
    # "/" cannot occur in an extension; offsets and sizes come first, so spaces in one are fine.
    return "/".join([f"{offset} {size} {ext}" for ext, offset, size in members])


def _parse_members(text: str) -> tuple[MemberLoc, ...]:
    out = []
    for line in text.split("/"):
        offset, size, ext = line.split(" ", 2)
        out.append(MemberLoc(ext, int(offset), int(size)))
    return tuple(out)


