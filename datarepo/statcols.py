"""Files and their stats as columns: the one packed form a scan, a stored batch, the stat
cache's base and the status snapshot share."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat

from datarepo.hashing import Oid

# (size, mtime_ns, inode) of a file: a plain tuple, not a NamedTuple, because a scan
# builds one per file and that constructor is a measurable share of a status.
FileStat = tuple[int, int, int]
SIZE, MTIME = 0, 1
# A stat-cache entry: the file's (size, mtime_ns, inode) when it was hashed, when it was
# looked at (``seen_ns``), and its hash. A plain tuple, read by position, for the same reason.
StatRow = tuple[int, int, int, int, Oid]
DIGEST = 16  # bytes of an xxh3-128 digest


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

    def hex_hashes(self) -> list[str]:
        """The files' hashes as oids, a column at a time."""
        text = self.digests.hex()
        return [text[i : i + 32] for i in range(0, len(text), 32)]

    def rows(self, seen_ns: int) -> Iterator[tuple[str, StatRow]]:
        """(path, stat-cache entry) of each hashed file, as looked at ``seen_ns``."""
        it = iter(self.stats)
        return zip(self.names, zip(it, it, it, repeat(seen_ns), self.hex_hashes()))  # type: ignore[arg-type]
