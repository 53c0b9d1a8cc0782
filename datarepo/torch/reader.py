"""Reading the datums of a batch from their shards: the batch's rows sorted by shard and
offset, cut into runs of datums that lie close together, each datum's tar headers parsed
here. A local shard is mapped into memory, and each member is copied once, straight out
of the page cache; another file object is read a run at a time (one read covers datums
that lie close together). No torch: a DataLoader worker calls this.

A datum that cannot be read (headers that are not what the manifest says, bytes that do
not give its id) is not an error of the whole batch: it comes back as a
:class:`SampleError` in its place, for the caller's ``on_error`` policy.
"""

from __future__ import annotations

import io
import mmap
import os
import weakref
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from datarepo.errors import CorruptObjectError, DataRepoError, ObjectNotFoundError
from datarepo.manifest import Manifest
from datarepo.shardreader import check_members, cut_members

# Datums this close together are read in one run (from a file object that is not mapped),
# the bytes between them read and dropped.
READ_OVER = 64 << 10
# A run is cut after this many bytes, so that a batch of large datums is not one read.
RUN_BYTES = 8 << 20
_BLOCK = 512
_PLAIN = (0x30, 0)  # the type of a regular file: '0', or NUL in old tars


class SampleError(DataRepoError):
    """A sample could not be read or decoded; the message names its key and shard. (One
    message argument, so that a DataLoader re-raises it in the main process as itself.)"""

    def __init__(self, message: str, key: str = "", shard: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.shard = shard


Members = dict[str, bytes]


class ShardFiles:
    """Open shard files of one process, by oid, through ``opener`` (the store's
    ``open_shard``). A local file is mapped into memory (a datum is then one copy out of
    the page cache, without a system call); any other file object is read with seek
    and read.

    A mapped shard is read only up to the file's size as the batch (:meth:`begin`) first
    read it, not to the mapping's end: a page of a mapping past the end of a file cut
    short since is no error but a SIGBUS, which kills the process. (The size is looked at
    once a shard a batch: a system call a run would cost a fifth of the read.)"""

    def __init__(self, opener: Callable[[str], BinaryIO], keep: int = 64) -> None:
        self.opener = opener
        self.keep = keep
        # shard -> [file, its mapping or None, the batch its size was looked at in, that size]
        self.files: dict[str, list] = {}  # type: ignore[type-arg]
        self.batch = 0
        # (closed when dropped too: a dataset collected, a thread that ended, left them to
        # the collector, which warned of each unclosed file)
        weakref.finalize(self, _close_all, self.files)

    def begin(self) -> None:
        """A new batch: each mapped shard's size is looked at again as it is first read."""
        self.batch += 1

    def read(self, shard: str, offset: int, length: int) -> tuple[bytes | mmap.mmap, int]:
        """``length`` bytes of a shard at ``offset``: a buffer that holds them, and the
        shard's offset of the buffer's first byte (the whole mapping of a local file, at
        0: its members are then copied once, straight out of the page cache)."""
        entry = self.files.get(shard) or self._open(shard)
        f, mapped = entry[0], entry[1]
        try:
            if mapped is not None:
                if entry[2] != self.batch:
                    entry[2], entry[3] = self.batch, min(len(mapped), os.fstat(f.fileno()).st_size)
                if offset + length > entry[3]:
                    raise CorruptObjectError(f"{shard}.tar", f"truncated: {length} bytes wanted at byte {offset}")
                return mapped, 0
            f.seek(offset)
            data = f.read(length)
        except (OSError, ValueError) as e:  # (a file closed or gone bad under us)
            raise CorruptObjectError(f"{shard}.tar", f"cannot be read: {_reason(e)}") from None
        if len(data) < length:
            raise CorruptObjectError(f"{shard}.tar", f"truncated: {length} bytes wanted at byte {offset}")
        return data, offset

    def _open(self, shard: str) -> list:  # type: ignore[type-arg]
        if len(self.files) >= self.keep:
            _close(*self.files.pop(next(iter(self.files)))[:2])
        try:
            f = self.opener(shard)
        except OSError as e:  # a folder, or a file this process may not read, in its place
            raise CorruptObjectError(f"{shard}.tar", f"cannot be opened: {_reason(e)}") from None
        try:
            mapped: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # not a local file, or empty
            mapped = None
        entry = self.files[shard] = [f, mapped, -1, 0]
        return entry

    def close(self) -> None:
        _close_all(self.files)


def _reason(e: BaseException) -> str:
    """An OS error's reason, without the path it names."""
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__


def _close_all(files: dict[str, list]) -> None:  # type: ignore[type-arg]
    for entry in files.values():
        _close(entry[0], entry[1])
    files.clear()


def _close(f: BinaryIO, mapped: mmap.mmap | None) -> None:
    if mapped is not None:
        mapped.close()
    f.close()


# Where datums that lay in a shard gone since the manifest was made lie now: (shard, the
# datums' ids) -> {datum id: (shard, offset, length)} of those found elsewhere.
Relocate = Callable[[str, list[str]], dict[str, tuple[str, int, int]]]


def read_rows(manifest: Manifest, rows: np.ndarray, files: ShardFiles, verify: bool,
              relocate: Relocate | None = None) -> list[tuple[str, Members | SampleError]]:
    """The (key, members or error) of manifest rows, in the order given (a row given twice
    is read once). The datums of a shard that has gone (a ``repack`` moved them, and ``gc``
    deleted it) are read where ``relocate`` finds them now."""
    files.begin()
    unique, inverse = np.unique(rows, return_inverse=True)
    shard_of = manifest.shard_index[unique]
    offsets, lengths = manifest.offsets[unique], manifest.lengths[unique]
    starts = manifest.keys.starts
    text = manifest.keys.text
    keys = [text[a : b - 1] for a, b in zip(starts[unique].tolist(), starts[unique + 1].tolist())]
    datums = manifest.datums[unique].tolist()
    found: list[tuple[str, Members | SampleError]] = []
    at, ends = offsets.tolist(), (offsets + lengths).tolist()
    for lo, hi in _runs(shard_of, offsets, lengths):
        shard = manifest.shards[int(shard_of[lo])]
        found += _read_run(files, shard, keys[lo:hi], datums[lo:hi], at[lo:hi], ends[lo:hi], verify, relocate)
    return [found[i] for i in inverse.tolist()]


def _runs(shard_of: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> list[tuple[int, int]]:
    """Cuts sorted rows into runs to read at once: same shard, gaps up to READ_OVER."""
    if not len(offsets):
        return []
    ends = offsets + lengths
    cut = (shard_of[1:] != shard_of[:-1]) | (offsets[1:] - ends[:-1] > READ_OVER)
    bounds = [0, *(np.flatnonzero(cut) + 1).tolist(), len(offsets)]
    runs = []
    for lo, hi in zip(bounds, bounds[1:]):
        while hi - lo > 1 and ends[hi - 1] - offsets[lo] > RUN_BYTES:  # split long runs
            mid = lo + max(1, int(np.searchsorted(ends[lo:hi], offsets[lo] + RUN_BYTES)))
            runs.append((lo, mid))
            lo = mid
        runs.append((lo, hi))
    return runs


def _read_run(
    files: ShardFiles, shard: str, keys: list[str], datums: list[bytes], starts: list[int], ends: list[int], verify: bool,
    relocate: Relocate | None = None,
) -> list[tuple[str, Members | SampleError]]:
    """The datums of one run: one read, then each datum's headers parsed from it."""
    name = f"{shard}.tar"
    try:
        buf, base = files.read(shard, starts[0], ends[-1] - starts[0])
    except ObjectNotFoundError as e:
        if e.kind != "shard" or relocate is None:
            return [(k, SampleError(f"sample {k} in shard {name}: {e}", k, shard)) for k in keys]
        return _read_moved(files, shard, keys, datums, relocate(shard, [d.decode() for d in datums]), verify)
    except DataRepoError as e:
        return [(k, SampleError(f"sample {k} in shard {name}: {getattr(e, 'reason', e)}", k, shard)) for k in keys]
    out: list[tuple[str, Members | SampleError]] = []
    for key, datum, start, end in zip(keys, datums, starts, ends):
        try:
            members = parse_datum(buf, start - base, end - base, datum, name, start)
            if verify:
                check_members(members, datum.decode(), name)
            out.append((key, members))
        except DataRepoError as e:
            out.append((key, SampleError(f"sample {key} in shard {name}: {getattr(e, 'reason', e)}", key, shard)))
    return out


def _read_moved(
    files: ShardFiles, gone: str, keys: list[str], datums: list[bytes], moved: dict[str, tuple[str, int, int]], verify: bool
) -> list[tuple[str, Members | SampleError]]:
    """The datums of a run whose shard has gone, each read where it lies now."""
    out: list[tuple[str, Members | SampleError]] = []
    for key, datum in zip(keys, datums):
        if (where := moved.get(datum.decode())) is None:
            message = f"sample {key} in shard {gone}.tar: the shard is gone, and no other holds the datum"
            out.append((key, SampleError(message, key, gone)))
        else:
            shard, offset, length = where
            out += _read_run(files, shard, [key], [datum], [offset], [offset + length], verify)
    return out


def parse_datum(buf: bytes | mmap.mmap, pos: int, end: int, datum: bytes, name: str, offset: int) -> Members:
    """The members of the datum (its id, ASCII) at ``buf[pos:end]``, which lies at byte
    ``offset`` of the shard: plain ustar headers are parsed here (a member
    ``<datum>.<ext>``, type ``0``, an octal size, no name prefix); anything else (PAX
    records, base-256 sizes) goes to :func:`cut_members`, which reads every form."""
    members: Members = {}
    stem = datum + b"."
    cut = len(stem)
    start = pos
    while pos < end:
        if end - pos < _BLOCK or buf[pos + 156] not in _PLAIN or buf[pos + 124] == 0x80 or buf[pos + 345]:
            return cut_members(buf[start:end], datum.decode(), name, offset)
        try:
            size = int(buf[pos + 124 : pos + 136].rstrip(b"\x00 ") or b"0", 8)
        except ValueError:
            raise CorruptObjectError(name, f"bad tar number at byte {offset + pos - start}") from None
        data = pos + _BLOCK
        named = buf.find(b"\x00", pos, pos + 100)
        if buf[pos : pos + cut] != stem or data + size > end:
            return cut_members(buf[start:end], datum.decode(), name, offset)  # which says what is wrong
        members[buf[pos + cut : named if named >= 0 else pos + 100].decode("utf-8", "surrogateescape")] = buf[data : data + size]
        pos = data + size + (-size % _BLOCK)
    if not members:
        raise CorruptObjectError(name, f"datum {datum.decode()} has no members at byte {offset}")
    return members
