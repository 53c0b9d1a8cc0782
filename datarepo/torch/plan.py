"""The sample order of an epoch, and each reader's share of it: pure functions of plain
data, in numpy, with no torch (the ``runs`` command prints orders without loading it).

The global order of an epoch is a function of (the selection's rows, seed, epoch, block,
window) alone. It is a two-level shuffle, as Mosaic Streaming's py1br: the rows, in the
order of their keys (not where they lie: a repack keeps the order), are cut into *blocks* of
``block`` rows; the blocks are shuffled; then the rows of each *window* of ``window``
consecutive blocks are shuffled together. A batch so draws from ``window`` places spread
over the whole selection, and a reader of a batch reads a few runs of each block, never
the whole set at random.

Ranks take positions of that order in turn (rank ``r`` of ``W`` the positions
``start + r + j * W``), so that what ``W`` ranks consumed in step is always a prefix of
the order: a resumed run, on any number of ranks, reads the rest of it. Within a rank,
workers take runs of ``chunk`` consecutive samples in turn, as a DataLoader asks its
workers for batches in turn, so batches reach the training loop in the rank's order
whatever the number of workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from datarepo.errors import InvalidInputError

if TYPE_CHECKING:
    from datarepo.manifest import Manifest
    from datarepo.repo import Repo
    from datarepo.tree import Tree

# Two salts keep the block shuffle and the window shuffle independent streams.
_BLOCK_SALT, _WINDOW_SALT = 0x5EED_B10C, 0x5EED_0F1D


@dataclass(frozen=True)
class OrderSpec:
    """What fixes the order of a selection of ``count`` rows, besides the epoch."""

    count: int
    seed: int = 0
    shuffle: bool = True
    block: int = 1024
    window: int = 16

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The rows of the selection (0 .. count-1) in the order of ``epoch``."""
        return epoch_order(self.count, self.seed, epoch, self.shuffle, self.block, self.window)


def _rng(seed: int, epoch: int, salt: int) -> np.random.Generator:
    if seed < 0 or epoch < 0:
        raise ValueError("seed and epoch must not be negative")
    return np.random.Generator(np.random.PCG64([salt, seed, epoch]))


def epoch_order(count: int, seed: int, epoch: int, shuffle: bool = True, block: int = 1024, window: int = 16) -> np.ndarray:
    """The global order of an epoch: a permutation of ``range(count)`` (int64).

    Without ``shuffle``, the rows in their order (key order). Random draws are uniform doubles
    sorted stably, which a numpy version does not change (a permutation's algorithm may).
    """
    if not shuffle or count <= 1:
        return np.arange(count, dtype=np.int64)
    blocks = -(-count // block)
    block_order = np.argsort(_rng(seed, epoch, _BLOCK_SALT).random(blocks), kind="stable")
    starts = block_order * block
    sizes = np.minimum(block, count - starts)
    # The rows of the shuffled blocks, one after another: a run of consecutive rows a block.
    run_starts = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    rows = run_starts + np.arange(count, dtype=np.int64)
    # A row's window (the place of its block in the shuffled order, by ``window``), plus
    # a uniform draw in [0, 1): sorted, the windows stay in turn, each shuffled.
    keys = np.repeat((np.arange(blocks) // window).astype(np.float64), sizes)
    keys += _rng(seed, epoch, _WINDOW_SALT).random(count)
    return rows[np.argsort(keys, kind="stable")]


@dataclass(frozen=True)
class Share:
    """One rank's share of an epoch's order, from global position ``start`` on.

    ``length`` samples, the ``j``-th at global position ``start + rank + j * world``; a
    position at or past ``count`` (padding) repeats the order from its beginning.
    """

    count: int
    start: int
    rank: int
    world: int
    length: int

    def positions(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The global positions of local samples ``lo .. hi``."""
        hi = self.length if hi is None else min(hi, self.length)
        return self.start + self.rank + np.arange(lo, max(lo, hi), dtype=np.int64) * self.world

    def local(self, position: int) -> int:
        """The local index of a global position of this share."""
        j, r = divmod(position - self.start - self.rank, self.world)
        if r or not 0 <= j < self.length:
            raise ValueError(f"position {position} is not rank {self.rank}'s")
        return j

    def consumed(self, local_count: int) -> int:
        """The global prefix consumed once every rank received ``local_count`` samples."""
        return min(self.count, self.start + local_count * self.world)


def share(count: int, start: int, rank: int, world: int, pad: bool = True) -> Share:
    """Rank ``rank`` of ``world``'s share of the positions ``start .. count``: every rank
    gets as many samples, the last ones padded by repetition (``pad``) or dropped."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world}")
    left = max(0, count - start)
    length = -(-left // world) if pad and count else left // world
    return Share(count, start, rank, world, length)


def rows_at(order: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The rows at global positions (those past the end repeat the order from its start)."""
    return order[positions % len(order)] if len(order) else np.zeros(0, np.int64)


def chunks_of(length: int, chunk: int, worker: int, workers: int) -> range:
    """The chunks (runs of ``chunk`` local samples) that worker ``worker`` of ``workers``
    reads: every ``workers``-th, as a DataLoader asks its workers in turn."""
    return range(worker, -(-length // chunk), workers)


def order_fingerprint(datums: np.ndarray, order: np.ndarray) -> str:
    """A digest of the datum ids in an order (16 hex digits: not oid-shaped, so ``gc``
    never mistakes it for an object to keep), taken a slice at a time: a million ids are
    32 MB."""
    h = xxhash.xxh3_64()
    for lo in range(0, len(order), 1 << 16):
        h.update(np.ascontiguousarray(datums[order[lo : lo + (1 << 16)]]))
    return h.hexdigest()


def select(repo: Repo, tree: Tree, prefix: str, keys: list[str] | None) -> tuple[Manifest, np.ndarray]:
    """The manifest of the selection, and the rows of it to read (all, or the keys'), in
    key order: the order of an epoch starts from them, so that it is a function of the
    commit's keys, not of the shards that hold them (a ``repack`` keeps it)."""
    if keys is None:
        manifest = repo.manifest(tree.select(prefix=prefix))
        return manifest, manifest.key_order()
    common = os.path.commonprefix(keys) if keys else ""
    manifest = repo.manifest(tree.select(prefix=common))
    wanted = set(keys)
    rows = np.fromiter((i for i, k in enumerate(manifest.keys) if k in wanted), np.int64)
    if len(rows) != len(wanted):
        found = {manifest.keys[i] for i in rows.tolist()}
        missing = sorted(wanted - found)
        raise InvalidInputError(f"{len(missing)} keys are not in {tree.commit}: {', '.join(missing[:3])}")
    return manifest, rows[np.argsort(manifest.ranks[rows], kind="stable")]

