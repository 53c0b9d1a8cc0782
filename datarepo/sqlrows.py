"""Rows into SQLite, many to a statement; and the error of rows that do not read as written."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from itertools import chain, islice

from datarepo.errors import DataRepoError

# Rows go to SQLite this many to a statement.
ROWS_A_STATEMENT = 100


def insert_rows(db: sqlite3.Connection, table: str, width: int, rows: Iterable[Sequence[object]]) -> None:
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


# SQLite's result codes (the primary code, the low byte of an extended one) that say nothing
# of the file: SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_READONLY,
# SQLITE_IOERR (a write past a file size limit), SQLITE_FULL (a full disk), SQLITE_CANTOPEN
# (no file descriptor left).
_RESOURCE_CODES = (3, 5, 6, 7, 8, 10, 13, 14)


def is_damage(e: sqlite3.Error) -> bool:
    """Whether SQLite's error may say that the file is damaged (not a database, a schema or
    rows that are not what datarepo writes), not that the disk is full or unwritable,
    another process holds it, memory or file descriptors ran out: only a damaged file may
    be set aside and rebuilt (a full disk would otherwise lose the staging area with it)."""
    code = getattr(e, "sqlite_errorcode", None)
    return code is None or code & 0xFF not in _RESOURCE_CODES


def no_room(e: OSError | sqlite3.Error) -> bool:
    """Whether a write failed for want of room: a full disk (ENOSPC, SQLite's SQLITE_FULL), a
    quota, a file size limit (EFBIG, which SQLite reports as SQLITE_IOERR)."""
    import errno

    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (10, 13)  # SQLITE_IOERR, SQLITE_FULL


def cannot_write(e: OSError | sqlite3.Error) -> bool:
    """Whether a write failed for want of the right to write: a file or folder of another
    user's, a read-only mount (EACCES, EPERM, EROFS; SQLite's SQLITE_READONLY)."""
    import errno

    if isinstance(e, OSError):
        return e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == 8  # SQLITE_READONLY


# How to get past a cache that cannot be trusted, for an error that cannot: it is only a cache.
RECOVER = "delete .datarepo/index.sqlite (it is rebuilt; the staging area is lost) or run fsck --rebuild-index"


class DamagedCacheError(DataRepoError):
    """Rows of ``index.sqlite`` do not read as they were written, and the command cannot
    go on by dropping them. The message names the file and how to recover."""

    def __init__(self, what: str, recover: str = RECOVER) -> None:
        super().__init__(f"index.sqlite: {what}; {recover}")
