"""``index.sqlite``: a local cache that can always be rebuilt from objects and shards.

It holds three caches, each a module of its own: the stat cache (file → member
hash, :mod:`datarepo.statcache`), the datum → shard locations
(:mod:`datarepo.locations`) and the staging area (:mod:`datarepo.staging`), and
named values (:meth:`Index.get_meta`). Deleting it loses speed
and the staging area, never committed data (docs/format.md, "index.sqlite").
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from datarepo.fsutil import set_aside
from datarepo.locations import Locations
from datarepo.sqlrows import is_damage, no_room
from datarepo.staging import Staging
from datarepo.statcache import StatCache

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


class Index:
    """The SQLite cache of one repository.

    A row that does not read as its writer wrote it (a wrong type, a value out of range,
    text that is not UTF-8) is damage, as a file SQLite cannot read is: each reader drops
    or rebuilds what it cannot trust, or raises :class:`~datarepo.sqlrows.DamagedCacheError`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = not path.exists()
        self.stats, self.locations, self.staging = StatCache(self), Locations(self), Staging(self)
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            # Only a cache: a damaged file is set aside and rebuilt, never trusted or fatal.
            if hasattr(self, "db"):
                self.db.close()
            if not is_damage(e) and not _in_the_way(path):  # (a full disk: the file, staging area and all, is sound)
                raise
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
        if self.db.execute("SELECT 1 FROM meta WHERE name='schema'").fetchone() is None:  # (its value unread)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    def checkpoint(self) -> None:
        """Copies what the write-ahead log holds into the database, as far as no reader or
        writer stands in the way (SQLite's ``PASSIVE`` checkpoint), so that no later commit
        has to. Not inside a transaction, where SQLite refuses it."""
        if not self.db.in_transaction:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    @contextlib.contextmanager
    def unless_full(self) -> Iterator[None]:
        """Runs a write of what only saves the next command time (the stat cache, a status
        snapshot): where the disk is full it is given up, rolled back, and the command goes
        on. A read command (``status``, ``diff``) must not fail for want of room to cache."""
        try:
            yield
        except (OSError, sqlite3.Error) as e:
            if not no_room(e):
                raise
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")

    def transaction(self) -> sqlite3.Connection:
        """``with index.transaction() as db:`` commits on success, rolls back on error."""
        self.db.execute("BEGIN IMMEDIATE")
        return _Tx(self.db)  # type: ignore[return-value]

    # named values (the staged tree, the status snapshot, ingest state) ----
    def get_meta(self, name: str) -> str | None:
        """The text named ``name``; None if unset, or if it is not text (UTF-8) as every
        writer leaves it: a value that cannot be read is as good as lost."""
        return self.get_metas([name]).get(name)

    def get_metas(self, names: list[str]) -> dict[str, str]:
        """The values of those of ``names`` that are set (and text), read in one statement:
        from one state of the file, whatever another process commits meanwhile."""
        marks = ",".join("?" * len(names))
        sql = f"SELECT name, value FROM meta WHERE name IN ({marks}) AND typeof(value) = 'text'"
        try:
            return dict(self.db.execute(sql, names))
        except sqlite3.OperationalError:  # a value that is not UTF-8: read each alone, without it
            if len(names) == 1:
                return {}
            return {n: v for name in names for n, v in self.get_metas([name]).items()}

    def set_meta(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (name, value))



def _in_the_way(path: Path) -> bool:
    """Whether something that is no file stands where the index should be (a folder, say):
    SQLite cannot open it, as it cannot without a file descriptor left, but it is damage."""
    return path.exists() and not path.is_file()


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
