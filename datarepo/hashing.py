"""Object ids: xxh3-128 digests as 32 lower-case hex characters."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO, NewType

import xxhash

Oid = NewType("Oid", str)

ALGORITHM = "xxh3-128"
OID_LEN = 32
CHUNK = 1 << 20
_DATUM_TAG = b"datum\x00"
_OID_RE = re.compile(r"[0-9a-f]{32}")
_HEX_DIGITS = b"0123456789abcdef"


def hash_bytes(data: bytes | memoryview) -> Oid:
    """Returns the oid of ``data``."""
    return Oid(xxhash.xxh3_128_hexdigest(data))


def hash_stream(stream: BinaryIO) -> tuple[Oid, int]:
    """Hashes a stream in chunks, never holding it whole; returns (oid, size)."""
    h = xxhash.xxh3_128()
    size = 0
    while chunk := stream.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    return Oid(h.hexdigest()), size


def datum_id(member_hashes: Mapping[str, str]) -> Oid:
    """Returns the id of a datum from its members' extensions and hashes (docs/format.md, "Hashing and ids")."""
    return datum_id_of_digests([(ext, bytes.fromhex(member_hashes[ext])) for ext in sorted(member_hashes)])


def datum_id_of_digests(members: Iterable[tuple[str, bytes]]) -> Oid:
    """:func:`datum_id` of members given sorted by extension, each with its 16-byte digest."""
    parts = [_DATUM_TAG]
    for ext, digest in members:
        parts += (ext.encode("utf-8"), b"\x00", digest)
    return Oid(xxhash.xxh3_128_hexdigest(b"".join(parts)))


def canonical_json(obj: dict[str, Any]) -> bytes:
    """Encodes ``obj`` the one way whose hash is its oid. (Without the check for cycles,
    which the objects built here cannot have, a shard's ``.idx`` costs a sixth fewer
    instructions.)"""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False).encode()


def is_oid(text: str) -> bool:
    """True when ``text`` has the shape of a full oid."""
    return _OID_RE.fullmatch(text) is not None


def is_hex(text: str) -> bool:
    """True when ``text`` is only lower-case hex digits (many oids can be checked joined:
    deleting the hex digits in C is several times faster than a regular expression)."""
    return text.isascii() and not text.encode().translate(None, _HEX_DIGITS)
