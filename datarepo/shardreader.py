"""Reading the datums of one shard, given where they lie (a manifest's ranges), from any
binary file object, in one forward pass: a local file now, a remote object's stream
later. The shard's layout is in docs/format.md ("Shards")."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from operator import add, itemgetter, lt
from typing import Any, BinaryIO, NamedTuple

import xxhash

from datarepo import args
from datarepo.errors import CorruptObjectError, InvalidInputError
from datarepo.hashing import Oid, datum_id_of_digests
from datarepo.shards import BLOCK, is_pax_number, octal_field, padding, pax_records, ustar_name

# A reader of a seekable file reads over gaps up to this size rather than seek: one
# sequential stream is cheaper than a seek for a few skipped datums.
SEEK_OVER = 1 << 20
# Gaps of a stream that cannot seek are read and dropped this many bytes at a time.
_DISCARD = 1 << 20


class DatumRange(NamedTuple):
    """Where one datum lies in its shard: from its first tar header, ``length`` bytes
    (its members' headers, bytes and padding; see docs/format.md, "Shard index")."""

    key: str
    datum: Oid
    offset: int
    length: int



class ShardReader:
    """Reads the datums of one shard, given their ranges in offset order (a manifest's
    :meth:`Manifest.ranges`), from a binary file positioned at the shard's start, in one
    sequential pass: ``for key, members in ShardReader(f, ranges, shard)``.

    The file needs only ``read``; gaps between the ranges are sought over where the file
    is seekable and the gap large, else read and dropped, so a stream that cannot seek
    (a pipe, an HTTP body) works. Each datum's tar headers are parsed from its bytes, its
    members cut out and, with ``verify``, checked against its id. Anything the bytes do
    not hold as the ranges say raises CorruptObjectError naming the shard.

    Args:
        fileobj: the shard, positioned at its start (or, if seekable, anywhere).
        ranges: the datums to read, in offset order, not overlapping (a datum that several
            keys name, as a manifest has it, comes once a key, its range repeated).
        shard: the shard's oid, for messages.
        verify: check each datum's members against its id.

    Yields:
        ``(key, {ext: bytes})`` a datum, with the datum id for a key where a range has none.

    Raises:
        InvalidInputError: (as it is made) ``fileobj`` has no ``read``, ``ranges`` are not
            ``(key, datum, offset, length)`` ranges in offset order, not overlapping, or
            ``shard`` is not a str, ``verify`` not True or False.
    """

    def __init__(self, fileobj: BinaryIO, ranges: Sequence[DatumRange], shard: str = "", verify: bool = False) -> None:
        if not callable(getattr(fileobj, "read", None)):
            raise InvalidInputError(f"fileobj must be a binary file object (with read()), not {args.shown(fileobj)}")
        self.fileobj = fileobj
        self.ranges = checked_ranges(ranges)
        self.name = f"{args.text('shard', shard)}.tar" if shard else "<shard>"
        self.verify = args.flag("verify", verify)
        self._seekable = _seekable(fileobj)
        self._pos = fileobj.tell() if self._seekable else 0

    def __iter__(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        last: tuple[int, int, dict[str, bytes]] | None = None
        for r in self.ranges:
            if last is not None and (r.offset, r.length) == last[:2]:  # one datum, named by another key
                yield (r.key or r.datum), dict(last[2])
                continue
            self._skip_to(r.offset)
            span = self._read(r.length)
            members = cut_members(span, r.datum, self.name, r.offset)
            if self.verify:
                check_members(members, r.datum, self.name)
            last = (r.offset, r.length, members)
            yield (r.key or r.datum), members

    def _skip_to(self, offset: int) -> None:
        gap = offset - self._pos
        if gap > SEEK_OVER and self._seekable:
            self.fileobj.seek(offset)
            self._pos = offset
            return
        while gap:
            gap -= len(self._read(min(gap, _DISCARD)))

    def _read(self, size: int) -> bytes:
        data = self.fileobj.read(size)
        while data is not None and len(data) < size:  # a raw file or a socket may return less
            more = self.fileobj.read(size - len(data))
            if not more:
                break
            data += more
        if data is None or len(data) < size:
            raise CorruptObjectError(self.name, f"truncated: {size} bytes wanted at byte {self._pos}")
        self._pos += size
        return data


def checked_ranges(ranges: Any) -> list[DatumRange]:
    """``ranges`` as a list of :class:`DatumRange`, if each is ``(key, datum, offset,
    length)``, a key a str (or None: the datum id is yielded for it), a datum id, offsets
    and lengths ints of 0 or more, in offset order, not overlapping (a range may repeat the
    one before it: a datum named by two keys). Checked in C over the columns: a shard holds
    thousands of datums.

    Raises:
        InvalidInputError: ``"ranges ..."``, naming the first bad range.
    """
    if isinstance(ranges, (str, bytes, Mapping)) or not isinstance(ranges, Iterable):
        raise InvalidInputError(f"ranges must be a list of DatumRange (key, datum, offset, length), not {args.shown(ranges)}")
    ranges = list(ranges)
    if not (all(map(isinstance, ranges, repeat((tuple, list)))) and set(map(len, ranges)) <= {4}):
        i = next(i for i, r in enumerate(ranges) if not isinstance(r, (tuple, list)) or len(r) != 4)
        raise InvalidInputError(f"ranges[{i}] must be a DatumRange (key, datum, offset, length), not {args.shown(ranges[i])}")
    if set(map(type, ranges)) != {DatumRange}:
        ranges = list(map(DatumRange._make, ranges))
    keys, datums, offsets, lengths = (list(map(itemgetter(i), ranges)) for i in range(4))
    if not all(map(isinstance, keys, repeat((str, type(None))))):
        i = next(i for i, k in enumerate(keys) if not isinstance(k, (str, type(None))))
        raise InvalidInputError(f"ranges[{i}]: the key must be a str, not {args.shown(keys[i])}")
    args.oids("ranges: a datum", datums)
    for name, column in (("offset", offsets), ("length", lengths)):
        if not set(map(type, column)) <= {int} or (column and min(column) < 0):
            i = next(i for i, v in enumerate(column) if type(v) is not int or v < 0)
            raise InvalidInputError(f"ranges[{i}]: the {name} must be an int of 0 or more, not {args.shown(column[i])}")
    ends = list(map(add, offsets, lengths))
    for i in itertools.compress(range(1, len(ranges)), map(lt, offsets[1:], ends)):
        if (offsets[i], lengths[i]) != (offsets[i - 1], lengths[i - 1]):
            raise InvalidInputError(f"ranges must be in offset order and not overlap: ranges[{i}] at byte {offsets[i]} is not")
    return ranges


def _seekable(f: BinaryIO) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def cut_members(span: bytes, datum: str, name: str, offset: int = 0) -> dict[str, bytes]:
    """The members of a datum cut out of its span (its bytes from its first tar header):
    the ustar headers are parsed here, and each member must be named ``<datum>.<ext>``."""
    members: dict[str, bytes] = {}
    stem = datum + "."
    pos, end = 0, len(span)
    pax_path: str | None = None
    pax_size: int | None = None
    while pos < end:
        if end - pos < BLOCK:
            raise CorruptObjectError(name, f"truncated tar header at byte {offset + pos}")
        block = span[pos : pos + BLOCK]
        kind = block[156:157]
        size = octal_field(block[124:136], name, offset + pos)
        data = pos + BLOCK
        if kind == b"x":
            records = pax_records(span[data : data + size], name, offset + pos)
            pax_path = records.get("path", pax_path)
            pax_size = int(records["size"]) if is_pax_number(records.get("size", "")) else pax_size
        elif kind in (b"0", b"\x00"):
            member = pax_path or ustar_name(block)
            size = pax_size if pax_size is not None else size
            if not member.startswith(stem):  # ("<datum>." is the member without an extension: docs/format.md)
                raise CorruptObjectError(name, f"member {member[:80]!r} at byte {offset + pos} is not of datum {datum}")
            if data + size > end:
                raise CorruptObjectError(name, f"truncated: member {member[:80]!r} at byte {offset + pos} is cut short")
            members[member[len(stem) :]] = span[data : data + size]
            pax_path = pax_size = None
        elif block == bytes(BLOCK):
            raise CorruptObjectError(name, f"end of archive inside datum {datum} at byte {offset + pos}")
        else:
            raise CorruptObjectError(name, f"unexpected tar member type {kind!r} at byte {offset + pos}")
        pos = data + size + padding(size)
    if not members:
        raise CorruptObjectError(name, f"datum {datum} has no members at byte {offset}")
    return members


def check_members(members: dict[str, bytes], datum: str, name: str) -> None:
    """Raises CorruptObjectError, naming the shard, unless the members give the datum's id."""
    got = datum_id_of_digests([(ext, xxhash.xxh3_128_digest(members[ext])) for ext in sorted(members)])
    if got != datum:
        raise CorruptObjectError(name, f"datum {datum} does not match its bytes")
