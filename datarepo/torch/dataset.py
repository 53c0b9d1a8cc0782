"""``DatumDataset``: the datums of a revision, streamed from their shards into PyTorch in
an order that is a pure function of (commit, selection, seed, epoch), resumable mid-epoch
on any number of workers and ranks. See docs/loader.md."""

from __future__ import annotations

import copy
import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import torch
import xxhash
from torch.utils.data import IterableDataset, get_worker_info

import datarepo
from datarepo import args
from datarepo.errors import DataRepoError, InvalidInputError
from datarepo.repo import Repo, reopen
from datarepo.torch import transport
from datarepo.torch.batch import Record, collate, columns, for_the_queue, position_range
from datarepo.torch.decode import check_spec, decoder
from datarepo.torch.plan import OrderSpec, Share, chunks_of, order_fingerprint, rows_at, select, share
from datarepo.torch.reader import SampleError, ShardFiles, read_rows

STATE_FORMAT = 1
INT64_END = 1 << 63
MAX_EPOCH = INT64_END  # epochs are kept as int64 (see _Cursor)


class SkippedSampleWarning(UserWarning):
    """A sample that could not be read or decoded was skipped (``on_error="skip"``)."""


class DatumDataset(IterableDataset):
    """The datums of a revision under a prefix (or a list of keys), read straight from the
    shards, for a ``torch.utils.data.DataLoader``.

    Each sample is a dict: ``__key__``, ``__index__`` (its position in the epoch's global
    order) and one field a member, decoded as ``decode`` says (raw bytes otherwise), then
    passed to ``transform`` in the worker. With ``batch_size``, the dataset yields batches
    already collated (use ``DataLoader(ds, batch_size=None)``): handing a batch from a
    worker costs far less than handing its samples one by one.

    Args:
        repo: a repository's path, a remote's URL (``s3://bucket/cats``: read without
            cloning, docs/remotes.md), or an opened :class:`~datarepo.repo.Repo`.
        rev: the revision to read (git's forms: ``main``, ``v1``, ``HEAD~2``, an oid).
        prefix: the keys to read start with this.
        keys: instead of a prefix, these keys: a list (or any iterable but a str) of
            distinct strs (the order does not depend on theirs).
        decode: ext → decoder spec (docs/loader.md); members not named stay bytes.
        transform: called on each decoded sample (a dict) in the worker; returns a dict.
        shuffle: shuffle the order (block-wise, see :mod:`datarepo.torch.plan`).
        seed: the order's seed (from 0 to 2**128 - 1).
        epoch: the first epoch (:meth:`set_epoch` sets another).
        batch_size: yield collated batches of this many samples.
        chunk_size: without ``batch_size``, workers take turns by runs of this many
            samples: make it the DataLoader's ``batch_size`` so that batches arrive in order.
        pad: every rank gets as many samples: pad the last ones by repetition (True) or
            drop the remainder (False).
        rank, world_size: this process's place among the ranks; by default from
            ``torch.distributed`` if it is initialized, else 0 of 1.
        on_error: ``"raise"`` (a :class:`SampleError` naming key and shard) or ``"skip"``.
        verify: check each datum's bytes against its id.
        block, window: the shuffle's block (rows) and window (blocks).
        unsafe: allow decoders that unpickle (``"pth"``, ``"pickle"``).
        cache: with a remote's URL as ``repo``, a local folder that keeps where each datum
            lies and the shards read (each downloaded whole, once), for the next run;
            by default a temporary one, removed when this process ends.

    Raises:
        InvalidInputError: an argument of a wrong type or value, when the dataset is
            made; the message starts with the argument's name (ints may be numpy's,
            flags are True or False, ``batch_size`` is None or 1 or more).
    """

    def __init__(
        self,
        repo: str | os.PathLike[str] | Repo,
        rev: str = "HEAD",
        prefix: str = "",
        keys: Iterable[str] | None = None,
        decode: Mapping[str, Any] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        batch_size: int | None = None,
        chunk_size: int = 256,
        pad: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        on_error: str = "raise",
        verify: bool = True,
        block: int = 1024,
        window: int = 16,
        unsafe: bool = False,
        cache: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        # Sizes are int64 in numpy's arithmetic of the order: a larger one would fail there, later.
        batch_size = args.optional_integer("batch_size", batch_size, 1, INT64_END)
        chunk_size = args.integer("chunk_size", chunk_size, 1, INT64_END)
        block, window = args.integer("block", block, 1, INT64_END), args.integer("window", window, 1, INT64_END)
        seed, epoch = args.integer("seed", seed, 0, 1 << 128), args.integer("epoch", epoch, 0, MAX_EPOCH)
        shuffle, pad, verify = args.flag("shuffle", shuffle), args.flag("pad", pad), args.flag("verify", verify)
        self.unsafe = args.flag("unsafe", unsafe)
        self.decode_spec = check_spec(decode, unsafe)
        self.transform = args.function("transform", transform)
        self.on_error = args.choice("on_error", on_error, ("raise", "skip"))
        self.rank, self.world_size = _place(rank, world_size)
        transport.ring_wanted()  # (read again in each worker: a bad value is told here, not there)
        self.rev, self.prefix = args.text("rev", rev, empty=False), args.text("prefix", prefix)
        self.keys = args.key_list(keys)
        if self.keys is not None and prefix:
            raise InvalidInputError("keys: give a prefix or keys, not both")
        opened = _opened(repo, cache)
        try:
            self.path, self.cache = opened.source()
            tree = opened.tree(rev)
            self.commit = tree.commit
            self.manifest, self.rows = select(opened, tree, prefix, self.keys)
        finally:
            if opened is not repo:
                opened.close()
        self.batch_size, self.chunk_size, self.pad, self.verify = batch_size, chunk_size, pad, verify
        self.spec = OrderSpec(len(self.rows), seed, shuffle, block, window)
        self._cursor = _cursor(epoch, 0)  # the epoch, and the global position it resumes at
        self.epochs = epoch + 1  # epochs begun, for run records
        self._consumed = 0  # samples of this rank's share the training loop received
        self._observed = False  # a consumer-side wrapper reports what the loop received
        self._disordered: bool | str = False  # True, or why, where what the loop received cannot be counted
        self.skipped: list[str] = []  # what on_error="skip" left out, as seen by this process
        self._order: tuple[int, np.ndarray] | None = None
        self._files = threading.local()  # (.open: this thread's (process id, ShardFiles))
        self._plan_id = self._digest_plan()
        self._share: Share | None = None

    # the order ---------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def epoch(self) -> int:
        """The current epoch (:meth:`set_epoch`, :meth:`load_state_dict`)."""
        return self._cursor.values[0]

    def __len__(self) -> int:
        """Items this rank yields in the epoch: samples, or batches with ``batch_size``."""
        n = self.share().length
        return -(-n // self.batch_size) if self.batch_size else n

    def share(self) -> Share:
        """This rank's share of the current epoch, from where it resumes."""
        start = self._cursor.values[1]
        if self._share is None or self._share.start != start:
            self._share = share(self.spec.count, start, self.rank, self.world_size, self.pad)
        return self._share

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The global order of an epoch: positions of the selection's rows (in key order)."""
        epoch = self.epoch if epoch is None else args.integer("epoch", epoch, 0, MAX_EPOCH)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.spec.epoch_order(epoch))
        return self._order[1]

    def keys_in_order(self, epoch: int | None = None) -> Iterator[str]:
        """The keys of an epoch in its global order (what ``datarepo runs show --keys`` prints)."""
        rows = self.rows[self.order(epoch)]
        for lo in range(0, len(rows), 65536):
            yield from (self.manifest.keys[r] for r in rows[lo : lo + 65536].tolist())

    def fingerprint(self) -> str:
        """A digest of the datum ids of epoch 0 in order: two datasets with the same
        fingerprint read the same data in the same order."""
        return order_fingerprint(self.manifest.datums, self.rows[self.spec.epoch_order(0)])

    def plan_id(self) -> str:
        """A digest of what fixes the order, checked when a state is loaded (made with
        the dataset: taking a state every step then costs a dict)."""
        return self._plan_id

    def _digest_plan(self) -> str:
        h = xxhash.xxh3_64()
        h.update(repr((self.manifest.tree, self.prefix, self.spec)).encode())
        h.update(order_fingerprint(self.manifest.datums, self.rows).encode())
        return h.hexdigest()

    def set_epoch(self, epoch: int) -> None:
        """Starts another epoch (its own order); a state loaded for this epoch is kept."""
        epoch = args.integer("epoch", epoch, 0, MAX_EPOCH)
        if epoch != self.epoch:
            self._cursor.set(epoch, 0)
            self._consumed, self._disordered = 0, False
        self.epochs = max(self.epochs, epoch + 1)

    # resuming ----------------------------------------------------------
    def state_dict(self, after: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Where the epoch stands: resume it with :meth:`load_state_dict`, on any number
        of workers and ranks. Counts what the training loop received: in this process
        (``num_workers=0``), through a :class:`DeviceLoader`, or given the last batch the
        loop received as ``after``. Ranks must have taken the same number of samples.

        Raises:
            InvalidInputError: batches reached the loop out of order (``chunk_size``
                differs from the DataLoader's ``batch_size``).
        """
        if after is not None:
            if not isinstance(after, Mapping) or "__index__" not in after:
                raise InvalidInputError(f"after must be a batch (or sample) of this dataset, not {after!r:.60}")
            self._consumed, self._disordered = 0, False
            self.received(after, in_turn=False)
        if self._disordered:
            raise InvalidInputError(
                self._disordered
                if isinstance(self._disordered, str)
                else "batches reached the training loop out of order: set chunk_size to the DataLoader's batch_size"
            )
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "position": self.share().consumed(self._consumed),
            "plan": self.plan_id(),
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resumes an epoch where a state (of this dataset, on any number of ranks) left it."""
        epoch, position, plan = args.state(state, STATE_FORMAT, self.spec.count, MAX_EPOCH)
        if plan != self.plan_id():
            raise InvalidInputError("the state is of another dataset (another selection, seed or shuffle)")
        self._cursor.set(epoch, position)
        self._consumed, self._disordered = 0, False
        self.epochs = max(self.epochs, epoch + 1)

    def received(self, batch: Mapping[str, Any], in_turn: bool = True) -> None:
        """Notes a batch (or sample) that the training loop received; a
        :class:`DeviceLoader` calls this for each batch it hands over. ``in_turn``: the
        batch must follow the one noted before (else it is only taken as the last one
        received)."""
        skipped = batch.get("__skipped__") if isinstance(batch, dict) or isinstance(batch, Mapping) else None
        try:
            if skipped:
                self.skipped += [str(m) for _, m in skipped]
            ends = position_range(batch, self.world_size)
        except (TypeError, ValueError, OverflowError, RuntimeError):  # not as this dataset makes them
            # (state_dict then says so, rather than count it wrong)
            self._disordered = "a batch the training loop received has __index__ or __skipped__ that this dataset did not make"
            return
        if ends is None:
            return
        s = self.share()
        try:
            lo, hi = s.local(ends[0]), s.local(ends[1])
        except ValueError:
            self._disordered = (
                f"a batch the training loop received (positions {ends[0]} to {ends[1]}) is not of rank {self.rank} of "
                f"{self.world_size}'s share of the epoch from position {s.start}"
            )
            return
        exact = self.batch_size is not None or self.on_error == "raise"
        if in_turn and (lo < self._consumed or (exact and lo != self._consumed)):
            self._disordered = True
        self._consumed = max(self._consumed, hi + 1)

    def observed(self, on: bool = True) -> None:
        """Whether a consumer-side wrapper reports the batches the loop receives (samples
        this process produces, which it may prefetch, then do not count); turned on at
        the start of an iteration, which starts the count afresh."""
        self._observed = on
        if on:
            self._consumed, self._disordered = 0, False

    # reading -----------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        here = info is None and not self._observed
        if info is None:
            self._consumed, self._disordered = 0, False
        order, s = self.order(), self.share()
        chunk = self.batch_size or self.chunk_size
        decode = decoder(self.decode_spec, self.unsafe)
        for c in chunks_of(s.length, chunk, worker, workers):
            positions = s.positions(c * chunk, (c + 1) * chunk)
            read, skipped = self._read(positions, order, decode)
            if here or (info is None and not self.batch_size):  # (a batch's own reach the loop with it)
                self.skipped += [m for _, m in skipped]
            if self.batch_size:
                if here:
                    self._consumed = c * chunk + len(positions)
                batch = self._batch(read, skipped)
                yield batch if info is None else for_the_queue(batch)
                continue
            for key, position, fields in read:
                if here:
                    self._consumed = s.local(position) + 1
                yield Record(self._transformed({"__key__": key, "__index__": position, **fields}))
            if here:
                self._consumed = c * chunk + len(positions)

    def _batch(self, read: list[tuple[str, int, dict[str, Any]]], skipped: list[tuple[int, str]]) -> Record:
        if self.transform is not None:
            return collate([self._transformed({"__key__": k, "__index__": p, **f}) for k, p, f in read], skipped)
        return columns(read, skipped)

    def _read(
        self, positions: np.ndarray, order: np.ndarray, decode: Callable[[dict[str, bytes]], dict[str, Any]] | None
    ) -> tuple[list[tuple[str, int, dict[str, Any]]], list[tuple[int, str]]]:
        """(key, position, decoded fields) of the samples at some positions, and the
        (position, message) of those ``on_error="skip"`` left out."""
        rows = self.rows[rows_at(order, positions)]
        read: list[tuple[str, int, dict[str, Any]]] = []
        skipped: list[tuple[int, str]] = []
        files, repo = self._shard_files()
        relocate = functools.partial(_relocated, repo)
        for position, (key, members) in zip(positions.tolist(), read_rows(self.manifest, rows, files, self.verify, relocate)):
            try:
                if isinstance(members, SampleError):
                    raise members
                fields = members if decode is None else _decoded(key, members, decode)
                if not _OWN_FIELDS.isdisjoint(fields):
                    raise _shadowing(key, fields)
                read.append((key, position, fields))
            except SampleError as e:
                if self.on_error == "raise":
                    raise
                warnings.warn(str(e), SkippedSampleWarning, stacklevel=2)
                skipped.append((position, str(e)))
        return read, skipped

    def _transformed(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.transform is None:
            return sample
        out = self.transform(sample)
        if not isinstance(out, Mapping):
            raise InvalidInputError(f"transform must return a dict of fields, not {type(out).__name__}")
        return {**out, "__key__": sample["__key__"], "__index__": sample["__index__"]}  # (the dataset's own, whatever it returns)

    def _shard_files(self) -> tuple[ShardFiles, Repo]:
        """The shards this thread has open, and the repository they are read from: each
        thread of each process has its own (a DataLoader worker, a thread that iterates the
        dataset while another does), and they are closed when the thread ends."""
        mine = getattr(self._files, "open", None)
        if mine is None or mine[0] != os.getpid():
            repo = reopen(self.path, self.cache)
            mine = self._files.open = (os.getpid(), ShardFiles(repo.store.open_shard), repo)
        return mine[1], mine[2]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_files"]  # open files stay in their process and thread
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _files=threading.local())

    def __copy__(self) -> DatumDataset:
        """A copy with an epoch and a position of its own (a plain shallow copy would
        share the original's)."""
        other = type(self).__new__(type(self))
        other.__setstate__({**self.__getstate__(), "_cursor": copy.copy(self._cursor)})
        return other

    # run records -------------------------------------------------------
    def run_spec(self) -> dict[str, Any]:
        """What a run record stores of this dataset (plain JSON data)."""
        return {
            "commit": self.commit,
            "tree": self.manifest.tree,
            "rev": self.rev,
            "prefix": self.prefix,
            "keys": self.keys,
            "count": self.spec.count,
            "seed": self.spec.seed,
            "shuffle": self.spec.shuffle,
            "block": self.spec.block,
            "window": self.spec.window,
            "pad": self.pad,
            "epochs": self.epochs,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "decode": self.decode_spec,
            "verify": self.verify,
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_run(cls, repo: str | os.PathLike[str] | Repo, name: str, **options: Any) -> DatumDataset:
        """The dataset a recorded run read (same commit, selection, seed and decoders),
        checked against the run's order fingerprint. ``options`` are passed on: those that
        change how the data is read (``decode``, ``transform``, ``batch_size``, ``rank``,
        ``world_size``, ...), never those that fix which data and in what order (``rev``,
        ``prefix``, ``keys``, ``seed``, ``shuffle``, ``block``, ``window``). A run record is
        data (a clone's may come from anyone): one that names an unpickling decoder is
        refused unless ``unsafe=True`` is given here.

        Raises:
            InvalidInputError: a bad name, or an option that is not one of those.
        """
        from datarepo.torch.runs import read_run

        _check_run_options(args.text("name", name), options)
        opened = _opened(repo)
        try:
            run = read_run(opened, name)
            recorded = {field: run[field] for field in _RUN_FIXES + _RUN_DEFAULTS}
            ds = cls(opened, **{**recorded, "rev": run["commit"], **options})
        finally:
            if opened is not repo:
                opened.close()
        if ds.fingerprint() != run["fingerprint"]:
            raise InvalidInputError(f"run {name}: the data no longer gives the recorded order")
        return ds


# What a run record fixes of its dataset (from_run takes no other), and what it records
# that from_run's options may change.
_RUN_FIXES = ("prefix", "keys", "shuffle", "seed", "block", "window")
_RUN_DEFAULTS = ("decode", "pad", "batch_size")
_RUN_OPTIONS = _RUN_DEFAULTS + ("transform", "epoch", "chunk_size", "rank", "world_size", "on_error", "verify", "unsafe")


def _check_run_options(name: str, options: dict[str, Any]) -> None:
    for option in options:
        if option in _RUN_FIXES or option == "rev":
            raise InvalidInputError(
                f"{option}: run {name!r} fixes which data it read and in what order; make a DatumDataset to read other data"
            )
        if option not in _RUN_OPTIONS:
            raise InvalidInputError(f"{option}: from_run takes no such option (it takes {', '.join(_RUN_OPTIONS)})")


class _Cursor:
    """The epoch and the global position it resumes at: what :meth:`DatumDataset.set_epoch`
    and :meth:`~DatumDataset.load_state_dict` change once the dataset is made, and what
    ``__iter__`` reads. They live in a block of shared memory made with the dataset, so
    that DataLoader workers, persistent ones included, read what the training process
    wrote last: a forked worker maps the same block, and a worker started by spawn or
    forkserver receives the block itself (the registration with the multiprocessing
    pickler below). Pickled or copied otherwise, a cursor is its two values, in a new block.

    ``values``: the block as a memoryview of two ints, ``[epoch, start]`` (read every
    training step: a memoryview's item costs less than a tensor's or an array's)."""

    __slots__ = ("block", "values")

    def __init__(self, block: torch.Tensor) -> None:
        self.block = block
        self.values = memoryview(block.numpy())

    def set(self, epoch: int, start: int) -> None:
        self.values[0], self.values[1] = epoch, start

    def __reduce__(self) -> tuple[Any, ...]:
        return _cursor, (self.values[0], self.values[1])


def _cursor(epoch: int, start: int) -> _Cursor:
    """A cursor in a block of its own: shared memory, or where the system has none, the
    process's own (persistent workers then keep the epoch they started with)."""
    block = torch.tensor([epoch, start], dtype=torch.int64)
    try:
        return _Cursor(block.share_memory_())
    except RuntimeError as e:  # no /dev/shm, or no room in it
        warnings.warn(f"no shared memory ({e}): persistent DataLoader workers will not follow set_epoch", stacklevel=3)
        return _Cursor(block)


def _shared_cursor(cursor: _Cursor) -> tuple[Any, ...]:
    """How a cursor crosses to another process through multiprocessing (a DataLoader
    worker's start): its block, which torch hands over as shared memory."""
    return _Cursor, (cursor.block,)


ForkingPickler.register(_Cursor, _shared_cursor)


# The fields a sample or batch has of the dataset itself: a member of one of these names
# would take its place (a datum's bytes as its keys, or as its positions, which a state counts).
_OWN_FIELDS = frozenset({"__key__", "__index__", "__skipped__"})


def _shadowing(key: str, fields: Mapping[str, Any]) -> SampleError:
    name = min(_OWN_FIELDS.intersection(fields))
    return SampleError(
        f"sample {key}: a member is named {name!r}, a field the dataset sets (leave it out: decode={{{name!r}: None}})", key
    )


def _decoded(key: str, members: dict[str, bytes], decode: Callable[[dict[str, bytes]], dict[str, Any]]) -> dict[str, Any]:
    try:
        return decode(members)
    except DataRepoError:
        raise
    except Exception as e:  # a decoder's own error (Pillow, json, int): the sample is bad
        raise SampleError(f"sample {key}: cannot decode: {e.__class__.__name__}: {e}", key) from None


def _place(rank: int | None, world: int | None) -> tuple[int, int]:
    """The rank and world size: as given, else from torch.distributed, else 0 of 1."""
    rank, world = args.optional_integer("rank", rank), args.optional_integer("world_size", world, 1, INT64_END)
    if rank is None or world is None:
        dist = torch.distributed
        live = dist.is_available() and dist.is_initialized()
        if not live and rank is None and world is None and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1"):
            # Launched as one of several ranks (torchrun), made before init_process_group:
            # taken as rank 0 of 1, every rank would read the whole epoch.
            raise InvalidInputError(
                f"rank: WORLD_SIZE is {os.environ['WORLD_SIZE'][:20]!r} but torch.distributed is not initialized: "
                "make the dataset after init_process_group, or give rank= and world_size="
            )
        rank = rank if rank is not None else (dist.get_rank() if live else 0)
        world = world if world is not None else (dist.get_world_size() if live else 1)
    if rank >= world:
        raise InvalidInputError(f"rank must be less than world_size: rank {rank} of {world}")
    return rank, world


def _opened(repo: Any, cache: Any = None) -> Repo:
    """``repo`` if it is an opened repository, else the repository at that path or URL."""
    if cache is not None:
        args.folder("cache", cache)
    if isinstance(repo, Repo):
        if cache is not None:
            raise InvalidInputError("cache: give it to datarepo.open with the URL, not with an opened repository")
        return repo
    args.folder("repo", repo, "a path, a URL or a Repo")
    if cache is not None and "://" not in str(repo):
        raise InvalidInputError("cache is for a repository read from its URL")
    return datarepo.open(os.fspath(repo), cache)


def _relocated(repo: Repo, shard: str, datums: list[str]) -> dict[str, tuple[str, int, int]]:
    """Where the datums of a shard gone since the manifest was made lie now (a ``repack``
    moved them and ``gc`` deleted it, in the middle of a long run): the order stays, as
    it is the keys'. Its datums are then read one by one, where the repository finds them."""
    return {d: (where, loc.offset, loc.length) for d, (where, loc) in repo.locate_moved(shard, datums).items()}
