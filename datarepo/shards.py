"""Deterministic WebDataset shards, their ``.idx`` sidecars and a small ustar reader.

A shard is a plain tar whose members are ``<datum-id>.<ext>``, so stock
``webdataset.WebDataset`` reads it and yields ``__key__`` = datum id. Bytes are
deterministic (docs/format.md, "Shards"): ustar headers with mode 0444, uid/gid 0, mtime 0,
empty user names; a PAX header only where a name or size does not fit ustar.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from zlib import adler32 as _adler32

import xxhash

from datarepo import keys
from datarepo.errors import CorruptObjectError, InvalidInputError
from datarepo.fsutil import make_temp, start_writeback
from datarepo.hashing import CHUNK, Oid, canonical_json, is_oid

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
# Every this many bytes a shard being written has the kernel start writing it to disk.
WRITEBACK_STEP = 8 << 20
# A shard being written gathers this many bytes before it hashes and writes them.
FLUSH_BYTES = 1 << 20
# Members up to this size are handled as bytes; larger ones are streamed, never held whole.
LARGE_FILE = 32 << 20
IDX_FORMAT = 1
_MAX_USTAR_SIZE = 8**11
_HEAD_MID = b"0000444\x000000000\x000000000\x00"
_HEAD_TAIL_A = b"00000000000\x00"
_HEAD_TAIL_B = b"0" + bytes(100) + b"ustar\x0000" + bytes(BLOCK - 265)
_CHECKSUM_BASE = sum(_HEAD_MID) + sum(_HEAD_TAIL_A) + sum(_HEAD_TAIL_B) + 8 * 32
_PADDINGS = [bytes(n) for n in range(BLOCK)]  # zeros by their count: after a member, after a name
# Builds a NamedTuple from a tuple of its fields in C: its own constructor runs Python code,
# three times a datum while a shard is written.
_new = tuple.__new__


class FileRange(NamedTuple):
    """Bytes of a member that stay on disk until written: ``size`` bytes at ``offset``.

    ``oid``, when known, is checked as the bytes are copied.
    """

    path: Path
    offset: int
    size: int
    oid: Oid | None = None

    def open(self) -> BinaryIO:
        """The file, positioned at the range (a store's ShardRange opens its shard so)."""
        f = open(self.path, "rb")
        f.seek(self.offset)
        return f


class SparseRange(NamedTuple):
    """The bytes of a sparse tar member (``tar -S``), left on disk until written: ``size``
    bytes, zeros but for ``regions`` (offset, length), which its ``stored`` bytes at
    ``offset`` in the tar fill in order. Read as a FileRange is, through :meth:`open`."""

    path: Path
    offset: int
    size: int
    regions: tuple[tuple[int, int], ...]
    oid: Oid | None = None

    def open(self) -> BinaryIO:
        return _SparseReader(self)  # type: ignore[return-value]


class _SparseReader(io.RawIOBase):
    """A sparse member's bytes, holes as zeros, read front to back."""

    def __init__(self, span: SparseRange) -> None:
        self.size = span.size
        self.file = open(span.path, "rb")
        self.pos = 0  # in the member
        self.next = 0  # the first region not read to its end
        self.places: list[tuple[int, int, int]] = []  # (start, end, where its bytes lie in the tar) of each region
        at = span.offset
        for start, length in span.regions:
            self.places.append((start, start + length, at))
            at += length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: max(0, self.size - self.pos)]
        done = 0
        while done < len(view):
            while self.next < len(self.places) and self.places[self.next][1] <= self.pos:
                self.next += 1
            region = self.places[self.next] if self.next < len(self.places) else None
            if region is None or self.pos < region[0]:  # in a hole: zeros up to the next region
                n = min((region[0] if region else self.size) - self.pos, len(view) - done)
                view[done : done + n] = bytes(n)
            else:
                start, end, at = region
                n = min(end - self.pos, len(view) - done)
                self.file.seek(at + self.pos - start)
                n = self.file.readinto(view[done : done + n]) or 0
                if not n:  # a truncated tar: the reader sees too few bytes
                    break
            done, self.pos = done + n, self.pos + n
        return done

    def close(self) -> None:
        self.file.close()
        super().close()


MemberData = bytes | FileRange | SparseRange


class MemberLoc(NamedTuple):
    """Where a member's bytes lie in its shard."""

    ext: str
    offset: int
    size: int


class DatumLoc(NamedTuple):
    """A datum's span in its shard: from its first header to the end of its last member."""

    datum: Oid
    offset: int
    length: int
    members: tuple[MemberLoc, ...]


@dataclass(frozen=True)
class ShardIndex:
    """The ``.idx`` sidecar of one shard."""

    shard: Oid
    size: int
    datums: tuple[DatumLoc, ...]

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "format": IDX_FORMAT,
                "shard": self.shard,
                "size": self.size,
                # [datum, offset, length, [[ext, offset, size], ...]]: the named tuples are
                # encoded as they are, by json's C encoder, not rebuilt as lists.
                "datums": self.datums,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes, name: str) -> ShardIndex:
        try:
            obj = json.loads(raw)
            if obj["format"] != IDX_FORMAT or not is_oid(obj["shard"]):
                raise ValueError("bad header")
            datums = tuple(
                DatumLoc(Oid(d), int(o), int(n), tuple(MemberLoc(str(e), int(mo), int(ms)) for e, mo, ms in m))
                for d, o, n, m in obj["datums"]
            )
            return cls(Oid(obj["shard"]), int(obj["size"]), datums)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError, OverflowError) as e:
            raise CorruptObjectError(name, f"bad shard index ({e!s:.60})") from None


def tar_header(name: str, size: int) -> bytes:
    """Returns the deterministic header block(s) for a regular member."""
    return b"".join(_header_parts(name.encode("utf-8"), size))


def _header_parts(raw: bytes, size: int) -> tuple[bytes, ...]:
    """The pieces of a member's header(s), for its name as UTF-8: a shard writer gathers
    them as they are, with the member's bytes, and joins them all at once. A name of up to
    100 ASCII bytes and a size that fits take one ustar block, in seven pieces; any other
    takes a PAX header, in one. The block's checksum sums its bytes, whose fixed part is
    summed once (``_CHECKSUM_BASE``); adler32 sums the rest in C (its low half is one plus
    the sum of the bytes, exact below 65,521: a name and a size field sum to under 29,000)."""
    if len(raw) > 100 or size >= _MAX_USTAR_SIZE or not raw.isascii():
        return (_pax_header(raw.decode("utf-8"), size),)
    size_field = b"%011o\x00" % size
    total = _adler32(size_field, _adler32(raw)) & 0xFFFF
    if (chksum := _CHECKSUMS.get(total)) is None:
        chksum = _CHECKSUMS[total] = b"%06o\x00 " % (_CHECKSUM_BASE - 1 + total)
    return raw, _PADDINGS[100 - len(raw)], _HEAD_MID, size_field, _HEAD_TAIL_A, chksum, _HEAD_TAIL_B


_CHECKSUMS: dict[int, bytes] = {}  # checksum fields by adler32's sum, as made


def _pax_header(name: str, size: int) -> bytes:
    import tarfile  # rarely needed: not loaded by every command

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def padding(size: int) -> int:
    return -size % BLOCK


def padded(size: int) -> int:
    """The bytes a member's data takes in a tar: its size rounded up to whole blocks."""
    return size + padding(size)


class ShardWriter:
    """Writes datums into a temporary tar, hashing it; :meth:`finish` names it by its oid.

    Small members are not written one by one: their headers, bytes and padding
    are gathered and joined, hashed and written about a mebibyte at a time. A
    write a datum through a buffered file and a hashing wrapper cost a first
    add of 5,000 samples 5% more instructions.
    """

    def __init__(self, shards_dir: Path) -> None:
        shards_dir.mkdir(parents=True, exist_ok=True)
        self.shards_dir = shards_dir
        self._fd, self.tmp = make_temp(shards_dir, ".tar")  # unique while unpublished
        self._hash = xxhash.xxh3_128()
        self._parts: list[bytes] = []
        self.size = 0  # every byte added, written or still gathered
        self._written = 0
        self.datums: list[DatumLoc] = []
        self._writeback_at = WRITEBACK_STEP

    def add(self, datum: Oid, members: list[tuple[str, MemberData]]) -> DatumLoc:
        """Appends one datum; ``members`` must be sorted by extension."""
        start = pos = self.size
        locs = []
        parts = self._parts
        stem = datum.encode() + b"."
        for ext, data in members:
            if not isinstance(data, bytes):  # a large file: streamed through write()
                self.size = pos
                locs.append(self._stream(f"{datum}.{ext}", ext, data))
                pos = self.size
                continue
            size = len(data)
            header = _header_parts(stem + ext.encode("utf-8"), size)
            parts += header
            pos += BLOCK if len(header) > 1 else len(header[0])
            locs.append(_new(MemberLoc, (ext, pos, size)))
            pad = -size % BLOCK
            pos += size + pad
            parts += (data, _PADDINGS[pad])
        self.size = pos
        return self._added(_new(DatumLoc, (datum, start, pos - start, tuple(locs))))

    def _stream(self, name: str, ext: str, data: FileRange) -> MemberLoc:
        self.write(tar_header(name, data.size))
        loc = MemberLoc(ext, self.size, data.size)
        _copy_range(data, self)
        self.write(bytes(padding(data.size)))
        return loc

    def add_span(self, loc: DatumLoc, span: bytes) -> DatumLoc:
        """Appends a datum copied whole from the shard where it lies at ``loc``: ``span`` is its
        bytes, headers and all, which do not depend on where in a shard the datum lies."""
        shift = self.size - loc.offset
        self.write(span)
        members = tuple(m._replace(offset=m.offset + shift) for m in loc.members)
        return self._added(DatumLoc(loc.datum, loc.offset + shift, loc.length, members))

    def write(self, data: bytes) -> int:
        """Appends raw bytes to the archive (a member streamed in chunks)."""
        self._parts.append(data)
        self.size += len(data)
        if self.size - self._written >= FLUSH_BYTES:
            self._flush()
        return len(data)

    def _added(self, loc: DatumLoc) -> DatumLoc:
        self.datums.append(loc)
        if self.size - self._written >= FLUSH_BYTES:
            self._flush()
        return loc

    def _flush(self) -> None:
        data = b"".join(self._parts)
        self._parts.clear()
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += len(data)
        if self._written >= self._writeback_at:
            self._writeback_at = self._written + WRITEBACK_STEP
            start_writeback(self._fd)

    def finish(self) -> tuple[Path, ShardIndex]:
        """Ends the archive and fsyncs it; returns the temp path and the index."""
        self.write(END_OF_ARCHIVE)
        self._flush()
        os.fsync(self._fd)
        fd, self._fd = self._fd, -1
        os.close(fd)
        return self.tmp, ShardIndex(Oid(self._hash.hexdigest()), self.size, tuple(self.datums))

    def abort(self) -> None:
        """Removes the temporary tar: at any point, :meth:`finish` failed or done (a full
        disk fails the last write, the fsync, or the publishing of what it returned)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        self.tmp.unlink(missing_ok=True)


def _copy_range(src: FileRange, out: ShardWriter) -> None:
    """Streams a file range into the shard, checking it still hashes as when it was added."""
    try:
        got = copy_member(src, out)
    except CorruptObjectError:
        got = None
    if src.oid is not None and got != src.oid:
        raise InvalidInputError(f"file changed while it was being stored: {src.path}")


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def member_hash(data: MemberData) -> Oid:
    """The hash of a member's bytes, streaming a file range."""
    return copy_member(data, _Discard())  # type: ignore[arg-type]


def member_size(data: MemberData) -> int:
    return len(data) if isinstance(data, bytes) else data.size


def copy_member(src: MemberData, out: BinaryIO | ShardWriter) -> Oid:
    """Writes a member's bytes to ``out`` (streaming a file range); returns their hash."""
    if isinstance(src, bytes):
        out.write(src)
        return Oid(xxhash.xxh3_128_hexdigest(src))
    h = xxhash.xxh3_128()
    with src.open() as f:
        left = src.size
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise CorruptObjectError(str(src.path), f"truncated: {left} bytes missing at the end of a member")
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return Oid(h.hexdigest())


class TarMember(NamedTuple):
    """A regular member found by :func:`iter_tar`: its name and where its data lies."""

    name: str
    offset: int
    size: int


class TarEntry(NamedTuple):
    """A member of a tar as :func:`iter_entries` finds it: its type flag (``b"0"`` a file,
    ``b"1"`` a hard link, ``b"5"`` a folder, …), its name, where its stored bytes lie, a
    link's target, and for a sparse file (``tar -S``) its size and the ``(offset, length)``
    regions its stored bytes fill, zeros elsewhere."""

    kind: bytes
    name: str
    offset: int
    size: int
    link: str = ""
    sparse: tuple[int, tuple[tuple[int, int], ...]] | None = None


REGULAR_KINDS = (b"0", b"\x00", b"7")  # a file (old and new flags) and a contiguous file, which is a file
# The largest PAX or GNU long-name header read: a name and a few numbers, far below this.
MAX_EXTENDED_HEADER = 1 << 20


def iter_tar(f: BinaryIO, name: str = "<tar>", passed_over: list[str] | None = None) -> Iterator[TarMember]:
    """Yields the plain regular members of a ustar/PAX/GNU tar without reading their data;
    the names of the others, but for folders (links, devices, fifos, sparse files), go to
    ``passed_over``.

    ``f`` must be seekable. Anything malformed raises CorruptObjectError.
    """
    for entry in iter_entries(f, name):
        if entry.kind in REGULAR_KINDS and entry.sparse is None:
            yield TarMember(entry.name, entry.offset, entry.size)
        elif passed_over is not None and entry.kind not in (b"5", b"D"):
            passed_over.append(entry.name)


def iter_entries(f: BinaryIO, name: str = "<tar>", unended: list[int] | None = None) -> Iterator[TarEntry]:
    """Yields every member of a ustar, PAX, GNU, old GNU or v7 tar (their extended headers
    applied: long names and link targets, PAX sizes, the GNU sparse formats) without
    reading a member's data. ``f`` must be seekable. Anything malformed raises
    CorruptObjectError naming ``name``. With ``unended``, a tar that stops after a member,
    without the zero blocks that end an archive, ends there (as GNU tar, tarfile and
    WebDataset read it) and ``unended`` gets the place; else it is truncated."""
    pos = 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    while True:
        f.seek(pos)
        block = f.read(BLOCK)
        if not block and pos and unended is not None and not pax and long_name is None and long_link is None:
            unended.append(pos)
            return
        if not block and not pos:
            raise CorruptObjectError(name, "an empty file")
        if len(block) < BLOCK:
            raise CorruptObjectError(name, f"truncated tar at byte {pos}")
        if block == bytes(BLOCK):
            return
        _check_sum(block, name, pos)
        kind = block[156:157]
        size = octal_field(block[124:136], name, pos)
        data = pos + BLOCK
        if kind in (b"x", b"L", b"K"):
            payload = _extended(f, data, size, name, pos)
            if kind == b"x":
                pax.update(pax_records(payload, name, pos))
            elif kind == b"L":
                long_name = payload.rstrip(b"\x00").decode("utf-8", "surrogateescape")
            else:
                long_link = payload.rstrip(b"\x00").decode("utf-8", "surrogateescape")
        elif kind != b"g":  # (a PAX global header: nothing read here depends on it)
            if "size" in pax:
                size = _int(pax["size"], name, pos)
            end = data + size + padding(size)
            member = pax.get("path") or long_name or ustar_name(block)
            link = pax.get("linkpath") or long_link or _text(block[157:257])
            sparse = None
            if kind == b"\x00" and member.endswith("/"):  # a v7 folder
                kind = b"5"
            elif kind == b"S":  # GNU sparse: its map in the header and extension blocks before the data
                sparse, data = _gnu_sparse(f, block, data, name, pos)
                end = data + size + padding(size)
            elif kind in REGULAR_KINDS and any(k.startswith("GNU.sparse.") for k in pax):
                member = pax.get("GNU.sparse.name", member)
                sparse, data, size = _pax_sparse(f, pax, data, size, name, pos)
            if sparse is not None:
                _check_map(sparse, size, name, pos)
            yield TarEntry(kind, member, data, size, link, sparse)
            pax, long_name, long_link = {}, None, None
            pos = end
            continue
        pos = data + size + padding(size)


def _extended(f: BinaryIO, data: int, size: int, name: str, pos: int) -> bytes:
    """The payload of a PAX or GNU long-name header (read whole: a size a hostile tar
    claims is never allocated)."""
    if size > MAX_EXTENDED_HEADER:
        raise CorruptObjectError(name, f"an extended header of {size} bytes at byte {pos}")
    f.seek(data)
    payload = f.read(size)
    if len(payload) < size:
        raise CorruptObjectError(name, f"truncated tar at byte {data}")
    return payload


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _gnu_sparse(f: BinaryIO, block: bytes, data: int, name: str, pos: int) -> tuple[tuple[int, tuple[tuple[int, int], ...]], int]:
    """An old GNU sparse member's (real size, regions) and where its data starts: 4 regions
    in the header, 21 in each extension block that follows while the last says there are more."""
    regions = _gnu_regions(block[386:482], name, pos)
    extended = block[482]
    while extended:
        f.seek(data)
        more = f.read(BLOCK)
        if len(more) < BLOCK:
            raise CorruptObjectError(name, f"truncated tar at byte {data}")
        regions += _gnu_regions(more[:504], name, data)
        extended, data = more[504], data + BLOCK
        if len(regions) > MAX_EXTENDED_HEADER:
            raise CorruptObjectError(name, f"a sparse map of over {MAX_EXTENDED_HEADER} regions at byte {pos}")
    return (octal_field(block[483:495], name, pos), tuple(regions)), data


def _gnu_regions(fields: bytes, name: str, pos: int) -> list[tuple[int, int]]:
    regions = []
    for i in range(0, len(fields), 24):
        if not fields[i : i + 24].strip(b"\x00"):
            break
        regions.append((octal_field(fields[i : i + 12], name, pos), octal_field(fields[i + 12 : i + 24], name, pos)))
    return regions


def _pax_sparse(
    f: BinaryIO, pax: dict[str, str], data: int, size: int, name: str, pos: int
) -> tuple[tuple[int, tuple[tuple[int, int], ...]], int, int]:
    """A PAX sparse member's (real size, regions), where its data starts and how long it is:
    format 1.0 puts the map in decimal lines before the data, 0.1 in ``GNU.sparse.map``."""
    real = pax.get("GNU.sparse.realsize", pax.get("GNU.sparse.size"))
    if real is None:
        raise CorruptObjectError(name, f"a sparse member without its size at byte {pos}")
    if pax.get("GNU.sparse.major") == "1":
        numbers, used = _map_lines(f, data, size, name, pos)
        skip = used + padding(used)
        data, size = data + skip, size - skip
    elif "GNU.sparse.map" in pax:
        numbers = [_int(n, name, pos) for n in pax["GNU.sparse.map"].split(",")] if pax["GNU.sparse.map"] else []
    else:  # 0.0: one record per region under the same names, which only its writer reads in order
        raise CorruptObjectError(name, f"a sparse member in GNU's first PAX format (0.0) at byte {pos}")
    if len(numbers) % 2:
        raise CorruptObjectError(name, f"bad sparse map at byte {pos}")
    regions = tuple(zip(numbers[0::2], numbers[1::2], strict=True))
    return (_int(real, name, pos), regions), data, size


def _map_lines(f: BinaryIO, data: int, size: int, name: str, pos: int) -> tuple[list[int], int]:
    """The numbers of a sparse map in format 1.0 (a count, then an offset and a length per
    region, a line each) and the bytes they took."""
    f.seek(data)
    text = f.read(min(size, MAX_EXTENDED_HEADER))
    lines = text.split(b"\n")
    count = _int(lines[0].decode("ascii", "replace"), name, pos) if len(lines) > 1 else -1
    if count < 0 or len(lines) < 2 * count + 2:
        raise CorruptObjectError(name, f"bad sparse map at byte {pos}")
    numbers = [_int(line.decode("ascii", "replace"), name, pos) for line in lines[1 : 2 * count + 1]]
    return numbers, sum(len(line) + 1 for line in lines[: 2 * count + 1])


def _check_map(sparse: tuple[int, tuple[tuple[int, int], ...]], stored: int, name: str, pos: int) -> None:
    """The regions of a sparse member lie in order within its size and hold its stored bytes."""
    real, regions = sparse
    end = 0
    for offset, length in regions:
        if offset < end or offset + length > real:
            raise CorruptObjectError(name, f"bad sparse map at byte {pos}")
        end = offset + length
    if sum(length for _, length in regions) != stored:
        raise CorruptObjectError(name, f"a sparse map that does not match its data at byte {pos}")


def ustar_name(block: bytes) -> str:
    """A ustar header block's member name (its prefix field joined on, if any)."""
    name = block[0:100].split(b"\x00", 1)[0]
    if block[257:263] == b"ustar\x00":  # (GNU's "ustar  " headers keep times and sparse maps there)
        prefix = block[345:500].split(b"\x00", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _check_sum(block: bytes, name: str, pos: int) -> None:
    stored = octal_field(block[148:156], name, pos)
    if stored != sum(block[:148]) + 256 + sum(block[156:]):
        raise CorruptObjectError(name, f"bad tar header checksum at byte {pos}")


def octal_field(field: bytes, name: str, pos: int) -> int:
    """A tar header's number field (octal text, or GNU base-256); CorruptObjectError names
    the tar ``name`` and the header's place ``pos`` if it is neither."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise CorruptObjectError(name, f"bad tar number at byte {pos}") from None


def _int(text: str, name: str, pos: int) -> int:
    if not is_pax_number(text):
        raise CorruptObjectError(name, f"bad PAX number at byte {pos}")
    return int(text)


def is_pax_number(text: str) -> bool:
    """Whether a PAX record's value is a number ``int`` takes: ASCII digits (``²`` is a
    digit it refuses), not over 20 of them (it refuses 4,300; no size is over 20)."""
    return text.isascii() and text.isdigit() and len(text) <= 20


def pax_records(payload: bytes, name: str, pos: int) -> dict[str, str]:
    """The key → value records of a PAX header's payload."""
    records = {}
    buf = io.BytesIO(payload)
    while rest := buf.read(1):
        head = rest
        while not head.endswith(b" "):
            c = buf.read(1)
            if not c or len(head) > 20:
                raise CorruptObjectError(name, f"bad PAX header at byte {pos}")
            head += c
        length = _int(head[:-1].decode("ascii", "replace"), name, pos)
        body = buf.read(length - len(head))
        key, sep, value = body.rstrip(b"\n").partition(b"=")
        if not sep:
            raise CorruptObjectError(name, f"bad PAX record at byte {pos}")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
    return records


def split_member_name(name: str) -> tuple[str, str]:
    """Splits a WebDataset member name into (key, extension): :func:`datarepo.keys.split_member`."""
    return keys.split_member(name)
