"""Paged trees (docs/format.md, "Tree pages and roots"): a commit's sorted (key, datum,
size) list, cut into pages at content-defined boundaries so a small change rewrites only
nearby pages (and after ``PAGE_MAX`` entries, so that no page grows without bound).

:class:`Tree` and :class:`Selection` are the read API over them (``repo.tree(rev)``);
the functions below are what they, commits and diffs are made of."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from itertools import compress
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import xxhash

from datarepo import args
from datarepo.errors import CorruptObjectError, InvalidInputError, ObjectNotFoundError
from datarepo.fsutil import batched
from datarepo.hashing import OID_LEN, Oid, is_hex
from datarepo.objects import PAGE_HEAD, PAGE_TAIL, PageRef, RepoObject, TreeEntry, TreePage, json_string
from datarepo.objects import Tree as Root
from datarepo.store import Store

PAGE_MODULUS = 1024
# A page also ends after this many entries. Keys that hash to a boundary come about once in
# 1,024, so no run of real keys is this long (one in e^16 pages would be); keys chosen to
# avoid boundaries would otherwise make one page of the whole tree, rewritten by every
# commit. The cut stays a function of the sorted keys alone: the count starts again at
# every cut, so an update still meets the old pages again at a cut (:func:`update_tree`).
PAGE_MAX = 16_384
# Up to this many keys of one page are looked up, or given new values, in the page's text, each
# by a search of it; above, the page is parsed once. Each search reads on average half the page
# (about 34 KB, 3 µs), and a parse costs about a millisecond: all 50,000 keys of a tree changed
# took 1.1-1.2 s through the text, 72 ms through a full rewrite.
TEXT_KEYS = 128
# A page entry as decoded ([key, datum, size]), as built (a TreeEntry) or as staged (an
# index row): read by position.
Row = Sequence[Any]
_KEY = itemgetter(0)


def is_boundary(key: str) -> bool:
    """A page ends after an entry whose key hashes to 0 modulo 1024."""
    return xxhash.xxh3_64_intdigest(key.encode("utf-8")) % PAGE_MODULUS == 0


def boundaries(entries: Sequence[Row]) -> list[int]:
    """The positions of the entries that end a page (:func:`is_boundary`), in one pass in C."""
    hashes = map(xxhash.xxh3_64_intdigest, map(str.encode, map(_KEY, entries)))
    return [i for i, h in enumerate(hashes) if h % PAGE_MODULUS == 0]


class PageCutter:
    """Accumulates rows sorted by key and stores a page (``make_page`` of its rows) after
    every row whose key is a boundary (:func:`is_boundary`), or after ``most`` rows (by
    default ``PAGE_MAX``): tree pages, and the lineage pages of pipelines, are cut alike."""

    def __init__(self, store: Store, make_page: Callable[[tuple[Row, ...]], RepoObject] = TreePage,
                 most: int | None = None) -> None:
        self.store, self.make_page = store, make_page
        self.most = PAGE_MAX if most is None else most
        self.pending: list[Row] = []
        self.pages: list[PageRef] = []

    def extend(self, entries: list[Row]) -> None:
        start = 0
        for end in boundaries(entries):
            self._add(entries[start : end + 1])
            self.flush()
            start = end + 1
        self._add(entries[start:])

    def _add(self, run: list[Row]) -> None:
        """Adds entries none of which is a boundary but perhaps the last, cutting a page
        wherever one reaches ``most`` entries."""
        while len(self.pending) + len(run) >= self.most:
            take = self.most - len(self.pending)
            self.pending.extend(run[:take])
            self.flush()
            run = run[take:]
        self.pending.extend(run)

    def keep(self, ref: PageRef) -> None:
        """Reuses an unchanged page (only valid when nothing is pending)."""
        self.pages.append(ref)

    def flush(self) -> None:
        if self.pending:
            oid = self.store.put_object(self.make_page(tuple(self.pending)))
            self.pages.append(PageRef(self.pending[0][0], len(self.pending), oid))
            self.pending = []

    def finish(self) -> Oid:
        self.flush()
        return self.store.put_object(Root(tuple(self.pages)))


def write_tree(store: Store, entries: Iterable[Row]) -> Oid:
    """Stores a tree from entries sorted by key; returns the root oid."""
    cutter = PageCutter(store)
    cutter.extend(list(entries))
    return cutter.finish()


def staged_changes(rows: Iterable[tuple[str, Oid | None, int]]) -> dict[str, Row | None]:
    """Staging rows (key, datum or None for a deletion, size) as changes: a row is its own entry."""
    return {row[0]: row if row[1] is not None else None for row in rows}


def apply_changes(store: Store, base: Oid | None, changes: dict[str, Row | None]) -> Oid:
    """Stores the tree ``base`` (None: the empty tree) with ``changes`` applied; returns its
    root. Each change's entry must be of its own key: a page of two rows for one key would
    be refused by every reader."""
    if not all(map(_same_key, changes.items())):
        key, entry = next(item for item in changes.items() if not _same_key(item))
        raise InvalidInputError(f"changes: the change of key {key!r:.80} gives an entry of key {entry[0]!r:.80}")  # type: ignore[index]
    with batched(store.fs):  # (its pages made durable together: a million keys are a thousand pages)
        if base is not None:
            return update_tree(store, base, changes)
        return write_tree(store, sorted(filter(None, changes.values()), key=_KEY))


def build_tree(item: tuple[str, Oid | None, list[tuple[str, Oid | None, int]]]) -> Oid:
    """:func:`apply_changes` of staged rows (``item``: the repository's folder, the base
    tree, the rows), from plain data: an executor may run it beside the work that stages."""
    dotdir, base, rows = item
    return apply_changes(Store(Path(dotdir)), base, staged_changes(rows))


def _same_key(item: tuple[str, Row | None]) -> bool:
    return item[1] is None or item[1][0] == item[0]


def read_root(store: Store, oid: str) -> Root:
    return store.get_typed(oid, Root)  # type: ignore[return-value]


def read_page(store: Store, oid: str) -> TreePage:
    return store.get_typed(oid, TreePage)  # type: ignore[return-value]


def iter_tree(store: Store, oid: str, prefix: str = "") -> Iterator[TreeEntry]:
    """Yields a tree's entries in key order, opening only pages that can hold ``prefix``."""
    return iter(Tree(store, Oid(oid)).select(prefix))


def lookup(store: Store, oid: str, key: str) -> TreeEntry | None:
    """Finds one key by opening the single page that can hold it."""
    return lookup_many(store, oid, [key]).get(key)


def lookup_many(store: Store, oid: str, keys: Iterable[str]) -> dict[str, TreeEntry]:
    """Finds keys, opening the root once and each page that can hold one of them once.
    A page is searched as its canonical text (:func:`_find_row`): a few keys need not
    parse a thousand entries."""
    pages = read_root(store, oid).pages
    firsts = [p.first_key for p in pages]
    by_page: dict[int, list[str]] = {}
    for key in keys:
        if (i := bisect.bisect_right(firsts, key) - 1) >= 0:
            by_page.setdefault(i, []).append(key)
    found = {}
    for i, wanted in by_page.items():
        if len(wanted) > TEXT_KEYS:  # many keys: one parse beats a search of the text for each
            rows = {e.key: e for e in read_page(store, pages[i].page).entries}
            found.update((key, rows[key]) for key in wanted if key in rows)
            continue
        text = _page_text(store, pages[i].page)
        for key in wanted:
            if (span := _find_row(text, key, pages[i].page)) is not None:
                found[key] = TreeEntry(key, Oid(text[span[0] : span[0] + OID_LEN]), int(text[span[0] + OID_LEN + 2 : span[1]]))
    return found


def _page_text(store: Store, oid: str) -> str:
    """A page's canonical text (checked against its oid by the store), refused if the
    object it names is not a page."""
    text = store.get_text(oid)
    if not (text.startswith(PAGE_HEAD) and text.endswith(PAGE_TAIL)):
        raise CorruptObjectError(oid, "expected a page")
    return text


def _find_row(text: str, key: str, page: str) -> tuple[int, int] | None:
    """Where ``key``'s row of a page's canonical text has its datum: (the datum's start,
    the end of the size after it), or None if the page has no such key. A row is written
    ``["key","datum",size]``, and ``["key",`` cannot occur inside a string, where every
    quote is escaped: the first match is the row. Bytes that hash to a page's name may
    still not be a page this store wrote (a copied-in object): a row whose datum is not an
    oid, or whose size is not a plain integer, is refused, as parsing the page refuses it."""
    head = "[" + json_string(key) + ',"'
    if (at := text.find(head)) < 0:
        return None
    start = at + len(head)
    end = text.find("]", start)
    size = text[start + OID_LEN + 2 : end]
    if not (
        is_hex(text[start : start + OID_LEN])
        and text[start + OID_LEN : start + OID_LEN + 2] == '",'
        and size.isascii()
        and size.isdigit()
        and (size == "0" or size[0] != "0")
    ):
        raise CorruptObjectError(page, f"bad row for key {key!r:.60}")
    return start, end


def update_tree(store: Store, oid: str, changes: dict[str, Row | None]) -> Oid:
    """Applies ``changes`` (key → new entry, or None to delete) to a stored tree.

    Only pages that hold a changed key, and the pages after them up to the next
    unchanged boundary, are read and rewritten; every other page is reused.
    The result is the same root a full :func:`write_tree` would give.
    """
    pages = read_root(store, oid).pages
    firsts = [p.first_key for p in pages]
    by_page: dict[int, dict[str, Row | None]] = {}
    for key, entry in changes.items():
        by_page.setdefault(max(bisect.bisect_right(firsts, key) - 1, 0), {})[key] = entry
    cutter = PageCutter(store)
    for i, ref in enumerate(pages):
        if i not in by_page and not cutter.pending:
            cutter.keep(ref)
            continue
        if (
            not cutter.pending
            and len(by_page[i]) <= TEXT_KEYS
            and (same := _replaced(_page_text(store, ref.page), ref.page, by_page[i])) is not None
        ):
            # The same keys: the same boundaries, and the page rewritten as text, not parsed.
            cutter.keep(PageRef(ref.first_key, ref.count, store.put_object_bytes(same.encode())))
            continue
        cutter.extend(_merge(read_page(store, ref.page).rows, by_page.get(i, {})))
    if not pages:
        cutter.extend(_merge((), by_page.get(0, {})))
    return cutter.finish()


def _replaced(text: str, page: str, changes: dict[str, Row | None]) -> str | None:
    """A page's canonical text with new values for existing keys, or None if a key is added
    or deleted (its boundaries may move: the page is then parsed and cut again). A new
    row's datum is an oid and its size an int, as :func:`objects.encode_page` writes them."""
    spans = []
    for key, new in changes.items():
        if new is None or (span := _find_row(text, key, page)) is None:
            return None
        spans.append((span, new))
    out, done = [], 0
    for (start, end), new in sorted(spans, key=lambda s: s[0][0]):
        out.append(text[done:start] + f'{new[1]}",{new[2]}')
        done = end
    out.append(text[done:])
    return "".join(out)


def _merge(rows: Iterable[Row], changes: dict[str, Row | None]) -> list[Row]:
    merged = {e[0]: e for e in rows}
    merged.update(changes)
    return [entry for key in sorted(merged) if (entry := merged[key]) is not None]


class Change(NamedTuple):
    """One key that differs between two trees; ``old`` or ``new`` is None when absent."""

    key: str
    old: TreeEntry | None
    new: TreeEntry | None


def diff_trees(store: Store, a: str | None, b: str | None, store_b: Store | None = None) -> Iterator[Change]:
    """Yields the keys that differ between two trees, in key order (``b`` read from
    ``store_b`` where it is another repository's).

    Pages present in both trees are skipped without being opened, so the cost
    follows the size of the change, not of the trees.
    """
    if a == b:
        return
    store_b = store if store_b is None else store_b
    pages_a = read_root(store, a).pages if a else ()
    pages_b = read_root(store_b, b).pages if b else ()
    shared = {p.page for p in pages_a} & {p.page for p in pages_b}
    old = _entries(store, (p for p in pages_a if p.page not in shared))
    new = _entries(store_b, (p for p in pages_b if p.page not in shared))
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


# The read API ------------------------------------------------------------------


class Tree:
    """The tree of one commit, read page by page as it is used: iterate it for its
    :class:`TreeEntry` ``(key, datum, size)`` in key order, ``tree[key]`` for one entry,
    ``key in tree``, ``len(tree)`` (from the root's page counts, no page opened),
    :meth:`select` for a prefix or a glob, :meth:`diff` against another tree.

    ``oid`` is the root's oid (None: the empty tree, an unborn branch's), ``commit``
    the commit it was read from, where known.
    """

    def __init__(self, store: Store, oid: Oid | None, commit: Oid | None = None) -> None:
        self.store = store
        self.oid = oid
        self.commit = commit

    def __repr__(self) -> str:
        return f"<Tree {self.oid or '(empty)'} of commit {self.commit or '-'}>"

    @cached_property
    def pages(self) -> tuple[PageRef, ...]:
        """The root's page list: (first key, entry count, page oid) of each page."""
        return read_root(self.store, self.oid).pages if self.oid else ()

    def __len__(self) -> int:
        return sum(p.count for p in self.pages)

    def __iter__(self) -> Iterator[TreeEntry]:
        return iter(self.select())

    def __getitem__(self, key: str) -> TreeEntry:
        """The entry of a key, read from the one page that can hold it.

        Raises:
            ObjectNotFoundError: (a KeyError) the tree has no such key.
            InvalidInputError: ``key`` is not a str.
        """
        if (found := self.get(key)) is None:
            raise ObjectNotFoundError("key", repr(key))
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def get(self, key: str, default: TreeEntry | None = None) -> TreeEntry | None:
        args.instance("key", key, str, "a str")
        found = lookup(self.store, self.oid, key) if self.oid else None
        return default if found is None else found

    def get_many(self, keys: Iterable[str]) -> dict[str, TreeEntry]:
        """The entries of those of ``keys`` (a list of str, not one str) the tree has, each
        page opened once."""
        keys = args.texts("keys", keys)
        return lookup_many(self.store, self.oid, keys) if self.oid else {}

    def select(self, prefix: str = "", glob: str | None = None) -> Selection:
        """Some entries of the tree, read when the selection is iterated.

        Only the pages that can hold the prefix, or the glob's start before its first
        wildcard, are opened.

        Args:
            prefix: keep the keys that start with it.
            glob: keep the keys it matches whole (rules: :func:`glob_regex`).

        Raises:
            InvalidInputError: ``prefix`` is not a str, ``glob`` neither a str nor None,
                or the glob has a class no regular expression can hold (``[z-a]``).
        """
        return Selection(self, prefix, glob)

    def diff(self, other: Tree) -> Iterator[Change]:
        """The keys that differ from this tree to another (of this repository or another
        one: each is read from its own), in key order. Pages both trees share are not
        opened.

        Yields:
            A :class:`Change` ``(key, old, new)`` a key: ``old`` this tree's entry, ``new``
            the other's, None where the tree has no such key.

        Raises:
            InvalidInputError: ``other`` is not a tree.
        """
        args.instance("other", other, Tree, "a Tree (repo.tree(rev))")
        return diff_trees(self.store, self.oid, other.oid, other.store)


class Selection:
    """Some entries of a tree, by key prefix and glob: iterate it for :class:`TreeEntry`
    in key order, or hand it to ``repo.manifest``. It is read when iterated, every time."""

    def __init__(self, tree: Tree, prefix: str = "", glob: str | None = None) -> None:
        args.instance("prefix", prefix, str, "a str")
        if glob is not None:
            args.instance("glob", glob, str, "a str or None")
        self.tree = tree
        self.prefix = prefix
        self.glob = glob
        self._match = compile_glob(glob).fullmatch if glob is not None else None
        # Pages are chosen by the longer of the prefix and the glob's literal start, which
        # must agree (``select(prefix="a/", glob="b/*")`` selects nothing).
        start = glob_literal_prefix(glob) if glob is not None else ""
        self._pages_prefix: str | None = max(prefix, start, key=len)
        if not self._pages_prefix.startswith(min(prefix, start, key=len)):
            self._pages_prefix = None

    def __repr__(self) -> str:
        return f"<Selection prefix={self.prefix!r} glob={self.glob!r} of {self.tree!r}>"

    def at_most(self) -> int:
        """How many entries the selection can hold at most: the counts, in the tree's root,
        of the pages it opens (none is opened)."""
        prefix = self._pages_prefix
        return sum(p.count for p in _pages_of(self.tree, prefix)) if prefix is not None else 0

    def __iter__(self) -> Iterator[TreeEntry]:
        for keys, datums, sizes in self.columns():
            yield from map(TreeEntry._make, zip(keys, datums, sizes))

    def columns(self, sizes: bool = True) -> Iterator[tuple[Sequence[str], Sequence[Oid], Sequence[int] | None]]:
        """The selected (keys, datums, sizes) of each page opened, in key order: a page's
        columns as they are where it is selected whole. Without ``sizes`` (None in their
        place), a page read from its text does not parse them."""
        prefix = self._pages_prefix
        if prefix is None:
            return
        for page in _pages_of(self.tree, prefix):
            read = read_page(self.tree.store, page.page)
            columns = read.columns if sizes else (*read.keys_and_datums, None)
            keys = columns[0]
            if prefix and not (keys and keys[0].startswith(prefix) and keys[-1].startswith(prefix)):
                lo, hi = _prefix_span(keys, prefix)
                columns = tuple(c[lo:hi] if c is not None else None for c in columns)
            if self._match is not None:
                chosen = list(map(bool, map(self._match, columns[0])))
                if not all(chosen):
                    columns = tuple(list(compress(c, chosen)) if c is not None else None for c in columns)
            if columns[0]:
                yield columns  # type: ignore[misc]


def _pages_of(tree: Tree, prefix: str) -> Iterator[PageRef]:
    """The pages of a tree that can hold keys starting with ``prefix``."""
    pages = tree.pages
    start = max(bisect.bisect_right([p.first_key for p in pages], prefix) - 1, 0)
    for ref in pages[start:]:
        if prefix and ref.first_key > prefix and not ref.first_key.startswith(prefix):
            return
        yield ref


def _prefix_span(keys: Sequence[str], prefix: str) -> tuple[int, int]:
    """Where the keys that start with ``prefix`` lie in sorted ``keys``: from ``prefix``
    up to the least string past every string that starts with it."""
    lo = bisect.bisect_left(keys, prefix)
    past = _past(prefix)
    return lo, bisect.bisect_left(keys, past, lo) if past is not None else len(keys)


def _past(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix`` (None if
    there is none: a prefix of only U+10FFFF)."""
    stem = prefix.rstrip("\U0010ffff")
    return stem[:-1] + chr(ord(stem[-1]) + 1) if stem else None


_GLOB_SPECIAL = "*?[\\"


def compile_glob(pattern: str) -> KeyGlob:
    """A key glob compiled (to ``fullmatch``; rules: :func:`glob_regex`).

    Raises:
        InvalidInputError: the glob has a class no regular expression can hold (``[z-a]``).
    """
    return KeyGlob(pattern)


class KeyGlob:
    """A key glob (rules: :func:`glob_regex`) whose ``fullmatch`` takes time bounded by the
    key's length times the glob's. A regular expression backtracks: ``*a*a*a*a*a*a*b``
    over a name of 200 ``a`` ran for minutes. A glob with at most one run of ``*`` a name
    and one ``**`` is matched by its regular expression (which then backtracks little);
    another, name by name, each name's ``*``-free pieces found leftmost first."""

    def __init__(self, pattern: str) -> None:
        try:
            self._regex = re.compile(glob_regex(pattern), re.DOTALL)
            parts = pattern.split("/")
            self._names: list[Any] = []
            for i, part in enumerate(parts):
                if part == "**":  # any names (at least one, last after others: ``a/**``)
                    self._names += [_ANY_NAME, _NAMES] if i == len(parts) - 1 and i else [_NAMES]
                else:
                    self._names.append([re.compile(_component_regex(piece), re.DOTALL) for piece in _star_split(part)])
        except re.error as e:
            raise InvalidInputError(f"bad glob {pattern!r}: {e}") from None
        named = [n for n in self._names if isinstance(n, list)]
        simple = self._names.count(_NAMES) <= 1 and all(len(pieces) <= 2 for pieces in named)
        # ``fullmatch(key)`` is truthy where the glob takes the key: the regular expression's
        # own method where it is safe (called once a key of a large tree: no Python step).
        self.fullmatch: Callable[[str], object] = self._regex.fullmatch if simple else self._match

    def _match(self, key: str) -> bool:
        return _match_names(self._names, key.split("/"))


_NAMES, _ANY_NAME = "**", "*"  # (tokens of a KeyGlob's names: any run of names; one name)


def _star_split(part: str) -> list[str]:
    """A name's glob cut at its runs of ``*`` (not those escaped or in a class)."""
    pieces, start, i = [], 0, 0
    while i < len(part):
        c = part[i]
        if c == "\\":
            i += 2
            continue
        if c == "[" and (end := _class_end(part, i + 1)) is not None:
            i = end + 1
            continue
        if c == "*":
            pieces.append(part[start:i])
            while i < len(part) and part[i] == "*":
                i += 1
            start = i
            continue
        i += 1
    return [*pieces, part[start:]]


def _match_name(pieces: list[re.Pattern[str]], name: str) -> bool:
    """Whether a name matches a name glob cut at its stars: the first piece at its start,
    the last at its end, each other leftmost between (every piece matches a fixed length)."""
    if len(pieces) == 1:
        return pieces[0].fullmatch(name) is not None
    first, *middle, last = pieces
    if (m := first.match(name)) is None:
        return False
    pos, end = m.end(), len(name)
    for start in range(end, pos - 1, -1):  # the last piece's fixed length: found from the end
        if last.fullmatch(name, start) is not None:
            end = start
            break
    else:
        return False
    for piece in middle:
        if (m := piece.search(name, pos, end)) is None:
            return False
        pos = m.end()
    return True


def _match_names(tokens: list[Any], names: list[str]) -> bool:
    """Wildcard matching over names (``**`` any run of them): the classic two-pointer walk,
    backing up only to the last ``**``."""
    t = n = 0
    star, mark = -1, 0
    while n < len(names):
        token = tokens[t] if t < len(tokens) else None
        if token == _NAMES:
            star, mark, t = t, n, t + 1
        elif token is not None and (token == _ANY_NAME or _match_name(token, names[n])):
            t, n = t + 1, n + 1
        elif star >= 0:
            mark += 1
            t, n = star + 1, mark
        else:
            return False
    return all(token == _NAMES for token in tokens[t:])


def glob_regex(pattern: str) -> str:
    """A regular expression (to fullmatch, with DOTALL) for a key glob, with the rules of
    ``.gitignore`` and ``pathlib``'s ``full_match``, for ``/``-separated keys:

    - ``*`` matches any run of characters but ``/``; ``?`` one character but ``/``;
      ``[abc]``, ``[a-z]`` and ``[!abc]`` (or ``[^abc]``) one character of a class, never
      ``/``; ``\\x`` matches ``x`` itself.
    - ``**`` as a whole component matches any number of components: ``**/x`` matches
      ``x`` and ``a/b/x``; ``a/**/x`` matches ``a/x`` and ``a/b/c/x``; ``a/**`` matches
      every key below ``a/`` (not ``a`` itself); ``**`` alone matches every key.
      Elsewhere (``a**b``) it is a ``*``.
    - The glob matches the whole key: ``train/*`` matches ``train/x``, not
      ``train/x/y``, nor ``train``.
    """
    parts = pattern.split("/")
    out = []
    for i, part in enumerate(parts):
        first, last = i == 0, i == len(parts) - 1
        if part == "**":
            out.append((".*" if first else ".+") if last else "(?:.*/)?")
            continue
        out.append(_component_regex(part) + ("" if last else "/"))
    return "".join(out)


def _component_regex(part: str) -> str:
    out = []
    i = 0
    while i < len(part):
        c = part[i]
        i += 1
        if c == "*":
            while i < len(part) and part[i] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i < len(part):
            out.append(re.escape(part[i]))
            i += 1
        elif c == "[" and (end := _class_end(part, i)) is not None:
            out.append(_class_regex(part[i:end]))
            i = end + 1
        else:
            out.append(re.escape(c))
    return "".join(out)


def _class_end(part: str, start: int) -> int | None:
    """Where the class opened just before ``start`` closes (a ``]`` right after the
    opening, or after its ``!``, is a member), or None if it does not close."""
    i = start + (1 if part[start : start + 1] in ("!", "^") else 0)
    i += 1 if part[i : i + 1] == "]" else 0
    end = part.find("]", i)
    return end if end >= 0 else None


def _class_regex(body: str) -> str:
    negate = body[:1] in ("!", "^")
    body = body[1:] if negate else body
    members = "".join(c if c == "-" else re.escape(c) for c in body)
    return f"[^/{members}]" if negate else f"(?!/)[{members}]"


def glob_literal_prefix(pattern: str) -> str:
    """The start of a glob before its first wildcard: every key it matches starts so."""
    for i, c in enumerate(pattern):
        if c in _GLOB_SPECIAL:
            return pattern[:i]
    return pattern
