"""The one write path (docs/format.md, "Writing safely"): datums in, published shards
out, adopted by the driver.

``add``, ``ingest`` (and, later, pipeline outputs) store datums in stages that
pass plain data:

1. **list**: the keys to store, each with its members (extension → file path);
2. **plan**: :func:`plan_batches` cuts the keys, in key order, into
   :class:`StoreBatch` es of about :func:`batch_bytes` each;
3. **store**: an executor (:mod:`datarepo.executor`) maps :func:`store_batch`
   over them. A batch reads and hashes its files, writes their datums into
   shards of its own (:class:`DatumWriter`), publishes them (shard, then
   ``.idx``), and returns a :class:`BatchResult`: each key's datum and size,
   the shards it published with their location rows, and the stats and hashes
   of the files it read. Where the repository has shards already, the batches
   first only hash, and only the keys whose datums no shard holds are stored;
4. **adopt**: the driver records the published shards in the location cache
   (:func:`adopt`), keeping one copy of a datum two batches both wrote;
5. the caller stages the keys and builds the tree.

Only the driver touches SQLite: SQLite's state must not cross a fork. The
batches depend only on the keys and their sizes, never on the executor, so
every executor writes the same shards.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xxhash import xxh3_128_digest

from datarepo import args
from datarepo import executor as executors
from datarepo.config import env_count
from datarepo.errors import CorruptObjectError, InvalidInputError
from datarepo.fsutil import signals_deferred
from datarepo.hashing import Oid, datum_id, datum_id_of_digests
from datarepo.keys import check_member
from datarepo.locations import LocationRow, location_rows
from datarepo.objects import TreeEntry
from datarepo.progress import Progress, begin, tick
from datarepo.shards import LARGE_FILE, DatumLoc, FileRange, MemberData, ShardWriter, SparseRange, member_hash, member_size
from datarepo.statcache import trusted
from datarepo.statcols import SIZE, UNSTATED, FileStat, StatColumns, StatRow, file_stat
from datarepo.store import Store

if TYPE_CHECKING:
    from datarepo.repo import Repo

# Keys and their members: key → {extension: path relative to the folder read}.
Members = Mapping[str, Mapping[str, str]]
# A batch is cut after about this share of all the bytes to store (so a large add has work
# for many workers, and each one's last batch ends near the others'), but never holds more
# than a shard's target size nor, unless a single datum does, less than ``MIN_BATCH_BYTES``.
BATCHES = 16
MIN_BATCH_BYTES = 4 << 20
# Below this many bytes to read, an add is not spread over processes: starting them costs
# more. (``DATAREPO_PARALLEL_MIN_BYTES`` sets another threshold: 0 spreads every add.)
PARALLEL_MIN_BYTES = 32 << 20
PARALLEL_MIN_ENV = "DATAREPO_PARALLEL_MIN_BYTES"
# The sizes of about this many keys, evenly spread, estimate the bytes of keys whose files
# were not stat'ed (a first add stats each file as it reads it).
SIZE_SAMPLES = 64


# --- the files of one datum --------------------------------------------------------------
# A datum read from its files: its id, its members sorted by extension (bytes, or a range of
# a large file to stream when it is stored) and its size in bytes.
DatumFromFiles = tuple[Oid, list[tuple[str, MemberData]], int]


def read_datum(prefix: str, members: Mapping[str, str], files: Mapping[str, FileStat], read: StatColumns) -> DatumFromFiles:
    """Reads and hashes the member files of one datum (``prefix`` + each path); appends each
    file's path, stat and digest to ``read``. A file whose stat is unknown (size -1) is
    stat'ed once open: cheaper than a ``stat`` by path first."""
    items: list[tuple[str, MemberData]] = []
    digests = []
    size = 0
    for ext in sorted(members):
        rel = members[ext]
        data, digest, stat = _read_file(prefix, rel, files.get(rel, UNSTATED))
        read.add(rel, stat, digest)
        items.append((ext, data))
        digests.append((ext, digest))
        size += stat[SIZE] if type(data) is not bytes else len(data)
    return datum_id_of_digests(digests), items, size


def _read_file(prefix: str, rel: str, stat: FileStat) -> tuple[MemberData, bytes, FileStat]:
    """A file's bytes (a range to stream, if it is large), their digest and the stat they
    were read at."""
    try:
        fd = os.open(prefix + rel, os.O_RDONLY)
        try:
            if stat[SIZE] < 0:
                st = os.fstat(fd)
                stat = file_stat(st)
            if stat[SIZE] <= LARGE_FILE:
                data = os.read(fd, stat[SIZE] + 1)
                if len(data) > stat[SIZE]:  # it grew since its stat
                    data = _read_rest(fd, data, rel)
                return data, xxh3_128_digest(data), stat
        finally:
            os.close(fd)
        span = FileRange(Path(prefix + rel), 0, stat[SIZE])
        oid = member_hash(span)
        return span._replace(oid=oid), bytes.fromhex(oid), stat
    except OSError as e:
        raise InvalidInputError(f"cannot read {rel}: {e.strerror}") from None
    except CorruptObjectError:
        raise InvalidInputError(f"file changed while it was being read: {rel}") from None


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


def cached_datum(members: Mapping[str, str], files: Mapping[str, FileStat], cache: Mapping[str, StatRow]) -> Oid | None:
    """A datum's id from the stat cache, if every member file still has the stat it was
    hashed at (:func:`trusted`); else None."""
    hashes = {}
    for ext, rel in members.items():
        entry = cache.get(rel)
        if entry is None or rel not in files or not trusted(entry, files[rel]):
            return None
        hashes[ext] = entry[4]
    return datum_id(hashes)


def hash_datum(
    root: Path, members: Mapping[str, str], files: Mapping[str, FileStat], cache: Mapping[str, StatRow], read: StatColumns
) -> Oid:
    """A datum's id: from the stat cache where it can, else by reading its files (which are
    then added to ``read``, for the stat cache)."""
    known = cached_datum(members, files, cache)
    return known if known is not None else read_datum(os.path.join(root, ""), members, files, read)[0]


# --- shards --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedShard:
    """A shard a writer published: its oid, size and the location rows of its datums."""

    oid: Oid
    size: int
    rows: list[LocationRow]


class DatumWriter:
    """Writes datums into new shards of about ``shard_size`` bytes, in the order given, and
    publishes each (the tar, then its ``.idx``) as soon as it is full, the last one on
    :meth:`close`. It touches only the store's files: recording the shards in the location
    cache is :func:`adopt`'s, in the process that drives the write. Until a commit names
    its datums, a published shard is garbage that ``gc`` may remove."""

    def __init__(self, store: Store, shard_size: int) -> None:
        self.store = store
        self.shard_size = shard_size
        self.published: list[PublishedShard] = []
        self.written: dict[Oid, int] = {}  # datum → its length in its shard
        self._writer: ShardWriter | None = None

    def write(self, datum: Oid, members: list[tuple[str, MemberData]]) -> None:
        """Appends a datum (``members`` sorted by extension), unless this writer has it."""
        if datum not in self.written:
            self._done(self._shard().add(datum, members))

    def _shard(self) -> ShardWriter:
        if self._writer is None:
            with signals_deferred():  # (a Ctrl-C finds the new temporary tar in hand, to abort)
                self._writer = self.store.new_shard()
        return self._writer

    def _done(self, loc: DatumLoc) -> None:
        self.written[loc.datum] = loc.length
        if self._writer is not None and self._writer.size >= self.shard_size:
            self.end_shard()

    def end_shard(self) -> None:
        """Publishes the shard being written: the next datum starts a new one."""
        writer = self._writer
        if writer is None:
            return
        try:
            tmp, index = writer.finish()
            self.store.put_shard(tmp, index)
        except BaseException:  # (a full disk, a Ctrl-C: no temporary tar is left behind)
            writer.abort()
            raise
        finally:
            self._writer = None
        self.published.append(PublishedShard(index.shard, index.size, location_rows(index)))

    def close(self) -> list[PublishedShard]:
        self.end_shard()
        return self.published

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


# --- one batch, in any process ---------------------------------------------------------------
@dataclass(frozen=True)
class StoreBatch:
    """Keys to read from files, hash and (``write``) store: plain data, for any process."""

    dotdir: str  # the repository's ``.datarepo``
    root: str  # the folder the member paths are relative to
    keys: list[str]
    members: list[dict[str, str]]  # each key's extension → path
    stats: dict[str, FileStat]  # the stats of those files a scan took (the others are stat'ed as read)
    shard_size: int
    write: bool = True  # False: only read and hash
    expected: list[Oid] | None = None  # each key's datum, as hashed before: a file changed since is an error


@dataclass
class BatchResult:
    """What a batch did: each key's datum and size, in the batch's order, the shards it
    published, and the files it read with their stats and hashes."""

    datums: list[Oid] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    shards: list[PublishedShard] = field(default_factory=list)
    read: StatColumns = field(default_factory=StatColumns)


def store_batch(batch: StoreBatch) -> BatchResult:
    """Reads, hashes and (unless told not to) stores one batch: the function executors map.
    It opens no cache: which datums are stored already, the driver works out from what a
    batch that only hashes returns (SQLite's state must not cross a fork: a connection a
    forked worker opened to the driver's file waited out its busy timeout)."""
    out = BatchResult()
    prefix = os.path.join(batch.root, "")
    writer = DatumWriter(Store(Path(batch.dotdir)), batch.shard_size) if batch.write else None
    try:
        for i, members in enumerate(batch.members):
            datum, items, size = read_datum(prefix, members, batch.stats, out.read)
            if batch.expected is not None and batch.expected[i] != datum:
                raise InvalidInputError(f"file changed while it was being stored: {min(members.values())}")
            if writer is not None:
                writer.write(datum, items)
            out.datums.append(datum)
            out.sizes.append(size)
        if writer is not None:
            out.shards = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return out


# --- the driver --------------------------------------------------------------------------------
def batch_bytes(total: int, shard_size: int) -> int:
    """The bytes a batch holds: a share of ``total``, between ``MIN_BATCH_BYTES`` and a shard."""
    return max(min(total // BATCHES, shard_size), min(MIN_BATCH_BYTES, shard_size), 1)


def plan_batches(keys: list[str], sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """Cuts ``keys`` (with their sizes in bytes) into runs of about ``limit`` bytes, in
    order; returns each run as (start, stop)."""
    cuts, start, held = [], 0, 0
    for i, size in enumerate(sizes):
        held += size
        if held >= limit:
            cuts.append((start, i + 1))
            start, held = i + 1, 0
    if start < len(keys):
        cuts.append((start, len(keys)))
    return cuts


@dataclass
class Stored:
    """What storing the datums of some files gave: each key's datum and size, the datums
    written (→ their length in a shard), the files read (for the stat cache) and how many."""

    datums: dict[str, Oid] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    written: dict[Oid, int] = field(default_factory=dict)
    read: StatColumns = field(default_factory=StatColumns)

    @property
    def hashed(self) -> int:
        return len(self.read)


def store_files(
    repo: Repo,
    root: Path,
    members: Members,
    keys: list[str],
    files: Mapping[str, FileStat],
    cache: Mapping[str, StatRow],
    progress: Progress = None,
    executor: executors.Executor | None = None,
) -> Stored:
    """The datum and size of every key in ``keys`` (sorted), storing the datums no shard holds.

    A key whose files all have trusted stat-cache entries is not read, unless its datum
    is not (or no longer) stored: ``add`` of the same content restores a datum whose
    shard went missing. ``files`` holds the stats a scan took (a file missing from it is
    stat'ed as it is read). ``executor`` runs the batches; by default, local processes
    when there is enough to read.
    """
    out = Stored()
    known = {k: d for k in keys if (d := cached_datum(members[k], files, cache)) is not None} if cache else {}
    present = repo.stored(known.values()) if known else set()
    to_read = [k for k in keys if known.get(k) not in present]
    for k in keys:
        if known.get(k) in present:
            out.datums[k] = known[k]
            out.sizes[k] = sum(files[f][SIZE] for f in members[k].values())
    begin(progress, len(keys))
    tick(progress, len(keys) - len(to_read))
    source = _Source(repo, root, members, files, dict(zip(to_read, _sizes(root, members, to_read, files))))
    run = executor or executors.for_work(sum(source.sizes.values()) >= env_count(PARALLEL_MIN_ENV, PARALLEL_MIN_BYTES) and len(to_read) > 1)
    expected = None
    if repo.index.locations.shards():  # some may be stored already: hashed first, only the others stored
        expected = {}
        for keys_done, result in source.batches(to_read, run, write=False):
            expected.update(zip(keys_done, result.datums))
            out.sizes.update(zip(keys_done, result.sizes))
            out.read.extend(result.read)
        stored = repo.stored(set(expected.values()))
        out.datums.update((k, d) for k, d in expected.items() if d in stored)
        tick(progress, sum(1 for d in expected.values() if d in stored))
        to_read = [k for k in to_read if expected[k] not in stored]
    adopted: set[str] = set()
    for keys_done, result in source.batches(to_read, run, expected=expected):
        adopt(repo, result.shards, adopted)
        repo.index.checkpoint()  # (the log into the database while the workers still store)
        for shard in result.shards:
            out.written.update((row[0], row[3]) for row in shard.rows)
        out.datums.update(zip(keys_done, result.datums))
        out.sizes.update(zip(keys_done, result.sizes))
        if expected is None:  # (else the hashing pass has them)
            out.read.extend(result.read)
        tick(progress, len(keys_done))
    return out


@dataclass
class _Source:
    """What :func:`store_files` reads: the folder, each key's members, the stats a scan took
    of their files, and each key's size (to cut batches by)."""

    repo: Repo
    root: Path
    members: Members
    files: Mapping[str, FileStat]
    sizes: dict[str, int]

    def batches(
        self, keys: list[str], run: executors.Executor, write: bool = True, expected: Mapping[str, Oid] | None = None
    ) -> Iterator[tuple[list[str], BatchResult]]:
        """Plans the batches of ``keys``, has ``run`` map :func:`store_batch` over them, and
        yields the keys of each with its result, in order."""
        limit = batch_bytes(sum(self.sizes[k] for k in keys), self.repo.config.shard_size)
        batches = [self._batch(keys[a:b], write, expected) for a, b in plan_batches(keys, [self.sizes[k] for k in keys], limit)]
        for batch, result in zip(batches, run.map(store_batch, batches)):
            yield batch.keys, result

    def _batch(self, keys: list[str], write: bool, expected: Mapping[str, Oid] | None) -> StoreBatch:
        files = self.files
        stats = {f: files[f] for k in keys for f in self.members[k].values() if f in files and files[f][SIZE] >= 0}
        members = [dict(self.members[k]) for k in keys]
        want = [expected[k] for k in keys] if expected is not None else None
        return StoreBatch(str(self.repo.dotdir), str(self.root), keys, members, stats, self.repo.config.shard_size, write, want)


def _sizes(root: Path, members: Members, keys: list[str], files: Mapping[str, FileStat]) -> list[int]:
    """Each key's size in bytes, from the scan's stats; where the scan took none (a first
    add), the mean of a sample of keys whose files are stat'ed here."""
    if not keys:
        return []
    if all(files.get(f, UNSTATED)[SIZE] >= 0 for f in members[keys[0]].values()):
        return [sum(files[f][SIZE] for f in members[k].values()) for k in keys]
    prefix = os.path.join(root, "")
    sample = keys[:: max(1, len(keys) // SIZE_SAMPLES)]
    total = 0
    for k in sample:
        for f in members[k].values():
            try:
                total += os.lstat(prefix + f).st_size
            except OSError:
                pass  # reading it will say why
    return [total // len(sample)] * len(keys)


def adopt(repo: Repo, shards: Iterable[PublishedShard], adopted: set[str]) -> None:
    """Records published shards in the location cache. Of a datum that two batches both
    wrote (each before the other's shard was recorded), the copy adopted first is the one
    its location points to; the other stays in its shard unused until ``repack``. A shard
    ``fsck`` found damaged and now published again (the same datums in the same order make
    the same bytes) is whole again."""
    shards = list(shards)
    with repo.index.transaction():
        for shard in shards:
            rows = [row for row in shard.rows if row[0] not in adopted]
            adopted.update(row[0] for row in rows)
            repo.index.locations.add_shard(shard.oid, shard.size, rows)
        if (damaged := repo.index.locations.damaged()) & (published := {shard.oid for shard in shards}):
            repo.index.locations.set_damaged(damaged - published)


# --- the writer of the Python API ----------------------------------------------------------------
def _checked_members(key: str, members: Any) -> Mapping[str, MemberData]:
    """A datum's members, if ``members`` maps one or more names (the key rule's, for
    ``key``) to bytes (a ``bytearray`` or ``memoryview`` is taken as its bytes), or to
    bytes of a file to copy (:class:`FileRange`, :class:`SparseRange`).

    Raises:
        InvalidInputError: ``"members ..."`` or the key rule's complaint.
    """
    if not isinstance(members, Mapping) or not members:
        raise InvalidInputError(f"members must be a dict of one or more extensions to bytes, not {args.shown(members)}")
    for ext, data in members.items():
        if not isinstance(ext, str):
            raise InvalidInputError(f"members: an extension must be a str, not {args.shown(ext)}")
        check_member(key, ext)
        if type(data) is not bytes and not isinstance(data, (FileRange, SparseRange)):
            if not isinstance(data, (bytearray, memoryview)):
                raise InvalidInputError(f"members[{ext!r}] must be bytes, not {args.shown(data)}")
            members = {**members, ext: bytes(data)}
    return members


class RepoWriter:
    """``with repo.writer() as w: w.put(key, {ext: bytes or FileRange})``: stores datums
    given in this process, in the order put, and adopts the shards on a clean exit.
    Each :meth:`put` returns the key's tree entry; :attr:`entries` holds them all, for
    :meth:`Repo.commit`. Callers hold the writer lock."""

    def __init__(self, repo: Repo, rewrite: bool = False) -> None:
        self.repo = repo
        self.rewrite = rewrite  # write datums again, though stored (``repack``): their locations move here
        self.writer = DatumWriter(repo.store, repo.config.shard_size)
        self.entries: dict[str, TreeEntry] = {}
        self.shards: list[PublishedShard] = []
        self._adopted: set[str] = set()
        # With no shard before this writer began, no datum it is given can be stored already.
        self._none_before = not repo.index.locations.shards()
        self._closed = False

    def put(self, key: str, members: Mapping[str, MemberData], hashes: Mapping[str, str] | None = None) -> TreeEntry:
        """Stores a datum (once: not if some shard holds it) under ``key``. ``hashes``, the
        members' hashes when the caller has them, spares hashing them again.

        Raises:
            InvalidInputError: the key or a member's name breaks the key rule (docs/format.md),
                ``members`` is not a non-empty dict of str to bytes, ``hashes`` does not
                give an id of 32 hex digits to each member, or the writer is closed.
        """
        if self._closed:
            raise InvalidInputError("the writer is closed: put datums inside its with block")
        members = _checked_members(args.instance("key", key, str, "a str"), members)
        if hashes is not None:
            args.instance("hashes", hashes, Mapping, "a dict of extension to hash, or None")
            if set(hashes) != set(members):
                raise InvalidInputError(f"hashes must name the members {sorted(members)}, not {sorted(hashes, key=repr)}"[:200])
            args.oids("hashes", list(hashes.values()))
        else:
            hashes = {ext: member_hash(data) for ext, data in members.items()}
        datum = self.put_datum(datum_id(hashes), members)
        entry = TreeEntry(key, datum, sum(map(member_size, members.values())))
        self.entries[key] = entry
        return entry

    def put_datum(self, datum: Oid, members: Mapping[str, MemberData]) -> Oid:
        """Stores a datum whose id is known (its members already checked against it)."""
        if datum not in self.writer.written and (self.rewrite or self._none_before or not self.repo.stored([datum])):
            self.writer.write(datum, sorted(members.items()))
        return datum

    @property
    def written(self) -> dict[Oid, int]:
        return self.writer.written

    def close(self) -> list[PublishedShard]:
        self._closed = True
        self.shards = self.writer.close()
        adopt(self.repo, self.shards, self._adopted)
        return self.shards

    def __enter__(self) -> RepoWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            self.writer.abort()
