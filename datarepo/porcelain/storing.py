"""Reading, hashing and storing the datums of work-tree files, over two processes when it pays.

A first ``add`` spends its time on per-file Python work: open, read, hash,
tar header, write. With a second core, a forked helper stores the second half
of the keys (by bytes) into shards of its own while this process stores the
first half; this process then adopts the helper's shards. Each shard still
holds its datums in key order, and a datum both halves hold is kept once.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from datarepo import parallel
from datarepo.hashing import Oid
from datarepo.porcelain import Progress, tick
from datarepo.repo import Repo
from datarepo.shards import BLOCK, padded
from datarepo.worktree import SIZE, Hasher
from datarepo.writer import DatumSink, Finished

STORE_BATCH = 256
# Below this many bytes to store, forking a helper costs more than it saves.
SPLIT_MIN_BYTES = int(os.environ.get("DATAREPO_SPLIT_MIN_BYTES", 32 << 20))
# The helper also encodes its shards' indexes and location rows and writes its stat
# rows before it is done, work this process does after: this process takes a bit more.
HERE_SHARE = 0.52
# How far from that share a shard boundary may be and still be where the halves meet.
SHARD_CUT_SLACK = 0.03

Members = dict[str, dict[str, str]]


def store_keys(sink: DatumSink, hasher: Hasher, members: Members, keys: list[str], progress: Progress) -> dict[str, Oid]:
    """Stores the datums of ``keys`` (in key order) through ``sink``; returns each key's datum."""
    cut = len(keys)
    if parallel.helper_available():
        files = hasher.files  # what each datum takes in a tar: a header and whole blocks a member
        sizes = [sum([BLOCK + padded(files[f][SIZE]) for f in members[k].values()]) for k in keys]
        if sum(sizes) >= SPLIT_MIN_BYTES:
            cut = _cut(sizes, sink.repo.config.shard_size)
    if cut in (0, len(keys)):
        return _put(sink, hasher, members, keys, lambda n: tick(progress, n))
    return _put_halves(sink, hasher, members, keys[:cut], keys[cut:], progress)


def _cut(sizes: list[int], shard_size: int) -> int:
    """Where this process's share ends: at the end of a full shard if one is near the
    share's end (so the halves leave no extra part-filled shard), else at the share's end."""
    total = sum(sizes)
    goal = HERE_SHARE * total
    share_end, best, filled, done = len(sizes), None, 0, 0
    for i, size in enumerate(sizes):
        done += size
        filled += size
        if share_end == len(sizes) and done >= goal:
            share_end = i + 1
        if filled >= shard_size:  # where a single writer would end a shard
            filled = 0
            if abs(done - goal) <= SHARD_CUT_SLACK * total and (best is None or abs(done - goal) < abs(best[1] - goal)):
                best = (i + 1, done)
    return best[0] if best is not None else share_end


def _put(sink: DatumSink, hasher: Hasher, members: Members, keys: list[str], done: Callable[[int], None]) -> dict[str, Oid]:
    out: dict[str, Oid] = {}
    for batch in _batched(keys, STORE_BATCH):
        out.update(zip(batch, sink.put_many([hasher.read(members[k]) for k in batch])))
        done(len(batch))
    return out


def _batched(items: list[str], n: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _put_halves(
    sink: DatumSink, hasher: Hasher, members: Members, mine: list[str], theirs: list[str], progress: Progress
) -> dict[str, Oid]:
    counter = mmap.mmap(-1, 8)  # shared with the helper: how many keys it has done
    hashed_before = hasher.hashed

    def there() -> bytes:
        helper = DatumSink(Repo(sink.repo.dotdir, sink.repo.worktree), publish=False)  # its own SQLite connection

        def count(n: int) -> None:
            counter[:] = (int.from_bytes(counter[:], "little") + n).to_bytes(8, "little")

        with helper:
            ids = _put(helper, hasher, members, theirs, count)
        hasher.save(helper.repo.index)  # true whatever becomes of the shards
        shards = [[str(f.tmp), f.shard, f.size, f.rows] for f in helper.finished]
        head = {"ids": [ids[k] for k in theirs], "hashed": hasher.hashed - hashed_before, "shards": shards}
        return _frame(head, [f.idx for f in helper.finished])

    seen = 0

    def done(n: int) -> None:
        nonlocal seen
        now = int.from_bytes(counter[:], "little")
        tick(progress, n + now - seen)
        seen = now

    def here() -> dict[str, Oid]:
        out = _put(sink, hasher, members, mine, done)
        hasher.save(sink.repo.index)  # while the helper may still be at work
        return out

    out, raw = parallel.both(here, there)
    tick(progress, len(theirs) - seen)
    if raw is None:  # the helper failed: its half is done here (its shards were never published)
        out.update(_put(sink, hasher, members, theirs, lambda n: None))
        return out
    return out | _adopt(sink, hasher, members, theirs, raw)


def _adopt(sink: DatumSink, hasher: Hasher, members: Members, keys: list[str], raw: bytes) -> dict[str, Oid]:
    """Publishes the helper's shards; a shard holding a datum this process also stored
    is dropped, and its keys are stored here again, skipping that datum."""
    head, idx_files = _unframe(raw)
    ids = dict(zip(keys, map(Oid, head["ids"])))
    dropped: set[str] = set()
    for (tmp, shard, size, rows), idx in zip(head["shards"], idx_files):
        if any(row[0] in sink.written for row in rows):
            Path(tmp).unlink(missing_ok=True)
            dropped.update(row[0] for row in rows)
        else:
            sink.adopt(Finished(Path(tmp), Oid(shard), size, idx, rows))
    again = [k for k in keys if ids[k] in dropped]
    hasher.hashed += head["hashed"] - sum(len(members[k]) for k in again)  # those are read once more here
    _put(sink, hasher, members, again, lambda n: None)
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
