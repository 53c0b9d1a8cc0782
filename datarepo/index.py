"""``index.sqlite``: a local cache that can always be rebuilt from objects and shards.

It holds the stat cache (file → member hash), the datum → shard location
table, the staging area and per-source ingest state. Deleting it loses speed
and the staging area, never committed data (docs/format.md, "index.sqlite").
"""

from __future__ import annotations

import json
import mmap
import sqlite3
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, chain, islice, repeat
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

import xxhash

from datarepo.fsutil import atomic_write, set_aside
from datarepo.hashing import OID_LEN, Oid, hash_bytes, is_oid
from datarepo.shards import DatumLoc, MemberLoc, ShardIndex
from datarepo.statcols import StatColumns

SCHEMA_VERSION = 1
PAGE_SIZE = 16384
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stat (
    scope TEXT, path TEXT, size INTEGER, mtime_ns INTEGER, ino INTEGER, seen_ns INTEGER, hash TEXT,
    PRIMARY KEY (scope, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shard (shard TEXT PRIMARY KEY, size INTEGER, datums INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS location (
    datum TEXT PRIMARY KEY, shard TEXT, offset INTEGER, length INTEGER, members TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS staged (key TEXT PRIMARY KEY, datum TEXT, size INTEGER) WITHOUT ROWID;
"""
# A file whose mtime is this close to the moment it was looked at may change
# again within the same timestamp tick, so its cached hash is not trusted.
RACY_NS = 2_000_000_000


class StatEntry(NamedTuple):
    """What a file looked like when its content was last hashed."""

    size: int
    mtime_ns: int
    ino: int
    seen_ns: int
    hash: Oid


# A stat-cache row as a plain tuple, read by position: the fields of a StatEntry, built and
# read 100,000 times by a first add, where a named tuple costs 0.4 µs more to make.
StatRow = tuple[int, int, int, int, Oid]


def trusted(entry: StatRow, stat: tuple[int, int, int]) -> bool:
    """True when a file still has the (size, mtime, inode) it had when hashed, and that
    mtime was old enough, when it was looked at, that no later write can share it."""
    return entry[:3] == stat and stat[1] < entry[3] - RACY_NS


class Index:
    """The SQLite cache of one repository."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = not path.exists()
        self._bases: dict[str, StatBase] = {}  # the stat cache's base of each scope, once read
        try:
            self._open()
        except sqlite3.DatabaseError:
            # Only a cache: a damaged file is set aside and rebuilt, never trusted or fatal.
            if hasattr(self, "db"):
                self.db.close()
            for suffix in ("", "-wal", "-shm"):
                set_aside(path.with_name(path.name + suffix), "damaged")
            self.created = True
            self._open()

    @classmethod
    def reader(cls, path: Path) -> Index:
        """The cache opened read-only, for a worker that only looks things up; an empty
        one where there is no file yet."""
        index = cls.__new__(cls)
        index.path, index.created, index._bases = path, False, {}
        try:
            index.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60, isolation_level=None)
            index.db.execute("SELECT 1 FROM location LIMIT 1")
        except sqlite3.DatabaseError:
            index.db = sqlite3.connect(":memory:", isolation_level=None)
            index.db.executescript(_SCHEMA)
        return index

    def _open(self) -> None:
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        # Before anything is written (a no-op on an existing file): the location table is keyed
        # by random datum ids, and with 16 KiB pages a first add's inserts touch fewer pages.
        self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-65536")
        self.db.executescript(_SCHEMA)
        version = self.db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        if version is None:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    def checkpoint(self) -> None:
        """Copies what the write-ahead log holds into the database, as far as no reader or
        writer stands in the way (SQLite's ``PASSIVE`` checkpoint), so that no later commit
        has to. Not inside a transaction, where SQLite refuses it."""
        if not self.db.in_transaction:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def transaction(self) -> sqlite3.Connection:
        """``with index.transaction() as db:`` commits on success, rolls back on error."""
        self.db.execute("BEGIN IMMEDIATE")
        return _Tx(self.db)  # type: ignore[return-value]

    # stat cache --------------------------------------------------------
    # Its rows overlay a base (:class:`StatBase`): the files of one bulk hashing, in a file of
    # their own. A row for a path wins over the base's entry.
    def load_stats(self, scope: str = "") -> dict[str, StatRow]:
        """path → (size, mtime_ns, ino, seen_ns, hash), as plain tuples: this is on the hot path."""
        out = self._stat_base(scope).entries()
        rows = self.db.execute("SELECT path, size, mtime_ns, ino, seen_ns, hash FROM stat WHERE scope=?", (scope,))
        out.update((r[0], r[1:]) for r in rows)
        return out

    def has_stats(self, scope: str = "") -> bool:
        if self.get_meta(_base_meta(scope)) is not None:
            return True
        return self.db.execute("SELECT 1 FROM stat WHERE scope=? LIMIT 1", (scope,)).fetchone() is not None

    def write_stat_base(self, read: StatColumns, seen_ns: int, scope: str = "") -> str:
        """Writes the files ``read`` (each hashed at ``seen_ns``) as the stat cache's next base:
        a bulk hashing (a first ``add``) writes one file, not a row per file. Returns what
        names it, for :meth:`name_stat_base` to record; until then the old name (or none)
        stays, and a base whose hash does not match what is named is read as empty (its
        files are hashed again, nothing else is lost)."""
        raw = StatBase.pack(read, seen_ns)
        path = self._base_path(scope)
        atomic_write(path, raw, mode=0o644, durable=False)
        return json.dumps([path.name, hash_bytes(raw)])

    def name_stat_base(self, named: str, scope: str = "") -> None:
        """Makes the file :meth:`write_stat_base` wrote the stat cache's base, in place of the
        last one (in a transaction). Rows written before stay, and still win."""
        self.set_meta(_base_meta(scope), named)
        self._bases.pop(scope, None)

    def _stat_base(self, scope: str) -> StatBase:
        if (base := self._bases.get(scope)) is None:
            base = self._bases[scope] = StatBase.load(self, scope)
        return base

    def _base_path(self, scope: str) -> Path:
        tag = "" if not scope else "-" + xxhash.xxh3_64_hexdigest(scope.encode("utf-8", "surrogateescape"))
        return self.path.with_name(f"index.stats{tag}")

    def record_hashes(self, read: StatColumns, seen_ns: int, scope: str = "", bulk: bool = False) -> None:
        """Records the files ``read`` (hashed as looked at ``seen_ns``) in the stat cache, in
        the caller's transaction: as the cache's new base when ``bulk`` (a first add, whose
        cache was empty: one file, not a row per file), else as rows."""
        if not read:
            return
        if bulk:
            self.name_stat_base(self.write_stat_base(read, seen_ns, scope), scope)
        else:
            self.save_stats(read.rows(seen_ns), scope)

    def save_stats(self, entries: Iterable[tuple[str, StatRow]], scope: str = "") -> None:
        _insert(self.db, "stat", 7, ((scope, p, *e) for p, e in entries))

    def drop_stats(self, paths: Iterable[str], scope: str = "") -> None:
        self.db.executemany("DELETE FROM stat WHERE scope=? AND path=?", ((scope, p) for p in paths))

    # locations ---------------------------------------------------------
    def add_shard(self, shard: str, size: int, rows: Sequence[LocationRow]) -> None:
        """Records a shard and the locations of its datums (see :func:`location_rows`)."""
        self.db.execute("INSERT OR REPLACE INTO shard VALUES (?,?,?)", (shard, size, len(rows)))
        self.locate_in(rows)

    def locate_in(self, rows: Iterable[LocationRow]) -> None:
        """Points the datums of ``rows`` at the copies in the shards the rows name. The rows
        go in sorted by datum (a stable sort: of two rows for one datum, the later still
        wins): datum ids are random, and 22,000 rows in the order of a shard took 80-175 ms
        to insert, each touching a page of the table at random; sorted, 7-9 ms to sort
        and 24-34 ms to insert."""
        _insert(self.db, "location", 5, sorted(rows, key=_DATUM))

    def drop_shard(self, shard: str) -> None:
        self.db.execute("DELETE FROM shard WHERE shard=?", (shard,))
        self.db.execute("DELETE FROM location WHERE shard=?", (shard,))
        self._withdraw_staged_tree()

    def known_shards(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT shard FROM shard")}

    def locate(self, datum: str) -> tuple[str, DatumLoc] | None:
        row = self.db.execute("SELECT shard, offset, length, members FROM location WHERE datum=?", (datum,)).fetchone()
        if row is None:
            return None
        members = _parse_members(row[3])
        return row[0], DatumLoc(Oid(datum), row[1], row[2], members)

    def has(self, datum: str) -> bool:
        return self.db.execute("SELECT 1 FROM location WHERE datum=?", (datum,)).fetchone() is not None

    def stored_in(self, datums: Iterable[str]) -> dict[str, str]:
        """The shard the location table places each of ``datums`` in, for those it places."""
        found: dict[str, str] = {}
        batch = list(datums)
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.execute(f"SELECT datum, shard FROM location WHERE datum IN ({marks})", chunk))
        return found

    def clear_locations(self) -> None:
        self.db.execute("DELETE FROM location")
        self.db.execute("DELETE FROM shard")
        self._withdraw_staged_tree()

    # staging area ------------------------------------------------------
    def staged(self) -> dict[str, tuple[Oid | None, int]]:
        return {key: (datum, size) for key, datum, size in self.staged_rows()}

    def staged_rows(self) -> list[tuple[str, Oid | None, int]]:
        """The staging area as (key, datum or None for a deletion, size) rows, in key order."""
        return self.db.execute("SELECT key, datum, size FROM staged ORDER BY key").fetchall()

    def staged_for(self, keys: Iterable[str]) -> dict[str, tuple[Oid | None, int]]:
        found = {}
        batch = list(keys)
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            rows = self.db.execute(f"SELECT key, datum, size FROM staged WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((r[0], (r[1], r[2])) for r in rows)
        return found

    def stage(self, changes: Iterable[tuple[str, Oid | None, int]]) -> None:
        _insert(self.db, "staged", 3, changes)
        self._bump_staged()

    def unstage(self, keys: Iterable[str] | None = None) -> None:
        if keys is None:
            self.db.execute("DELETE FROM staged")
        else:
            self.db.executemany("DELETE FROM staged WHERE key=?", ((k,) for k in keys))
        self._bump_staged()

    def staged_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM staged").fetchone()[0]

    def staged_tree(self, head: Oid | None) -> Oid | None:
        """The tree ``add`` stored for HEAD with the staging area applied, if HEAD is still
        ``head`` and the staging area has not changed since; else None."""
        raw = self.get_meta("staged_tree")
        try:
            base, version, tree = json.loads(raw) if raw is not None else (None, None, None)
        except (ValueError, TypeError):
            return None
        fresh = base == head and version == str(self.get_meta("staged_version"))
        return Oid(tree) if fresh and isinstance(tree, str) and is_oid(tree) else None

    def set_staged_tree(self, head: Oid | None, tree: Oid) -> None:
        """Records ``tree`` as HEAD with the staging area, as it is now, applied: written in
        the transaction that stages, after the tree's objects are stored and every datum
        it adds is in a shard. ``commit`` then writes it as it is, without checking."""
        self.set_meta("staged_tree", json.dumps([head, str(self.get_meta("staged_version")), tree]))

    def _withdraw_staged_tree(self) -> None:
        # Its datums were all stored when it was recorded; once a shard leaves the location
        # table that may no longer hold, and commit goes back to checking every staged datum.
        self.db.execute("DELETE FROM meta WHERE name='staged_tree'")

    def _bump_staged(self) -> None:
        # Lets caches built on the staging area (the status snapshot) notice any change to it.
        self.db.execute(
            "INSERT INTO meta VALUES ('staged_version', '1') ON CONFLICT(name) DO UPDATE SET value = value + 1"
        )

    def load_stats_for(self, paths: Iterable[str], scope: str = "") -> dict[str, StatRow]:
        batch = list(paths)
        found = self._stat_base(scope).lookup(batch)
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT path, size, mtime_ns, ino, seen_ns, hash FROM stat WHERE scope=? AND path IN ({marks})",
                [scope, *chunk],
            )
            found.update((r[0], r[1:]) for r in rows)
        return found

    # ingest state ------------------------------------------------------
    def get_meta(self, name: str) -> str | bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def get_metas(self, names: list[str]) -> dict[str, str | bytes]:
        """The values of those of ``names`` that are set, read in one statement: from one
        state of the file, whatever another process commits meanwhile."""
        marks = ",".join("?" * len(names))
        return dict(self.db.execute(f"SELECT name, value FROM meta WHERE name IN ({marks})", names))

    def set_meta(self, name: str, value: str | bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (name, value))

    def staged_unstored(self) -> list[str]:
        """Staged datums no shard holds (one join, not one lookup per datum)."""
        rows = self.db.execute(
            "SELECT s.datum FROM staged s LEFT JOIN location l ON l.datum = s.datum"
            " WHERE s.datum IS NOT NULL AND l.datum IS NULL"
        )
        return [r[0] for r in rows]

    def iter_staged_datums(self) -> Iterator[str]:
        for (datum,) in self.db.execute("SELECT datum FROM staged WHERE datum IS NOT NULL"):
            yield datum


def _base_meta(scope: str) -> str:
    return f"stat-base {scope}" if scope else "stat-base"


class StatBase:
    """The stat cache's base: the files one bulk hashing saw, in a file beside ``index.sqlite``
    (``index.stats``), as int64s and text:

    * a head: the count ``n``, ``seen_ns`` and the byte count of the paths;
    * the paths, sorted, joined by NUL (UTF-8), then zeros up to a multiple of 8 bytes;
    * ``n + 1`` running totals of the paths' lengths in bytes, in sorted order, from 0;
    * for each sorted path, the place of its entry in what follows;
    * the entries' (size, mtime_ns, inode), three int64s each, then their hashes (hex),
      in the order they were hashed: only the paths are sorted, not the entries.

    A first ``add`` of 100,000 files wrote 100,000 rows, 3.6 µs each, from two processes that
    then waited on each other for SQLite's one writer. Like the rows, the file is only a
    cache: ``index.sqlite`` names its hash, and a file that does not match is read as empty.
    A path is found by a binary search: a re-add looks up a few, and a look at every
    file reads them all (:meth:`entries`). The file is mapped (:meth:`load`) and read
    through views, not copied into parts: copying its 10 MB for 100,000 files took 8 ms.
    """

    def __init__(self, raw: bytes | mmap.mmap = b"") -> None:
        self.count = self.seen_ns = 0
        if len(raw) < 24:
            return
        view = memoryview(raw)
        count, seen_ns, size = view[:24].cast("q")
        cuts = list(accumulate([24, size + -size % 8, 8 * (count + 1), 8 * count, 24 * count, OID_LEN * count]))
        if count <= 0 or size < 0 or cuts[-1] != len(raw):
            return
        self.names = view[24 : 24 + size]
        self.totals, self.places, self.stats = (view[a:b].cast("q") for a, b in zip(cuts[1:4], cuts[2:5]))
        self.hashes = view[cuts[4] : cuts[5]]
        if self.totals[-1] + count - 1 == size:
            self.count, self.seen_ns = count, seen_ns

    @classmethod
    def load(cls, index: Index, scope: str) -> StatBase:
        """The base ``index.sqlite`` names; an empty one if it is missing or does not match.
        The file is mapped, not read: a re-add looks up a few paths, and reading 10 MB
        into memory took 5-6 ms, mapping and hashing it 0.5 ms. A base is replaced by
        rename, never rewritten in place, so the mapped bytes cannot change."""
        named = index.get_meta(_base_meta(scope))
        try:
            name, digest = json.loads(named) if named is not None else (None, None)
            if name != index._base_path(scope).name:
                return cls()
            with open(index.path.with_name(name), "rb") as f:
                raw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, TypeError):  # (mapping an empty file is a ValueError)
            return cls()
        return cls(raw) if hash_bytes(raw) == digest else cls()

    @staticmethod
    def pack(read: StatColumns, seen_ns: int) -> bytes:
        names = read.names
        places = sorted(range(len(names)), key=names.__getitem__)  # they come nearly sorted: quick
        ordered = [names[i] for i in places]
        text = "\x00".join(ordered)
        raw = text.encode("utf-8", "surrogateescape")
        if len(raw) != len(text):  # not all ASCII: lengths in bytes
            ordered = [name.encode("utf-8", "surrogateescape") for name in ordered]
        totals = array("q", accumulate(map(len, ordered), initial=0))
        head = array("q", [len(names), seen_ns, len(raw)]).tobytes()
        hashes = read.digests.hex().encode("ascii")
        return b"".join([head, raw, bytes(-len(raw) % 8), totals.tobytes(), array("q", places).tobytes(), read.stats.tobytes(), hashes])

    def _name(self, i: int) -> str:
        return bytes(self.names[self.totals[i] + i : self.totals[i + 1] + i]).decode("utf-8", "surrogateescape")

    def _entry(self, place: int) -> StatRow:
        size, mtime, ino = self.stats[3 * place : 3 * place + 3]
        return size, mtime, ino, self.seen_ns, Oid(bytes(self.hashes[OID_LEN * place : OID_LEN * (place + 1)]).decode())

    def entries(self) -> dict[str, StatRow]:
        """Every entry, as a dict (for a look at every file)."""
        if not self.count:
            return {}
        names = bytes(self.names).decode("utf-8", "surrogateescape").split("\x00")
        hashes = bytes(self.hashes).decode()
        it = iter(self.stats)
        rows = list(zip(it, it, it, repeat(self.seen_ns), [hashes[i : i + OID_LEN] for i in range(0, len(hashes), OID_LEN)]))
        return dict(zip(names, map(rows.__getitem__, self.places)))

    def lookup(self, paths: list[str]) -> dict[str, StatRow]:
        """The entries of ``paths``: each found by a binary search, or (many) read from :meth:`entries`."""
        if not self.count or not paths:
            return {}
        if len(paths) > _FEW_PATHS:
            every = self.entries()
            return {p: every[p] for p in paths if p in every}
        found = {}
        for path in paths:
            lo, hi = 0, self.count
            while lo < hi:  # the first path not below this one
                mid = (lo + hi) // 2
                if self._name(mid) < path:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < self.count and self._name(lo) == path:
                found[path] = self._entry(self.places[lo])
        return found


# Up to this many paths, :meth:`StatBase.lookup` searches for each (about 5 µs); above, it
# reads the base whole (about 70 ms for 100,000 files).
_FEW_PATHS = 4096


# (datum, shard, offset, length, members as text): a ``location`` row as it is inserted.
LocationRow = tuple[str, str, int, int, str]
_DATUM = itemgetter(0)


# Rows go to SQLite this many to a statement.
ROWS_A_STATEMENT = 100


def _insert(db: sqlite3.Connection, table: str, width: int, rows: Iterable[Sequence[object]]) -> None:
    """INSERT OR REPLACE ``rows`` (of ``width`` values) into ``table``, ``ROWS_A_STATEMENT``
    rows a statement. ``executemany`` binds and steps one row at a time: 50,000 staging rows
    cost 9.9 k instructions each that way, 5.2 k this way, and location rows 13.3 k against
    10.5 k. A later row replaces an earlier one with the same key, as one by one."""
    one = "(" + ",".join("?" * width) + ")"
    head = f"INSERT OR REPLACE INTO {table} VALUES "
    many = head + ",".join([one] * ROWS_A_STATEMENT)
    it = iter(rows)
    while batch := list(islice(it, ROWS_A_STATEMENT)):
        if len(batch) == ROWS_A_STATEMENT:
            db.execute(many, list(chain.from_iterable(batch)))
        else:
            db.executemany(head + one, batch)


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


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
