"""The location cache (tables of ``index.sqlite``): the shards the repository has and where
each datum lies in one, filled from the shards' ``.idx`` files (docs/format.md,
"index.sqlite")."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from datarepo.errors import CorruptObjectError, DataRepoError
from datarepo.hashing import Oid
from datarepo.shards import DatumLoc, MemberLoc, ShardIndex
from datarepo.sqlrows import insert_rows

if TYPE_CHECKING:
    import numpy as np

    from datarepo.index import Index

# (datum, shard, offset, length, members as text): a ``location`` row as it is inserted.
LocationRow = tuple[str, str, int, int, str]
_DATUM = itemgetter(0)
_DAMAGED = "damaged-shards"




# A query gives its rows as four texts, concatenated in C: a row at a time, the sqlite3
# module spent 0.7 µs a row making Python objects.
_COLUMNS = "SELECT group_concat(datum, ''), group_concat(shard, ''), group_concat(offset), group_concat(length) FROM location"
_DIGITS = "0123456789abcdef"
_SLICES = [(_DIGITS[i], _DIGITS[i + 1] if i < 15 else "g") for i in range(16)]


class LocationColumns(NamedTuple):
    """Locations from the cache, sorted by datum, each id as its two 64-bit halves."""

    high: np.ndarray  # uint64
    low: np.ndarray  # uint64
    # (shard place, offset, length) rows, int64: moved a row at a time, not a column at a
    # time. A place of -1 is of a shard the cache does not list.
    where: np.ndarray
    shards: list[str]  # sorted



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

    def count(self) -> int:
        """How many datum locations the table holds (by its shards' counts)."""
        return self.index.db.execute("SELECT coalesce(sum(datums), 0) FROM shard").fetchone()[0]

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


def read_columns(path: Path, datums: list[str] | None, in_batch: int = 999) -> LocationColumns:
    """The cache's locations of ``datums`` (sorted; None: of every datum), in one snapshot
    of it, whatever a writer does meanwhile, as columns (numpy arrays): on a connection of
    its own, so another thread may read while this one works. ``datums`` are asked
    ``in_batch`` at a time (SQLite's oldest limit on parameters is 999)."""
    import sqlite3

    import numpy as np

    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        db.execute("BEGIN")
        shards = [r[0] for r in db.execute("SELECT shard FROM shard ORDER BY shard")]
        if datums is None:
            size = db.execute("SELECT count(*) FROM location").fetchone()[0]
            queries = ((_COLUMNS + " WHERE datum >= ? AND datum < ?", bounds) for bounds in _SLICES)
        else:
            size = len(datums)
            batches = (datums[i : i + in_batch] for i in range(0, len(datums), in_batch))
            queries = ((_COLUMNS + f" WHERE datum IN ({','.join('?' * len(b))})", b) for b in batches)
        known = LocationColumns(np.empty(size, np.uint64), np.empty(size, np.uint64), np.empty((size, 3), np.int64), shards)
        filled = 0
        for sql, params in queries:
            part = _columns(db.execute(sql, params).fetchone(), shards)
            if not part:
                continue
            if filled + len(part[0]) > size:
                raise CorruptObjectError("index.sqlite", "the location table changed while it was read")
            for column, values in zip(known, part):
                column[filled : filled + len(values)] = values
            filled += len(part[0])
        db.execute("COMMIT")
    except sqlite3.Error as e:
        raise DataRepoError(f"index.sqlite: {e}") from None
    finally:
        db.close()
    known = known._replace(high=known.high[:filled], low=known.low[:filled], where=known.where[:filled])
    if datums is not None:  # a lookup's rows come in no promised order
        order = np.lexsort((known.low, known.high))
        known = known._replace(high=known.high[order], low=known.low[order], where=known.where[order])
    return known


def _columns(row: tuple[str | None, ...], shards: list[str]) -> tuple[np.ndarray, ...]:
    """One query's texts as arrays: the ids' halves and (shard place, offset, length) rows
    (a place of -1 for a shard the cache does not list)."""
    import binascii

    import numpy as np

    datums, names, offsets, lengths = row
    if not datums:
        return ()
    n = len(datums) // 32
    ids = np.frombuffer(binascii.unhexlify(datums), dtype=">u8").reshape(n, 2)
    found = np.frombuffer(names.encode(), dtype="S32")  # type: ignore[union-attr]
    place = np.full(n, -1, np.int64)
    if shards:
        # Searched for by their first 8 characters as one integer (a search among strings
        # is four times slower), where those tell the shards apart; then compared whole.
        table = np.array(shards, dtype="S32")
        heads = table.view(">u8").reshape(-1, 4)[:, 0].astype(np.uint64)  # sorted, as the names
        if len(np.unique(heads)) == len(heads):
            at = np.searchsorted(heads, found.view(">u8").reshape(-1, 4)[:, 0].astype(np.uint64))
        else:
            at = np.searchsorted(table, found)
        at = np.minimum(at, len(shards) - 1)
        place = np.where(table[at] == found, at, -1)
    offs, lens = _ints(offsets, n), _ints(lengths, n)
    if len(found) != n or len(offs) != n or len(lens) != n:
        raise CorruptObjectError("index.sqlite", "location rows do not line up")
    return ids[:, 0], ids[:, 1], np.stack([place, offs, lens], axis=1)


def _ints(text: str | None, n: int) -> np.ndarray:
    """Comma-separated integers, parsed in C (a bad one ends the array early)."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.fromstring(text or "", dtype=np.int64, sep=",") if n else np.zeros(0, np.int64)
