"""Reading, hashing and storing the datums of files (the work tree's, or a folder an
``ingest`` takes), over two processes when it pays.

A first ``add`` spends its time on per-file Python work: open, read, hash,
tar header, write. With a second core, a forked helper stores keys into
shards of its own, and publishes them, while this process stores others.
The keys are cut into batches, in order, and each process takes the next
batch whenever it is free (:class:`_Queue`), so both end within a batch of
each other, however their speeds vary. Each process takes its batches in key
order, so each shard still holds its datums in key order; a datum both
processes hold is kept once, at the place of whichever of its keys was
stored first.
"""

from __future__ import annotations

import json
import mmap
import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import NamedTuple

from datarepo import parallel
from datarepo.hashing import OID_LEN, Oid, is_oid
from datarepo.index import location_rows
from datarepo.porcelain import Progress, begin, tick
from datarepo.repo import Repo
from datarepo.worktree import SIZE
from datarepo.hasher import Hasher
from datarepo.writer import DatumSink

STORE_BATCH = 256
# Below this many bytes to store, forking a helper costs more than it saves.
SPLIT_MIN_BYTES = int(os.environ.get("DATAREPO_SPLIT_MIN_BYTES", 32 << 20))
# Whether there are that many is judged by the sizes of about this many keys, evenly spread.
# (A first add stats their files by path, before the fork.)
SIZE_SAMPLES = 64
# The keys two processes share are cut into at least this many batches (fewer keys than
# that: a key each), so that neither waits long for the other at the end, and at most
# ``_Queue.MOST`` (more keys: larger batches).
FEWEST_BATCHES = 64
# Stat-cache rows are written as they come, this many at a time: with two processes, written
# while the other one is busy, not one after the other at the end (SQLite has one writer).
STAT_SAVE_ROWS = 4096

Members = dict[str, dict[str, str]]


class Stored(NamedTuple):
    """The datum of each key, and its size: the bytes of its members."""

    datums: dict[str, Oid]
    sizes: dict[str, int]

    def update(self, other: Stored) -> None:
        self.datums.update(other.datums)
        self.sizes.update(other.sizes)


def store_datums(sink: DatumSink, hasher: Hasher, members: Members, keys: list[str], progress: Progress) -> Stored:
    """The datum and size of every key in ``keys``, storing the datums no shard holds yet: a
    key whose files all have cached hashes is not read, unless its datum must be stored."""
    if hasher.cache:
        datums = {k: hasher.known_datum(members[k]) for k in keys}
        present = sink.repo.index.stored(d for d in datums.values() if d)
        to_read = [k for k in keys if datums[k] not in present]
    else:  # nothing hashed before (a first add): nothing known, every key read
        datums, to_read = dict.fromkeys(keys), keys
    begin(progress, len(keys))
    tick(progress, len(keys) - len(to_read))
    read = store_keys(sink, hasher, members, to_read, progress)
    datums.update(read.datums)
    # The size of a key read is summed as its datum is stored, by whichever process stores it,
    # not in one more pass over 50,000 keys here; that of a key not read, from its files' stats.
    sizes = read.sizes
    if len(sizes) < len(keys):
        files = hasher.files
        sizes.update((k, sum([files[f][SIZE] for f in members[k].values()])) for k in keys if k not in sizes)
    return Stored(datums, sizes)  # type: ignore[arg-type]


def store_keys(sink: DatumSink, hasher: Hasher, members: Members, keys: list[str], progress: Progress) -> Stored:
    """Stores the datums of ``keys`` (in key order) through ``sink``; returns each key's datum and size."""
    if parallel.helper_available() and len(keys) > 1:
        step = max(1, len(keys) // SIZE_SAMPLES)
        if sum(sum([hasher.size(f) for f in members[k].values()]) for k in keys[::step]) * step >= SPLIT_MIN_BYTES:
            return _put_shared(sink, hasher, members, keys, progress)
    return _put(sink, hasher, members, _batched(keys), lambda n: tick(progress, n))


def _put(
    sink: DatumSink,
    hasher: Hasher,
    members: Members,
    batches: Iterable[list[str]],
    done: Callable[[int], None],
    logs: tuple[_Written, _Written] | None = None,
) -> Stored:
    """Stores the datums of the keys of ``batches``. With ``logs`` (this process's, the other's),
    a datum the other process has written, though not yet published, is left to it."""
    out = Stored({}, {})
    for batch in batches:
        elsewhere = logs[1].taken_in() if logs else frozenset()
        read = hasher.read_many([members[k] for k in batch])
        sink.put_many(read, elsewhere)
        ids = [datum for datum, _, _ in read]
        if logs:
            logs[0].add(ids)
        out.datums.update(zip(batch, ids))
        out.sizes.update(zip(batch, [size for _, _, size in read]))
        hasher.save(sink.repo.index, at_least=STAT_SAVE_ROWS)
        done(len(batch))
    return out


class _Written:
    """The datums one process has stored (or found stored) so far, for the other to leave
    alone. Without it, a datum in both halves was written twice whenever the other
    process's copy was still in a shard not yet published (a shard is 256 MiB), and the
    helper's shard then had to be copied without it. A count, then 32-character ids, in an
    anonymous mapping shared by the fork. Bytes not yet written are zeros, so a reader that
    gets ahead of a write finds an id that is not hex, and stops there."""

    def __init__(self, capacity: int) -> None:
        self.map = mmap.mmap(-1, 8 + OID_LEN * capacity)
        self.capacity, self.count = capacity, 0  # the writer's side
        self.read = 0  # the reader's side
        self.seen: set[str] = set()

    def add(self, datums: list[Oid]) -> None:
        if self.count + len(datums) > self.capacity:  # cannot happen: each key is logged once
            return
        at = 8 + OID_LEN * self.count
        self.map[at : at + OID_LEN * len(datums)] = "".join(datums).encode()
        self.count += len(datums)
        self.map[:8] = self.count.to_bytes(8, "little")

    def taken_in(self) -> set[str]:
        count = min(int.from_bytes(self.map[:8], "little"), self.capacity)
        text = self.map[8 + OID_LEN * self.read : 8 + OID_LEN * count].decode("latin-1")
        for i in range(0, len(text), OID_LEN):
            if not is_oid(datum := text[i : i + OID_LEN]):
                break
            self.seen.add(datum)
            self.read += 1
        return self.seen


def _batched(items: list[str]) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, STORE_BATCH)):
        yield batch


class _Queue:
    """The batches of keys that two processes share, each taken by whichever process asks
    first: their numbers wait in a pipe, four bytes each, written before the fork, and each
    process reads one number at a time (the kernel hands each read to one reader, whole).
    The pipe is written at once, before anything reads it, so it holds at most one page:
    the least a pipe is given. Each process notes the batches it took, in order."""

    MOST = 1024  # four bytes each: one page

    def __init__(self, keys: list[str]) -> None:
        size = min(STORE_BATCH, max(1, len(keys) // FEWEST_BATCHES))
        self.size = max(size, -(-len(keys) // self.MOST))
        self.keys = keys
        self.count = -(-len(keys) // self.size)
        self._read, write = os.pipe()
        try:
            os.write(write, b"".join(n.to_bytes(4, "little") for n in range(self.count)))
        finally:
            os.close(write)  # the queue ends where the numbers do
        self.taken = array("i")

    def batch(self, number: int) -> list[str]:
        return self.keys[number * self.size : (number + 1) * self.size]

    def batches(self) -> Iterator[list[str]]:
        """The batches this process takes, until there are none left."""
        while len(got := os.read(self._read, 4)) == 4:
            number = int.from_bytes(got, "little")
            self.taken.append(number)
            yield self.batch(number)

    def close(self) -> None:
        os.close(self._read)


def _put_shared(sink: DatumSink, hasher: Hasher, members: Members, keys: list[str], progress: Progress) -> Stored:
    counter = mmap.mmap(-1, 8)  # shared with the helper: how many keys it has done
    here_log, there_log = _Written(len(keys)), _Written(len(keys))
    hashed_before, read_before = hasher.hashed, len(hasher.names)
    queue = _Queue(keys)

    def there() -> bytes:
        helper = DatumSink(Repo(sink.repo.dotdir, sink.repo.worktree))  # its own SQLite connection

        def count(n: int) -> None:
            counter[:] = (int.from_bytes(counter[:], "little") + n).to_bytes(8, "little")

        with helper:  # it publishes its shards as this process does
            did = _put(helper, hasher, members, queue.batches(), count, (there_log, here_log))
        hasher.save(helper.repo.index)  # true whatever becomes of the shards (a bulk hasher's go back)
        return _Answer.of(helper, hasher, read_before, did, hasher.hashed - hashed_before, queue.taken)

    seen = ticked = 0

    def done(n: int) -> None:
        nonlocal seen, ticked
        now = int.from_bytes(counter[:], "little")
        tick(progress, n + now - seen)
        ticked += n + now - seen
        seen = now

    def here() -> Stored:
        out = _put(sink, hasher, members, queue.batches(), done, (here_log, there_log))
        hasher.save(sink.repo.index)  # while the helper may still be at work
        sink.end_shard()  # published too: the helper publishes its last shard before it answers
        return out

    before = sink.repo.index.known_shards()
    try:
        out, raw = parallel.both(here, there)
    finally:
        queue.close()
    tick(progress, len(keys) - ticked)
    if raw is None:  # the helper failed: its keys are done here (those of shards it published are found there)
        # What it published is in the location cache (shard, .idx, then rows): stored by this add.
        for oid in sorted(sink.repo.index.known_shards() - before - {oid for oid, _ in sink.shards}):
            index = sink.repo.store.read_index(oid)
            sink.take_on(index.shard, index.size, [d.datum for d in index.datums], [d.length for d in index.datums])
        sink.end_shard()  # they may come before keys this process took
        # Its keys: a datum this process left to it, logged for one of them, is stored with them.
        out.update(_put(sink, hasher, members, _batched([k for k in keys if k not in out.datums]), lambda n: None))
        return out
    answer = _Answer.parse(raw)
    return _adopt(sink, hasher, out, [k for number in answer.taken for k in queue.batch(number)], answer)


class _Answer(NamedTuple):
    """What the helper hands back: the batches it took, the datum and size of each of their
    keys, the shards it published (oid, size, and each one's datums with their lengths), the
    files it read with their (size, mtime_ns, inode) (a first add's scan leaves those to the
    reads) and hashes (for a bulk hasher's stat cache), and how many it read. It travels as a small JSON head
    and packed arrays: JSON of 50,000 ids and 100,000 stats cost a tenth of a second to
    write and read, while both processes waited."""

    taken: array
    ids: list[Oid]
    sizes: array
    shards: list[tuple[Oid, int, list[Oid], array]]
    names: list[str]
    stats: array
    hashes: str
    hashed: int

    @staticmethod
    def of(sink: DatumSink, hasher: Hasher, start: int, did: Stored, hashed: int, taken: array) -> bytes:
        """The answer of a helper whose hasher read what it holds from ``start`` on."""
        held = [sink.held[oid] for oid, _ in sink.shards]
        head = {"hashed": hashed, "shards": [[oid, size, len(h)] for (oid, size), h in zip(sink.shards, held)]}
        datums = list(chain.from_iterable(held))
        parts = [
            json.dumps(head).encode(),
            taken.tobytes(),
            "".join(did.datums.values()).encode(),
            array("q", did.sizes.values()).tobytes(),
            "".join(datums).encode(),
            array("q", map(sink.written.__getitem__, datums)).tobytes(),
            "\x00".join(hasher.names[start:]).encode("utf-8", "surrogateescape"),
            hasher.stats[3 * start :].tobytes(),
            hasher.hex_digests(start).encode(),
        ]
        return b"".join(chain.from_iterable((len(p).to_bytes(8, "little"), p) for p in parts))

    @classmethod
    def parse(cls, raw: bytes) -> _Answer:
        parts, at = [], 0
        while at < len(raw):
            size = int.from_bytes(raw[at : at + 8], "little")
            parts.append(raw[at + 8 : at + 8 + size])
            at += 8 + size
        head_raw, taken_raw, ids, sizes_raw, datums, lengths_raw, names, stats_raw, hashes = parts
        head, taken, sizes, lengths, stats = json.loads(head_raw), array("i"), array("q"), array("q"), array("q")
        taken.frombytes(taken_raw)
        sizes.frombytes(sizes_raw)
        lengths.frombytes(lengths_raw)
        stats.frombytes(stats_raw)
        shards, start = [], 0
        for oid, size, count in head["shards"]:
            shards.append((Oid(oid), size, _oids(datums, start, count), lengths[start : start + count]))
            start += count
        read = names.decode("utf-8", "surrogateescape").split("\x00") if names else []
        return cls(taken, _oids(ids, 0, len(ids) // OID_LEN), sizes, shards, read, stats, hashes.decode("ascii"), head["hashed"])


def _oids(joined: bytes, start: int, count: int) -> list[Oid]:
    text = joined[start * OID_LEN : (start + count) * OID_LEN].decode("ascii")
    return [Oid(text[i : i + OID_LEN]) for i in range(0, len(text), OID_LEN)]


def _adopt(sink: DatumSink, hasher: Hasher, out: Stored, did: list[str], answer: _Answer) -> Stored:
    """Takes on the shards the helper published, with the datums and sizes of the keys it did
    (``did``, in the order it stored them; ``out`` has those of the keys this process did). A
    shard of the helper's holding a datum this process also stored is copied without it, then
    dropped: each datum is stored once."""
    out.datums.update(zip(did, answer.ids))
    out.sizes.update(zip(did, answer.sizes))
    hasher.take_part(answer.names, answer.stats, answer.hashes)
    hasher.hashed += answer.hashed
    mine = list(sink.shards)
    doubled = [oid for oid, _, held, _ in answer.shards if not sink.written.keys().isdisjoint(held)]
    for oid, size, held, lengths in answer.shards:
        if oid not in doubled:
            sink.take_on(oid, size, held, lengths)
    if not doubled:
        return out
    # Each of those shards is copied without the datums this process holds, byte for byte
    # (no file is read again), into shards of its own, which hold its datums in its order,
    # key order. Then it is dropped.
    twice = {d for oid, _, held, _ in answer.shards if oid in doubled for d in held if d in sink.written}
    sink.end_shard()
    for oid in doubled:
        sink.copy_shard(oid)
    sink.end_shard()
    sink.repo.drop_shards(doubled)
    _relocate(sink, mine, twice)
    return out


def _relocate(sink: DatumSink, shards: list[tuple[Oid, int]], datums: set[str]) -> None:
    """Points the location cache at this process's copy of ``datums``, where it has one: a
    dropped shard's rows are gone, and some may have been the ones for these datums."""
    with sink.repo.index.transaction():
        for oid, _ in shards:
            if any(d in datums for d in sink.held[oid]):
                rows = location_rows(sink.repo.store.read_index(oid))
                sink.repo.index.locate_in([row for row in rows if row[0] in datums])
