"""The on-disk format: hashing, shard bytes, tree pages, objects. Golden values pin it."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import xxhash
from conftest import shard_file
from hypothesis import given, settings
from hypothesis import strategies as st

from datarepo import fsutil, objects, shards
from datarepo.errors import CorruptObjectError
from datarepo.hashing import canonical_json, datum_id, hash_bytes
from datarepo.repo import Repo
from datarepo.shards import ShardIndex, iter_tar, tar_header

GOLDEN = Path(__file__).parent / "golden"


def test_datum_id_follows_the_design_formula() -> None:
    members = {"jpg": b"\xff\xd8image", "cls": b"3"}
    hashes = {ext: hash_bytes(b) for ext, b in members.items()}
    manual = xxhash.xxh3_128(
        b"datum\x00" + b"".join(ext.encode() + b"\x00" + bytes.fromhex(hashes[ext]) for ext in sorted(hashes))
    ).hexdigest()
    assert datum_id(hashes) == manual
    assert len(manual) == 32 and manual == manual.lower()


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": "é", "format": 1}) == '{"a":"é","b":1,"format":1}'.encode()


def test_tar_header_matches_stdlib_ustar() -> None:
    for name, size in (("0123.jpg", 0), ("a" * 32 + ".cls", 12345), ("x.y", 8**11 - 1)):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o444, 0, "", ""
        ours = tar_header(name, size)
        assert len(ours) == 512
        parsed = tarfile.TarInfo.frombuf(ours, "utf-8", "strict")
        assert (parsed.name, parsed.size, parsed.mode, parsed.mtime, parsed.uid) == (name, size, 0o444, 0, 0)


def test_pax_only_where_a_name_or_size_needs_it() -> None:
    assert len(tar_header("d" * 32 + ".jpg", 10)) == 512
    for name, size in (("d" * 32 + "." + "e" * 80, 1), ("d" * 32 + ".jpé", 1), ("big.bin", 8**11)):
        raw = tar_header(name, size)
        assert len(raw) > 512
        with tarfile.open(fileobj=io.BytesIO(raw + bytes(size if size < 100 else 0)), mode="r|") as tf:
            m = tf.next()
            assert m is not None and m.name == name and m.size == size


_EXTENSIONS = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=90)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(_EXTENSIONS, st.binary(max_size=1100), min_size=1, max_size=4), st.integers(0, 2**128 - 1))
def test_stdlib_tarfile_reads_what_a_shard_writer_adds(tmp_path_factory, members: dict[str, bytes], seed: int) -> None:
    """The writer builds headers in pieces (checksum and all) for short ASCII names and falls
    back to PAX for the rest: stdlib tarfile, which checks every checksum, reads each member
    back, and each header is the one :func:`tar_header` gives."""
    datum = f"{seed:032x}"
    writer = shards.ShardWriter(tmp_path_factory.mktemp("shard"))
    loc = writer.add(datum, sorted(members.items()))
    path, index = writer.finish()
    raw = path.read_bytes()
    with tarfile.open(path) as tf:
        got = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]
    assert got == {f"{datum}.{ext}": data for ext, data in members.items()}
    assert index.datums == (loc,)
    at = loc.offset
    for m in loc.members:
        header = tar_header(f"{datum}.{m.ext}", m.size)
        assert raw[at : at + len(header)] == header and m.offset == at + len(header)
        at = m.offset + m.size + shards.padding(m.size)


def _golden_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    monkeypatch.setenv("DATAREPO_TIME", "2026-01-01T00:00:00Z")
    monkeypatch.setenv("DATAREPO_AUTHOR", "Golden <golden@example.com>")
    work = tmp_path / "golden"
    for i in range(3):
        (work / "train").mkdir(parents=True, exist_ok=True)
        (work / f"train/{i:04d}.jpg").write_bytes(bytes(range(i, i + 50)) * 4)
        (work / f"train/{i:04d}.cls").write_bytes(str(i).encode())
    (work / "train/0001.seg.png").write_bytes(b"\x89PNG segmentation")
    from datarepo.porcelain.history import commit
    from datarepo.porcelain.stage import add

    repo = Repo.init(work)
    add(repo, [str(work)])
    commit(repo, "golden")
    return repo


@pytest.mark.parametrize(
    ("writeback_step", "flush_bytes"),
    [(None, None), (1, None), (None, 1)],
    ids=["default", "writeback-after-every-datum", "written-after-every-datum"],
)
def test_golden_shard_tree_and_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writeback_step: int | None, flush_bytes: int | None
) -> None:
    if flush_bytes is not None:  # when gathered bytes are written (and hashed) changes no byte
        monkeypatch.setattr(shards, "FLUSH_BYTES", flush_bytes)
    if writeback_step is not None:  # starting the kernel's write-back as a shard grows changes no byte
        monkeypatch.setattr(shards, "WRITEBACK_STEP", writeback_step)
        if sys.platform.startswith("linux"):  # the kernel call is there and takes its arguments
            with open(tmp_path / "probe", "wb") as f:
                f.write(b"x")
                assert fsutil._sync_file_range()(f.fileno(), 0, 0, fsutil._SYNC_FILE_RANGE_WRITE) == 0
    repo = _golden_repo(tmp_path, monkeypatch)
    expected = json.loads((GOLDEN / "golden.json").read_text())
    (shard,) = repo.store.iter_shards()
    assert shard_file(repo, shard).read_bytes() == (GOLDEN / "shard.tar").read_bytes()
    assert shard == expected["shard"]
    assert shard_file(repo, shard, ".idx").read_bytes() == (GOLDEN / "shard.idx").read_bytes()
    head = repo.head()
    c = repo.read_commit(head)
    tree = repo.store.get_object(c.tree)
    assert {"commit": head, "tree": c.tree, "pages": [p.page for p in tree.pages]} == {
        k: expected[k] for k in ("commit", "tree", "pages")
    }


def test_stock_webdataset_reads_every_shard_exactly(repo_with_commit) -> None:
    import webdataset as wds

    repo, files = repo_with_commit
    shards = list(repo.store.iter_shards())
    assert len(shards) > 1
    seen = {}
    for shard in shards:
        index = repo.store.read_index(shard)
        for sample in wds.WebDataset(str(shard_file(repo, shard)), shardshuffle=False, empty_check=False):
            seen[sample["__key__"]] = {k: v for k, v in sample.items() if not k.startswith("__")}
        assert [d.datum for d in index.datums] == [k for k in seen if k in {d.datum for d in index.datums}]
    by_id = {e.datum: e.key for e in _entries(repo)}
    assert set(seen) == set(by_id)
    for datum, members in seen.items():
        key = by_id[datum]
        assert members == {"jpg": files[key + ".jpg"], "cls": files[key + ".cls"]}


def _entries(repo: Repo):
    from datarepo.tree import iter_tree

    return iter_tree(repo.store, repo.read_commit(repo.head()).tree)


def test_shard_index_points_at_every_member(repo_with_commit) -> None:
    repo, _ = repo_with_commit
    for shard in repo.store.iter_shards():
        index = repo.store.verify_shard(shard)
        raw = shard_file(repo, shard).read_bytes()
        spans = sorted((d.offset, d.offset + d.length) for d in index.datums)
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert spans[-1][1] == len(raw) - 1024
        with open(shard_file(repo, shard), "rb") as f:
            names = [m.name for m in iter_tar(f)]
        assert names == [f"{d.datum}.{m.ext}" for d in index.datums for m in d.members]


def test_shard_index_round_trips() -> None:
    from datarepo.shards import DatumLoc, MemberLoc

    idx = ShardIndex(hash_bytes(b"x"), 2048, (DatumLoc(hash_bytes(b"d"), 0, 1024, (MemberLoc("cls", 512, 1),)),))
    assert ShardIndex.from_bytes(idx.to_bytes(), "n") == idx
    with pytest.raises(CorruptObjectError):
        ShardIndex.from_bytes(b'{"format": 1}', "n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_any_bytes_raises_only_our_error(raw: bytes) -> None:
    try:
        objects.decode(raw, "x")
    except CorruptObjectError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40) | st.sampled_from(["a" * 32, "commit", "page", "tree"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(
        ["format", "type", "tree", "parents", "author", "time", "message", "pages", "entries", "provenance"]), children, max_size=8),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_decoding_any_json_raises_only_our_error(value, compress: bool) -> None:
    if isinstance(value, dict) and compress:
        value["format"] = 1
    raw = json.dumps(value).encode()
    try:
        objects.decode(objects.compress(raw) if compress else raw, "x")
    except CorruptObjectError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=30), st.binary(min_size=16, max_size=16).map(bytes.hex),
                          st.integers(min_value=0, max_value=1 << 62)), max_size=20), st.booleans())
def test_a_page_is_encoded_as_canonical_json(rows: list[tuple[str, str, int]], as_lists: bool) -> None:
    """Pages are written out by hand for speed: the bytes must be canonical JSON's, for any
    key (quotes, backslashes, control characters, any script) and rows as built or decoded."""
    page = objects.TreePage([list(r) for r in rows] if as_lists else [objects.TreeEntry(*r) for r in rows])
    try:
        expected = canonical_json(page.to_json())
    except UnicodeEncodeError:  # a lone surrogate: no key can hold one, and neither encoder writes it
        with pytest.raises(UnicodeEncodeError):
            objects.encode(page)
        return
    assert objects.encode(page) == expected


def test_objects_round_trip_through_the_store(tmp_path: Path) -> None:
    from datarepo.objects import Commit
    from datarepo.store import Store

    store = Store(tmp_path)
    c = Commit(hash_bytes(b"t"), (hash_bytes(b"p"),), "me", "2026-01-01T00:00:00Z", "msg", {"pipeline": "p"})
    oid = store.put_object(c)
    assert oid == hash_bytes(objects.encode(c))
    assert store.get_object(oid) == c
    store.verify_object(oid)
    assert (tmp_path / "objects" / oid[:2] / oid[2:]).stat().st_mode & 0o777 == 0o444
