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
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from datarepo.errors import CorruptObjectError
from datarepo.hashing import Oid, is_oid
from datarepo.objects import Blob
from datarepo.store import Store
from datarepo.tree import is_boundary

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


_HEX = re.compile("[0-9a-f]*")


def good_rows(rows: list[Any]) -> bool:
    """Whether each record's JSON form has every field as a run writes it (a lineage object
    may be damaged, or made by hand, though its content hashes to its name). About 1.3 µs a
    record, the ids checked with one regular expression for the lot."""
    oids: list[str] = []
    add = oids.append
    for row in rows:
        if type(row) is not list or len(row) != 6:
            return False
        base, cache, inputs, outputs, error, dropped = row
        if type(base) is not str or type(cache) is not str or type(inputs) is not list or type(outputs) is not list:
            return False
        add(cache)
        for i in inputs:
            if type(i) is not list or len(i) != 2 or type(i[0]) is not str or type(i[1]) is not str:
                return False
            add(i[1])
        for o in outputs:
            if type(o) is not list or len(o) != 3 or type(o[0]) is not str or type(o[1]) is not str or type(o[2]) is not int:
                return False
            if o[2] < 0:
                return False
            add(o[1])
        if error is not None and not (type(error) is list and len(error) == 2 and type(error[0]) is str and type(error[1]) is str):
            return False
        if dropped is not None and type(dropped) is not str:
            return False
    return all(len(o) == 32 for o in oids) and _HEX.fullmatch("".join(oids)) is not None


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
    obj = store.get_object(oid)
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
# writes both alike); a row becomes a Record only when it is asked for: a run that rewrites
# a page after changing a few of its units reads its thousand rows, and turns into records
# only those few.
Row = list[Any] | Record


def page_rows(store: Store, oid: str) -> list[Row]:
    """A page's rows, each checked (:func:`good_row`)."""
    return _rows(_blob(store, oid, PAGE), oid, "lineage page")


@dataclass
class Reader:
    """Reads a root's records, each page once."""

    store: Store
    root: Root
    _pages: dict[str, list[Row]] = field(default_factory=dict)
    _bases: dict[str, list[str]] = field(default_factory=dict)

    def rows(self, oid: str) -> list[Row]:
        if oid not in self._pages:
            self._pages[oid] = page_rows(self.store, oid)
        return self._pages[oid]

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
        rows = self.rows(oid)
        if oid not in self._bases:
            self._bases[oid] = [r[0] for r in rows]
        i = bisect.bisect_left(self._bases[oid], base)
        return record_of(rows[i], oid) if i < len(rows) and rows[i][0] == base else None

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
class _Cutter:
    def __init__(self, store: Store, placed: dict[str, str] | None, changed: Mapping[str, Record | None]) -> None:
        self.store = store
        self.placed, self.changed = placed, changed
        self.pending: list[Row] = []
        self.pages: list[tuple[str, int, str]] = []

    def extend(self, rows: Iterable[Row]) -> None:
        for r in rows:
            self.pending.append(r)
            if is_boundary(r[0]) or len(self.pending) >= PAGE_MAX:
                self.flush()

    def flush(self) -> None:
        if self.pending:
            oid = self.store.put_object(Blob({"format": 1, "type": PAGE, "records": self.pending}))
            self.pages.append((self.pending[0][0], len(self.pending), oid))
            if self.placed is not None:
                self.placed.update((r[0], oid) for r in self.pending if r[0] in self.changed)
            self.pending = []


def update_pages(reader: Reader | None, store: Store, changes: Mapping[str, Record | None],
                 placed: dict[str, str] | None = None) -> tuple[tuple[str, int, str], ...]:
    """The pages of ``reader``'s root with ``changes`` (base → record, or None to delete)
    applied: pages none of whose bases changed are kept as they are, unread. Each changed
    base's new page is put in ``placed`` (base → page oid)."""
    keys = sorted(changes)
    cutter = _Cutter(store, placed, changes)
    pages = reader.root.pages if reader is not None else ()
    i = 0
    for n, (first, count, oid) in enumerate(pages):
        j = bisect.bisect_left(keys, pages[n + 1][0]) if n + 1 < len(pages) else len(keys)
        if i == j and not cutter.pending:
            cutter.pages.append((first, count, oid))
            continue
        cutter.extend(_merge(reader.rows(oid), keys[i:j], changes))  # type: ignore[union-attr]
        i = j
    cutter.extend(_merge([], keys[i:], changes))
    cutter.flush()
    return tuple(cutter.pages)


def _merge(rows: list[Row], keys: list[str], changes: Mapping[str, Record | None]) -> list[Row]:
    if not keys:
        return rows
    kept = {r[0]: r for r in rows}
    for k in keys:
        if (new := changes[k]) is None:
            kept.pop(k, None)
        else:
            kept[k] = _row(new)
    return [kept[k] for k in sorted(kept)]


def _row(record: Record) -> Row:
    """A record as a page row: itself (JSON writes tuples as arrays)."""
    return record  # type: ignore[return-value]
