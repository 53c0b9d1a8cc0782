"""Reading, hashing and storing the datums of work-tree files, over two processes when it pays.

A first ``add`` spends its time on per-file Python work: open, read, hash,
tar header, write. With a second core, a forked helper stores the keys after
a cut into shards of its own while this process stores those before it; this
process then adopts the helper's shards. The cut gives this process the
smaller part; once done with it, this process takes over the second half of
the keys the helper has not yet begun, so both end at about the same time.
Each shard still holds its datums in key order, and a datum both processes
hold is kept once.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path

from datarepo import parallel
from datarepo.hashing import Oid
from datarepo.porcelain import Progress, tick
from datarepo.repo import Repo
from datarepo.worktree import SIZE, Hasher
from datarepo.writer import DatumSink, Finished

STORE_BATCH = 256
# Below this many bytes to store, forking a helper costs more than it saves.
SPLIT_MIN_BYTES = int(os.environ.get("DATAREPO_SPLIT_MIN_BYTES", 32 << 20))
# This process's first share of the bytes. It is less than half so that this process,
# which also publishes its shards as it goes, is the one done first and takes over.
HERE_SHARE = 0.35
# The cut is placed by the sizes of about this many keys, evenly spread (of all keys, where
# there are fewer): the take-over evens out the rest.
SIZE_SAMPLES = 4096
# Stat-cache rows are written as they come, this many at a time: with two processes, written
# while the other one is busy, not one after the other at the end (SQLite has one writer).
STAT_SAVE_ROWS = 4096

Members = dict[str, dict[str, str]]


def store_keys(sink: DatumSink, hasher: Hasher, members: Members, keys: list[str], progress: Progress) -> dict[str, Oid]:
    """Stores the datums of ``keys`` (in key order) through ``sink``; returns each key's datum."""
    files = hasher.files

    def size(key: str) -> int:
        return sum([files[f][SIZE] for f in members[key].values()])

    if parallel.helper_available() and _at_least(map(size, keys), SPLIT_MIN_BYTES):
        step = max(1, len(keys) // SIZE_SAMPLES)
        cut = _cut([size(k) for k in keys[::step]]) * step
        if 0 < cut < len(keys):
            return _put_halves(sink, hasher, members, keys[:cut], keys[cut:], progress)
    return _put(sink, hasher, members, _batched(keys), lambda n: tick(progress, n))


def _at_least(sizes: Iterable[int], n: int) -> bool:
    total = 0
    for s in sizes:  # stops as soon as it knows: a re-add need not size every key
        total += s
        if total >= n:
            return True
    return n <= 0


def _cut(sampled: list[int]) -> int:
    """How many of the sampled keys make up this process's share of their bytes."""
    goal, done = HERE_SHARE * sum(sampled), 0
    for i, size in enumerate(sampled):
        done += size
        if done >= goal:
            return i + 1
    return len(sampled)


def _put(sink: DatumSink, hasher: Hasher, members: Members, batches: Iterable[list[str]], done: Callable[[int], None]) -> dict[str, Oid]:
    out: dict[str, Oid] = {}
    for batch in batches:
        out.update(zip(batch, sink.put_many([hasher.read(members[k]) for k in batch])))
        hasher.save(sink.repo.index, at_least=STAT_SAVE_ROWS)
        done(len(batch))
    return out


def _batched(items: list[str]) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, STORE_BATCH)):
        yield batch


def _handing_over(keys: list[str], asked: int, answer: int) -> Iterator[list[str]]:
    """The helper's batches of ``keys``. Once asked (a byte on ``asked``), it keeps the first
    half of the keys it has not begun and writes where they end to ``answer``: the other
    process takes the rest. Closing ``answer`` says there is nothing left to take."""
    start, end, answered = 0, len(keys), False
    try:
        while start < end:
            if not answered and _ready(asked):
                end = start + (end - start + 1) // 2
                os.write(answer, end.to_bytes(8, "little"))
                answered = True
            yield keys[start : min(start + STORE_BATCH, end)]
            start += STORE_BATCH
    finally:
        os.close(answer)


def _ready(fd: int) -> bool:
    try:
        return bool(os.read(fd, 1))
    except BlockingIOError:
        return False


def _put_halves(
    sink: DatumSink, hasher: Hasher, members: Members, mine: list[str], theirs: list[str], progress: Progress
) -> dict[str, Oid]:
    counter = mmap.mmap(-1, 8)  # shared with the helper: how many keys it has done
    hashed_before = hasher.hashed
    ask_r, ask_w = os.pipe()  # this process asks for part of the helper's keys
    answer_r, answer_w = os.pipe()  # where the helper's keys now end

    def there() -> bytes:
        os.set_blocking(ask_r, False)
        helper = DatumSink(Repo(sink.repo.dotdir, sink.repo.worktree), publish=False)  # its own SQLite connection

        def count(n: int) -> None:
            counter[:] = (int.from_bytes(counter[:], "little") + n).to_bytes(8, "little")

        with helper:
            ids = _put(helper, hasher, members, _handing_over(theirs, ask_r, answer_w), count)
        hasher.save(helper.repo.index)  # true whatever becomes of the shards
        shards = [[str(f.tmp), f.shard, f.size, f.rows] for f in helper.finished]
        head = {"ids": list(ids.values()), "hashed": hasher.hashed - hashed_before, "shards": shards}
        return _frame(head, [f.idx for f in helper.finished])

    seen = ticked = 0

    def done(n: int) -> None:
        nonlocal seen, ticked
        now = int.from_bytes(counter[:], "little")
        tick(progress, n + now - seen)
        ticked += n + now - seen
        seen = now

    def here() -> dict[str, Oid]:
        os.close(answer_w)  # the helper's copy is the one whose closing ends the answer
        out = _put(sink, hasher, members, _batched(mine), done)
        os.write(ask_w, b"?")
        if len(answer := os.read(answer_r, 8)) == 8:  # else the helper had begun its last batch
            out.update(_put(sink, hasher, members, _batched(theirs[int.from_bytes(answer, "little") :]), done))
        hasher.save(sink.repo.index)  # while the helper may still be at work
        return out

    try:
        out, raw = parallel.both(here, there)
    finally:
        for fd in (ask_r, ask_w, answer_r):
            os.close(fd)
    tick(progress, len(mine) + len(theirs) - ticked)
    if raw is None:  # the helper failed: its keys are done here (its shards were never published)
        sink.end_shard()  # they may come before keys this process took over
        out.update(_put(sink, hasher, members, _batched([k for k in theirs if k not in out]), lambda n: None))
        return out
    return out | _adopt(sink, hasher, members, theirs, raw)


def _adopt(sink: DatumSink, hasher: Hasher, members: Members, keys: list[str], raw: bytes) -> dict[str, Oid]:
    """Publishes the helper's shards; a shard holding a datum this process also stored
    is dropped, and its keys are stored here again, skipping that datum."""
    head, idx_files = _unframe(raw)
    ids = dict(zip(keys, map(Oid, head["ids"])))  # the keys it did: those before the ones it handed over
    dropped: set[str] = set()
    for (tmp, shard, size, rows), idx in zip(head["shards"], idx_files):
        if any(row[0] in sink.written for row in rows):
            Path(tmp).unlink(missing_ok=True)
            dropped.update(row[0] for row in rows)
        else:
            sink.adopt(Finished(Path(tmp), Oid(shard), size, idx, rows))
    again = [k for k, d in ids.items() if d in dropped]
    hasher.hashed += head["hashed"] - sum(len(members[k]) for k in again)  # those are read once more here
    if again:  # they come before the keys this process took over: a new shard keeps key order
        sink.end_shard()
    _put(sink, hasher, members, _batched(again), lambda n: None)
    return ids


def _frame(head: dict, blobs: list[bytes]) -> bytes:
    """A JSON head and byte strings as one: the head's length, the head, then the blobs."""
    text = json.dumps({**head, "blobs": [len(b) for b in blobs]}).encode()
    return b"".join([len(text).to_bytes(8, "little"), text, *blobs])


def _unframe(raw: bytes) -> tuple[dict, list[bytes]]:
    at = 8 + int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8:at])
    blobs = []
    for n in head["blobs"]:
        blobs.append(raw[at : at + n])
        at += n
    return head, blobs
