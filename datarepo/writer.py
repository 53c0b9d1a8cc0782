"""``DatumSink``: stores datums into new shards, each datum at most once."""

from __future__ import annotations

import os
from collections.abc import Container, Iterable, Mapping

from datarepo.hashing import Oid, datum_id
from datarepo.index import location_rows
from datarepo.repo import Repo
from datarepo.shards import LARGE_FILE, DatumLoc, MemberData, ShardWriter
from datarepo.store import datum_members
from datarepo.hasher import Read


class DatumSink:
    """Appends new datums to shards of the repository's target size.

    A datum some shard already holds is never written again (``rewrite``, for
    repack, writes it once more into the new shards). A shard is
    published (shard, then ``.idx``, then its rows in the location cache) as
    soon as it is full, and the last one on :meth:`close`; until a commit
    names its datums, a published shard is garbage that ``gc`` may remove.
    Callers hold the writer lock.
    """

    def __init__(self, repo: Repo, rewrite: bool = False) -> None:
        self.repo = repo
        self.rewrite = rewrite
        # With no shard before this sink began (a first add), no datum was stored before it:
        # those another process stores meanwhile come through ``elsewhere``.
        self._none_before = not rewrite and not repo.index.known_shards()
        self.written: dict[Oid, int] = {}  # datum → its length in its shard
        self.shards: list[tuple[Oid, int]] = []  # (oid, size) of each shard published
        self.held: dict[Oid, list[Oid]] = {}  # the datums of each shard published
        self._writer: ShardWriter | None = None
        self._shard_size = repo.config.shard_size

    def has(self, datum: Oid) -> bool:
        return datum in self.written or (not self.rewrite and self.repo.index.has(datum))

    def put(self, members: Mapping[str, MemberData], hashes: Mapping[str, str]) -> Oid:
        """Stores a datum given its members and their hashes; returns its id."""
        return self.put_datum(datum_id(hashes), members)

    def put_datum(self, datum: Oid, members: Mapping[str, MemberData]) -> Oid:
        """Stores a datum whose id is known (its members already checked against it)."""
        if not self.has(datum):
            self._write(datum, members)
        return datum

    def put_many(self, batch: list[Read], elsewhere: Container[str] = frozenset()) -> None:
        """Stores datums read from files, in order, asking the location cache about all of
        them at once; those in ``elsewhere`` (written by another process, to publish) are
        left out."""
        present = set() if self.rewrite or self._none_before else self.repo.index.stored([datum for datum, _, _ in batch])
        written = self.written
        for datum, members, _ in batch:
            if datum not in present and datum not in written and datum not in elsewhere:
                self._wrote(self._shard().add(datum, members))

    def copy_shard(self, shard: Oid) -> None:
        """Writes the datums of ``shard`` this sink has not written, in the shard's order and
        byte for byte, each checked against its id as it is read."""
        store = self.repo.store
        index = store.read_index(shard)
        with open(store.shard_path(shard), "rb") as f:
            for loc in index.datums:
                if loc.datum in self.written:
                    continue
                span = os.pread(f.fileno(), loc.length, loc.offset) if loc.length <= LARGE_FILE else None
                members = datum_members(store, shard, loc, LARGE_FILE, span)  # checked against its id
                if span is None:
                    self._write(loc.datum, members)
                else:
                    self._wrote(self._shard().add_span(loc, span))

    def _write(self, datum: Oid, members: Mapping[str, MemberData]) -> None:
        self._wrote(self._shard().add(datum, sorted(members.items())))

    def _shard(self) -> ShardWriter:
        if self._writer is None:
            self._writer = self.repo.store.new_shard()
        return self._writer

    def _wrote(self, loc: DatumLoc) -> None:
        """Counts a datum the shard being written has just taken; ends the shard once full.
        Its location rows then go from SQLite's write-ahead log into the database, while
        there is more to store: left to SQLite, the log of a first add's two full shards
        was copied by whichever commit came next, the rows of the last shard, which the
        other process then waited for (42-46 ms for them; 16-23 ms, the copy 8-16 ms)."""
        self.written[loc.datum] = loc.length
        if self._writer is not None and self._writer.size >= self._shard_size:
            self.end_shard()
            self.repo.index.checkpoint()

    def end_shard(self) -> None:
        """Ends the shard being written: the next datum starts a new one."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        tmp, index = writer.finish()
        rows = location_rows(index)
        # Published: the file, its ``.idx``, then its rows in the location cache.
        self.repo.store.publish_shard(tmp, index.shard, index.to_bytes())
        with self.repo.index.transaction():  # one transaction, not one per row
            self.repo.index.add_shard(index.shard, index.size, rows)
        self.shards.append((index.shard, index.size))
        self.held[index.shard] = [d.datum for d in index.datums]

    def take_on(self, shard: Oid, size: int, datums: list[Oid], lengths: Iterable[int]) -> None:
        """Counts a shard another process published for this one (with the datums it holds
        and their lengths) as written here."""
        self.shards.append((shard, size))
        self.held[shard] = datums
        self.written.update(zip(datums, lengths))

    def close(self) -> list[tuple[Oid, int]]:
        """Publishes the last shard; returns the (oid, size) of every shard written."""
        self.end_shard()
        return self.shards

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def __enter__(self) -> DatumSink:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
