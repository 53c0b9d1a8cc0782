"""Reading the datums of a batch from their shards: the batch's rows sorted by shard and
offset, read in runs (one ``pread`` covers datums that lie close together; the datums in
between that the batch does not take are read over only when the gap is small), each
datum's tar headers parsed here. No torch: a DataLoader worker calls this.

A datum that cannot be read (headers that are not what the manifest says, bytes that do
not give its id) is not an error of the whole batch: it comes back as a
:class:`SampleError` in its place, for the caller's ``on_error`` policy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from datarepo.errors import CorruptObjectError, DataRepoError
from datarepo.manifest import Manifest
from datarepo.shardreader import check_members, cut_members

# Datums this close together are read in one run, the bytes between them read and dropped.
READ_OVER = 64 << 10
# A run is cut after this many bytes, so that a batch of large datums is not one read.
RUN_BYTES = 8 << 20
_BLOCK = 512


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
    ``open_shard``); reads with ``os.pread`` where the file has a descriptor."""

    def __init__(self, opener: Callable[[str], BinaryIO], keep: int = 64) -> None:
        self.opener = opener
        self.keep = keep
        self.files: dict[str, BinaryIO] = {}

    def read(self, shard: str, offset: int, length: int) -> bytes:
        f = self.files.get(shard)
        if f is None:
            if len(self.files) >= self.keep:
                self.files.pop(next(iter(self.files))).close()
            f = self.files[shard] = self.opener(shard)
        try:
            data = os.pread(f.fileno(), length, offset)
        except (AttributeError, OSError, ValueError):  # no descriptor (a remote file object)
            f.seek(offset)
            data = f.read(length)
        if len(data) < length:
            raise CorruptObjectError(f"{shard}.tar", f"truncated: {length} bytes wanted at byte {offset}")
        return data

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


def read_rows(manifest: Manifest, rows: np.ndarray, files: ShardFiles, verify: bool) -> list[tuple[str, Members | SampleError]]:
    """The (key, members or error) of manifest rows, in the order given (a row given twice
    is read once)."""
    unique, inverse = np.unique(rows, return_inverse=True)
    found: list[tuple[str, Members | SampleError]] = []
    shard_of = manifest.shard_index[unique]
    offsets, lengths = manifest.offsets[unique], manifest.lengths[unique]
    for lo, hi in _runs(shard_of, offsets, lengths):
        shard = manifest.shards[int(shard_of[lo])]
        found += _read_run(manifest, unique[lo:hi], shard, files, verify)
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


def _read_run(manifest: Manifest, rows: np.ndarray, shard: str, files: ShardFiles, verify: bool) -> list[tuple[str, Members | SampleError]]:
    offsets, lengths = manifest.offsets[rows].tolist(), manifest.lengths[rows].tolist()
    keys = [manifest.keys[r] for r in rows.tolist()]
    datums = [d.decode() for d in manifest.datums[rows].tolist()]
    base = offsets[0]
    name = f"{shard}.tar"
    try:
        buf = files.read(shard, base, offsets[-1] + lengths[-1] - base)
    except DataRepoError as e:
        return [(k, SampleError(f"sample {k}: {e}", k, shard)) for k in keys]
    out: list[tuple[str, Members | SampleError]] = []
    for key, datum, offset, length in zip(keys, datums, offsets, lengths):
        at = offset - base
        try:
            members = parse_datum(buf, at, at + length, datum, name, offset)
            if verify:
                check_members(members, datum, name)
            out.append((key, members))
        except DataRepoError as e:
            out.append((key, SampleError(f"sample {key} in shard {name}: {getattr(e, 'reason', e)}", key, shard)))
    return out


def parse_datum(buf: bytes, pos: int, end: int, datum: str, name: str, offset: int) -> Members:
    """The members of the datum at ``buf[pos:end]``: plain ustar headers are parsed here
    (a member ``<datum>.<ext>``, type ``0``); anything else (PAX records, base-256
    sizes) goes to :func:`cut_members`, which reads every form."""
    members: Members = {}
    stem = datum.encode() + b"."
    start = pos
    while pos < end:
        if end - pos < _BLOCK or buf[pos + 156] not in b"0\x00" or buf[pos + 124] == 0x80 or buf[pos + 345]:
            return cut_members(buf[start:end], datum, name, offset)
        field = buf[pos + 124 : pos + 136]
        try:
            size = int(field.rstrip(b"\x00 ") or b"0", 8)
        except ValueError:
            raise CorruptObjectError(name, f"bad tar number at byte {offset + pos - start}") from None
        member = buf[pos : pos + 100].split(b"\x00", 1)[0]
        data = pos + _BLOCK
        if not member.startswith(stem):
            raise CorruptObjectError(name, f"member {member[:80]!r} at byte {offset + pos - start} is not of datum {datum}")
        if data + size > end:
            raise CorruptObjectError(name, f"truncated: member {member[:80]!r} at byte {offset + pos - start} is cut short")
        members[member[len(stem) :].decode("utf-8", "surrogateescape")] = buf[data : data + size]
        pos = data + size + (-size % _BLOCK)
    if not members:
        raise CorruptObjectError(name, f"datum {datum} has no members at byte {offset}")
    return members
