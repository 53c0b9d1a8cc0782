"""The stat cache (a table of ``index.sqlite`` and a file beside it): what each file looked
like when its content was last hashed, so that an unchanged file is not read again
(docs/format.md, "index.sqlite")."""

from __future__ import annotations

import json
import mmap
import sqlite3
from array import array
from collections.abc import Iterable
from contextlib import nullcontext
from itertools import accumulate, repeat
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from datarepo.fsutil import atomic_write
from datarepo.hashing import OID_LEN, Oid, hash_bytes
from datarepo.sqlrows import insert_rows
from datarepo.statcols import FileStat, StatColumns, StatRow

if TYPE_CHECKING:
    from datarepo.index import Index

# A stat row as :meth:`StatCache.save` writes it, checked in C a column at a time.
_SOUND = (
    "typeof(path) = 'text' AND typeof(size) = 'integer' AND typeof(mtime_ns) = 'integer' AND typeof(ino) = 'integer'"
    " AND typeof(seen_ns) = 'integer' AND typeof(hash) = 'text' AND length(hash) = 32 AND NOT hash GLOB '*[^0-9a-f]*'"
)
# A file whose mtime is this close to the moment it was looked at may change
# again within the same timestamp tick, so its cached hash is not trusted.
RACY_NS = 2_000_000_000


def trusted(entry: StatRow, stat: FileStat) -> bool:
    """True when a file still has the (size, mtime, inode) it had when hashed, and that
    mtime was old enough, when it was looked at, that no later write can share it."""
    return entry[:3] == stat and stat[1] < entry[3] - RACY_NS


class StatCache:
    """The stat cache of each *scope* ("" for the work tree, one per ingested folder): rows of
    the ``stat`` table overlaying a base (:class:`StatBase`), the files of one bulk hashing
    in a file of their own. A row for a path wins over the base's entry."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._bases: dict[str, StatBase] = {}  # the base of each scope, once read

    def load(self, scope: str = "") -> dict[str, StatRow]:
        """path → (size, mtime_ns, ino, seen_ns, hash) of every file, as plain tuples: this is
        on the hot path."""
        out = self._base(scope).entries()
        out.update((r[0], r[1:]) for r in self._rows("", [scope]))
        return out

    def lookup(self, paths: Iterable[str], scope: str = "") -> dict[str, StatRow]:
        """The entries of ``paths`` that the cache has."""
        batch = list(paths)
        found = self._base(scope).lookup(batch)
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            found.update((r[0], r[1:]) for r in self._rows(f" AND path IN ({','.join('?' * len(chunk))})", [scope, *chunk]))
        return found

    def _rows(self, where: str, params: list[str]) -> list[tuple]:
        """The rows of a scope (and ``where``) that read as :meth:`save` writes them: SQLite
        passes over any other in C (the file is then hashed again). A row SQLite cannot hand
        over (text that is not UTF-8) drops the scope's rows, as a damaged file drops all."""
        sql = f"SELECT path, size, mtime_ns, ino, seen_ns, hash FROM stat WHERE scope=?{where} AND {_SOUND}"
        try:
            return self.index.db.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            with nullcontext() if self.index.db.in_transaction else self.index.transaction():
                self.index.db.execute("DELETE FROM stat WHERE scope=?", (params[0],))
            return []

    def any(self, scope: str = "") -> bool:
        """Whether the cache holds any file of ``scope``."""
        if self.index.get_meta(_base_meta(scope)) is not None:
            return True
        return self.index.db.execute("SELECT 1 FROM stat WHERE scope=? LIMIT 1", (scope,)).fetchone() is not None

    def record(self, read: StatColumns, seen_ns: int, scope: str = "", bulk: bool = False) -> None:
        """Records the files ``read`` (hashed as looked at ``seen_ns``), in the caller's
        transaction: as the new base when ``bulk`` (a first add, whose cache was empty: one
        file, not a row per file, see :func:`write_base`), else as rows."""
        if not read:
            return
        if bulk:
            self.name_base(write_base((str(self.base_path(scope)), read, seen_ns)), scope)
        else:
            self.save(read.rows(seen_ns), scope)

    def save(self, entries: Iterable[tuple[str, StatRow]], scope: str = "") -> None:
        insert_rows(self.index.db, "stat", 7, ((scope, p, *e) for p, e in entries))

    def drop(self, paths: Iterable[str], scope: str = "") -> None:
        self.index.db.executemany("DELETE FROM stat WHERE scope=? AND path=?", ((scope, p) for p in paths))

    def name_base(self, named: str, scope: str = "") -> None:
        """Makes the file :func:`write_base` wrote the base, in place of the last one (in the
        caller's transaction). Rows written before stay, and still win."""
        self.index.set_meta(_base_meta(scope), named)
        self._bases.pop(scope, None)

    def _base(self, scope: str) -> StatBase:
        if (base := self._bases.get(scope)) is None:
            base = self._bases[scope] = StatBase.load(self, scope)
        return base

    def base_path(self, scope: str) -> Path:
        tag = "" if not scope else "-" + xxhash.xxh3_64_hexdigest(scope.encode("utf-8", "surrogateescape"))
        return self.index.path.with_name(f"index.stats{tag}")


def write_base(item: tuple[str, StatColumns, int]) -> str:
    """Writes the files read (``item``: the base's path, the files, when they were looked
    at) as the stat cache's next base; returns what names it, for
    :meth:`StatCache.name_base`. Until then the old name (or none) stays, and a base whose
    hash does not match what is named is read as empty (its files are hashed again). Plain
    data in and out: an executor may run it beside the work that stages."""
    path, read, seen_ns = item
    raw = StatBase.pack(read, seen_ns)
    atomic_write(Path(path), raw, mode=0o644, durable=False)
    return json.dumps([Path(path).name, hash_bytes(raw)])


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
        # Whatever its hash says, a base that does not hold together is read as empty (each
        # check in C): every place an entry's, every hash hex, the totals ending at the size.
        places_ok = 0 <= min(self.places) and max(self.places) < count
        if places_ok and self.totals[-1] + count - 1 == size and not bytes(self.hashes).translate(None, _HEX):
            self.count, self.seen_ns = count, seen_ns

    @classmethod
    def load(cls, cache: StatCache, scope: str) -> StatBase:
        """The base ``index.sqlite`` names; an empty one if it is missing or does not match.
        The file is mapped, not read: a re-add looks up a few paths, and reading 10 MB
        into memory took 5-6 ms, mapping and hashing it 0.5 ms. A base is replaced by
        rename, never rewritten in place, so the mapped bytes cannot change."""
        named = cache.index.get_meta(_base_meta(scope))
        try:
            name, digest = json.loads(named) if named is not None else (None, None)
            if name != cache.base_path(scope).name:
                return cls()
            with open(cache.index.path.with_name(name), "rb") as f:
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


_HEX = b"0123456789abcdef"
# Up to this many paths, :meth:`StatBase.lookup` searches for each (about 5 µs); above, it
# reads the base whole (about 70 ms for 100,000 files).
_FEW_PATHS = 4096


