"""Lineage pages and input differences as a re-run reads and writes them: each way that
reads only what changed gives what the plain way (JSON, a rewrite of every record, a
mapping of every key) gives, for any records and any change."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from damage import damaged_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from datarepo import tree as trees
from datarepo.errors import CorruptObjectError
from datarepo.hashing import OID_LEN, canonical_json, hash_bytes, is_hex
from datarepo.objects import Blob, TreeEntry
from datarepo.pipeline import lineage
from datarepo.pipeline.lineage import Plain, Reader, Record, Root, good_rows, page_rows, update_pages
from datarepo.pipeline.plan import selection_diff
from datarepo.store import Store

# Strings as JSON must escape them, and not: quotes, backslashes, control and non-ASCII
# characters, and the text a page's rows are made of.
odd = st.lists(st.sampled_from(['"', "\\", "\n", "\x00", "\x1f", "é", "💥", "[", "]", ",", "null", "0", "a", "/"]),
               max_size=6).map("".join)
plainish = st.lists(st.sampled_from(["a", "b", "/", "é", "[", "]],[[", ",", "null", "0", " "]), max_size=6).map("".join)
text = st.one_of(plainish, odd)
oid = st.binary(min_size=1, max_size=4).map(hash_bytes)


@st.composite
def records(draw: Any, bases: list[str]) -> list[Record]:
    """Records of ``bases``: all plain (one input, one output), or most, some with several
    inputs or outputs, none, an error or a reason they were dropped."""
    out = []
    clean = draw(st.booleans())  # (a page a run writes: all plain, nothing to escape)
    shapes, strings = (["plain"], plainish) if clean else (["plain"] * 4 + ["many", "error", "dropped"], text)
    for base in bases:
        shape = draw(st.sampled_from(shapes))
        n_in, n_out = (1, 1) if shape == "plain" else (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        inputs = tuple((draw(strings), draw(oid)) for _ in range(n_in))
        outputs = tuple((draw(strings), draw(oid), draw(st.integers(0, 2**64))) for _ in range(n_out))
        error = (draw(strings), draw(strings)) if shape == "error" else None
        dropped = draw(strings) if shape == "dropped" else None
        out.append(Record(base, draw(oid), inputs, outputs if shape != "error" else (), error, dropped))
    return out


def page_bytes(rows: list[Any]) -> bytes:
    return canonical_json(Blob({"format": 1, "type": lineage.PAGE, "records": rows}).to_json())


def escaped(record: Record) -> bool:
    """Whether JSON writes a string of the record with an escape."""
    strings = [record.base, *(s for i in record.inputs for s in i), *(s for o in record.outputs for s in o[:2])]
    return any(c in '"\\' or c < " " for s in strings for c in s)


def plain(record: Record) -> bool:
    return len(record.inputs) == 1 and len(record.outputs) == 1 and record.error is None and record.dropped is None


bases = st.one_of(*(st.lists(s, min_size=1, max_size=30, unique=True).map(sorted) for s in (plainish, text)))


@settings(max_examples=300, deadline=None)
@given(bases, st.data())
def test_a_page_read_as_text_is_the_page_json_reads_and_canonical_json_writes(bases: list[str], data: Any) -> None:
    rows = data.draw(records(bases))
    raw = page_bytes(rows)
    page = Plain.parse(raw)
    as_json = json.loads(raw)["records"]
    assert good_rows(as_json)
    if page is None:  # read as JSON: some record is not plain, or needs an escape
        assert not all(plain(r) and not escaped(r) for r in rows)
        return
    assert all(plain(r) and not escaped(r) for r in rows)
    assert page.rows() == as_json and page.bases == bases
    assert [page.row(i) for i in range(len(rows))] == as_json
    # New records for some of its bases (any records), written into its text.
    chosen = data.draw(st.lists(st.sampled_from(bases), unique=True, max_size=len(bases)))
    new = dict(zip(chosen, data.draw(records(chosen))))
    assert page.replaced(new) == page_bytes([new.get(r.base, r) for r in rows])
    assert page.replaced({**new, bases[0]: None}) is None  # a deletion: the page is cut again
    assert page.replaced({**new, bases[-1] + "~": rows[0].at(bases[-1] + "~")}) is None  # a new base: likewise


@settings(max_examples=400, deadline=None)
@given(st.lists(plainish, min_size=1, max_size=12, unique=True).map(sorted), st.data())
def test_damaged_page_text_is_refused_or_read_as_json_reads_it(bases: list[str], data: Any) -> None:
    """A byte changed, some cut out or put in: the text reader refuses the page (which is
    then read as JSON, and checked) or reads the records JSON reads, every field good."""
    page_of = page_bytes([Record(b, hash_bytes(b.encode()), ((b, "0" * 32),), (("", "f" * 32, 7),)) for b in bases])
    raw = damaged_bytes(page_of, data, b'0123456789abcdefg[],"\\\n :lux-\xc3\xa9')
    page = Plain.parse(bytes(raw))
    if page is None:
        return
    rows = json.loads(bytes(raw))["records"]
    assert page.rows() == rows and good_rows(rows) and bytes(raw) == page_bytes(rows)


def row_text(base: str, size: str = "7", suffix: str = "") -> str:
    cache, datum = hash_bytes(base.encode()), hash_bytes(b"d" + base.encode())
    return f'["{base}","{cache}",[["raw/{base}","{datum}"]],[["{suffix}","{datum}",{size}]],null,null]'


@pytest.mark.parametrize("rows", [
    [row_text("a", "07")],  # not JSON
    [row_text("a", ""), row_text("b")],
    [row_text("a", "-7")],
    [row_text("a", "7.0")],
    [row_text("a\x01")],  # a control character JSON refuses
    [row_text("a\\/")],  # an escape JSON does not write
    [row_text("b"), row_text("a")],  # not sorted by base
    [row_text("a"), row_text("a")],
    [row_text("a") + " ", row_text("b")],  # a space JSON does not write
])
def test_a_page_not_as_a_run_writes_it_is_not_read_as_text(rows: list[str]) -> None:
    raw = ('{"format":1,"records":[' + ",".join(rows) + '],"type":"lineage-page"}').encode()
    assert Plain.parse(raw) is None


def test_a_row_is_found_by_its_start_not_by_an_output_that_looks_like_it(tmp_path: Path) -> None:
    """An output whose suffix is a later base and whose datum is that base's cache key reads
    ``["base","cache",`` as that base's row does: the row is the one followed by ``[[``."""
    later = Record("b", hash_bytes(b"b"), (("raw/b", hash_bytes(b"i")),), (("", hash_bytes(b"o"), 1),))
    first = Record("a", hash_bytes(b"a"), (("raw/a", hash_bytes(b"i")),), (("b", later.cache, 2),))
    page = Plain.parse(page_bytes([first, later]))
    assert page is not None
    new = later._replace(outputs=(("", hash_bytes(b"new"), 3),))
    assert page.replaced({"b": new}) == page_bytes([first, new])


# --- good_rows, column by column, against the rules record by record ---------------------------
def good_row(row: Any) -> bool:
    """The rules (a record as a run writes it), one record at a time."""
    def is_oid(v: Any) -> bool:
        return type(v) is str and len(v) == OID_LEN and is_hex(v)

    if type(row) is not list or len(row) != 6:
        return False
    base, cache, inputs, outputs, error, dropped = row
    return (
        type(base) is str and is_oid(cache) and type(inputs) is list and type(outputs) is list
        and all(type(i) is list and len(i) == 2 and type(i[0]) is str and is_oid(i[1]) for i in inputs)
        and all(type(o) is list and len(o) == 3 and type(o[0]) is str and is_oid(o[1]) and type(o[2]) is int and o[2] >= 0
                for o in outputs)
        and (error is None or (type(error) is list and len(error) == 2 and all(type(e) is str for e in error)))
        and (dropped is None or type(dropped) is str)
    )


# (copies: a later edit may go inside a list drawn before, which must not change the sample)
junk = st.sampled_from([None, True, 0, -1, 1.5, "", "x", "A" * 32, "0" * 31, [], ["a"], ["a", "0" * 32, 5], {"a": 1}]).map(copy.deepcopy)


@st.composite
def damaged(draw: Any, rows: list[Any]) -> list[Any]:
    """JSON rows with a few values anywhere in them replaced by something else."""
    rows = json.loads(json.dumps(rows))
    for _ in range(draw(st.integers(0, 3))):
        if not rows:
            break
        holder: Any = rows
        at = draw(st.integers(0, len(holder) - 1))
        while type(holder[at]) is list and holder[at] and draw(st.booleans()):
            holder = holder[at]
            at = draw(st.integers(0, len(holder) - 1))
        holder[at] = draw(junk)
    return rows


@settings(max_examples=500, deadline=None)
@given(bases, st.data())
def test_good_rows_follows_the_rules_record_by_record(bases: list[str], data: Any) -> None:
    rows = data.draw(damaged(data.draw(records(bases))))
    assert good_rows(rows) == all(map(good_row, rows))


# --- rewriting pages ----------------------------------------------------------------------------
def root_of(store: Store, pages: tuple[tuple[str, int, str], ...]) -> Reader:
    return Reader(store, Root("p", "0" * 32, "raw/**", "out/", {"raw/**": "1" * 32}, pages))


def check_cut(store: Store, pages: tuple[tuple[str, int, str], ...]) -> None:
    """Pages end after a boundary base, or at PAGE_MAX records, and at no other base."""
    for n, (first, count, oid) in enumerate(pages):
        got = [r[0] for r in page_rows(store, oid)]
        assert got[0] == first and len(got) == count
        assert not any(map(trees.is_boundary, got[:-1]))
        assert n == len(pages) - 1 or trees.is_boundary(got[-1]) or count == lineage.PAGE_MAX


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("page_max", [lineage.PAGE_MAX, 7])
def test_updated_pages_are_the_pages_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, page_max: int
) -> None:
    """Pages rewritten after new records for some bases (as text where every record of the
    page is plain), new bases and deleted ones, are those all the records written anew
    give; each changed base is placed in the page that holds it."""
    monkeypatch.setattr(lineage, "PAGE_MAX", page_max)
    rng = random.Random(seed)
    store = Store(tmp_path / "s")

    def record(base: str, salt: str, shape: str = "plain") -> Record:
        d = hash_bytes(f"{base}{salt}".encode())
        outputs = (("", d, len(base)),) if shape == "plain" else (("a", d, 1), ("b", d, 2))
        return Record(base, hash_bytes(d.encode()), ((f"raw/{base}", d),), outputs)

    names = [f"out/{i:05d}" for i in range(6000)]
    old = {b: record(b, "", "plain" if rng.random() < 0.995 else "many") for b in names[::2]}
    pages = update_pages(None, store, old)
    assert len(pages) > 2
    changes: dict[str, Record | None] = {b: record(b, "new") for b in rng.sample(sorted(old), 60)}  # new records
    changes.update({b: None for b in rng.sample(sorted(old), 5 * seed)})  # deleted
    changes.update({b: record(b, "", "many") for b in rng.sample(names[1::2], 5 * seed)})  # new bases
    placed: dict[str, str] = {}
    updated = update_pages(root_of(store, pages), store, changes, placed)
    merged = {b: r for b, r in {**old, **changes}.items() if r is not None}
    assert updated == update_pages(None, store, merged)
    check_cut(store, updated)
    holds = {b: oid for _, _, oid in updated for b in (r[0] for r in page_rows(store, oid))}
    assert placed == {b: holds[b] for b, r in changes.items() if r is not None}
    reader = root_of(store, updated)
    assert [reader.get(b) for b in sorted(changes)] == [changes[b] for b in sorted(changes)]
    assert list(reader) == [merged[b] for b in sorted(merged)]


def test_a_plain_page_with_a_damaged_record_is_refused_when_read(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    good = ["out/a", "0" * 32, [["raw/a", "1" * 32]], [["", "2" * 32, 5]], None, None]
    for bad in (["out/b", good[1], good[2], [["", "2" * 32, -5]], None, None], ["out/b", "0" * 31 + "g", *good[2:]]):
        oid = store.put_object(Blob({"format": 1, "type": lineage.PAGE, "records": [good, bad]}))
        with pytest.raises(CorruptObjectError, match="bad lineage record for 'out/b'"):
            page_rows(store, oid)


# --- differences of selections -----------------------------------------------------------------
def selected(store: Store, root: str | None, glob: str) -> dict[str, TreeEntry]:
    return {e.key: e for e in trees.Tree(store, root).select(glob=glob)}  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("glob", ["raw/**", "raw/b/*", "raw/*/0*1", "**", "r*/a/**"])
def test_selection_diff_is_the_difference_of_the_two_selections(tmp_path: Path, seed: int, glob: str) -> None:
    """New values for some keys (the pages of each tree pair up, key for key), and keys
    added or deleted in some pages (they do not): the changes are those of a key-by-key
    comparison of both selections, in key order."""
    rng = random.Random(seed)
    store = Store(tmp_path / "s")
    keys = [f"{p}/{c}/{i:05d}" for p in ("out", "raw") for c in "abc" for i in range(1500)]
    old = {k: TreeEntry(k, hash_bytes(k.encode()), len(k)) for k in keys}
    a = trees.write_tree(store, [old[k] for k in sorted(old)])
    changes: dict[str, Any] = {k: TreeEntry(k, hash_bytes(b"new" + k.encode()), rng.randrange(100)) for k in rng.sample(keys, 90)}
    if seed:  # some pages that no longer pair up
        changes.update({k: None for k in rng.sample(keys, 4 * seed)})
        changes.update({k + "x": TreeEntry(k + "x", hash_bytes(k.encode()), 1) for k in rng.sample(keys, 4 * seed)})
    b = trees.apply_changes(store, a, changes)
    before, after = selected(store, a, glob), selected(store, b, glob)
    expected = [(k, before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys())
                if (before.get(k) and before[k].datum) != (after.get(k) and after[k].datum)]
    got = list(selection_diff(trees.Tree(store, a), trees.Tree(store, b), glob))
    assert [tuple(c) for c in got] == expected
