"""The object and shard store under ``.datarepo/`` (DESIGN §3)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from datarepo import objects
from datarepo.errors import CorruptObjectError, ObjectNotFoundError
from datarepo.fsutil import TMP_PREFIX, atomic_write, publish, remove
from datarepo.hashing import Oid, datum_id, hash_bytes, hash_stream, is_oid
from datarepo.objects import RepoObject, TreePage
from datarepo.shards import DatumLoc, FileRange, MemberData, ShardIndex, ShardWriter, iter_tar, member_hash


# Tree pages decoded (or read as text) by this process, kept for the next step of the same
# command (a re-add looks up the changed keys, then rewrites the same pages): objects never change.
DECODED_PAGES = 64


def fanout(root: Path, oid: str, suffix: str = "") -> Path:
    """``root/ab/cdef…suffix``: the path of an oid under a fan-out directory."""
    return root / oid[:2] / (oid[2:] + suffix)


def iter_fanout(root: Path, suffix: str = "") -> Iterator[Oid]:
    """Yields the oids stored under a fan-out directory (temp files excluded)."""
    if not root.is_dir():
        return
    for sub in sorted(os.scandir(root), key=lambda e: e.name):
        if len(sub.name) != 2 or not sub.is_dir():
            continue
        for entry in sorted(os.scandir(sub.path), key=lambda e: e.name):
            if entry.name.endswith(suffix) and not entry.name.startswith(TMP_PREFIX):
                oid = sub.name + entry.name[: len(entry.name) - len(suffix)]
                if is_oid(oid):
                    yield Oid(oid)


class Store:
    """Objects (``objects/``) and shards (``shards/``) of one repository."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pages: dict[str, RepoObject] = {}
        self._texts: dict[str, str] = {}
        self.objects_dir = root / "objects"
        self.shards_dir = root / "shards"

    # objects -----------------------------------------------------------
    def put(self, obj: RepoObject) -> Oid:
        """Stores ``obj`` (once) and returns its oid."""
        return self.put_canonical(objects.encode(obj))

    def put_canonical(self, data: bytes) -> Oid:
        """Stores an object given as its canonical bytes (once) and returns its oid."""
        oid = hash_bytes(data)
        path = fanout(self.objects_dir, oid)
        if not path.exists():
            atomic_write(path, objects.compress(data))
        return oid

    def get_raw(self, oid: str) -> bytes:
        try:
            return fanout(self.objects_dir, oid).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError("object", oid) from None

    def get(self, oid: str) -> RepoObject:
        if (page := self._pages.get(oid)) is not None:
            return page
        obj = objects.decode(self.get_raw(oid), oid)
        if isinstance(obj, TreePage):
            if len(self._pages) >= DECODED_PAGES:
                del self._pages[next(iter(self._pages))]
            self._pages[oid] = obj
        return obj

    def get_text(self, oid: str) -> str:
        """An object's canonical JSON as text, checked against its oid: bytes that hash to
        it are the canonical form this store wrote, so a caller may search them as text."""
        if (text := self._texts.get(oid)) is not None:
            return text
        raw = objects.canonical_bytes(self.get_raw(oid), oid)
        if hash_bytes(raw) != oid:
            raise CorruptObjectError(oid, "content does not hash to its name")
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise CorruptObjectError(oid, "not UTF-8") from None
        if len(self._texts) >= DECODED_PAGES:
            del self._texts[next(iter(self._texts))]
        self._texts[oid] = text
        return text

    def get_typed(self, oid: str, kind: type) -> RepoObject:
        obj = self.get(oid)
        if not isinstance(obj, kind):
            raise CorruptObjectError(oid, f"expected a {kind.__name__.lower()}, found {type(obj).__name__.lower()}")
        return obj

    def has(self, oid: str) -> bool:
        return fanout(self.objects_dir, oid).exists()

    def verify_object(self, oid: str) -> None:
        """Re-hashes one stored object; raises CorruptObjectError on mismatch."""
        raw = self.get_raw(oid)
        got = hash_bytes(objects.canonical_bytes(raw, oid))
        if got != oid:
            raise CorruptObjectError(oid, f"content hashes to {got}")
        objects.decode(raw, oid)

    def iter_objects(self) -> Iterator[Oid]:
        return iter_fanout(self.objects_dir)

    def delete_object(self, oid: str) -> None:
        remove(fanout(self.objects_dir, oid))

    # shards ------------------------------------------------------------
    def shard_path(self, oid: str) -> Path:
        return fanout(self.shards_dir, oid, ".tar")

    def idx_path(self, oid: str) -> Path:
        return fanout(self.shards_dir, oid, ".idx")

    def has_shard(self, oid: str) -> bool:
        """Whether the shard's tar is there (with or without its ``.idx``)."""
        return self.shard_path(oid).exists()

    def new_shard(self) -> ShardWriter:
        return ShardWriter(self.shards_dir)

    def publish_shard(self, tmp: Path, shard: str, idx: bytes) -> None:
        """Moves a finished shard into place, then writes its ``.idx`` bytes (shard before idx)."""
        publish(tmp, self.shard_path(shard))
        atomic_write(self.idx_path(shard), idx)

    def read_index(self, oid: str) -> ShardIndex:
        path = self.idx_path(oid)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError("shard index", oid) from None
        index = ShardIndex.from_bytes(raw, f"{oid}.idx")
        if index.shard != oid:
            raise CorruptObjectError(f"{oid}.idx", f"indexes shard {index.shard}")
        return index

    def iter_shards(self) -> Iterator[Oid]:
        """Yields the shards that have an index (a shard without one is unfinished)."""
        return iter_fanout(self.shards_dir, ".idx")

    def read_member(self, shard: str, offset: int, size: int) -> bytes:
        try:
            with open(self.shard_path(shard), "rb") as f:
                data = os.pread(f.fileno(), size, offset)
        except FileNotFoundError:
            raise ObjectNotFoundError("shard", shard) from None
        if len(data) != size:
            raise CorruptObjectError(f"{shard}.tar", f"truncated: member at byte {offset} is cut short")
        return data

    def verify_shard(self, oid: str) -> ShardIndex:
        """Re-hashes a shard and checks its index against its tar headers."""
        index = self.read_index(oid)
        name = f"{oid}.tar"
        try:
            with open(self.shard_path(oid), "rb") as f:
                got, size = hash_stream(f)
                if got != oid:
                    raise CorruptObjectError(name, f"content hashes to {got}")
                members = {m.offset: m for m in iter_tar(f, name)}
        except FileNotFoundError:
            raise ObjectNotFoundError("shard", oid) from None
        for d in index.datums:
            for m in d.members:
                found = members.get(m.offset)
                if found is None or found.size != m.size or found.name != f"{d.datum}.{m.ext}":
                    raise CorruptObjectError(name, f"index does not match member {d.datum}.{m.ext}")
        return index

    def delete_shard(self, oid: str) -> None:
        remove(self.idx_path(oid))
        remove(self.shard_path(oid))

    def iter_garbage(self) -> Iterator[Path]:
        """Yields temp files left by interrupted writers and shards without an index."""
        for top in (self.objects_dir, self.shards_dir):
            if not top.is_dir():
                continue
            for sub in os.scandir(top):
                if not sub.is_dir():
                    continue
                for entry in os.scandir(sub.path):
                    path = Path(entry.path)
                    if entry.name.startswith(TMP_PREFIX):
                        yield path
                    elif entry.name.endswith(".tar") and not path.with_suffix(".idx").exists():
                        yield path
            for entry in os.scandir(top):
                if entry.name.startswith(TMP_PREFIX):
                    yield Path(entry.path)


def datum_members(
    store: Store, shard: str, loc: DatumLoc, large: int, span: bytes | None = None, verify: bool = True
) -> dict[str, MemberData]:
    """A datum's members: bytes from one range read (or from ``span``, the datum's bytes
    already read), or file ranges for members over ``large``. Unless ``verify`` is False
    they are first checked against the datum's id (a file range is read once more to hash
    it): a shard's bytes carry no checksum of their own, and a flipped bit must be an error
    naming the shard, never bytes handed on as the datum's."""
    if all(m.size <= large for m in loc.members):
        blob = store.read_member(shard, loc.offset, loc.length) if span is None else span
        if len(blob) != loc.length:
            raise CorruptObjectError(f"{shard}.tar", f"truncated: datum at byte {loc.offset} is cut short")
        members: dict[str, MemberData] = {
            m.ext: blob[m.offset - loc.offset : m.offset - loc.offset + m.size] for m in loc.members
        }
    else:
        path = store.shard_path(shard)
        members = {
            m.ext: FileRange(path, m.offset, m.size) if m.size > large else store.read_member(shard, m.offset, m.size)
            for m in loc.members
        }
    if verify:
        check_datum(shard, loc, {ext: member_hash(data) for ext, data in members.items()})
    return members


def check_datum(shard: str, loc: DatumLoc, hashes: dict[str, Oid]) -> None:
    """Raises CorruptObjectError, naming the shard, unless the members' hashes give the datum's id."""
    if datum_id(hashes) != loc.datum:
        raise CorruptObjectError(f"{shard}.tar", f"datum {loc.datum} does not match its bytes")
