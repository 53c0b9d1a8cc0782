"""Files and their stats as columns: the one packed form a scan, a stored batch, the stat
cache's base and the status snapshot share."""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, repeat

from datarepo.hashing import Oid

# (size, mtime_ns, inode) of a file: a plain tuple, not a NamedTuple, because a scan
# builds one per file and that constructor is a measurable share of a status. Its
# "mtime" is the file's change time (:func:`file_stat`).
FileStat = tuple[int, int, int]
SIZE, MTIME = 0, 1
_LATEST = (1 << 63) - 1  # the latest time an int64 holds (in 2262)


def file_stat(st: os.stat_result) -> FileStat:
    """A file's (size, mtime_ns, inode) as the stat cache and the status snapshot compare
    it, where "mtime" is the later of its mtime and its ctime. The mtime alone can be set
    back (``touch -r``, ``cp -p``, ``rsync -a``, ``tar x``): a file rewritten in place
    with its old size and mtime, or deleted and made again where its inode is reused,
    would look unchanged. Its ctime is set to the clock by every write and every change
    of its mtime, and cannot be set back. An mtime past 2262 is held as the latest time an
    int64 holds: a time in the future, so never trusted (:func:`datarepo.statcache.trusted`)."""
    mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
    return st.st_size, (mtime if mtime < _LATEST else _LATEST) if mtime > ctime else ctime, st.st_ino
# The stat of a file listed but not stat'ed yet: it is, once it is open for reading.
UNSTATED: FileStat = (-1, -1, -1)
# A stat-cache entry: the file's (size, mtime_ns, inode) when it was hashed, when it was
# looked at (``seen_ns``), and its hash. A plain tuple, read by position, for the same reason.
StatRow = tuple[int, int, int, int, Oid]
DIGEST = 16  # bytes of an xxh3-128 digest
# Paths and stats packed: the paths joined by NUL (which no path holds) as UTF-8, and the
# stats as three int64s a path, in the same order.
Packed = tuple[bytes, bytes]


def listing_bytes(packed: Packed) -> bytes:
    """One byte string of a packed listing: the paths' byte count (int64), paths, stats."""
    return len(packed[0]).to_bytes(8, "little") + packed[0] + packed[1]


def listing_parts(raw: bytes) -> Packed | None:
    """The inverse of :func:`listing_bytes`; None if ``raw`` is too short to be one."""
    if len(raw) < 8:
        return None
    cut = 8 + int.from_bytes(raw[:8], "little")
    return raw[8:cut], raw[cut:]


@dataclass
class StatColumns:
    """Paths, with their (size, mtime_ns, inode) as three int64s each and, for files that
    were hashed, their 16-byte digests joined: plain data, cheap to pickle from a worker
    and to write as one file."""

    names: list[str] = field(default_factory=list)
    stats: array = field(default_factory=lambda: array("q"))
    digests: bytearray = field(default_factory=bytearray)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, stat: FileStat, digest: bytes) -> None:
        self.names.append(name)
        self.stats.extend(stat)
        self.digests += digest

    def extend(self, other: StatColumns) -> None:
        self.names.extend(other.names)
        self.stats.extend(other.stats)
        self.digests += other.digests

    def stat(self, i: int) -> FileStat:
        return self.stats[3 * i], self.stats[3 * i + 1], self.stats[3 * i + 2]

    @classmethod
    def of(cls, files: Mapping[str, FileStat]) -> StatColumns:
        """The columns of a path → stat mapping (no digests)."""
        return cls(list(files), array("q", chain.from_iterable(files.values())))

    def files(self) -> dict[str, FileStat]:
        """path → (size, mtime_ns, inode)."""
        it = iter(self.stats)
        return dict(zip(self.names, zip(it, it, it)))

    def packed(self) -> Packed:
        """The paths and stats as bytes (:data:`Packed`): what a status snapshot digests,
        compares and saves."""
        return "\x00".join(self.names).encode("utf-8", "surrogateescape"), self.stats.tobytes()

    @classmethod
    def unpacked(cls, packed: Packed) -> StatColumns | None:
        """The inverse of :meth:`packed`; None for anything malformed."""
        stats = array("q")
        try:
            names = packed[0].decode("utf-8", "surrogateescape").split("\x00") if packed[0] else []
            stats.frombytes(packed[1])
        except (UnicodeDecodeError, ValueError):
            return None
        return cls(names, stats) if len(stats) == 3 * len(names) else None

    def hex_hashes(self) -> list[str]:
        """The files' hashes as oids, a column at a time."""
        text = self.digests.hex()
        return [text[i : i + 32] for i in range(0, len(text), 32)]

    def rows(self, seen_ns: int) -> Iterator[tuple[str, StatRow]]:
        """(path, stat-cache entry) of each hashed file, as looked at ``seen_ns``."""
        it = iter(self.stats)
        return zip(self.names, zip(it, it, it, repeat(seen_ns), self.hex_hashes()))  # type: ignore[arg-type]
