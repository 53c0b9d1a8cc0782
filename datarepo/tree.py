"""Paged trees (DESIGN §3.3): a commit's sorted (key, datum, size) list, cut into
pages at content-defined boundaries so a small change rewrites only nearby pages."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import xxhash

from datarepo.hashing import Oid
from datarepo.objects import PageRef, Tree, TreeEntry, TreePage
from datarepo.store import Store

PAGE_MODULUS = 1024


def is_boundary(key: str) -> bool:
    """A page ends after an entry whose key hashes to 0 modulo 1024."""
    return xxhash.xxh3_64_intdigest(key.encode("utf-8")) % PAGE_MODULUS == 0


class _PageCutter:
    """Accumulates sorted entries and stores a page at every boundary."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: list[TreeEntry] = []
        self.pages: list[PageRef] = []

    def add(self, entry: TreeEntry) -> None:
        self.pending.append(entry)
        if is_boundary(entry.key):
            self.flush()

    def keep(self, ref: PageRef) -> None:
        """Reuses an unchanged page (only valid when nothing is pending)."""
        self.pages.append(ref)

    def flush(self) -> None:
        if self.pending:
            oid = self.store.put(TreePage(tuple(self.pending)))
            self.pages.append(PageRef(self.pending[0].key, len(self.pending), oid))
            self.pending = []

    def finish(self) -> Oid:
        self.flush()
        return self.store.put(Tree(tuple(self.pages)))


def write_tree(store: Store, entries: Iterable[TreeEntry]) -> Oid:
    """Stores a tree from entries sorted by key; returns the root oid."""
    cutter = _PageCutter(store)
    for entry in entries:
        cutter.add(entry)
    return cutter.finish()


def read_root(store: Store, oid: str) -> Tree:
    return store.get_typed(oid, Tree)  # type: ignore[return-value]


def read_page(store: Store, oid: str) -> TreePage:
    return store.get_typed(oid, TreePage)  # type: ignore[return-value]


def iter_tree(store: Store, oid: str, prefix: str = "") -> Iterator[TreeEntry]:
    """Yields a tree's entries in key order, opening only pages that can hold ``prefix``."""
    pages = read_root(store, oid).pages
    start = max(bisect.bisect_right([p.first_key for p in pages], prefix) - 1, 0)
    for ref in pages[start:]:
        if prefix and ref.first_key > prefix and not ref.first_key.startswith(prefix):
            return
        for entry in read_page(store, ref.page).entries:
            if entry.key.startswith(prefix):
                yield entry
            elif entry.key > prefix:
                return


def lookup(store: Store, oid: str, key: str) -> TreeEntry | None:
    """Finds one key by opening the single page that can hold it."""
    return lookup_many(store, oid, [key]).get(key)


def lookup_many(store: Store, oid: str, keys: Iterable[str]) -> dict[str, TreeEntry]:
    """Finds keys, opening the root once and each page that can hold one of them once."""
    pages = read_root(store, oid).pages
    firsts = [p.first_key for p in pages]
    by_page: dict[int, list[str]] = {}
    for key in keys:
        if (i := bisect.bisect_right(firsts, key) - 1) >= 0:
            by_page.setdefault(i, []).append(key)
    found = {}
    for i, wanted in by_page.items():
        entries = read_page(store, pages[i].page).entries
        for key in wanted:
            j = bisect.bisect_left(entries, (key,))
            if j < len(entries) and entries[j].key == key:
                found[key] = entries[j]
    return found


def update_tree(store: Store, oid: str, changes: dict[str, TreeEntry | None]) -> Oid:
    """Applies ``changes`` (key → new entry, or None to delete) to a stored tree.

    Only pages that hold a changed key, and the pages after them up to the next
    unchanged boundary, are read and rewritten; every other page is reused.
    The result is the same root a full :func:`write_tree` would give.
    """
    pages = read_root(store, oid).pages
    firsts = [p.first_key for p in pages]
    by_page: dict[int, dict[str, TreeEntry | None]] = {}
    for key, entry in changes.items():
        by_page.setdefault(max(bisect.bisect_right(firsts, key) - 1, 0), {})[key] = entry
    cutter = _PageCutter(store)
    for i, ref in enumerate(pages):
        if i not in by_page and not cutter.pending:
            cutter.keep(ref)
            continue
        entries = read_page(store, ref.page).entries
        if not cutter.pending and (same := _replaced(entries, by_page[i])) is not None:
            cutter.pending = same  # the same keys: the same boundaries, no need to look for them
            cutter.flush()
            continue
        for entry in _merge(entries, by_page.get(i, {})):
            cutter.add(entry)
    if not pages:
        for entry in _merge((), by_page.get(0, {})):
            cutter.add(entry)
    return cutter.finish()


def _replaced(entries: tuple[TreeEntry, ...], changes: dict[str, TreeEntry | None]) -> list[TreeEntry] | None:
    """The page with new values for existing keys, or None if a key is added or deleted."""
    out = list(entries)
    for key, new in changes.items():
        j = bisect.bisect_left(out, (key,))
        if new is None or j == len(out) or out[j].key != key:
            return None
        out[j] = new
    return out


def _merge(entries: Iterable[TreeEntry], changes: dict[str, TreeEntry | None]) -> Iterator[TreeEntry]:
    merged = {e.key: e for e in entries}
    merged.update(changes)
    for key in sorted(merged):
        if (entry := merged[key]) is not None:
            yield entry


class Change(NamedTuple):
    """One key that differs between two trees; ``old`` or ``new`` is None when absent."""

    key: str
    old: TreeEntry | None
    new: TreeEntry | None


def diff_trees(store: Store, a: str | None, b: str | None) -> Iterator[Change]:
    """Yields the keys that differ between two trees, in key order.

    Pages present in both trees are skipped without being opened, so the cost
    follows the size of the change, not of the trees.
    """
    if a == b:
        return
    pages_a = read_root(store, a).pages if a else ()
    pages_b = read_root(store, b).pages if b else ()
    shared = {p.page for p in pages_a} & {p.page for p in pages_b}
    old = _entries(store, (p for p in pages_a if p.page not in shared))
    new = _entries(store, (p for p in pages_b if p.page not in shared))
    yield from merge_diff(old, new)


def _entries(store: Store, pages: Iterable[PageRef]) -> Iterator[TreeEntry]:
    for ref in pages:
        yield from read_page(store, ref.page).entries


def merge_diff(old: Iterable[TreeEntry], new: Iterable[TreeEntry]) -> Iterator[Change]:
    """Merges two key-sorted entry streams into the changes between them."""
    end = TreeEntry("\U0010ffff" * 2, Oid(""), 0)
    it_a, it_b = iter(old), iter(new)
    ea, eb = next(it_a, None), next(it_b, None)
    while ea is not None or eb is not None:
        ka = ea.key if ea is not None else end.key
        kb = eb.key if eb is not None else end.key
        if ka < kb:
            yield Change(ka, ea, None)
            ea = next(it_a, None)
        elif kb < ka:
            yield Change(kb, None, eb)
            eb = next(it_b, None)
        else:
            if ea.datum != eb.datum:  # type: ignore[union-attr]
                yield Change(ka, ea, eb)
            ea, eb = next(it_a, None), next(it_b, None)
