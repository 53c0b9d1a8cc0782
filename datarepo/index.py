"""``index.sqlite``: a local cache that can always be rebuilt from objects and shards.

It holds three caches, each a module of its own: the stat cache (file → member
hash, :mod:`datarepo.statcache`), the datum → shard locations
(:mod:`datarepo.locations`) and the staging area (:mod:`datarepo.staging`), and
named values (:meth:`Index.get_meta`). Deleting it loses speed
and the staging area, never committed data (docs/format.md, "index.sqlite").

Each thread that uses it has a SQLite connection of its own (a connection must not be
used by two threads at once, and each has a transaction of its own), opened as the thread
first uses it and closed when the thread ends (or by :meth:`Index.close` in it).

A repository this process may read but not write (another user's, a read-only mount) is
served by a private copy of the file: the caches work as ever, and what they learn is
dropped with the copy when the process ends.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from datarepo.errors import ClosedError, InvalidInputError
from datarepo.fsutil import set_aside
from datarepo.locations import Locations
from datarepo.sqlrows import cannot_write, is_damage, no_room
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


SQLITE_MAX_PATH = 512  # SQLite opens no file whose full path (its links resolved) is longer


def check_path(path: Path) -> None:
    """Raises InvalidInputError where SQLite could not open ``path``, nor its journal beside
    it, for the length of its path (a folder some 500 bytes deep): SQLite itself says only
    that it is "unable to open database file"."""
    size = len(os.fsencode(os.path.realpath(path)))
    if size + len("-journal") > SQLITE_MAX_PATH:
        raise InvalidInputError(f"the repository's folder is too deep for SQLite to open its index: {path.name}'s path "
                                f"is {size} bytes long, and must be at most {SQLITE_MAX_PATH - len('-journal')} "
                                "(move the repository to a shorter path)")


class Index:
    """The SQLite cache of one repository.

    A row that does not read as its writer wrote it (a wrong type, a value out of range,
    text that is not UTF-8) is damage, as a file SQLite cannot read is: each reader drops
    or rebuilds what it cannot trust, or raises :class:`~datarepo.sqlrows.DamagedCacheError`.
    """

    def __init__(self, path: Path, parents_copy: Path | None = None) -> None:
        """Opens ``path``; where this process may not write it, a private copy, or the one
        its parent made (``parents_copy``: a forked child's, a DataLoader worker's)."""
        check_path(path)
        self.path = path  # where the repository keeps it; its companion files lie beside it
        self.file = path  # what SQLite opens: the file itself, or a private copy of it
        self.created = not path.exists()
        self.closed = False
        self._local = threading.local()  # (this thread's connection, as .owned.db)
        self.stats, self.locations, self.staging = StatCache(self), Locations(self), Staging(self)
        self._drop_copy: Callable[[], object] | None = None  # (removes a copy this process made)
        if not _writable(path):
            if parents_copy is not None and parents_copy.exists():
                self.file, self.created = parents_copy, False
                self._open()
            else:
                self._open_copy()
            return
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            # Only a cache: a damaged file is set aside and rebuilt, never trusted or fatal.
            self._close_own()
            if not is_damage(e) and not _in_the_way(path):  # (a full disk: the file, staging area and all, is sound)
                raise
            for suffix in ("", "-wal", "-shm"):
                set_aside(path.with_name(path.name + suffix), "damaged")
            self.created = True
            self._open()

    @property
    def private(self) -> bool:
        """Whether this is a private copy (the repository may not be written here)."""
        return self.file != self.path

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection (opened on its first use here).

        Raises:
            ClosedError: the index was closed (:meth:`close`), in this thread or another.
        """
        if self.closed:
            raise ClosedError("the repository was closed (repo.close(), or the end of its with block) "
                              "while this still used it: open it again")
        try:
            return self._local.owned.db
        except AttributeError:
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.file, timeout=60, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-65536")
        self._local.owned = _Owned(db, self)
        return db

    def _open(self) -> None:
        db = self._connect()
        # Before anything is written (a no-op on an existing file): the location table is keyed
        # by random datum ids, and with 16 KiB pages a first add's inserts touch fewer pages.
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        if db.execute("SELECT 1 FROM meta WHERE name='schema'").fetchone() is None:  # (its value unread)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _close_own(self) -> None:
        """Closes this thread's connection, if it has one."""
        if (owned := self._local.__dict__.pop("owned", None)) is not None:
            owned.db.close()

    def _open_copy(self) -> None:
        """Opens a private copy of the file, in the temporary folder, removed when closed or
        when the process ends: copied through SQLite's backup (a consistent state, the
        write-ahead log included where a writer left one to read), or empty (then filled
        from the shard indexes) where the file is missing, unreadable or damaged."""
        import tempfile

        fd, name = tempfile.mkstemp(prefix="datarepo-index-", suffix=".sqlite")
        os.close(fd)
        self.file = Path(name)
        self._drop_copy = weakref.finalize(self, _remove_copy, self.file, os.getpid())
        try:
            source = _read_only(self.path)
            with contextlib.closing(source), contextlib.closing(sqlite3.connect(self.file)) as copy:
                source.backup(copy)
            self._open()
        except sqlite3.DatabaseError:
            self._close_own()
            _remove_copy(self.file, os.getpid())  # (and made anew, empty)
            self.created = True
            self._open()

    def close(self) -> None:
        """Closes this thread's connection; another thread's is closed as that thread ends,
        or with the index (a connection closed under a statement another thread runs
        crashes sqlite3). A later use, in any thread, raises
        :class:`~datarepo.errors.ClosedError`. Closing again does nothing."""
        self.closed = True
        self._close_own()
        if self._drop_copy is not None:
            self._drop_copy()  # (in the process that made it: a forked child leaves its parent's)

    def checkpoint(self) -> None:
        """Copies what the write-ahead log holds into the database, as far as no reader or
        writer stands in the way (SQLite's ``PASSIVE`` checkpoint), so that no later commit
        has to. Not inside a transaction, where SQLite refuses it."""
        if not self.db.in_transaction:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    @contextlib.contextmanager
    def best_effort(self) -> Iterator[None]:
        """Runs a write of what only saves the next command time (the stat cache, a status
        snapshot): where the disk is full, or the repository may not be written here, it is
        given up, rolled back, and the command goes on. A read command (``status``,
        ``diff``) must not fail for want of room, or of the right, to cache."""
        try:
            yield
        except (OSError, sqlite3.Error) as e:
            if not (no_room(e) or cannot_write(e)):
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



def _writable(path: Path) -> bool:
    """Whether this process may write the file and its folder (where SQLite keeps its log)."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that reads ``path`` and never writes it or beside it. Read-only, SQLite
    reads the write-ahead log where its files are there to read; where they are not (none
    was left, and none can be made here), the file is read as it stands (``immutable``)."""
    from urllib.parse import quote

    uri = f"file:{quote(str(path))}"
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        db.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
        return sqlite3.connect(f"{uri}?immutable=1", uri=True)


def _remove_copy(file: Path, owner: int) -> None:
    """Removes a private copy and its log files, in the process that made it (a forked
    child that inherits the object leaves them to its parent)."""
    if os.getpid() == owner:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{file}{suffix}")


def _in_the_way(path: Path) -> bool:
    """Whether something that is no file stands where the index should be (a folder, say):
    SQLite cannot open it, as it cannot without a file descriptor left, but it is damage."""
    return path.exists() and not path.is_file()


class _Owned:
    """A thread's connection, closed as the thread ends (its locals are dropped, in it).

    Closed so only while the index lives: the index itself is dropped with its connections
    by a collection of cycles, which frees each connection once nothing refers to it; one
    closed as the index goes could be one a frame still uses (closed under a statement
    another thread runs, sqlite3 crashes). Nor in a forked child, whose is its parent's."""

    __slots__ = ("db", "index", "pid")

    def __init__(self, db: sqlite3.Connection, index: Index) -> None:
        self.db, self.index, self.pid = db, weakref.ref(index), os.getpid()

    def __del__(self) -> None:
        if self.index() is not None and os.getpid() == self.pid:
            self.db.close()


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
