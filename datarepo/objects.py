"""Frozen repository objects and their canonical JSON encoding (docs/format.md, "Objects").

An object's oid is the xxh3-128 of its canonical JSON bytes. On disk the bytes
may be zstd-compressed; :func:`decode` accepts both and raises only
:class:`CorruptObjectError` on anything else.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from datarepo.errors import CorruptObjectError
from datarepo.hashing import OID_LEN, Oid, canonical_json, is_hex, is_oid

FORMAT = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_OBJECT_BYTES = 1 << 30


class TreeEntry(NamedTuple):
    """One key of a commit: the datum it names and the datum's total size in bytes."""

    key: str
    datum: Oid
    size: int


class PageRef(NamedTuple):
    """A tree root's pointer to one page: its first key, entry count and oid."""

    first_key: str
    count: int
    page: Oid


class TreePage:
    """A run of consecutive, sorted tree entries, held as it was made: as ``rows``
    (``[key, datum, size]`` each: lists as decoded by JSON, or TreeEntry tuples as built)
    or as columns (keys, datums, sizes: as read from a page's text). The other form, and
    :attr:`entries` (TreeEntry tuples), are made only when asked: a lookup or an update of
    a few keys need not build a thousand of them, and a listing or a manifest reads the
    columns. A page read from text parses its sizes only when they are asked for.
    """

    def __init__(self, rows: Sequence[Sequence[Any]] | None = None, *, columns: _Columns | None = None) -> None:
        if rows is not None:
            self.__dict__["rows"] = rows
        if columns is not None:
            self.__dict__["columns"] = columns

    @classmethod
    def _from_text(cls, keys: list[str], datums: list[Oid], tails: str) -> TreePage:
        page = cls()
        page.__dict__["keys_and_datums"] = (keys, datums)
        page._tails = tails
        return page

    @cached_property
    def keys_and_datums(self) -> tuple[Sequence[str], Sequence[Oid]]:
        return self.columns[:2]  # type: ignore[return-value]

    @cached_property
    def columns(self) -> _Columns:
        """(keys, datums, sizes), in key order."""
        if "keys_and_datums" in self.__dict__:
            keys, datums = self.keys_and_datums
            return keys, datums, list(map(int, self._tails[1:-1].split("],[\n,")))
        return tuple(zip(*self.rows)) if self.rows else ((), (), ())  # type: ignore[return-value]

    @cached_property
    def rows(self) -> Sequence[Sequence[Any]]:
        return list(zip(*self.columns))

    @cached_property
    def entries(self) -> tuple[TreeEntry, ...]:
        if "rows" in self.__dict__:
            return tuple(map(TreeEntry._make, self.rows))
        return tuple(map(TreeEntry._make, zip(*self.columns)))

    def __len__(self) -> int:
        return len(self.keys_and_datums[0]) if "rows" not in self.__dict__ else len(self.rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TreePage) and list(map(tuple, self.rows)) == list(map(tuple, other.rows))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TreePage({len(self)} entries)"

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "type": "page", "entries": self.rows}  # json writes tuples as arrays


_Columns = tuple[Sequence[str], Sequence[Oid], Sequence[int]]


@dataclass(frozen=True)
class Tree:
    """The root of a paged tree: its pages in key order."""

    pages: tuple[PageRef, ...]

    @property
    def count(self) -> int:
        return sum(p.count for p in self.pages)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "type": "tree", "pages": self.pages}


@dataclass(frozen=True)
class Commit:
    """A snapshot: a tree, its parents and who made it when and why."""

    tree: Oid
    parents: tuple[Oid, ...]
    author: str
    time: str
    message: str
    provenance: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "format": FORMAT,
            "type": "commit",
            "tree": self.tree,
            "parents": list(self.parents),
            "author": self.author,
            "time": self.time,
            "message": self.message,
        }
        if self.provenance is not None:
            obj["provenance"] = self.provenance
        return obj


@dataclass(frozen=True)
class Blob:
    """Any other JSON object (lineage, run records): kept as its decoded mapping."""

    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.data


RepoObject = Commit | Tree | TreePage | Blob


def encode(obj: RepoObject) -> bytes:
    """Returns the canonical bytes of ``obj`` (hash these for its oid)."""
    if isinstance(obj, TreePage):
        return encode_page(obj.rows)
    return canonical_json(obj.to_json())


# The tree page codec --------------------------------------------------------
# A page is written by :func:`encode_page` and read by :func:`decode_page` (through
# :func:`decode`): the bytes are those :func:`canonical_json` gives for the page's JSON
# (``{"entries":[[key,datum,size],...],"format":1,"type":"page"}``), which
# ``tree.py`` also searches as text, by :data:`PAGE_HEAD`, :data:`PAGE_TAIL` and
# :data:`json_string`. A property test holds the three to one another.
PAGE_HEAD, PAGE_TAIL = '{"entries":[', '],"format":%d,"type":"page"}' % FORMAT
json_string = json.encoder.encode_basestring  # json's own (C) quoting of a string, as ensure_ascii=False quotes it


def encode_page(rows: Sequence[Sequence[Any]]) -> bytes:
    """The canonical JSON of a page, written out: the bytes :func:`canonical_json` gives,
    in about two thirds of the time. Every commit and ``add`` encodes the pages it
    changes, each of about a thousand entries. A row's datum is an oid and its size an
    int, as every page built or decoded here holds."""
    body = ",".join([f'[{json_string(key)},"{datum}",{size}]' for key, datum, size in rows])
    return (PAGE_HEAD + body + PAGE_TAIL).encode()


def decode_page(obj: dict[str, Any]) -> TreePage:
    """A page from its decoded JSON, checked column by column, in C: pages hold thousands
    of entries and are read on every status, listing and commit that touches them.
    Raises TypeError or ValueError (which :func:`decode` reports as CorruptObjectError)."""
    rows = obj["entries"]
    if type(rows) is not list:
        raise TypeError("entries must be a list")
    # Three columns (a row that is not a list cannot give an int size, checked below), and
    # no row longer than three: zip stops at the shortest row.
    keys, datums, sizes = zip(*rows) if rows else ((), (), ())
    if sum(map(len, rows)) != 3 * len(rows):
        raise TypeError("entries must be [key, datum, size]")
    if not set(map(type, keys)) <= {str} or not set(map(type, sizes)) <= {int}:
        raise TypeError("entries must be [key, datum, size]")
    # (joining the datums fails on one that is not a string)
    if not set(map(len, datums)) <= {OID_LEN} or not is_hex("".join(datums)):
        raise ValueError("bad datum oid")
    if sizes and min(sizes) < 0:
        raise ValueError("negative size")
    if not all(map(operator.lt, keys, keys[1:])):
        raise ValueError("entries are not sorted and unique")
    page = TreePage(rows)
    page.__dict__["columns"] = (keys, datums, sizes)  # checked above: kept, not zipped again
    return page


_PAGE_HEAD_BYTES, _PAGE_TAIL_BYTES = PAGE_HEAD.encode(), PAGE_TAIL.encode()
# Characters a JSON string holds only escaped: with no backslash, a page's text has no
# escape, and every quote in it delimits a string.
_CONTROL = bytes(range(0x20))


def decode_page_text(data: bytes) -> TreePage | None:
    """The page whose canonical bytes are ``data``, read without a JSON parser where no key
    needs an escape (no quote, backslash or control character: nearly every page), in
    half the time; None for any other bytes, which :func:`decode` parses as JSON.

    Splitting the text at its quotes gives, a row at a time, the key, ``,``, the datum and
    ``,<size>],[``: each is checked as :func:`decode_page` checks the parsed rows, and
    the sizes must be plain digits (as JSON writes them), so that every page read here
    is one that JSON reads the same (a property test holds them to it).
    """
    if not (data.startswith(_PAGE_HEAD_BYTES) and data.endswith(_PAGE_TAIL_BYTES)):
        return None
    if b"\\" in data:
        return None
    try:
        parts = data[len(_PAGE_HEAD_BYTES) : len(data) - len(_PAGE_TAIL_BYTES)].decode().split('"')
    except UnicodeDecodeError:
        return None
    n, extra = divmod(len(parts) - 1, 4)
    if extra or not n or parts[0] != "[" or parts[2::4].count(",") != n:
        return None
    keys, datums = parts[1::4], parts[3::4]
    # What follows each datum must be ",<size>],[" (",<size>]" at the end), and a control
    # character can only be in a key (the rest is checked exactly); so the tails are
    # joined by one, "\n", and split where ",<size>],[" meets the next: ",5],[\n,7],[\n,9]".
    tails = "\n".join(parts[4::4])
    digits = tails[1:-1].replace("],[\n,", "")
    if (
        tails[:1] != ","
        or tails[-1:] != "]"
        or tails.count("],[\n,") != n - 1
        or ",]" in tails
        or not (digits.isascii() and digits.isdigit())
        or tails.count(",0") != tails.count(",0]")  # no leading zero
        or len((joined := "".join(keys).encode()).translate(None, _CONTROL)) != len(joined)
        or not set(map(len, datums)) <= {OID_LEN}
        or not is_hex("".join(datums))
        or not all(map(operator.lt, keys, keys[1:]))
    ):
        return None
    return TreePage._from_text(keys, datums, tails)  # type: ignore[arg-type]


def compress(data: bytes) -> bytes:
    """Compresses canonical bytes for storage."""
    import zstandard  # here, not at the top: loading it costs a command that reads no object 13 ms

    return zstandard.ZstdCompressor(level=1).compress(data)


def decode(raw: bytes, name: str = "<object>") -> RepoObject:
    """Parses stored bytes (plain or zstd) into an object, or raises CorruptObjectError."""
    data = _decompress(raw, name)
    if (page := decode_page_text(data)) is not None:
        return page
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptObjectError(name, f"not JSON ({e.__class__.__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CorruptObjectError(name, "not a format-1 object")
    try:
        return _PARSERS.get(obj.get("type"), _blob)(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptObjectError(name, f"malformed {obj.get('type')!s:.20}: {e!s:.80}") from None


def canonical_bytes(raw: bytes, name: str = "<object>") -> bytes:
    """Returns the canonical bytes behind stored bytes, for re-hashing."""
    return _decompress(raw, name)


def _decompress(raw: bytes, name: str) -> bytes:
    if not raw.startswith(ZSTD_MAGIC):
        return raw
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(raw, max_output_size=MAX_OBJECT_BYTES)
    except zstandard.ZstdError as e:
        raise CorruptObjectError(name, f"bad zstd frame ({e})") from None


def _oid(value: Any) -> Oid:
    if not isinstance(value, str) or not is_oid(value):
        raise ValueError(f"bad oid {value!r:.40}")
    return Oid(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected a count, got {value!r:.40}")
    return value


def _commit(obj: dict[str, Any]) -> Commit:
    provenance = obj.get("provenance")
    if provenance is not None and not isinstance(provenance, dict):
        raise TypeError("provenance is not a mapping")
    return Commit(
        tree=_oid(obj["tree"]),
        parents=tuple(_oid(p) for p in obj["parents"]),
        author=_str(obj["author"]),
        time=_str(obj["time"]),
        message=_str(obj["message"]),
        provenance=provenance,
    )


def _tree(obj: dict[str, Any]) -> Tree:
    return Tree(tuple(PageRef(_str(k), _int(n), _oid(p)) for k, n, p in obj["pages"]))


def _blob(obj: dict[str, Any]) -> Blob:
    _str(obj["type"])
    return Blob(obj)


_PARSERS = {"commit": _commit, "tree": _tree, "page": decode_page}
