"""Reading and hashing the files of datums, trusting the stat cache where it can."""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable
from itertools import repeat
from pathlib import Path

from xxhash import xxh3_128_digest

from datarepo.errors import CorruptObjectError, InvalidInputError
from datarepo.hashing import Oid, datum_id, datum_id_of_digests
from datarepo.index import Index, StatPart, StatRow, trusted
from datarepo.shards import LARGE_FILE, FileRange, MemberData, member_hash
from datarepo.worktree import SIZE, FileStat, lstat


def _read_rest(fd: int, head: bytes, rel: str) -> bytes:
    """The whole of a file that grew since its stat, ``head`` read already. One that grows
    past ``LARGE_FILE`` is being written: it is an error, never held whole in memory."""
    chunks, total = [head], len(head)
    while chunk := os.read(fd, 1 << 20):
        total += len(chunk)
        if total > LARGE_FILE:
            raise InvalidInputError(f"file changed while it was being read: {rel}")
        chunks.append(chunk)
    return b"".join(chunks)


# A datum read from its files: its id, its members sorted by extension (bytes, or a range of
# a large file to stream when it is stored) and its size. A plain tuple: a first add makes
# 50,000, and a NamedTuple's constructor runs Python code.
Read = tuple[Oid, list[tuple[str, MemberData]], int]


class Hasher:
    """Hashes work-tree files, trusting the stat cache where the stat matches.

    A ``bulk`` hasher starts from an empty stat cache (a first ``add``): what
    it hashes becomes the cache's base in one file (:meth:`Index.write_stat_base`),
    not a row per file.
    """

    def __init__(
        self, root: Path, files: dict[str, FileStat], cache: dict[str, StatRow], seen_ns: int, scope: str = "", bulk: bool = False
    ) -> None:
        self.root = root
        self.scope = scope  # the stat cache's scope: "" for the work tree, one per ingested folder
        self.prefix = os.path.join(root, "")  # the root and a separator: paths are prefix + rel
        self.files = files
        self.cache = cache
        self.seen_ns = seen_ns
        self.bulk = bulk
        # What was hashed, as columns: paths, their (size, mtime_ns, inode) as int64s and
        # their 16-byte digests (made hex a column at a time). Those before ``_saved`` are in
        # the stat cache.
        self.names: list[str] = []
        self.stats = array("q")
        self.digests: list[bytes] = []
        self._saved = 0
        # The entries helper processes hashed: while the hasher is bulk, all for its base (a
        # hasher that is not bulk had the helpers save them as rows).
        self._helped: list[StatPart] = []
        self.hashed = 0  # files read and hashed (here, or by a helper that reported them)

    def save(self, index: Index, at_least: int = 1) -> None:
        """Writes the stat-cache rows not written yet, in a transaction of their own, if there
        are ``at_least`` that many. A bulk hasher keeps them for :meth:`write_to`."""
        if not self.bulk and len(self.names) - self._saved >= max(at_least, 1):
            with index.transaction():
                self.write_to(index)

    def write_to(self, index: Index) -> None:
        """Writes every stat-cache entry not written yet, in the caller's transaction: a bulk
        hasher's as the cache's base (once; any later ones as rows)."""
        start = self._saved
        if (write_base := self.detach_base()) is not None:
            index.name_stat_base(write_base(index), self.scope)
        elif len(self.names) > start:
            it = iter(self.stats[3 * start :])
            hashes = [d.hex() for d in self.digests[start:]]
            index.save_stats(zip(self.names[start:], zip(it, it, it, repeat(self.seen_ns), hashes)), self.scope)
        self._saved = len(self.names)

    def detach_base(self) -> Callable[[Index], str] | None:
        """A bulk hasher's stat base, to be written apart: a function that writes the file
        and returns what names it (:meth:`Index.write_stat_base`, which a forked helper may
        run), for the caller to record with :meth:`Index.name_stat_base`. From then on, the
        hasher counts every entry so far as saved. None if there is no base to write."""
        start = self._saved
        if not self.bulk or not (len(self.names) > start or self._helped):
            return None
        parts = [*self._helped, (self.names[start:], self.stats[3 * start :], self.hex_digests(start))]
        seen_ns, scope = self.seen_ns, self.scope
        self.bulk, self._saved = False, len(self.names)
        return lambda index: index.write_stat_base(parts, seen_ns, scope)

    def save_all(self, index: Index) -> None:
        """:meth:`write_to` in a transaction of its own, if there is anything to write."""
        if len(self.names) > self._saved or (self.bulk and self._helped):
            with index.transaction():
                self.write_to(index)

    def take_part(self, names: list[str], stats: array, hashes: str) -> None:
        """Takes on the entries a helper process hashed: a bulk hasher keeps them for its
        base (one that is not had the helper save them), and their stats are among
        :meth:`read_stats`, not put into ``files`` one by one."""
        self._helped.append((names, stats, hashes))

    def hex_digests(self, start: int = 0) -> str:
        """The hex hashes of the files hashed here from ``start`` on, joined."""
        return b"".join(self.digests[start:]).hex()

    def read_stats(self) -> list[tuple[list[str], array]]:
        """The paths read, here and by helper processes, with the (size, mtime_ns, inode) each
        was read at, as int64s: columns, for :meth:`Scan.fill_stats`."""
        return [(self.names, self.stats), *((names, stats) for names, stats, _ in self._helped)]

    def cached(self, rel: str) -> Oid | None:
        entry = self.cache.get(rel)
        if entry is not None and trusted(entry, self.files[rel]):
            return entry[4]
        return None

    def known_datum(self, members: dict[str, str]) -> Oid | None:
        """The datum id if every member's hash is cached."""
        hashes = {}
        for ext, rel in members.items():
            if (h := self.cached(rel)) is None:
                return None
            hashes[ext] = h
        return datum_id(hashes)

    def size(self, rel: str) -> int:
        """A file's size, stat'ing it if the scan did not."""
        if (size := self.files[rel][SIZE]) < 0:
            try:
                self.files[rel] = lstat(self.prefix + rel, rel)
            except FileNotFoundError:
                raise InvalidInputError(f"cannot stat {rel}: it is gone") from None
            size = self.files[rel][SIZE]
        return size

    def read_many(self, datums: Iterable[dict[str, str]]) -> list[Read]:
        """Reads (or, for large files, prepares to stream) and hashes the members of each
        datum. A first add runs every file through this loop: a datum's id is hashed from
        its members' digests as they are read, not from hex hashes parsed back."""
        out = []
        files, read, names, stats, kept = self.files, self._read, self.names.append, self.stats.extend, self.digests.append
        for members in datums:
            items: list[tuple[str, MemberData]] = []
            digests = []
            size = 0
            for ext in sorted(members):
                rel = members[ext]
                data, digest = read(rel)
                names(rel)
                stats(files[rel])
                kept(digest)
                items.append((ext, data))
                digests.append((ext, digest))
                size += len(data) if type(data) is bytes else data.size  # type: ignore[union-attr]
            out.append((datum_id_of_digests(digests), items, size))
            self.hashed += len(items)
        return out

    def _read(self, rel: str) -> tuple[MemberData, bytes]:
        """A file's bytes (a range to stream, if it is large) and their digest, with as few
        calls as the OS allows: a file the scan did not stat is stat'ed once open. (Opened by
        its name in its directory's descriptor instead, 100,000 files spent 3-5% less time in
        the kernel and as much more in Python.)"""
        size = self.files[rel][SIZE]
        try:
            fd = os.open(self.prefix + rel, os.O_RDONLY)
            try:
                if size < 0:
                    st = os.fstat(fd)
                    self.files[rel] = st.st_size, st.st_mtime_ns, st.st_ino
                    size = st.st_size
                if size <= LARGE_FILE:
                    data = os.read(fd, size + 1)
                    if len(data) > size:  # it grew since its stat
                        data = _read_rest(fd, data, rel)
                    return data, xxh3_128_digest(data)
            finally:
                os.close(fd)
            span = FileRange(Path(self.prefix + rel), 0, size)
            oid = member_hash(span)
            return span._replace(oid=oid), bytes.fromhex(oid)
        except OSError as e:
            raise InvalidInputError(f"cannot read {rel}: {e.strerror}") from None
        except CorruptObjectError:
            raise InvalidInputError(f"file changed while it was being read: {rel}") from None

    def datum(self, members: dict[str, str]) -> Oid:
        """The datum id of a work-tree datum, hashing what the cache lacks."""
        known = self.known_datum(members)
        return known if known is not None else self.read_many([members])[0][0]
