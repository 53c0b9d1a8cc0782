"""``index.sqlite``: a local cache that can always be rebuilt from objects and shards.

It holds the stat cache (file → member hash), the datum → shard location
table, the staging area and per-source ingest state. Deleting it loses speed
and the staging area, never committed data (DESIGN §3).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from datarepo.fsutil import set_aside
from datarepo.hashing import Oid, is_oid
from datarepo.shards import DatumLoc, MemberLoc, ShardIndex

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

    def transaction(self) -> sqlite3.Connection:
        """``with index.transaction() as db:`` commits on success, rolls back on error."""
        self.db.execute("BEGIN IMMEDIATE")
        return _Tx(self.db)  # type: ignore[return-value]

    # stat cache --------------------------------------------------------
    def load_stats(self, scope: str = "") -> dict[str, StatRow]:
        """path → (size, mtime_ns, ino, seen_ns, hash), as plain tuples: this is on the hot path."""
        rows = self.db.execute("SELECT path, size, mtime_ns, ino, seen_ns, hash FROM stat WHERE scope=?", (scope,))
        return {r[0]: r[1:] for r in rows}

    def has_stats(self, scope: str = "") -> bool:
        return self.db.execute("SELECT 1 FROM stat WHERE scope=? LIMIT 1", (scope,)).fetchone() is not None

    def save_stats(self, entries: Iterable[tuple[str, StatRow]], scope: str = "") -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO stat VALUES (?,?,?,?,?,?,?)", ((scope, p, *e) for p, e in entries)
        )

    def drop_stats(self, paths: Iterable[str], scope: str = "") -> None:
        self.db.executemany("DELETE FROM stat WHERE scope=? AND path=?", ((scope, p) for p in paths))

    # locations ---------------------------------------------------------
    def add_shard(self, shard: str, size: int, rows: Sequence[LocationRow]) -> None:
        """Records a shard and the locations of its datums (see :func:`location_rows`)."""
        self.db.execute("INSERT OR REPLACE INTO shard VALUES (?,?,?)", (shard, size, len(rows)))
        self.locate_in(shard, rows)

    def locate_in(self, shard: str, rows: Iterable[LocationRow]) -> None:
        """Points the datums of ``rows`` at their copies in ``shard``."""
        self.db.executemany(
            "INSERT OR REPLACE INTO location VALUES (?,?,?,?,?)",
            ((datum, shard, offset, length, members) for datum, offset, length, members in rows),
        )

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

    def stored(self, datums: Iterable[str]) -> set[str]:
        """The subset of ``datums`` that some shard holds."""
        found: set[str] = set()
        batch = list(datums)
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.db.execute(f"SELECT datum FROM location WHERE datum IN ({marks})", chunk))
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
        self.db.executemany("INSERT OR REPLACE INTO staged VALUES (?,?,?)", changes)
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
        found = {}
        batch = list(paths)
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


# (datum, offset, length, members as text): a ``location`` row without its shard.
LocationRow = tuple[str, int, int, str]


def location_rows(index: ShardIndex) -> list[LocationRow]:
    """The ``location`` rows of a shard's datums, in a form that travels as JSON."""
    return [(d.datum, d.offset, d.length, _members_text(d.members)) for d in index.datums]


def _members_text(members: tuple[MemberLoc, ...]) -> str:
    # "/" cannot occur in an extension; offsets and sizes come first, so spaces in one are fine.
    return "/".join(f"{m.offset} {m.size} {m.ext}" for m in members)


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
