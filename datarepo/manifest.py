"""Manifests: the datums of a tree selection and where they lie, as plain data that other
processes (DataLoader workers, Ray tasks) receive.

A :class:`Manifest` is columnar (keys, datum ids, shard, offset, length), grouped by
shard with the shards in oid order and each shard's datums in offset order, so a reader
takes a shard's :meth:`Manifest.ranges` and reads them in one pass with a
:class:`~datarepo.shardreader.ShardReader` (also importable from here), from any binary
file: the shard's tar (docs/format.md, "Shards") locally, or a remote object.
"""

from __future__ import annotations

import binascii
import gc
import operator
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from datarepo import args
from datarepo.errors import InvalidInputError, ObjectNotFoundError
from datarepo.hashing import Oid
from datarepo.locations import LocationColumns, read_columns
from datarepo.shardreader import DatumRange, ShardReader, check_members, cut_members

__all__ = ["DatumRange", "Keys", "Manifest", "ManifestEntry", "ShardReader", "build_manifest", "check_members", "cut_members"]

if TYPE_CHECKING:
    from datarepo.repo import Repo
    from datarepo.tree import Selection, Tree

# A selection is looked up in the location cache datum by datum, in batches, when it
# holds fewer than one in this many of the cache's rows; else the whole cache is read.
_SCAN_RATIO = 8
# Ids a query when they are looked up in batches: SQLite before 3.32 takes at most 999
# parameters; 500 a query took a quarter longer.
_IN_BATCH = 999
# The ids of a selection go to the thread that looks them up this many bytes at a time.
_BATCH_BYTES = 32 * 65536
# Keys.take puts keys in a new order this many at a time (a row costs a Python int and str
# while its chunk is joined: all at once, 150 MB more at the peak of a 1,000,000-key manifest).
_TAKE_CHUNK = 65536


class ManifestEntry(NamedTuple):
    key: str
    datum: Oid
    shard: Oid
    offset: int
    length: int


class Keys(Sequence[str]):
    """A column of keys: one text of them all, each followed by a NUL (which no key
    holds), and where each begins. A million keys are 22 MB so, not 80 MB of strings,
    and pickle as one string and one array. ``keys[i]`` is a key, ``keys[a:b]`` a list."""

    __slots__ = ("starts", "text")

    def __init__(self, text: str = "", starts: np.ndarray | None = None) -> None:
        self.text = text
        self.starts = starts if starts is not None else np.zeros(1, np.int64)  # n + 1 of them

    def __reduce__(self) -> tuple[type, tuple[str, np.ndarray]]:
        return Keys, (self.text, self.starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(lo, hi, step)]
            return self.text[self.starts[lo] : self.starts[hi] - 1].split("\0") if lo < hi else []
        n = len(self)
        i = operator.index(i) + (n if i < 0 else 0)
        if not 0 <= i < n:
            raise IndexError("key index out of range")
        return self.text[self.starts[i] : self.starts[i + 1] - 1]

    def __iter__(self) -> Iterator[str]:
        for lo in range(0, len(self), 65536):
            yield from self[lo : lo + 65536]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Keys):
            return self.text == other.text
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Keys: {len(self)}>"

    @classmethod
    def of(cls, pages: Iterable[Sequence[str]]) -> Keys:
        """The keys of pages (each a sequence of keys), in order."""
        builder = _KeysBuilder()
        for keys in pages:
            builder.add(keys)
        return builder.keys()

    def take(self, order: np.ndarray) -> Keys:
        """The keys in ``order``: a slice of the text a run of rows that follow one another
        (a shard holds its datums in key order: a run a shard), else a slice a key."""
        if len(order) == 0:
            return Keys()
        sizes = np.diff(self.starts)[order]
        starts = np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)])
        breaks = np.flatnonzero(np.diff(order) != 1) + 1
        if len(breaks) > len(order) // 64:  # (a chunk of rows at a time: a Python int and str a row)
            text, chunks = self.text, []
            for at in range(0, len(order), _TAKE_CHUNK):
                rows = order[at : at + _TAKE_CHUNK]
                lo, hi = self.starts[rows].tolist(), self.starts[rows + 1].tolist()
                chunks.append("".join([text[a:b] for a, b in zip(lo, hi)]))
            return Keys("".join(chunks), starts)
        bounds = [0, *breaks.tolist(), len(order)]
        first = order[bounds[:-1]].tolist()
        pieces = [self.text[self.starts[f] : self.starts[f + b - a]] for f, (a, b) in zip(first, pairwise(bounds))]
        return Keys("".join(pieces), starts)


class _KeysBuilder:
    """Makes a :class:`Keys` a page of keys at a time (their strings need not outlive it)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.ends: list[np.ndarray] = [np.zeros(1, np.int64)]
        self.at = 0

    def add(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        text = "\0".join(keys) + "\0"
        if text.isascii():  # a character a byte: the NULs are found in C
            ends = np.flatnonzero(np.frombuffer(text.encode(), np.uint8) == 0) + 1
        else:
            ends = np.cumsum(np.fromiter(map(len, keys), np.int64, len(keys)) + 1)
        self.texts.append(text)
        self.ends.append(ends + self.at)
        self.at += len(text)

    def keys(self) -> Keys:
        """The keys added (once: the pieces are let go)."""
        text, self.texts = "".join(self.texts), []
        return Keys(text, np.concatenate(self.ends))


@dataclass(frozen=True, eq=False)
class Manifest:
    """The datums of a selection of a tree, as columns, grouped by shard.

    Row ``i`` is the datum ``datums[i]`` (ASCII hex), named ``keys[i]`` in the tree,
    lying at ``offsets[i]`` for ``lengths[i]`` bytes in shard ``shards[shard_index[i]]``.
    Rows are sorted by shard (in :attr:`shards` order, the shards' oid order), then by
    offset; ``ranks[i]`` is the row's place in key order (:meth:`key_order`). A datum that
    several keys name has a row for each key. It pickles as a few arrays and one text, for
    other processes: give each worker some of :attr:`shards` (or a :meth:`subset`), and let
    it read them with :class:`ShardReader`.
    """

    keys: Keys
    datums: np.ndarray  # S32
    shard_index: np.ndarray  # int32, into shards
    offsets: np.ndarray  # int64
    lengths: np.ndarray  # int64
    ranks: np.ndarray  # int64: each row's place among the rows in key order
    shards: tuple[Oid, ...]
    tree: Oid | None = None
    commit: Oid | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"<Manifest of {len(self)} datums in {len(self.shards)} shards of tree {self.tree}>"

    @cached_property
    def _bounds(self) -> list[int]:
        return np.searchsorted(self.shard_index, np.arange(len(self.shards) + 1)).tolist()

    def __iter__(self) -> Iterator[ManifestEntry]:
        for i, shard in enumerate(self.shards):
            for r in self.ranges(i):
                yield ManifestEntry(r.key, r.datum, shard, r.offset, r.length)

    def key_order(self) -> np.ndarray:
        """The rows in the order of their keys (the tree's order). Unlike the rows' own order,
        it is the same wherever the datums lie: a ``repack``, or a clone whose shards were
        cut otherwise, keeps it."""
        return np.argsort(self.ranks, kind="stable")

    def rows(self, shard: str | int) -> range:
        """The rows of one shard (its oid, or its place in :attr:`shards`)."""
        i = self._place(shard)
        return range(self._bounds[i], self._bounds[i + 1])

    def ranges(self, shard: str | int) -> list[DatumRange]:
        """The datums of one shard, in offset order: what a :class:`ShardReader` reads.

        Args:
            shard: the shard's oid, or its place in :attr:`shards`.

        Raises:
            ObjectNotFoundError: (a KeyError) the manifest has no such shard.
            InvalidInputError: ``shard`` is neither a str nor an int, or a place out of
                range (from 0 to ``len(shards) - 1``).
        """
        rows = self.rows(shard)
        lo, hi = rows.start, rows.stop
        return list(
            map(
                DatumRange._make,
                zip(
                    self.keys[lo:hi],
                    [d.decode() for d in self.datums[lo:hi].tolist()],
                    self.offsets[lo:hi].tolist(),
                    self.lengths[lo:hi].tolist(),
                ),
            )
        )

    def shard_bytes(self, shard: str | int) -> int:
        """The bytes a reader of one shard's datums reads (gaps left out)."""
        rows = self.rows(shard)
        return int(self.lengths[rows.start : rows.stop].sum())

    def subset(self, shards: Iterable[str | int]) -> Manifest:
        """The manifest of some of its shards, in this manifest's order: a worker's share.

        Args:
            shards: a list of oids, or of places in :attr:`shards`.

        Raises:
            ObjectNotFoundError: (a KeyError) the manifest has no such shard.
            InvalidInputError: ``shards`` is not a list (a str is one oid), or holds
                something :meth:`ranges` refuses.
        """
        if isinstance(shards, (str, bytes)) or not isinstance(shards, Iterable):
            raise InvalidInputError(f"shards must be a list of shard oids or places, not {args.shown(shards)}")
        places = sorted(set(map(self._place, shards)))
        rows = np.concatenate([np.arange(self._bounds[i], self._bounds[i + 1]) for i in places] or [np.zeros(0, np.int64)])
        remap = np.full(len(self.shards), -1, np.int32)
        remap[places] = np.arange(len(places), dtype=np.int32)
        return Manifest(
            self.keys.take(rows),
            self.datums[rows],
            remap[self.shard_index[rows]],
            self.offsets[rows],
            self.lengths[rows],
            self.ranks[rows],
            tuple(self.shards[i] for i in places),
            self.tree,
            self.commit,
        )

    def _place(self, shard: str | int) -> int:
        """A shard's place in :attr:`shards`, given its oid or its place."""
        if isinstance(shard, Integral) and not isinstance(shard, bool):
            if not self.shards:
                raise ObjectNotFoundError("shard in the manifest", str(shard))
            return args.integer("shard", shard, 0, len(self.shards))
        args.instance("shard", shard, str, "a shard's oid (a str) or its place in shards (an int)")
        try:
            return self.shards.index(shard)  # type: ignore[arg-type]
        except ValueError:
            raise ObjectNotFoundError("shard in the manifest", shard) from None


# Building ---------------------------------------------------------------------


def build_manifest(repo: Repo, selection: Selection | Tree) -> Manifest:
    """The manifest of a selection (or a whole tree) of ``repo`` (see :meth:`Repo.manifest`).

    The keys and datums come from the tree's pages; where each datum lies comes from the
    location cache (``index.sqlite``; see docs/format.md), read whole, in C and on another
    thread while this one reads the pages, when the selection may hold a good part of it,
    or else looked up in batches. A datum the cache does not place is looked up through
    the shard indexes (:meth:`Repo.locate`). Parsing the ``.idx`` files of a million
    datums would take longer than all of this (JSON, about 0.65 µs a datum).
    """
    selection = selection.select() if not hasattr(selection, "columns") else selection
    tree = selection.tree
    index_path = repo.index.file  # opened, and filled if new, before another connection reads it
    with _collector_paused():
        locator = _Locator(index_path) if _worth_a_scan(repo, selection) else None
        keys = _KeysBuilder()
        batches: list[bytes] = []  # the datum ids, 32 hex digits each, a batch at a time
        pending: list[str] = []
        for k, d, _ in selection.columns(sizes=False):
            keys.add(k)
            pending.append("".join(d))
            if len(pending) * len(d) >= _BATCH_BYTES or len(pending) >= 1024:
                _hand_over(batches, pending, locator)
        _hand_over(batches, pending, locator)
        if locator is not None:
            where, shards = locator.result()
        else:
            known = read_columns(index_path, sorted(set(_split(b"".join(batches)))), _IN_BATCH)
            where, shards = _look_up(known, b"".join(batches)), known.shards
            del known
        ids = np.concatenate([np.frombuffer(b, dtype="S32") for b in batches]) if batches else np.zeros(0, "S32")
        del batches
        shard_of, offsets, lengths, names = _resolve(repo, ids, where, shards)
        del where
        order = _by_shard_and_offset(shard_of, offsets)
        datums = ids[order]
        del ids
        shard_of, offsets, lengths = shard_of[order], offsets[order], lengths[order]
        return Manifest(keys.keys().take(order), datums, shard_of, offsets, lengths, order, names, tree.oid, tree.commit)


def _hand_over(batches: list[bytes], pending: list[str], locator: _Locator | None) -> None:
    """Makes the pending ids one batch, and hands it to the locator."""
    if pending:
        batches.append("".join(pending).encode())
        pending.clear()
        if locator is not None:
            locator.look_up(batches[-1])


def _by_shard_and_offset(shard_of: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The rows in (shard, offset) order. They mostly are already, in key order (a shard
    holds datums in the order of their keys): a stable sort of one key finds the runs."""
    bits = int(offsets.max()).bit_length() if len(offsets) else 0
    if bits + len(shard_of).bit_length() + 1 > 63:
        return np.lexsort((offsets, shard_of))
    return np.argsort((shard_of.astype(np.int64) << bits) | offsets, kind="stable")


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector: reading a million entries makes a million
    small containers, none of them in a cycle, and each collection they set off walked
    the growing list of keys again (half the time of reading the pages)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _worth_a_scan(repo: Repo, selection: Selection) -> bool:
    """Whether the selection may hold one in ``_SCAN_RATIO`` of the cache's rows (by the
    counts of the pages it opens, which bound it)."""
    most = selection.at_most()
    return most * _SCAN_RATIO >= repo.index.locations.count() and most > _IN_BATCH


class _Locator:
    """Finds where datums lie, on a thread of its own: it reads the whole location cache
    (SQLite runs its queries in C, without the GIL), then looks up each batch of datum
    ids the caller's thread hands it as it reads the tree pages (numpy lets go of the GIL
    while it sorts and searches). Once the pages are read, the caller's thread takes
    batches too. The cache is read in sixteen slices of the datum ids, so that the text
    of all its rows is never held at once."""

    def __init__(self, path: Path) -> None:
        self._batches: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._handed = 0
        self._found: dict[int, np.ndarray] = {}
        self._known: LocationColumns | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), name="datarepo-locations", daemon=True)
        self._thread.start()

    def look_up(self, hex_ids: bytes) -> None:
        """Hands over the next datum ids (32 hex digits each)."""
        self._batches.put((self._handed, hex_ids))
        self._handed += 1

    def result(self) -> tuple[np.ndarray, list[str]]:
        """The (shard place, offset, length) rows of every id handed over, in order, and
        the shards the places number."""
        self._batches.put(None)  # the end, which each taker puts back for the other
        self._ready.wait()
        if self._known is not None:
            self._take_batches()
        self._thread.join()
        if self._error is not None:
            raise self._error
        shards = self._known.shards  # type: ignore[union-attr]
        self._known = None  # (before the answers are joined: it may be the larger)
        found = [self._found.pop(i) for i in range(self._handed)]
        return (np.concatenate(found) if found else np.zeros((0, 3), np.int64)), shards

    def _run(self, path: Path) -> None:
        try:
            self._known = read_columns(path, None)
        except BaseException as e:  # handed to the caller's thread
            self._error = e
        finally:
            self._ready.set()
        try:
            if self._known is not None:
                self._take_batches()
        except BaseException as e:  # (the caller's thread takes the batches left)
            self._error = e

    def _take_batches(self) -> None:
        while (batch := self._batches.get()) is not None:
            self._found[batch[0]] = _look_up(self._known, batch[1])  # type: ignore[arg-type]
        self._batches.put(None)


def _split(hex_ids: bytes | bytearray) -> Iterator[str]:
    text = hex_ids.decode()
    return (text[i : i + 32] for i in range(0, len(text), 32))


def _look_up(known: LocationColumns, hex_ids: bytes | bytearray) -> np.ndarray:
    """The (shard place, offset, length) rows of some datum ids, in their order; -1 rows
    for those the cache does not place. The ids are looked up in sorted order, in which
    the cache is too: its rows are then read in sequence, not at random (twice as fast)."""
    ids = np.frombuffer(binascii.unhexlify(hex_ids), dtype=">u8").reshape(-1, 2).astype(np.uint64)
    where = np.full((len(ids), 3), -1, np.int64)
    if m := len(known.high):
        rows = np.argsort(ids[:, 0])
        by_id = ids[rows]
        at = np.minimum(np.searchsorted(known.high, by_id[:, 0]), m - 1)
        hit = (known.high[at] == by_id[:, 0]) & (known.low[at] == by_id[:, 1])
        where[rows[hit]] = known.where[at[hit]]
    return where


def _resolve(
    repo: Repo, ids: np.ndarray, where: np.ndarray, shards: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[Oid, ...]]:
    """Shard places, offsets and lengths, with the datums the cache did not place looked up
    through the shard indexes; and the shards used, in oid order, numbered afresh."""
    shard_of, offsets, lengths = where[:, 0], where[:, 1], where[:, 2]
    names = list(shards)
    placed = np.flatnonzero(np.bincount(shard_of[shard_of >= 0], minlength=len(names))).tolist()
    gone = set(repo.forget_gone_shards([names[i] for i in placed]))
    if gone:  # (their datums are looked up afresh: a planned read of a shard out of use fails once gc prunes it)
        shard_of[np.isin(shard_of, [i for i in placed if names[i] in gone])] = -1
    missing = np.flatnonzero(shard_of < 0).tolist()
    if missing:  # not in the cache (or behind a datum with the same first half)
        places = {name: i for i, name in enumerate(names)}
        for i in missing:
            shard, loc = repo.locate(ids[i].decode())
            if shard not in places:
                places[shard] = len(names)
                names.append(shard)
            shard_of[i], offsets[i], lengths[i] = places[shard], loc.offset, loc.length
    used = sorted(np.flatnonzero(np.bincount(shard_of, minlength=len(names))).tolist(), key=names.__getitem__)
    renumber = np.zeros(max(len(names), 1), np.int32)
    renumber[used] = np.arange(len(used), dtype=np.int32)
    return renumber[shard_of], offsets.copy(), lengths.copy(), tuple(Oid(names[i]) for i in used)
