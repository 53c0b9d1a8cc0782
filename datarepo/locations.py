"""The location cache (tables of ``index.sqlite``): the shards the repository has and where
each datum lies in one, filled from the shards' ``.idx`` files (docs/format.md,
"index.sqlite")."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext, suppress
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from datarepo.hashing import Oid, is_oid
from datarepo.shards import BLOCK, DatumLoc, MemberLoc, ShardIndex
from datarepo.sqlrows import DamagedCacheError, insert_rows, is_damage

if TYPE_CHECKING:
    import numpy as np

    from datarepo.index import Index


# (datum, shard, offset, length, members as text): a ``location`` row as it is inserted.
LocationRow = tuple[str, str, int, int, str]
_DATUM = itemgetter(0)
_DAMAGED = "damaged-shards"
_LOST = "lost-datums"




# A query gives its rows as four texts, concatenated in C: a row at a time, the sqlite3
# module spent 0.7 µs a row making Python objects.
# Only rows of the form ``put`` writes (checked in C, a column at a time) are read: any other
# is left out, and so is looked up alone (:meth:`Locations.locate`), which mends it.
_OID = "typeof({0}) = 'text' AND length({0}) = 32 AND NOT {0} GLOB '*[^0-9a-f]*'"


def sound(table: str = "") -> str:
    """The SQL test of a ``location`` row of the form ``put`` writes (of ``table``, as named):
    ids that are oids, a span that starts on a tar block, whose first member (the first
    number of ``members``) starts after a header of its own and within the span."""
    t = f"{table}." if table else ""
    first = f"CAST(substr({t}members, 1, instr({t}members, ' ') - 1) AS INTEGER)"
    return (
        f"{_OID.format(t + 'datum')} AND {_OID.format(t + 'shard')} AND typeof({t}offset) = 'integer'"
        f" AND {t}offset >= 0 AND {t}offset % {BLOCK} = 0 AND typeof({t}length) = 'integer' AND {t}length > 0"
        f" AND typeof({t}members) = 'text' AND {first} BETWEEN {t}offset + {BLOCK} AND {t}offset + {t}length"
    )


_SOUND = sound()
_COLUMNS = (
    "SELECT group_concat(datum, ''), group_concat(shard, ''), group_concat(offset), group_concat(length) FROM location WHERE "
)
# The whole table is read without a test a row in SQL (a CAST and a comparison a row
# cost a million-datum manifest 0.2 s, a fifth of it): the ids are checked as they are
# decoded (:func:`_ids`), the spans in numpy (:func:`_columns`); columns that do not parse
# make the query be made again with every test (:func:`sound`).
_SHARDS = (
    "SELECT shard, size FROM shard WHERE typeof(shard) = 'text' AND length(shard) = 32"
    " AND NOT shard GLOB '*[^0-9a-f]*' AND typeof(size) = 'integer' ORDER BY shard"
)
# A datum's row with its shard's size, to check the one against the other.
_LOCATE = (
    "SELECT l.shard, l.offset, l.length, l.members, s.size FROM location l"
    " LEFT JOIN shard s ON s.shard = l.shard WHERE l.datum = ?"
)
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
        return self.index.db.execute("SELECT coalesce(sum(datums), 0) FROM shard WHERE typeof(datums) = 'integer'").fetchone()[0]

    def shards(self) -> set[str]:
        """The shards the cache lists (by a name that is an oid: a row of any other form names none)."""
        return {r[0] for r in self.index.db.execute(f"SELECT shard FROM shard WHERE {_OID.format('shard')}")}

    def locate(self, datum: str) -> tuple[str, DatumLoc] | None:
        """Where the cache places ``datum``; None if nowhere, or if its row is damaged (see
        :func:`decode_row`): the row's shard is then forgotten, to be read again from its
        ``.idx`` (:meth:`Repo.sync_locations`), or every shard if the row names none."""
        try:
            row = self.index.db.execute(_LOCATE, (datum,)).fetchone()
        except sqlite3.OperationalError:  # text that is not UTF-8
            row = (None, None, None, None, None)
        if row is None:
            return None
        if (loc := decode_row(datum, *row)) is None:
            self.forget(row[0])
            return None
        return row[0], loc

    def with_rows(self, datums: Iterable[str]) -> set[str]:
        """Those of ``datums`` the table has a row for, whatever it holds (a test of
        membership only: 1.5 µs a datum, against 8.5 µs for :meth:`shards_of`'s checked rows)."""
        found: set[str] = set()
        batch = list(datums)
        for i in range(0, len(batch), 999):
            chunk = batch[i : i + 999]
            rows = self.index.db.execute(f"SELECT datum FROM location WHERE datum IN ({','.join('?' * len(chunk))})", chunk)
            found.update(r[0] for r in rows)
        return found

    def extensions(self, datums: Iterable[str]) -> dict[str, list[str]]:
        """The member extensions of those of ``datums`` the cache places (a row that does
        not parse is left out): a thousand datums a query, not one."""
        found: dict[str, list[str]] = {}
        batch = list(datums)
        for i in range(0, len(batch), 999):
            chunk = batch[i : i + 999]
            query = f"SELECT datum, members FROM location WHERE datum IN ({','.join('?' * len(chunk))})"
            with suppress(sqlite3.OperationalError):  # (text that is not UTF-8: a damaged row)
                for datum, members in self.index.db.execute(query, chunk).fetchall():
                    with suppress(ValueError, AttributeError):
                        found[datum] = [m.ext for m in _parse_members(members)]
        return found

    def has_row(self, datum: str) -> bool:
        """Whether the cache has a row for ``datum``, whatever it holds."""
        return self.index.db.execute("SELECT 1 FROM location WHERE datum=?", (datum,)).fetchone() is not None

    def forget(self, shard: object) -> None:
        """Drops a shard whose rows cannot be trusted (every shard, if ``shard`` names none)."""
        with nullcontext() if self.index.db.in_transaction else self.index.transaction():
            if isinstance(shard, str) and is_oid(shard):
                self.drop_shard(shard)
            else:
                self.clear()

    def agrees(self, shard: str, loc: DatumLoc, index: ShardIndex) -> bool:
        """Whether ``loc``, from the cache, is where the shard's ``.idx`` places the datum;
        if not, the shard is forgotten (:meth:`forget`), to be read again from the ``.idx``."""
        if any(found == loc for found in index.datums if found.datum == loc.datum):
            return True
        self.forget(shard)
        return False

    def disagreements(self, index_of: Callable[[str], ShardIndex | None]) -> list[str]:
        """The cache's rows that are not what the ``.idx`` of the shard they name says
        (``index_of``: a shard's index, or None if it has none that reads), as problems, one
        line for the ``location`` table and one for ``shard``. Read a shard at a time (the
        rows sorted by shard in C), as bytes: a row need not even be text to be read."""
        rows = self.index.db.execute(
            "SELECT CAST(shard AS BLOB), CAST(datum AS BLOB), offset, length, CAST(members AS BLOB) FROM location ORDER BY 1"
        )
        wrong, example = 0, ""
        for shard, group in groupby(rows, key=_DATUM):
            if (expected := _expected_rows(shard, index_of)) is None:
                continue  # a shard without an .idx that reads: a problem of its own, or gone
            for _, datum, *rest in group:
                if expected.get(datum) != tuple(rest):
                    wrong, example = wrong + 1, example or f"datum {_shown(datum)} in shard {_shown(shard)}"
        problems = [_disagree(f"{wrong} location rows", example)] if wrong else []
        # (A shard's count is of the rows it got: a datum two shards hold is placed in one.)
        shards = self.index.db.execute("SELECT CAST(shard AS BLOB), size, datums FROM shard").fetchall()
        bad = [s for s, size, count in shards if _name(s) is None or type(count) is not int or _size_differs(s, size, index_of)]
        if bad:
            problems.append(_disagree(f"{len(bad)} shard rows", _shown(bad[0])))
        return problems

    def set_damaged(self, shards: set[str]) -> None:
        """Records the shards ``fsck`` found damaged (all of them, replacing the last list):
        their copies do not count as stored, so ``add`` of the same content stores it again."""
        self.index.set_meta(_DAMAGED, json.dumps(sorted(shards)))

    def damaged(self) -> set[str]:
        return self._names(_DAMAGED)

    def set_lost(self, datums: set[str]) -> None:
        """Records the reachable datums ``fsck`` found in no shard, until ``add`` of their
        files (which looks at every key while any is left) stores them again."""
        self.index.set_meta(_LOST, json.dumps(sorted(datums)))

    def lost(self) -> set[str]:
        return self._names(_LOST)

    def _names(self, meta: str) -> set[str]:
        raw = self.index.get_meta(meta)
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
            found.update(self.index.db.execute(f"SELECT datum, shard FROM location WHERE datum IN ({marks}) AND {_SOUND}", chunk))
        return found


def _shown(raw: bytes | None) -> str:
    return repr(bytes(raw or b"").decode("utf-8", "replace"))[:40]


def _name(shard: bytes | None) -> str | None:
    """The shard a row names, if it names one."""
    try:
        name = bytes(shard or b"").decode("ascii")
    except UnicodeDecodeError:
        return None
    return name if is_oid(name) else None


def _index(shard: bytes | None, index_of: Callable[[str], ShardIndex | None]) -> ShardIndex | None:
    return index_of(name) if (name := _name(shard)) is not None else None


def _disagree(what: str, example: str) -> str:
    return f"index.sqlite: {what} disagree with the shards' .idx ({example}): run fsck --rebuild-index"


def _size_differs(shard: bytes, size: object, index_of: Callable[[str], ShardIndex | None]) -> bool:
    return (index := _index(shard, index_of)) is not None and index.size != size


def _expected_rows(
    shard: bytes | None, index_of: Callable[[str], ShardIndex | None]
) -> dict[bytes, tuple[int, int, bytes]] | None:
    """datum → (offset, length, members) of the rows ``put`` writes for a shard, as bytes:
    none for a row that names no shard, None for a shard without an ``.idx`` that reads."""
    if _name(shard) is None:
        return {}
    if (index := _index(shard, index_of)) is None:
        return None
    return {d.encode(): (o, n, m.encode("utf-8", "surrogateescape")) for d, _, o, n, m in location_rows(index)}


def location_rows(index: ShardIndex) -> list[LocationRow]:
    """The ``location`` rows of a shard's datums."""
    shard = index.shard
    return [(datum, shard, offset, length, _members_text(members)) for datum, offset, length, members in index.datums]


def _members_text(members: tuple[MemberLoc, ...]) -> str:
    # "/" cannot occur in an extension; offsets and sizes come first, so spaces in one are fine.
    return "/".join([f"{offset} {size} {ext}" for ext, offset, size in members])


def decode_row(datum: str, shard: object, offset: object, length: object, members: object, size: object) -> DatumLoc | None:
    """A ``location`` row (with its shard's size) as ``put`` wrote it, or None if it is not
    one: a shard that is no oid, a span that is not within the shard or does not start on a
    tar block, members that do not parse or do not start on a block after the span's
    first header, or end past the span."""
    if not (isinstance(shard, str) and is_oid(shard) and isinstance(members, str)):
        return None
    if not (type(offset) is int and type(length) is int and type(size) is int and 0 <= offset and 0 < length <= size - offset):
        return None
    if offset % BLOCK:
        return None
    try:
        parsed = _parse_members(members)
    except ValueError:
        return None
    end = offset + length
    def fits(m: MemberLoc) -> bool:
        return offset < m.offset and not (m.offset - offset) % BLOCK and 0 <= m.size <= end - m.offset and "\x00" not in m.ext

    return DatumLoc(Oid(datum), offset, length, parsed) if all(map(fits, parsed)) else None


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
        listed = db.execute(_SHARDS).fetchall()
        shards, sizes = [r[0] for r in listed], [r[1] for r in listed]
        if datums is None:
            size = db.execute("SELECT count(*) FROM location").fetchone()[0]
            queries = (("datum >= ? AND datum < ?", bounds) for bounds in _SLICES)
        else:
            size = len(datums)
            batches = (datums[i : i + in_batch] for i in range(0, len(datums), in_batch))
            queries = ((f"datum IN ({','.join('?' * len(b))})", b) for b in batches)
        known = LocationColumns(np.empty(size, np.uint64), np.empty(size, np.uint64), np.empty((size, 3), np.int64), shards)
        filled = 0
        for where, params in queries:
            part = _query_columns(db, where, params, shards, sizes)
            if not part:
                continue
            if filled + len(part[0]) > size:
                raise DamagedCacheError("the location table changed while it was read")
            for column, values in zip(known, part):
                column[filled : filled + len(values)] = values
            filled += len(part[0])
        db.execute("COMMIT")
    except sqlite3.Error as e:
        if not is_damage(e):  # (busy, a full disk: no reason to throw the cache away)
            raise
        raise DamagedCacheError(str(e)) from None
    finally:
        db.close()
    known = known._replace(high=known.high[:filled], low=known.low[:filled], where=known.where[:filled])
    if datums is not None:  # a lookup's rows come in no promised order
        order = np.lexsort((known.low, known.high))
        known = known._replace(high=known.high[order], low=known.low[order], where=known.where[order])
    return known


def _query_columns(
    db: sqlite3.Connection, where: str, params: Sequence[str], shards: list[str], sizes: list[int]
) -> tuple[np.ndarray, ...]:
    """:func:`_columns` of the rows ``where`` selects; if they do not parse, of those that
    pass every test (:func:`sound`)."""
    import binascii

    try:
        return _columns(db.execute(f"{_COLUMNS}{where}", params).fetchone(), shards, sizes)
    except (sqlite3.OperationalError, binascii.Error, ValueError, DamagedCacheError):
        return _columns(db.execute(f"{_COLUMNS}{_SOUND} AND {where}", params).fetchone(), shards, sizes)


def _columns(row: tuple[str | None, ...], shards: list[str], sizes: list[int]) -> tuple[np.ndarray, ...]:
    """One query's texts as arrays: the ids' halves and (shard place, offset, length) rows
    (a place of -1 for a shard the cache does not list, or a row that reaches past the end
    of its shard: either is looked up alone)."""
    import binascii

    import numpy as np

    datums, names, offsets, lengths = row
    if not datums:
        return ()
    ids = np.frombuffer(binascii.unhexlify(_ids(datums)), dtype=">u8").reshape(-1, 2)
    n = len(ids)
    found = np.frombuffer(_ids(names), dtype="S32")
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
        raise DamagedCacheError("location rows do not line up")
    # A span that does not start on a tar block, or reaches past the end of its shard, is
    # looked up alone (which mends it); the members' places are the reader's to check, as
    # it parses each datum's headers (a header that does not name the datum is an error).
    place[(offs < 0) | (offs % BLOCK != 0) | (lens <= 0)] = -1
    if shards:
        place[offs > np.asarray(sizes, np.int64)[np.maximum(place, 0)] - lens] = -1
    return ids[:, 0], ids[:, 1], np.stack([place, offs, lens], axis=1)


def _ids(text: str | None) -> bytes:
    """32-character ids joined, as bytes (a ValueError unless their length says so). Ids
    of other lengths that add up (31 and 33) give ids that name nothing: their datums are
    then looked up alone (which mends their rows). (Joined with commas and checked in
    numpy, the copies cost a million-datum manifest 0.3 s beside the pages' reading.)"""
    raw = (text or "").encode()
    if len(raw) % 32:
        raise ValueError("ids of other lengths")
    return raw


def _ints(text: str | None, n: int) -> np.ndarray:
    """Comma-separated integers, parsed in C (a bad one ends the array early)."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.fromstring(text or "", dtype=np.int64, sep=",") if n else np.zeros(0, np.int64)
