"""Paged trees: updates equal full rewrites, small changes share pages, diff opens few pages."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datarepo import tree as trees
from datarepo.hashing import hash_bytes
from datarepo.objects import TreeEntry
from datarepo.store import Store


def _entries(keys) -> list[TreeEntry]:
    return [TreeEntry(k, hash_bytes(k.encode()), len(k)) for k in sorted(keys)]


def _store(tmp_path: Path) -> Store:
    return Store(tmp_path / "s")


def test_pages_cut_at_content_defined_boundaries(tmp_path: Path) -> None:
    store = _store(tmp_path)
    entries = _entries(f"k/{i:06d}" for i in range(5000))
    root = store.get_object(trees.write_tree(store, entries))
    assert 2 <= len(root.pages) <= 20
    assert sum(p.count for p in root.pages) == 5000
    for ref in root.pages[:-1]:
        page = store.get_object(ref.page)
        assert trees.is_boundary(page.entries[-1].key)
        assert not any(trees.is_boundary(e.key) for e in page.entries[:-1])
    assert list(trees.iter_tree(store, trees.write_tree(store, entries))) == entries


keys = st.sets(st.text(alphabet="abcdef/", min_size=1, max_size=6), max_size=300)


@settings(max_examples=60, deadline=None)
@given(keys, keys, keys)
def test_update_equals_full_rewrite(tmp_path_factory, base: set, added: set, removed: set) -> None:
    store = _store(tmp_path_factory.mktemp("t"))
    old = {e.key: e for e in _entries(base)}
    root = trees.write_tree(store, old.values())
    changes = {k: TreeEntry(k, hash_bytes(b"new" + k.encode()), 1) for k in added}
    changes.update({k: None for k in removed - added})
    new = {**old, **changes}
    expected = trees.write_tree(store, [e for _, e in sorted(new.items()) if e is not None])
    assert trees.update_tree(store, root, changes) == expected
    diff = {c.key: (c.old, c.new) for c in trees.diff_trees(store, root, expected)}
    assert diff == {k: (old.get(k), new[k]) for k in new if old.get(k) != new[k]}


@settings(max_examples=40, deadline=None)
@given(keys, keys, keys)
def test_update_equals_full_rewrite_where_pages_are_cut_by_count(tmp_path_factory, base: set, added: set, removed: set) -> None:
    """Pages cut at ``PAGE_MAX`` entries (here 4, so that most cuts are by count) still
    give updates equal to full rewrites, and no page is longer."""
    with mock.patch.object(trees, "PAGE_MAX", 4):
        test_update_equals_full_rewrite.hypothesis.inner_test(tmp_path_factory, base, added, removed)
        store = _store(tmp_path_factory.mktemp("c"))
        pages = store.get_object(trees.write_tree(store, _entries(base | added))).pages
        assert all(ref.count <= 4 for ref in pages)
        assert sum(ref.count for ref in pages) == len(base | added)


def test_keys_that_avoid_every_boundary_still_make_bounded_pages(tmp_path: Path) -> None:
    """Keys chosen so that none hashes to a boundary: pages of ``PAGE_MAX`` entries, not one
    page of the whole tree, and a change of one key rewrites one page."""
    store = _store(tmp_path)
    names = (f"adv/{i:06d}" for i in range(40_000))
    entries = _entries([k for k in names if not trees.is_boundary(k)][: 2 * trees.PAGE_MAX + 100])
    root = trees.write_tree(store, entries)
    assert [p.count for p in store.get_object(root).pages] == [trees.PAGE_MAX, trees.PAGE_MAX, 100]
    key = entries[-1].key
    changed = trees.update_tree(store, root, {key: TreeEntry(key, hash_bytes(b"x"), 1)})
    old_pages, new_pages = store.get_object(root).pages, store.get_object(changed).pages
    assert old_pages[:2] == new_pages[:2] and old_pages[2] != new_pages[2]


@pytest.mark.parametrize("deleted", [0, 1])
def test_update_of_values_across_pages_equals_full_rewrite(tmp_path: Path, deleted: int) -> None:
    store = _store(tmp_path)
    entries = _entries(f"v/{i:05d}" for i in range(8000))
    root = trees.write_tree(store, entries)
    changes: dict[str, TreeEntry | None] = {
        e.key: TreeEntry(e.key, hash_bytes(b"v2" + e.key.encode()), 7) for e in entries[::97] + [entries[-1]]
    }
    changes.update({entries[i].key: None for i in range(1, 1 + deleted)})
    new = {e.key: e for e in entries} | changes
    expected = trees.write_tree(store, [e for _, e in sorted(new.items()) if e is not None])
    assert trees.update_tree(store, root, changes) == expected


def test_small_change_shares_pages_and_diff_is_exact(tmp_path: Path) -> None:
    store = _store(tmp_path)
    entries = _entries(f"train/{i:06d}" for i in range(20000))
    root = trees.write_tree(store, entries)
    before = set(store.iter_objects())
    changed = {entries[i].key: TreeEntry(entries[i].key, hash_bytes(b"x%d" % i), 1) for i in (5, 9000, 19999)}
    new_root = trees.update_tree(store, root, changed)
    written = set(store.iter_objects()) - before
    assert len(written) <= 4  # at most one page per change, plus the root
    assert [c.key for c in trees.diff_trees(store, root, new_root)] == sorted(changed)
    assert trees.lookup(store, new_root, entries[9000].key) == changed[entries[9000].key]
    assert trees.lookup(store, new_root, "train/zzz") is None


def test_iter_prefix_opens_only_matching_range(tmp_path: Path) -> None:
    store = _store(tmp_path)
    entries = _entries([f"a/{i:05d}" for i in range(3000)] + [f"b/{i:05d}" for i in range(3000)])
    root = trees.write_tree(store, entries)
    assert [e.key for e in trees.iter_tree(store, root, "b/")] == [f"b/{i:05d}" for i in range(3000)]
    assert [e.key for e in trees.iter_tree(store, root, "a/0012")] == [f"a/{i:05d}" for i in range(120, 130)]
    assert list(trees.iter_tree(store, root, "c/")) == []


odd_keys = st.sets(st.text(alphabet=st.sampled_from(['a', 'b', '"', '\\', '[', ']', ',', '/', 'é', '\n', '\x01', '😀']),
                           min_size=1, max_size=8), min_size=1, max_size=200)


@settings(max_examples=80, deadline=None)
@given(odd_keys, st.data())
def test_pages_searched_and_rewritten_as_text_agree_with_parsed_pages(tmp_path_factory, base: set, data) -> None:
    """Lookups and same-key updates work on a page's canonical text: for keys holding
    quotes, backslashes, brackets, commas, control characters or any script, and keys that
    begin other keys, they must find what parsing finds and write what a full rewrite writes."""
    store = _store(tmp_path_factory.mktemp("t"))
    old = {e.key: e for e in _entries(base)}
    root = trees.write_tree(store, old.values())
    changed = data.draw(st.lists(st.sampled_from(sorted(base)), unique=True))
    changes = {k: TreeEntry(k, hash_bytes(b"new" + k.encode()), data.draw(st.integers(0, 1 << 40))) for k in changed}
    expected = trees.write_tree(store, sorted({**old, **changes}.values()))
    wanted = sorted(base) + data.draw(st.lists(odd_keys.map(min)))  # and keys that may be absent
    for text_keys in (1 << 20, 0):  # each page's keys in its text; then every page parsed
        with mock.patch.object(trees, "TEXT_KEYS", text_keys):
            assert trees.update_tree(_store(store.root.parent), root, changes) == expected
            assert trees.lookup_many(_store(store.root.parent), expected, wanted) == {k: e for k, e in {**old, **changes}.items()}


def test_a_page_that_does_not_hash_to_its_name_is_refused(tmp_path: Path) -> None:
    from datarepo.errors import CorruptObjectError
    store = _store(tmp_path)
    entries = _entries(f"k/{i:04d}" for i in range(50))
    root = trees.write_tree(store, entries)
    page = store.get_object(root).pages[0].page
    path = Path(store.root) / "objects" / page[:2] / page[2:]
    path.chmod(0o644)
    path.write_bytes(store.get_text(page).replace(entries[3].datum, entries[4].datum).encode())  # well formed, wrong
    fresh = Store(store.root)
    with pytest.raises(CorruptObjectError, match=page):
        trees.lookup(fresh, root, entries[3].key)


def test_a_page_reference_to_another_kind_of_object_is_refused(tmp_path: Path) -> None:
    """A root that names a commit where a page belongs: searching the commit's text for a
    key (here a parent's oid, which it holds as `["<oid>","`) must not read a datum out of it."""
    from datarepo.errors import CorruptObjectError
    from datarepo.objects import Commit, PageRef, Tree

    store = _store(tmp_path)
    parents = (hash_bytes(b"p1"), hash_bytes(b"p2"))
    commit = store.put_object(Commit(hash_bytes(b"t"), parents, "me", "2026-01-01T00:00:00Z", "m"))
    root = store.put_object(Tree((PageRef(parents[0], 1, commit),)))
    with pytest.raises(CorruptObjectError, match="expected a page"):
        trees.lookup(store, root, parents[0])


@pytest.mark.parametrize(
    "row",
    [
        '["k/a","{d}","7"]',  # a size that is a string
        '["k/a","{d}",-7]',  # a negative size
        '["k/a","{d}",07]',  # not canonical JSON
        '["k/a","{d}",1.5]',
        '["k/a","{d}x",7]',  # a datum that is not an oid
        '["k/a","{D}",7]',
        '["k/a","{d}",7,8]',  # a row of four
    ],
)
def test_a_page_with_a_bad_row_is_refused_though_it_hashes_to_its_name(tmp_path: Path, row: str) -> None:
    """Bytes copied into the store hash to the name they are stored under, yet may not be a
    page this store wrote: a key's row read as text is checked as parsing checks it."""
    from datarepo.errors import CorruptObjectError
    from datarepo.objects import PAGE_HEAD, PAGE_TAIL, PageRef, Tree

    store = _store(tmp_path)
    datum = hash_bytes(b"a")
    text = PAGE_HEAD + row.format(d=datum, D=datum.upper()) + ',["k/b","' + datum + '",3]' + PAGE_TAIL
    page = store.put_object_bytes(text.encode())
    root = store.put_object(Tree((PageRef("k/a", 2, page),)))
    with pytest.raises(CorruptObjectError, match=page):
        trees.read_page(store, page)
    with pytest.raises(CorruptObjectError, match=page):
        trees.lookup(store, root, "k/a")
    with pytest.raises(CorruptObjectError, match=page):
        trees.update_tree(store, root, {"k/a": TreeEntry("k/a", hash_bytes(b"b"), 1)})
    assert trees.lookup(store, root, "k/b") == TreeEntry("k/b", datum, 3)  # a sound row of the page still reads
