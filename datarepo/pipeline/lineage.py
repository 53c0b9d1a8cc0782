"""Lineage objects (DESIGN §3.5): per output, the cache key, the inputs and the outputs.

A pipeline commit's ``provenance["lineage"]`` names a **lineage root**; the root lists
**lineage pages** as a tree root lists tree pages: ``(first base, count, page oid)``, the
records sorted by their *base* (the output key of their unit of work) and cut where a base
hashes to 0 modulo 1024 (:func:`datarepo.tree.is_boundary`). A run that changes a few
units writes only the pages that hold them, and shares every other page (by oid) with the
run before; a run that changes nothing writes nothing.

A record is ``[base, cache key, inputs, outputs, error, dropped]``: ``inputs`` the
``[key, datum]`` of each input datum, ``outputs`` the ``[suffix, datum, size]`` of each
output (key ``base``, or ``base/suffix``), ``error`` ``[class, message]`` for a failure,
``dropped`` the reason a transform filtered the unit out (or null).

A **journal** object holds the records of one finished batch of a run not committed yet:
an interrupted run's work is found through it (see :mod:`datarepo.pipeline.cache`).
"""

from __future__ import annotations

import bisect
import json
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from typing import Any, NamedTuple

from datarepo.errors import CorruptObjectError
from datarepo.hashing import OID_LEN, Oid, is_hex, is_oid
from datarepo.objects import Blob, PageRef, RepoObject, decode
from datarepo.store import Store
from datarepo.tree import PageCutter

ROOT, PAGE, JOURNAL = "lineage", "lineage-page", "lineage-journal"
PAGE_MAX = 4096


class Record(NamedTuple):
    """What one unit of work gave (see the module's docstring)."""

    base: str
    cache: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str, int], ...]
    error: tuple[str, str] | None = None
    dropped: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def keys(self) -> Iterator[tuple[str, str, int]]:
        """Each output's (key, datum, size)."""
        for suffix, datum, size in self.outputs:
            yield (f"{self.base}/{suffix}" if suffix else self.base), datum, size

    def at(self, base: str) -> Record:
        """The same outputs under another base (a cached result of another key)."""
        return self._replace(base=base)


def record_of(value: Any, name: str = "<lineage>") -> Record:
    """A record from its JSON form (a row that :func:`page_rows` or :func:`read_journal`
    checked, or a record a run made)."""
    base, cache, inputs, outputs, error, dropped = value
    return Record(base, cache, tuple(map(tuple, inputs)), tuple(map(tuple, outputs)),
                  tuple(error) if error is not None else None, dropped)


def _oid(value: Any) -> bool:
    return type(value) is str and is_oid(value)


def good_rows(rows: list[Any]) -> bool:
    """Whether each record's JSON form has every field as a run writes it (a lineage object
    may be damaged, or made by hand, though its content hashes to its name). Checked column
    by column, in C (as :func:`datarepo.objects.decode_page` checks a tree page): a re-run
    reads every lineage page that holds a changed unit, each of about a thousand records."""
    if not (set(map(type, rows)) <= {list} and set(map(len, rows)) <= {6}):
        return False
    if not rows:
        return True
    bases, caches, inputs, outputs, errors, dropped = zip(*rows)
    ins, outs = _items(inputs, 2), _items(outputs, 3)
    errors = [e for e in errors if e is not None] if not set(map(type, errors)) <= {_NONE} else []
    if ins is None or outs is None or not (set(map(type, errors)) <= {list} and set(map(len, errors)) <= {2}):
        return False
    keys, in_datums = zip(*ins) if ins else ((), ())
    suffixes, out_datums, sizes = zip(*outs) if outs else ((), (), ())
    texts = (bases, caches, keys, in_datums, suffixes, out_datums, *(zip(*errors) if errors else ()))
    if not all(set(map(type, column)) <= {str} for column in texts):
        return False
    if not (set(map(type, sizes)) <= {int} and min(sizes, default=0) >= 0 and set(map(type, dropped)) <= {_NONE, str}):
        return False
    oids = (caches, in_datums, out_datums)
    return all(set(map(len, column)) <= {OID_LEN} for column in oids) and is_hex("".join(chain(*oids)))


_NONE = type(None)


def _items(lists: tuple[Any, ...], width: int) -> list[Any] | None:
    """The items of a column of lists (a record's inputs, or its outputs), each a list of
    ``width`` values; None if any is not."""
    if not set(map(type, lists)) <= {list}:
        return None
    items = list(chain.from_iterable(lists))
    return items if set(map(type, items)) <= {list} and set(map(len, items)) <= {width} else None


def _rows(data: dict[str, Any], oid: str, kind: str) -> list[Any]:
    rows = data.get("records")
    if type(rows) is not list:
        raise CorruptObjectError(oid, f"bad {kind}: no list of records")
    if not good_rows(rows):
        bad = next((r for r in rows if not good_rows([r])), None)
        base = bad[0] if type(bad) is list and bad and type(bad[0]) is str else str(bad)
        raise CorruptObjectError(oid, f"bad lineage record for {base[:80]!r}")
    return rows


@dataclass(frozen=True)
class Root:
    """A lineage root: one pipeline's records as of one commit."""

    pipeline: str
    fingerprint: str
    input: str  # the input's label (its globs, combined)
    output: str
    inputs: dict[str, str]  # each source's label → the commit it was read at
    pages: tuple[tuple[str, int, str], ...] = ()
    failed: tuple[str, ...] = ()  # bases whose last try failed
    outputs: int = 0

    @property
    def count(self) -> int:
        return sum(p[1] for p in self.pages)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1, "type": ROOT, "pipeline": self.pipeline, "fingerprint": self.fingerprint,
            "input": self.input, "output": self.output, "inputs": self.inputs,
            "pages": [list(p) for p in self.pages], "failed": list(self.failed), "outputs": self.outputs,
        }


def read_root(store: Store, oid: str) -> Root:
    """A lineage root, every field checked (CorruptObjectError naming the first bad one)."""
    data = _blob(store, oid, ROOT)
    if (bad := _bad_root_field(data)) is not None:
        raise CorruptObjectError(oid, f"bad lineage root: {bad}")
    pages = tuple((f, n, p) for f, n, p in data["pages"])
    return Root(data["pipeline"], data["fingerprint"], data["input"], data["output"], dict(data["inputs"]),
                pages, tuple(data["failed"]), data["outputs"])


def _bad_root_field(data: dict[str, Any]) -> str | None:
    """The first field of a root's JSON form that is not as a run writes it, or None."""
    pages, inputs = data.get("pages"), data.get("inputs")
    checks = {
        "pipeline": type(data.get("pipeline")) is str,
        "fingerprint": _oid(data.get("fingerprint")),
        "input": type(data.get("input")) is str,
        "output": type(data.get("output")) is str and str(data.get("output")).endswith("/"),
        "inputs": type(inputs) is dict and all(type(k) is str and _oid(v) for k, v in inputs.items()),
        "pages": type(pages) is list and all(
            type(p) is list and len(p) == 3 and type(p[0]) is str and type(p[1]) is int and p[1] > 0 and _oid(p[2])
            for p in pages),
        "failed": type(data.get("failed")) is list and all(type(b) is str for b in data["failed"]),
        "outputs": type(data.get("outputs")) is int and data["outputs"] >= 0,
    }
    if bad := next((name for name, good in checks.items() if not good), None):
        return bad
    if pages and not inputs:  # (records read inputs, at the commits this names)
        return "inputs (none, for records that read some)"
    return None


def read_page(store: Store, oid: str) -> list[Record]:
    return [record_of(r, oid) for r in page_rows(store, oid)]


def read_journal(store: Store, oid: str) -> list[Record]:
    return [record_of(r, oid) for r in _rows(_blob(store, oid, JOURNAL), oid, "lineage journal")]


def write_journal(store: Store, pipeline: str, fingerprint: str, records: list[Record]) -> Oid:
    return store.put_object(Blob({"format": 1, "type": JOURNAL, "pipeline": pipeline, "fingerprint": fingerprint,
                                  "records": [_row(r) for r in records]}))


def _blob(store: Store, oid: str, kind: str) -> dict[str, Any]:
    return _of_kind(store.get_object(oid), oid, kind)


def _of_kind(obj: RepoObject, oid: str, kind: str) -> dict[str, Any]:
    if not isinstance(obj, Blob) or obj.data.get("type") != kind:
        raise CorruptObjectError(oid, f"not a {kind} object")
    return obj.data


def children(data: Mapping[str, Any]) -> list[str] | None:
    """The objects a lineage object names (for ``gc`` and ``fsck``): a root's pages and
    input commits; none for a page or a journal. None for an object of another type. Of a
    damaged root, the oids it names where a run writes them (:func:`check` says what is
    wrong with it)."""
    kind = data.get("type")
    if kind == ROOT:
        pages, inputs = data.get("pages"), data.get("inputs")
        named = [p[2] for p in pages if type(p) is list and len(p) == 3] if type(pages) is list else []
        named += list(inputs.values()) if type(inputs) is dict else []
        return [o for o in named if _oid(o)]
    if kind in (PAGE, JOURNAL):
        return []
    return None


def check(store: Store, oid: str) -> None:
    """Reads a lineage object whole, checking every field; raises CorruptObjectError."""
    kind = store.get_object(oid).to_json().get("type")
    if kind == ROOT:
        read_root(store, oid)
    elif kind == PAGE:
        page_rows(store, oid)
    elif kind == JOURNAL:
        read_journal(store, oid)
    else:
        raise CorruptObjectError(oid, "not a lineage object")


# --- reading ----------------------------------------------------------------------------------
# A page is held as its decoded rows (lists, as JSON gives them, or records a run made: JSON
# writes both alike), or as its text (:class:`Plain`); a row becomes a Record only when it is
# asked for: a run that rewrites a page after changing a few of its units reads its thousand
# rows, and turns into records only those few.
Row = list[Any] | Record


def page_rows(store: Store, oid: str) -> list[Row]:
    """A page's rows, each checked (:func:`good_rows`)."""
    page = _read_page(store, oid)
    return page.rows() if isinstance(page, Plain) else page


def _read_page(store: Store, oid: str) -> list[Row] | Plain:
    data = store.canonical_bytes(oid)
    if (plain := Plain.parse(data)) is not None:
        return plain
    return _rows(_of_kind(decode(data, oid), oid, PAGE), oid, "lineage page")


# A page whose every record is *plain* (one input, one output, no error, not dropped: what
# nearly every run writes) and whose text has no escape is read as its text, in a third of
# the time JSON and :func:`good_rows` take, and a run that gives a few of its units new
# records rewrites it as text too: ``{"format":1,"records":[`` + rows + ``],"type":...}``,
# each row ``["base","cache",[["key","datum"]],[["suffix","datum",size]],null,null]``.
_HEAD, _TAIL = '{"format":1,"records":[', f'],"type":"{PAGE}"}}'
_HEAD_BYTES, _TAIL_BYTES = _HEAD.encode(), _TAIL.encode()
_INSIDE = ((2, ","), (4, ",[["), (6, ","), (8, "]],[["), (10, ","))  # a row's text between its strings
_END = "]],null,null],["  # after a row's size, and the next row's "["
_CONTROL = bytes(range(0x20))
_encode_row = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False).encode


class Plain(NamedTuple):
    """A page of plain records, as its text: the rows joined by commas (``body``), split
    at its quotes (``parts``: twelve a row, and one more), and the rows' ``bases``."""

    body: str
    parts: list[str]
    bases: list[str]

    @classmethod
    def parse(cls, data: bytes) -> Plain | None:
        """The page whose canonical bytes are ``data``, if it is plain, checked as
        :func:`good_rows` checks rows (and sorted by base); None for any other page.

        With no backslash (so no escape, and no quote in a string), the text splits at its
        quotes into the strings and what lies between them, which must be exactly what a
        plain row has there; with no control character in a string either, the text is
        what JSON reads as such rows, and what :func:`canonical_json` writes for them (a
        property test holds it to both)."""
        if not (data.startswith(_HEAD_BYTES) and data.endswith(_TAIL_BYTES)) or b"\\" in data:
            return None
        try:
            body = data[len(_HEAD_BYTES) : len(data) - len(_TAIL_BYTES)].decode()
        except UnicodeDecodeError:
            return None
        parts = body.split('"')
        n, extra = divmod(len(parts) - 1, 12)
        if extra or not n or parts[0] != "[" or any(parts[at::12] != [text] * n for at, text in _INSIDE):
            return None
        # What follows each row's last datum is ",<size>]],null,null],[" (the last one without
        # its ",["): joined by newlines, ",5<END>\n,7<END>\n,9<END>", where every newline
        # must be one that joins (what is left of them is not digits).
        tails = "\n".join(parts[12::12]) + ",["
        digits = tails[1 : -len(_END)].replace(_END + "\n,", "")
        caches, datums = parts[3::12], parts[7::12] + parts[11::12]
        bases = parts[1::12]
        strings = "".join(bases + parts[5::12] + parts[9::12]).encode()  # (no other part can hold a control character)
        if (
            tails[:1] != ","
            or not tails.endswith(_END)
            or tails.count(_END + "\n,") != n - 1
            or ",]" in tails
            or not (digits.isascii() and digits.isdigit())
            or tails.count(",0") != tails.count(",0]")  # (no leading zero)
            or not set(map(len, caches)) | set(map(len, datums)) <= {OID_LEN}
            or not is_hex("".join(caches) + "".join(datums))
            or len(strings.translate(None, _CONTROL)) != len(strings)
            or not all(map(operator.lt, bases, bases[1:]))
        ):
            return None
        return cls(body, parts, bases)

    def row(self, i: int) -> list[Any]:
        """Row ``i`` as JSON reads it."""
        p = self.parts[12 * i : 12 * i + 13]
        return [p[1], p[3], [[p[5], p[7]]], [[p[9], p[11], int(p[12][1 : p[12].index("]")])]], None, None]

    def rows(self) -> list[Row]:
        return json.loads("[" + self.body + "]")  # type: ignore[no-any-return]

    def replaced(self, changes: Mapping[str, Record | None]) -> bytes | None:
        """The page's canonical bytes with new records for some of its bases, written
        into its text; None if a base of ``changes`` is not one of its own or is deleted
        (the page is then cut again)."""
        at = [bisect.bisect_left(self.bases, base) for base in changes]
        if any(i == len(self.bases) or self.bases[i] != base or changes[base] is None for i, base in zip(at, changes)):
            return None
        rows = sorted(at)
        # Row i is '["' before its base (part 12i + 1) up to the comma before the next row's.
        offsets = self._offsets([j for i in rows for j in (12 * i + 1, 12 * i + 13)])
        out, done = [_HEAD], 0
        for n, i in enumerate(rows):
            end = offsets[2 * n + 1] - 3 if i + 1 < len(self.bases) else len(self.body)
            out += (self.body[done : offsets[2 * n] - 2], _encode_row(changes[self.bases[i]]))
            done = end
        out += (self.body[done:], _TAIL)
        return "".join(out).encode()

    def _offsets(self, indices: list[int]) -> list[int]:
        """Where each part of ``indices`` (in order) starts in the body: in one pass."""
        found, k, offset = [], 0, 0
        for j in indices:
            offset += len("".join(self.parts[k:j])) + j - k  # (and a quote after each part)
            found.append(offset)
            k = j
        return found


@dataclass
class Reader:
    """Reads a root's records, each page once."""

    store: Store
    root: Root
    _pages: dict[str, list[Row] | Plain] = field(default_factory=dict)
    _rows: dict[str, list[Row]] = field(default_factory=dict)
    _bases: dict[str, list[str]] = field(default_factory=dict)

    def read(self, oid: str) -> list[Row] | Plain:
        """A page of the root, as rows or as text."""
        if oid not in self._pages:
            self._pages[oid] = _read_page(self.store, oid)
        return self._pages[oid]

    def rows(self, oid: str) -> list[Row]:
        if oid not in self._rows:
            page = self.read(oid)
            self._rows[oid] = page.rows() if isinstance(page, Plain) else page
        return self._rows[oid]

    def page(self, oid: str) -> list[Record]:
        return [record_of(r, oid) for r in self.rows(oid)]

    def __iter__(self) -> Iterator[Record]:
        for _, _, oid in self.root.pages:
            yield from self.page(oid)

    def get(self, base: str) -> Record | None:
        """The record of the unit whose base is ``base``."""
        at = bisect.bisect_right(self._firsts, base) - 1
        if at < 0:
            return None
        oid = self.root.pages[at][2]
        page = self.read(oid)
        if oid not in self._bases:
            self._bases[oid] = page.bases if isinstance(page, Plain) else list(map(_BASE, page))
        bases = self._bases[oid]
        i = bisect.bisect_left(bases, base)
        if i == len(bases) or bases[i] != base:
            return None
        return record_of(page.row(i) if isinstance(page, Plain) else page[i], oid)

    @cached_property
    def _firsts(self) -> list[str]:
        return [p[0] for p in self.root.pages]

    def producer(self, key: str) -> Record | None:
        """The record whose outputs hold ``key``: its base is ``key`` or a folder above it."""
        candidate = key
        while candidate.startswith(self.root.output) and len(candidate) > len(self.root.output):
            found = self.get(candidate)
            if found is not None and any(k == key for k, _, _ in found.keys()):
                return found
            candidate = candidate[: candidate.rfind("/")] if "/" in candidate else ""
        return None


# --- writing ----------------------------------------------------------------------------------
def _page(rows: tuple[Row, ...]) -> Blob:
    return Blob({"format": 1, "type": PAGE, "records": list(rows)})


def update_pages(reader: Reader | None, store: Store, changes: Mapping[str, Record | None],
                 placed: dict[str, str] | None = None) -> tuple[tuple[str, int, str], ...]:
    """The pages of ``reader``'s root with ``changes`` (base → record, or None to delete)
    applied: pages none of whose bases changed are kept as they are, unread. Each changed
    base's new page is put in ``placed`` (base → page oid)."""
    keys = sorted(changes)
    cutter = PageCutter(store, _page, PAGE_MAX)
    pages = reader.root.pages if reader is not None else ()
    i = 0
    for n, (first, count, oid) in enumerate(pages):
        j = bisect.bisect_left(keys, pages[n + 1][0]) if n + 1 < len(pages) else len(keys)
        if i == j and not cutter.pending:
            cutter.keep(PageRef(first, count, oid))
            continue
        page = reader.read(oid)  # type: ignore[union-attr]
        if not cutter.pending and isinstance(page, Plain) and (data := page.replaced({k: changes[k] for k in keys[i:j]})):
            cutter.keep(PageRef(first, count, store.put_object_bytes(data)))  # (the same bases: the same cut)
        else:
            cutter.extend(_merge(reader.rows(oid), keys[i:j], changes))  # type: ignore[union-attr]
        i = j
    cutter.extend(_merge([], keys[i:], changes))
    cutter.flush()
    if placed is not None:
        firsts = [p[0] for p in cutter.pages]
        placed.update((k, cutter.pages[bisect.bisect_right(firsts, k) - 1][2]) for k in keys if changes[k] is not None)
    return tuple(cutter.pages)


def _merge(rows: list[Row], keys: list[str], changes: Mapping[str, Record | None]) -> list[Row]:
    """``rows`` with the changes of ``keys`` (sorted) applied. The rows between two changed
    bases are taken a run at a time: a page of a thousand rows with a few changed costs
    a step for each of those few."""
    if not keys:
        return rows
    bases = list(map(_BASE, rows))
    if not all(map(operator.lt, bases, bases[1:])):  # (not as a run writes a page: merged by mapping, sorted)
        kept: dict[str, Row | None] = dict(zip(bases, rows))
        kept.update((k, changes[k]) for k in keys)
        return [row for k in sorted(kept) if (row := kept[k]) is not None]
    merged: list[Row] = []
    at = 0
    for key in keys:
        i = bisect.bisect_left(bases, key, at)
        merged += rows[at:i]
        if (new := changes[key]) is not None:
            merged.append(_row(new))
        at = i + 1 if i < len(bases) and bases[i] == key else i
    return merged + rows[at:]


def _row(record: Record) -> Row:
    """A record as a page row: itself (JSON writes tuples as arrays)."""
    return record


_BASE = operator.itemgetter(0)
