"""export: a revision (or a prefix of it) to a folder, or to a WebDataset shard set.

Datums are read through a manifest (where each lies, without a query a datum), one
shard at a time, in one pass each (:class:`~datarepo.manifest.ShardReader`). Everything
is written into a temporary folder beside the destination, renamed into place once whole:
an export that fails leaves no destination that looks complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import xxhash

from datarepo.errors import CorruptObjectError, InvalidInputError, ObjectNotFoundError
from datarepo.fsutil import FolderMadeWhole, publish
from datarepo.hashing import CHUNK
from datarepo.keys import check_path
from datarepo.manifest import (
    DatumRange,
    Manifest,
    ShardReader,
    check_members,
    cut_members,
)
from datarepo.porcelain import Progress, begin, tick
from datarepo.repo import Repo
from datarepo.shards import LARGE_FILE, MemberData, MemberLoc, ShardWriter, member_size
from datarepo.store import check_datum
from datarepo.worktree import file_and_dir, member_path

# An export writes into ``.tmp-export-<random>`` beside its destination (see
# :class:`~datarepo.fsutil.FolderMadeWhole`).
TEMP_TAG = "export"

# Shards held open at once while datums are read in key order (``--shards``), at most; and
# the files a process is left to open for everything else (SQLite's three, the shard being
# written, Python's own) before half of the rest may be held shards (see :func:`_shards_held`).
OPEN_SHARDS = 64
OTHER_FILES = 32


@dataclass(frozen=True)
class ExportResult:
    datums: int
    files: int
    bytes: int


def export(
    repo: Repo,
    rev: str,
    dest: Path,
    prefix: str = "",
    shards: bool = False,
    shard_size: int | None = None,
    progress: Progress = None,
) -> ExportResult:
    """Writes the datums of ``rev`` under ``prefix`` into ``dest`` (which must be new or empty).

    As a folder, files keep their work-tree names; as shards (``shards=True``),
    ``dest/000000.tar``… hold members named ``<key>.<ext>`` in key order, which
    stock WebDataset reads with ``__key__`` = key.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInputError(f"export destination must be a new or empty directory: {dest}")
    dest = repo.check_outside(dest, "export destination")  # (a symbolic link: the folder it names)
    manifest = repo.manifest(repo.tree(rev).select(prefix=prefix))
    if prefix and not len(manifest):  # (a misspelt prefix is no empty data set)
        raise InvalidInputError(f"no key of {rev} starts with {prefix!r}: nothing to export")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # (the folder of an export killed before, beside this destination, is removed first)
        making = FolderMadeWhole(dest, TEMP_TAG)
    except OSError as e:  # (named as the user named it, not by the temporary folder)
        reason = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
        raise InvalidInputError(f"cannot create the export destination {dest}: {reason}") from None
    with making as tmp:
        begin(progress, len(manifest))
        if shards:
            return _to_shards(repo, manifest, tmp, shard_size or repo.config.shard_size, progress)
        return _Files(repo, tmp, rev).write(manifest, progress)


class _Files:
    """Writes datums as work-tree files below a folder (a new, empty one)."""

    def __init__(self, repo: Repo, root: Path, rev: str) -> None:
        self.repo = repo
        self.root = str(root)
        self.rev = rev
        self.grouping = repo.config.grouping
        self.written: set[str] = set()
        self.folders: set[str] = {""}  # made already
        self.datums = self.bytes = 0

    def write(self, manifest: Manifest, progress: Progress) -> ExportResult:
        for i, shard in enumerate(manifest.shards):
            ranges = manifest.ranges(i)
            for key, members in _read_shard(self.repo, shard, [r for r in ranges if r.length <= LARGE_FILE]):
                for ext, data in members.items():
                    fd = self._create(key, ext)
                    try:
                        _write_all(fd, data)
                    finally:
                        os.close(fd)
                    self.bytes += len(data)
                self.datums += 1
                tick(progress)
            for r in ranges:
                if r.length > LARGE_FILE:  # streamed from its shard, never held whole
                    self._write_large(r)
                    self.datums += 1
                    tick(progress)
        return ExportResult(self.datums, len(self.written), self.bytes)

    def _write_large(self, r: DatumRange) -> None:
        shard, loc, f = self.repo.at_location(r.datum, lambda shard, loc: (shard, loc, self.repo.store.open_shard(shard)))
        with f:
            hashes = {m.ext: self._copy(f, shard, r.key, m) for m in loc.members}
        check_datum(shard, loc, hashes)  # the bytes as written, each read once

    def _copy(self, f: BinaryIO, shard: str, key: str, member: MemberLoc) -> str:
        f.seek(member.offset)
        h = xxhash.xxh3_128()
        left = member.size
        fd = self._create(key, member.ext)
        try:
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise CorruptObjectError(f"{shard}.tar", f"truncated: member at byte {member.offset} is cut short")
                h.update(chunk)
                _write_all(fd, chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        self.bytes += member.size
        return h.hexdigest()

    def _create(self, key: str, ext: str) -> int:
        """A member's new file (its descriptor), its folder made. Two keys that need one
        path as both a file and a folder (``x`` with ``.jpg``, and ``x.jpg/y``: an ingest
        can hold both) are refused by name."""
        rel = check_path(member_path(key, ext, self.grouping))
        if rel in self.written:
            raise InvalidInputError(f"cannot export {self.rev} as files: two members would be {rel}")
        self.written.add(rel)
        folder = rel.rpartition("/")[0]
        try:
            if folder not in self.folders:
                os.makedirs(f"{self.root}/{folder}", exist_ok=True)
                self.folders.add(folder)
            return os.open(f"{self.root}/{rel}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            clash = file_and_dir(self.written)[0] or rel
            raise InvalidInputError(f"cannot export {self.rev} as files: {clash} would be both a file and a directory") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_shard(repo: Repo, shard: str, ranges: list[DatumRange]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The datums of one shard, in one pass, checked against their ids; if the shard has
    gone (a ``repack`` or ``gc`` replaced it since the manifest was made), each datum from
    where the location cache places it now."""
    if not ranges:
        return
    try:
        f = repo.store.open_shard(shard)
    except ObjectNotFoundError:
        for r in ranges:
            yield r.key, repo.read(r.datum, verify=True)
        return
    with f:
        yield from ShardReader(f, ranges, shard, verify=True)


def _to_shards(repo: Repo, manifest: Manifest, dest: Path, shard_size: int, progress: Progress) -> ExportResult:
    """Shards of ``<key>.<ext>`` members in key order: each datum read at its offset,
    from shards held open (up to ``OPEN_SHARDS`` of them)."""
    written = datums = files = size = 0
    writer: ShardWriter | None = None
    files_open: dict[int, BinaryIO] = {}
    try:
        keys = manifest.keys
        for i in manifest.key_order().tolist():
            key, members = keys[i], _read_row(repo, manifest, i, files_open)
            writer = writer or ShardWriter(dest)
            writer.add(key, sorted(members.items()))  # type: ignore[arg-type]
            datums, files, size = datums + 1, files + len(members), size + sum(map(member_size, members.values()))
            if writer.size >= shard_size:
                written, writer = _close(writer, dest, written), None
            tick(progress)
        if writer is not None:
            _close(writer, dest, written)
    except BaseException:
        if writer is not None:  # (its temporary tar: the folder goes too, but not its descriptor)
            writer.abort()
        raise
    finally:
        for f in files_open.values():
            f.close()
    return ExportResult(datums, files, size)


def _read_row(repo: Repo, manifest: Manifest, i: int, files_open: dict[int, BinaryIO]) -> dict[str, MemberData]:
    """The members of a manifest's row ``i``, checked against its id (a large one streamed
    later, from where the location cache places it)."""
    place = int(manifest.shard_index[i])
    shard, datum = manifest.shards[place], manifest.datums[i].decode()
    offset, length = int(manifest.offsets[i]), int(manifest.lengths[i])
    if length > LARGE_FILE:
        return repo.members(datum)
    if (f := files_open.get(place)) is None:
        try:
            f = repo.store.open_shard(shard)
        except ObjectNotFoundError:  # gone since the manifest was made
            return repo.read(datum, verify=True)  # type: ignore[return-value]
        if len(files_open) >= _shards_held():
            files_open.pop(next(iter(files_open))).close()
        files_open[place] = f
    name = f"{shard}.tar"
    f.seek(offset)
    span = f.read(length)
    if len(span) != length:
        raise CorruptObjectError(name, f"truncated: datum at byte {offset} is cut short")
    members = cut_members(span, datum, name, offset)
    check_members(members, datum, name)
    return members  # type: ignore[return-value]


def _shards_held() -> int:
    """How many shards an export holds open: ``OPEN_SHARDS``, or fewer where the process may
    open few files (``ulimit -n``): holding 64 under a limit of 64 left none to write the
    export's own shard with ("Too many open files")."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return OPEN_SHARDS
    return max(1, min(OPEN_SHARDS, (soft - OTHER_FILES) // 2))


def _close(writer: ShardWriter, dest: Path, n: int) -> int:
    tmp, _ = writer.finish()
    publish(tmp, dest / f"{n:06d}.tar", 0o666)
    return n + 1
