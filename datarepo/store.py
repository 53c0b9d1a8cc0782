"""The object and shard store (``objects/``, ``shards/``; see docs/format.md), read and
written through a :class:`~datarepo.fsutil.FileSystem`: the local ``.datarepo/`` by
default, or any fsspec filesystem holding the same layout (a DVC remote)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple, TypeVar

import xxhash

from datarepo import args, objects
from datarepo.errors import CorruptObjectError, ObjectNotFoundError
from datarepo.fsutil import TMP_PREFIX, FileSystem, LocalFileSystem, NotAFileError, remove, temporary_folder
from datarepo.hashing import CHUNK, Oid, datum_id, hash_bytes, hash_stream, is_oid
from datarepo.objects import RepoObject, TreePage
from datarepo.shards import (
    DatumLoc,
    MemberData,
    MemberLoc,
    ShardIndex,
    ShardWriter,
    iter_tar,
    member_hash,
    padded,
    split_member_name,
)

# Tree pages decoded (or read as text) by this process, kept for the next step of the same
# command (a re-add looks up the changed keys, then rewrites the same pages): objects never
# change, and only objects checked against their oid are kept.
DECODED_PAGES = 64
# Where replaced shards wait (``<unix time>-<oid>.tar`` / ``.idx``) until gc prunes them.
RETIRED = "retired"
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
T = TypeVar("T")


@contextlib.contextmanager
def _regular(name: str) -> Iterator[None]:
    """A FIFO, device or socket where the store keeps a file: damage, named (never a wait:
    see :func:`datarepo.fsutil.open_regular`)."""
    try:
        yield
    except NotAFileError:
        raise CorruptObjectError(name, "is not a regular file") from None


class Retired(NamedTuple):
    """A shard taken out of use (by ``repack`` or ``gc``), kept for readers for a while."""

    shard: Oid
    since: float  # unix time it was retired
    tar: str | None  # its files' paths, when there
    idx: str | None


class ShardRange(NamedTuple):
    """A large member's bytes left in its shard until copied: ``size`` bytes at ``offset``,
    read through the store's filesystem (:func:`datum_members` gives these)."""

    store: Store
    shard: Oid
    offset: int
    size: int
    oid: Oid | None = None

    @property
    def path(self) -> str:
        """The shard's name, for messages (a FileRange names its file so)."""
        return f"{self.shard}.tar"

    def open(self) -> BinaryIO:
        f = self.store.open_shard(self.shard)
        f.seek(self.offset)
        return f


class Store:
    """Objects (``objects/``) and shards (``shards/``) of one repository.

    ``root`` is the repository's folder (``.datarepo``) as a path of ``fs``; without
    ``fs``, a local path. Every object read is checked against its oid.
    """

    def __init__(self, root: Path | str, fs: FileSystem | None = None) -> None:
        self.fs: FileSystem = fs if fs is not None else LocalFileSystem()
        self.root = Path(root) if fs is None else str(root).rstrip("/")
        base = str(root).rstrip("/")
        self._objects = f"{base}/objects"
        self._shards = f"{base}/shards"
        self._retired_dir = f"{self._shards}/{RETIRED}"
        self._staging: Path | None = Path(self._shards) if isinstance(self.fs, LocalFileSystem) else None
        self._pages: dict[str, RepoObject] = {}
        self._texts: dict[str, str] = {}
        self._retired_seen: dict[str, Retired] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        """Pickled (a tree's store, sent to another process) without its lock."""
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    # objects -----------------------------------------------------------
    def put_object(self, obj: RepoObject) -> Oid:
        """Stores ``obj`` (once) and returns its oid."""
        return self.put_object_bytes(objects.encode(obj))

    def put_object_bytes(self, data: bytes) -> Oid:
        """Stores an object given as its canonical bytes (once) and returns its oid."""
        oid = hash_bytes(data)
        path = self._object(oid)
        if not self.fs.exists(path):
            self._write(path, objects.compress(data))
        return oid

    def stored_bytes(self, oid: str) -> bytes:
        """An object's bytes as stored (compressed or not), unchecked."""
        try:
            with _regular(oid):
                return self.fs.cat_file(self._object(oid))
        except _MISSING:
            raise ObjectNotFoundError("object", oid) from None

    def canonical_bytes(self, oid: str) -> bytes:
        """An object's canonical bytes, checked against its oid: a valid object copied over
        another (an older tree page over a newer one) is an error, never old content."""
        data = objects.canonical_bytes(self.stored_bytes(oid), oid)
        if (got := hash_bytes(data)) != oid:
            raise CorruptObjectError(oid, f"content hashes to {got}")
        return data

    def get_object(self, oid: str) -> RepoObject:
        """Reads, checks (against its oid) and decodes an object."""
        if (page := self._pages.get(oid)) is not None:
            return page
        obj = objects.decode(self.canonical_bytes(oid), oid)
        if isinstance(obj, TreePage):
            self._keep(self._pages, oid, obj)
        return obj

    def get_text(self, oid: str) -> str:
        """An object's canonical JSON as text, checked against its oid: bytes that hash to
        it are the canonical form this store wrote, so a caller may search them as text."""
        if (text := self._texts.get(oid)) is not None:
            return text
        try:
            text = self.canonical_bytes(oid).decode()
        except UnicodeDecodeError:
            raise CorruptObjectError(oid, "not UTF-8") from None
        self._keep(self._texts, oid, text)
        return text

    def _keep(self, cache: dict[str, T], oid: str, value: T) -> None:
        """Keeps ``value`` in one of the caches of decoded pages, whose oldest goes to make
        room: under a lock, as threads that share the store fill them at once."""
        with self._lock:
            if len(cache) >= DECODED_PAGES:
                del cache[next(iter(cache))]
            cache[oid] = value

    def get_typed(self, oid: str, kind: type) -> RepoObject:
        obj = self.get_object(oid)
        if not isinstance(obj, kind):
            raise CorruptObjectError(oid, f"expected a {kind.__name__.lower()}, found {type(obj).__name__.lower()}")
        return obj

    def has_object(self, oid: str) -> bool:
        return is_oid(oid) and self.fs.exists(self._object(oid))

    def verify_object(self, oid: str) -> None:
        """Re-hashes and decodes one stored object (never from the cache); raises
        CorruptObjectError on a mismatch."""
        objects.decode(self.canonical_bytes(oid), oid)

    def iter_objects(self) -> Iterator[Oid]:
        return self._iter_fanout(self._objects)

    def objects_with_prefix(self, prefix: str) -> list[Oid]:
        """The stored objects whose oid starts with ``prefix`` (at least 2 hex characters)."""
        try:
            names = self._names(f"{self._objects}/{prefix[:2]}")
        except _MISSING:
            return []
        return [Oid(prefix[:2] + n) for n in names if n.startswith(prefix[2:]) and is_oid(prefix[:2] + n)]

    def modified(self, oid: str, shard: bool = False) -> float:
        """When an object (or a shard's tar) was written, as a Unix time: 0 if it is not
        there, infinity if the filesystem does not say (``gc`` then counts it as new)."""
        try:
            mtime = self.fs.info(self._tar(oid) if shard else self._object(oid)).get("mtime")
        except _MISSING:
            return 0.0
        return float(mtime) if isinstance(mtime, (int, float)) else float("inf")

    def delete_object(self, oid: str) -> None:
        self._remove(self._object(oid))

    # shards ------------------------------------------------------------
    def new_shard(self) -> ShardWriter:
        """A writer of a new shard into a local temporary file (see :meth:`put_shard`)."""
        return ShardWriter(self._staging_dir())

    def put_shard(self, tmp: Path, index: ShardIndex) -> None:
        """Publishes a finished shard: its tar (moved into place, or uploaded), then its
        ``.idx``. A reader never finds an ``.idx`` whose tar is not there."""
        path = self._tar(index.shard)
        publish = getattr(self.fs, "publish", None)
        if publish is not None:
            publish(tmp, path)
        else:
            self._ensure_parent(path)
            self.fs.put_file(str(tmp), path)
            remove(tmp)
        self.put_index(index)

    def put_index(self, index: ShardIndex) -> None:
        self._write(self._idx(index.shard), index.to_bytes())

    def has_shard(self, oid: str) -> bool:
        """Whether the shard's tar is there, in use (with or without its ``.idx``)."""
        return is_oid(oid) and self.fs.exists(self._tar(oid))

    def in_use(self, oid: str) -> bool:
        """Whether a shard the location cache names is still in use (see
        :meth:`Repo.forget_gone_shards`)."""
        return self.has_shard(oid)

    def has_index(self, oid: str) -> bool:
        """Whether the shard's ``.idx`` is there (in use): a tar without one was published by
        a writer killed before its ``.idx`` (see :meth:`put_shard`)."""
        return is_oid(oid) and self.fs.exists(self._idx(oid))

    def read_index(self, oid: str) -> ShardIndex:
        """A shard's index (of a shard in use, or else of a retired one)."""
        try:
            with _regular(f"{oid}.idx"):
                raw = self.fs.cat_file(self._idx(oid))
        except _MISSING:
            retired = self._find_retired(oid)
            if retired is None or retired.idx is None:
                raise ObjectNotFoundError("shard index", oid) from None
            try:
                with _regular(f"{oid}.idx"):
                    raw = self.fs.cat_file(retired.idx)
            except _MISSING:
                raise ObjectNotFoundError("shard index", oid) from None
        index = ShardIndex.from_bytes(raw, f"{oid}.idx")
        if index.shard != oid:
            raise CorruptObjectError(f"{oid}.idx", f"indexes shard {index.shard}")
        return index

    def iter_shards(self) -> Iterator[Oid]:
        """Yields the shards in use that have an index (see :meth:`iter_shard_files`)."""
        return self._iter_fanout(self._shards, ".idx", also=".tar")

    def iter_shard_files(self) -> Iterator[Oid]:
        """Yields every shard in use whose tar is there, with or without its ``.idx``: a tar
        is published before its ``.idx``, and an ``.idx`` may be lost."""
        return self._iter_fanout(self._shards, ".tar")

    def open_shard(self, oid: str) -> BinaryIO:
        """A shard as a binary file (in use, or else retired: a reader that looked its
        datums up before a ``repack`` still finds them).

        Raises:
            ObjectNotFoundError: no such shard (a str that is no oid names none).
            InvalidInputError: ``oid`` is not a str (a manifest's place of a shard is not
                its oid: ``manifest.shards[i]`` is).
        """
        args.instance("shard", oid, str, "a shard's oid (a str: manifest.shards[i])")
        try:
            return self._open_file(self._tar(oid), oid)
        except _MISSING:
            pass
        retired = self._find_retired(oid)
        if retired is not None and retired.tar is not None:
            try:
                return self._open_file(retired.tar, oid)
            except _MISSING:
                pass
        raise ObjectNotFoundError("shard", oid)

    def _open_file(self, path: str, oid: str) -> BinaryIO:
        """A shard's file, which must be a regular file: opening a FIFO (or a device) put
        in its place would wait forever (a reader, a DataLoader worker, would hang)."""
        with _regular(f"{oid}.tar"):
            return self.fs.open(path, "rb")

    def read_range(self, shard: str, offset: int, length: int) -> bytes:
        """``length`` bytes of a shard at ``offset`` (one datum's span, or one member)."""
        try:
            with _regular(f"{shard}.tar"):
                data = self.fs.cat_file(self._tar(shard), start=offset, end=offset + length)  # (s3fs takes a version id second)
        except _MISSING:
            with self.open_shard(shard) as f:
                f.seek(offset)
                data = f.read(length)
        if len(data) != length:
            raise CorruptObjectError(f"{shard}.tar", f"truncated: member at byte {offset} is cut short")
        return data

    def verify_shard(self, oid: str) -> ShardIndex:
        """Re-hashes a shard and checks its index against its tar headers."""
        index = self.read_index(oid)
        name = f"{oid}.tar"
        with self.open_shard(oid) as f:
            hashed_whole(f, oid, name)
            members = {m.offset: m for m in iter_tar(f, name)}
        for d in index.datums:
            for m in d.members:
                found = members.pop(m.offset, None)
                if found is None or found.size != m.size or found.name != f"{d.datum}.{m.ext}":
                    raise CorruptObjectError(name, f"index does not match member {d.datum}.{m.ext}")
        if members:  # (an index that lists too few would let gc retire the only copy of the rest)
            raise CorruptObjectError(name, f"index does not list member {next(iter(members.values())).name}")
        return index

    def scan_datums(self, oid: str) -> set[Oid]:
        """The datum ids a shard's tar holds, from its member names (``<datum id>.<ext>``),
        without its ``.idx`` and without reading the members' bytes."""
        name = f"{oid}.tar"
        with self.open_shard(oid) as f:
            return _datums_named(f, name)

    def rebuild_index(self, oid: str) -> ShardIndex:
        """Writes a shard's ``.idx`` anew from its tar: the tar must hash to its name, and
        each datum's members to the datum id they are named by. Returns the index."""
        name = f"{oid}.tar"
        with self.open_shard(oid) as f:
            size = hashed_whole(f, oid, name)
            datums = _datums_of(f, name)
        index = ShardIndex(Oid(oid), size, datums)
        self.put_index(index)
        return index

    def delete_shard(self, oid: str) -> None:
        """Deletes a shard in use: its ``.idx`` first, then its tar."""
        self._remove(self._idx(oid))
        self._remove(self._tar(oid))

    def retire_shard(self, oid: str, now: float | None = None) -> None:
        """Takes a shard out of use without deleting it: its tar, then its ``.idx``, move to
        ``shards/retired/<unix time>-<oid>.*``, where readers still find them (see
        :meth:`open_shard`) until :meth:`delete_retired`."""
        stamp = f"{self._retired_dir}/{int(time.time() if now is None else now)}-{oid}"
        self.fs.makedirs(self._retired_dir, exist_ok=True)
        for src, dst in ((self._tar(oid), stamp + ".tar"), (self._idx(oid), stamp + ".idx")):
            try:
                self.fs.mv(src, dst)
            except FileNotFoundError:
                continue

    def iter_retired(self) -> Iterator[Retired]:
        """Yields the retired shards, oldest first."""
        found: dict[tuple[float, str], dict[str, str]] = {}
        try:
            names = self._names(self._retired_dir)
        except _MISSING:
            return
        for n in names:
            stem, dot, suffix = n.rpartition(".")
            when, dash, oid = stem.partition("-")
            if dot and dash and when.isdigit() and is_oid(oid) and suffix in ("tar", "idx"):
                found.setdefault((float(when), oid), {})[suffix] = f"{self._retired_dir}/{n}"
        for (when, oid), files in sorted(found.items()):
            yield Retired(Oid(oid), when, files.get("tar"), files.get("idx"))

    def retired_datums(self, retired: Retired) -> set[Oid]:
        """The datums a retired shard holds (by its ``.idx``, else its tar; none if neither
        can be read)."""
        try:
            if retired.idx is not None:
                raw = self.fs.cat_file(retired.idx)
                return {d.datum for d in ShardIndex.from_bytes(raw, f"{retired.shard}.idx").datums}
        except (*_MISSING, CorruptObjectError):
            pass
        try:
            if retired.tar is not None:
                with self.fs.open(retired.tar, "rb") as f:
                    return _datums_named(f, retired.tar)
        except (*_MISSING, CorruptObjectError):
            pass
        return set()

    def retired_size(self, retired: Retired) -> int:
        return sum(self.garbage_size(PurePosixPath(p)) for p in (retired.tar, retired.idx) if p is not None)

    def delete_retired(self, retired: Retired) -> None:
        for path in (retired.idx, retired.tar):
            if path is not None:
                self._remove(path)
        self._retired_seen.pop(retired.shard, None)

    def iter_garbage(self) -> Iterator[PurePosixPath]:
        """Yields what interrupted writers left: temporary files, and ``.idx`` files
        without their tar (a retiring interrupted between its two moves)."""
        for top in (self._objects, self._shards, self._retired_dir):
            try:
                names = self._names(top)
            except _MISSING:
                continue
            for n in names:
                if n.startswith(TMP_PREFIX):
                    yield PurePosixPath(f"{top}/{n}")
                elif len(n) == 2 and top != self._retired_dir:
                    yield from self._garbage_in(f"{top}/{n}")

    def garbage_size(self, path: PurePosixPath) -> int:
        try:
            return int(self.fs.info(str(path))["size"])
        except _MISSING:
            return 0

    def remove_garbage(self, path: PurePosixPath) -> None:
        self._remove(str(path))

    @staticmethod
    def shard_name(oid: str, suffix: str = ".tar") -> str:
        """Where a shard in use lies, relative to the repository's folder (for messages)."""
        return f"shards/{oid[:2]}/{oid[2:]}{suffix}"

    # internals ---------------------------------------------------------
    def _object(self, oid: str) -> str:
        return _fanout(self._objects, oid, "")

    def _tar(self, oid: str) -> str:
        return _fanout(self._shards, oid, ".tar")

    def _idx(self, oid: str) -> str:
        return _fanout(self._shards, oid, ".idx")

    def _names(self, folder: str) -> list[str]:
        return sorted(p.rstrip("/").rpartition("/")[2] for p in self.fs.ls(folder, detail=False))

    def _iter_fanout(self, top: str, suffix: str = "", also: str = "") -> Iterator[Oid]:
        """The oids stored under a fan-out folder with ``suffix`` (and, if given, a file
        with the suffix ``also`` beside), temporary files excluded."""
        try:
            subs = self._names(top)
        except _MISSING:
            return
        for sub in subs:
            if len(sub) != 2:
                continue
            try:
                names = self._names(f"{top}/{sub}")
            except _MISSING:
                continue
            present = set(names) if also else ()
            for n in names:
                if n.endswith(suffix) and not n.startswith(TMP_PREFIX):
                    oid = sub + n[: len(n) - len(suffix)]
                    if is_oid(oid) and (not also or oid[2:] + also in present):
                        yield Oid(oid)

    def _garbage_in(self, folder: str) -> Iterator[PurePosixPath]:
        try:
            names = self._names(folder)
        except _MISSING:
            return
        present = set(names)
        for n in names:
            if n.startswith(TMP_PREFIX) or (n.endswith(".idx") and n[:-4] + ".tar" not in present):
                yield PurePosixPath(f"{folder}/{n}")

    def _find_retired(self, oid: str) -> Retired | None:
        """The newest retired copy of a shard (looked up once a process, when a shard is not
        in use: a reader holding locations from before a repack)."""
        found = self._retired_seen.get(oid)
        if found is None or found.tar is None or found.idx is None:  # (looked up between the two moves: again)
            found = None
            for retired in self.iter_retired():
                if retired.shard == oid:
                    found = retired
            if found is not None and found.tar is not None and found.idx is not None:
                self._retired_seen[oid] = found
        return found

    def _staging_dir(self) -> Path:
        if self._staging is None:  # (only for a store on another filesystem)
            self._staging = temporary_folder("datarepo-shards-")
        return self._staging

    def _write(self, path: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(path, data)
        except FileNotFoundError:  # an fsspec filesystem that does not make parent folders
            self._ensure_parent(path)
            self.fs.pipe_file(path, data)

    def _ensure_parent(self, path: str) -> None:
        self.fs.makedirs(path.rpartition("/")[0], exist_ok=True)

    def _remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass


def _fanout(top: str, oid: str, suffix: str) -> str:
    """``top/ab/cdef…suffix``; an id that is not an oid names nothing (and no path)."""
    if not is_oid(oid):
        raise ObjectNotFoundError("object", repr(oid)[:80])
    return f"{top}/{oid[:2]}/{oid[2:]}{suffix}"


def hashed_whole(f: BinaryIO, oid: str, name: str) -> int:
    """Hashes a shard's bytes from where ``f`` is; CorruptObjectError unless they hash to
    the shard's name. Returns their size."""
    got, size = hash_stream(f)
    if got != oid:
        raise CorruptObjectError(name, f"content hashes to {got}")
    return size


def _datums_named(f: BinaryIO, name: str) -> set[Oid]:
    """The datum ids a shard's tar names its members by, its headers read, not its bytes."""
    return {_member_datum(m.name, name)[0] for m in iter_tar(f, name)}


def _member_datum(member: str, shard: str) -> tuple[Oid, str]:
    datum, ext = split_member_name(member)
    if not is_oid(datum) or member != f"{datum}.{ext}":  # ("<datum>." is a member without an extension)
        raise CorruptObjectError(shard, f"member {member[:80]!r} is not named <datum id>.<ext>")
    return Oid(datum), ext


def _datums_of(f: BinaryIO, name: str) -> tuple[DatumLoc, ...]:
    """The index entries of a shard, from its tar: a datum's span runs from the end of the
    previous datum (its first header) to the end of its last member's padding, as the
    shard writer lays it out; each datum's members must hash to its id."""
    datums: list[DatumLoc] = []
    current: Oid | None = None
    start = end = 0
    members: list[MemberLoc] = []
    hashes: dict[str, Oid] = {}

    def close() -> None:
        if current is None:
            return
        if datum_id(hashes) != current:
            raise CorruptObjectError(name, f"datum {current} does not match its bytes")
        datums.append(DatumLoc(current, start, end - start, tuple(members)))

    for m in iter_tar(f, name):
        datum, ext = _member_datum(m.name, name)
        if datum != current:
            close()
            if any(d.datum == datum for d in datums[-1:]):
                raise CorruptObjectError(name, f"datum {datum} is not contiguous")
            current, start, members, hashes = datum, end, [], {}
        hashes[ext] = _hash_range(f, m.offset, m.size, name)
        members.append(MemberLoc(ext, m.offset, m.size))
        end = m.offset + padded(m.size)
    close()
    return tuple(datums)


def _hash_range(f: BinaryIO, offset: int, size: int, name: str) -> Oid:
    f.seek(offset)
    h = xxhash.xxh3_128()
    left = size
    while left:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise CorruptObjectError(name, f"truncated: member at byte {offset} is cut short")
        h.update(chunk)
        left -= len(chunk)
    return Oid(h.hexdigest())


StoredData = bytes | ShardRange


def datum_members(
    store: Store, shard: str, loc: DatumLoc, large: int, span: bytes | None = None, verify: bool = True
) -> dict[str, MemberData]:
    """A datum's members: bytes from one range read (or from ``span``, the datum's bytes
    already read), or shard ranges for members over ``large``. Unless ``verify`` is False
    they are first checked against the datum's id (a range is read once more to hash
    it): a shard's bytes carry no checksum of their own, and a flipped bit must be an error
    naming the shard, never bytes handed on as the datum's."""
    if all(m.size <= large for m in loc.members):
        blob = store.read_range(shard, loc.offset, loc.length) if span is None else span
        if len(blob) != loc.length:
            raise CorruptObjectError(f"{shard}.tar", f"truncated: datum at byte {loc.offset} is cut short")
        members: dict[str, StoredData] = {
            m.ext: blob[m.offset - loc.offset : m.offset - loc.offset + m.size] for m in loc.members
        }
    else:
        members = {
            m.ext: ShardRange(store, Oid(shard), m.offset, m.size) if m.size > large else store.read_range(shard, m.offset, m.size)
            for m in loc.members
        }
    if verify:
        check_datum(shard, loc, {ext: member_hash(data) for ext, data in members.items()})  # type: ignore[arg-type]
    return members  # type: ignore[return-value]


def check_datum(shard: str, loc: DatumLoc, hashes: dict[str, Oid]) -> None:
    """Raises CorruptObjectError, naming the shard, unless the members' hashes give the datum's id."""
    if datum_id(hashes) != loc.datum:
        raise CorruptObjectError(f"{shard}.tar", f"datum {loc.datum} does not match its bytes")
