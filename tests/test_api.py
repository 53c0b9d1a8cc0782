"""The read API (docs/api.md): datarepo.open, Tree, Selection, read, Manifest, ShardReader."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from damage import damaged_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datarepo
from datarepo.errors import CorruptObjectError, DataRepoError, ObjectNotFoundError
from datarepo.hashing import canonical_json, hash_bytes
from datarepo.manifest import Manifest, ShardReader
from datarepo.objects import (
    TreeEntry,
    TreePage,
    decode,
    decode_page,
    decode_page_text,
    encode_page,
)
from datarepo.tree import Tree


def shard_file(worktree: Path, shard: str) -> Path:
    """A shard's tar, where docs/format.md puts it."""
    return worktree / ".datarepo" / "shards" / shard[:2] / f"{shard[2:]}.tar"


def object_file(worktree: Path, oid: str) -> Path:
    return worktree / ".datarepo" / "objects" / oid[:2] / oid[2:]


@pytest.fixture
def repo(repo_with_commit):  # type: ignore[no-untyped-def]
    """The 20 samples of ``repo_with_commit`` (in several 16 KiB shards), opened by the API."""
    opened, files = repo_with_commit
    with datarepo.open(opened.worktree) as repo:
        yield repo, files


def members_of(files: dict[str, bytes], key: str) -> dict[str, bytes]:
    return {rel.rsplit(".", 1)[1]: data for rel, data in files.items() if rel.rsplit(".", 1)[0] == key}


def sample_keys(files: dict[str, bytes]) -> list[str]:
    return sorted({rel.rsplit(".", 1)[0] for rel in files})


# Tree and Selection -------------------------------------------------------------


def test_tree_iterates_counts_and_indexes(repo) -> None:  # type: ignore[no-untyped-def]
    repo, files = repo
    tree = repo.tree()
    keys = sample_keys(files)
    entries = list(tree)
    assert [e.key for e in entries] == keys and len(tree) == 20
    assert all(isinstance(e, TreeEntry) and e.size == sum(map(len, members_of(files, e.key).values())) for e in entries)
    assert tree["train/cat/0000"] == entries[0] and "train/cat/0000" in tree
    assert "train/cat/0001" not in tree and 7 not in tree
    with pytest.raises(KeyError):
        tree["train/cat/0001"]
    with pytest.raises(ObjectNotFoundError, match="key not found"):
        tree["nope"]
    assert tree.get("nope") is None
    assert tree.commit == repo.head() and tree.oid == repo.read_commit(repo.head()).tree
    assert tree.get_many(["train/dog/0001", "nope"]) == {"train/dog/0001": tree["train/dog/0001"]}
    assert repo.tree("main").oid == repo.tree(repo.head()[:8]).oid == tree.oid


def test_an_unborn_head_is_an_empty_tree(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    cli("init")
    with datarepo.open(cli.cwd) as repo:
        tree = repo.tree()
        assert len(tree) == 0 and list(tree) == [] and "x" not in tree and tree.oid is None
        assert list(tree.select(prefix="a/")) == [] and len(repo.manifest(tree)) == 0
        with pytest.raises(DataRepoError):
            repo.tree("main")  # a name that names nothing yet


def test_select_by_prefix_and_glob(repo) -> None:  # type: ignore[no-untyped-def]
    repo, files = repo
    keys = sample_keys(files)
    tree = repo.tree()

    def chosen(**kw: str) -> list[str]:
        return [e.key for e in tree.select(**kw)]

    assert chosen(prefix="train/cat/") == [k for k in keys if k.startswith("train/cat/")]
    assert chosen(prefix="train/cat/001") == ["train/cat/0010", "train/cat/0012", "train/cat/0014", "train/cat/0016", "train/cat/0018"]
    assert chosen(prefix="zzz") == [] and chosen(prefix="") == keys
    assert chosen(glob="train/*/000?") == [k for k in keys if k[-4:-1] == "000"]
    assert chosen(glob="**/0003") == ["train/dog/0003"]
    assert chosen(glob="train/**") == keys and chosen(glob="train/*") == [] and chosen(glob="**") == keys
    assert chosen(glob="train/[!c]*/001[13]") == ["train/dog/0011", "train/dog/0013"]
    assert chosen(prefix="train/dog/", glob="**/0001") == ["train/dog/0001"]
    assert chosen(prefix="train/cat/", glob="train/dog/*") == []


@pytest.mark.parametrize(
    "glob, yes, no",
    [
        ("a/**/x", ["a/x", "a/b/x", "a/b/c/x"], ["a/y", "ax", "a/x/y", "b/a/x"]),
        ("**/x", ["x", "a/x", "a/b/x"], ["ax", "x/y"]),
        ("a/**", ["a/b", "a/b/c"], ["a", "b/a"]),
        ("**", ["a", "a/b"], []),
        ("a/*", ["a/x", "a/.x"], ["a/x/y", "a"]),
        ("a/?", ["a/x"], ["a/xy", "a//"]),
        ("a/[a-c]x", ["a/bx"], ["a/dx", "a//x"]),
        ("a/[!b]x", ["a/cx"], ["a/bx", "a//x"]),
        ("a/[]]x", ["a/]x"], ["a/ax"]),
        ("a**b", ["ab", "axyb"], ["a/b"]),
        ("a\\*", ["a*"], ["ab"]),
        ("a/[b", ["a/[b"], ["a/b"]),
        ("a.b/(c)+", ["a.b/(c)+"], ["axb/cc"]),
        ("line\n*", ["line\nbreak"], ["line"]),
    ],
)
def test_glob_rules(tmp_path: Path, glob: str, yes: list[str], no: list[str]) -> None:
    from datarepo.store import Store
    from datarepo.tree import write_tree

    store = Store(tmp_path / "s")
    entries = [TreeEntry(k, hash_bytes(k.encode()), 1) for k in sorted(set(yes + no))]
    tree = Tree(store, write_tree(store, entries))
    assert [e.key for e in tree.select(glob=glob)] == sorted(yes)


def big_tree(repo, count: int = 6000) -> Tree:  # type: ignore[no-untyped-def]
    """A commit of ``count`` keys under a/, b/ and c/ (their datums are not stored: a tree
    is read without them)."""
    from datarepo.tree import write_tree

    entries = [TreeEntry(f"{'abc'[i % 3]}/{i:05d}", hash_bytes(b"%d" % i), i) for i in range(count)]
    with repo.lock:  # (repo.commit would refuse datums no shard holds: the tree is written as it is)
        commit = repo.commit_tree(write_tree(repo.store, sorted(entries)), "big", None, ref="refs/heads/big")
    return repo.tree(commit)


def test_a_prefix_opens_only_the_pages_that_can_hold_it(repo) -> None:  # type: ignore[no-untyped-def]
    repo, _ = repo
    tree = big_tree(repo)
    assert len(tree.pages) > 4 and len(tree) == 6000
    wanted = [e.key for e in tree if e.key.startswith("b/")]
    firsts = [p.first_key for p in tree.pages]
    needed = {p.page for i, p in enumerate(tree.pages) if firsts[i] < "c/" and (i + 1 == len(firsts) or firsts[i + 1] > "b/")}
    hidden = [object_file(repo.worktree, p.page) for p in tree.pages if p.page not in needed]
    for path in hidden:
        path.rename(path.with_name(path.name + ".away"))  # opening it would fail
    try:
        fresh = datarepo.open(repo.worktree).tree(tree.commit)
        assert [e.key for e in fresh.select(prefix="b/")] == wanted
        assert [e.key for e in fresh.select(glob="b/*1")] == [k for k in wanted if k.endswith("1")]
        assert fresh["b/00001"].size == 1
        with pytest.raises(DataRepoError):
            list(fresh)  # the pages were really closed to it
    finally:
        for path in hidden:
            path.with_name(path.name + ".away").rename(path)


def test_diff_opens_only_the_pages_that_differ(repo) -> None:  # type: ignore[no-untyped-def]
    repo, _ = repo
    tree = big_tree(repo)
    with repo.lock:
        with repo.writer() as w:  # what the changes name must be stored
            w.put("b/00001", {"txt": b"new"})
            w.put("d/new", {"txt": b"d"})
        changes = {**w.entries, "c/00002": None}
        other = repo.tree(repo.commit(changes, "change", ref="refs/heads/big"))
    shared = {p.page for p in tree.pages} & {p.page for p in other.pages}
    assert len(shared) >= len(tree.pages) - 3
    hidden = [object_file(repo.worktree, page) for page in shared]
    for path in hidden:
        path.rename(path.with_name(path.name + ".away"))  # opening it would fail
    try:
        got = list(tree.diff(other))
    finally:
        for path in hidden:
            path.with_name(path.name + ".away").rename(path)
    assert [(c.key, c.old is None, c.new is None) for c in got] == [("b/00001", False, False), ("c/00002", False, True), ("d/new", True, False)]
    assert got[0].new.datum == w.entries["b/00001"].datum and list(other.diff(other)) == []
    assert [c.key for c in other.diff(tree)] == ["b/00001", "c/00002", "d/new"]


# read --------------------------------------------------------------------------


def test_read_gives_members_and_verify_catches_a_flipped_byte(repo) -> None:  # type: ignore[no-untyped-def]
    repo, files = repo
    tree = repo.tree()
    for e in tree:
        assert repo.read(e.datum) == repo.read(e.datum, verify=True) == members_of(files, e.key)
    with pytest.raises(ObjectNotFoundError):
        repo.read(hash_bytes(b"no such datum"))
    manifest = repo.manifest(tree)
    victim = manifest.ranges(0)[0]
    path = shard_file(repo.worktree, manifest.shards[0])
    raw = bytearray(path.read_bytes())
    raw[victim.offset + 512] ^= 0xFF  # the first byte of its first member
    os.chmod(path, 0o644)
    path.write_bytes(raw)
    with pytest.raises(CorruptObjectError, match=manifest.shards[0]):
        repo.read(victim.datum, verify=True)
    assert repo.read(victim.datum) != members_of(files, victim.key)  # unverified, as stored


# Manifest -------------------------------------------------------------------------


def check_manifest(repo, manifest: Manifest, entries: list[TreeEntry]) -> None:  # type: ignore[no-untyped-def]
    assert len(manifest) == len(entries)
    assert sorted(zip(manifest.keys, (d.decode() for d in manifest.datums))) == [(e.key, e.datum) for e in entries]
    assert list(manifest.shards) == sorted(manifest.shards) and len(set(manifest.shards)) == len(manifest.shards)
    rows = list(zip(manifest.shard_index.tolist(), manifest.offsets.tolist()))
    assert rows == sorted(rows) and set(manifest.shard_index.tolist()) == set(range(len(manifest.shards)))
    seen = []
    for i, shard in enumerate(manifest.shards):
        ranges = manifest.ranges(shard)
        assert ranges == manifest.ranges(i) and [r.offset for r in ranges] == sorted(r.offset for r in ranges)
        raw = shard_file(repo.worktree, shard).read_bytes()
        for r in ranges:
            assert raw[r.offset : r.offset + 32].decode() == r.datum  # its first header names it
            seen.append(r.key)
    assert sorted(seen) == [e.key for e in entries]


def test_manifest_columns_grouping_and_pickling(repo) -> None:  # type: ignore[no-untyped-def]
    repo, _ = repo
    tree = repo.tree()
    manifest = repo.manifest(tree)
    assert len(manifest.shards) >= 2  # 16 KiB shards
    check_manifest(repo, manifest, list(tree))
    assert manifest.tree == tree.oid and manifest.commit == tree.commit
    back = pickle.loads(pickle.dumps(manifest))
    assert back.keys == manifest.keys and back.shards == manifest.shards
    for column in ("datums", "shard_index", "offsets", "lengths"):
        assert (getattr(back, column) == getattr(manifest, column)).all()
    assert [back.ranges(s) for s in back.shards] == [manifest.ranges(s) for s in manifest.shards]
    assert list(back) == list(manifest) and sum(map(manifest.shard_bytes, manifest.shards)) == int(manifest.lengths.sum())
    part = manifest.subset(manifest.shards[1:])
    assert part.shards == manifest.shards[1:] and [part.ranges(s) for s in part.shards] == [manifest.ranges(s) for s in part.shards]
    cats = tree.select(prefix="train/cat/")
    check_manifest(repo, repo.manifest(cats), list(cats))
    with pytest.raises(KeyError):
        manifest.ranges("0" * 32)


def test_a_manifest_of_many_datums_reads_the_whole_cache(repo) -> None:  # type: ignore[no-untyped-def]
    """Over a few hundred datums the location cache is read whole (on another thread), and
    a datum the cache does not place is found through the shard indexes."""
    repo, _ = repo
    with repo.lock, repo.writer() as w:
        for i in range(700):
            w.put(f"many/{i:04d}", {"txt": b"%d" % i})
    with repo.lock:
        repo.commit(w.entries, "many")
    tree = repo.tree()
    check_manifest(repo, repo.manifest(tree), list(tree))
    check_manifest(repo, repo.manifest(tree.select(prefix="many/00")), list(tree.select(prefix="many/00")))
    repo.index.locations.clear()  # a cache that has lost its rows: the shard indexes have them
    check_manifest(repo, repo.manifest(tree), list(tree))


# ShardReader ---------------------------------------------------------------------


class Stream(io.RawIOBase):
    """A stream that cannot seek and returns at most ``step`` bytes a read (as a socket may)."""

    def __init__(self, data: bytes, step: int = 700) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self.step, len(self.data) - self.pos)
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def _write_and_close(fd: int, data: bytes) -> None:
    with open(fd, "wb") as f:
        f.write(data)


def test_shard_reader_on_a_file_a_stream_and_a_pipe(repo) -> None:  # type: ignore[no-untyped-def]
    repo, files = repo
    manifest = repo.manifest(repo.tree())
    got: dict[str, dict[str, bytes]] = {}
    for shard in manifest.shards:
        ranges = manifest.ranges(shard)
        raw = shard_file(repo.worktree, shard).read_bytes()
        with shard_file(repo.worktree, shard).open("rb") as f:
            from_file = list(ShardReader(f, ranges, shard, verify=True))
        assert not Stream(raw).seekable()
        assert list(ShardReader(Stream(raw), ranges, shard, verify=True)) == from_file
        assert list(ShardReader(io.BufferedReader(Stream(raw)), ranges[1::2], shard)) == from_file[1::2]  # gaps dropped
        read_end, write_end = os.pipe()
        writer = threading.Thread(target=_write_and_close, args=(write_end, raw))
        writer.start()
        with open(read_end, "rb", buffering=0) as pipe:
            assert list(ShardReader(pipe, ranges[::3], shard, verify=True)) == from_file[::3]
            pipe.read()
        writer.join()
        got.update(from_file)
    assert got == {key: members_of(files, key) for key in sample_keys(files)}
    nameless = [r._replace(key="") for r in manifest.ranges(0)]
    with shard_file(repo.worktree, manifest.shards[0]).open("rb") as f:
        assert [k for k, _ in ShardReader(f, nameless)] == [r.datum for r in nameless]


def test_shard_reader_refuses_bad_input_with_one_error(repo) -> None:  # type: ignore[no-untyped-def]
    repo, _ = repo
    manifest = repo.manifest(repo.tree())
    shard = manifest.shards[0]
    ranges = manifest.ranges(shard)
    raw = shard_file(repo.worktree, shard).read_bytes()
    end = ranges[-1].offset + ranges[-1].length
    with pytest.raises(CorruptObjectError, match="truncated"):
        list(ShardReader(io.BytesIO(raw[: end - 10]), ranges, shard))
    moved = [r._replace(offset=r.offset + 512) for r in ranges]
    with pytest.raises(CorruptObjectError, match=shard):
        list(ShardReader(io.BytesIO(raw), moved, shard))
    other = [ranges[0]._replace(datum=ranges[1].datum)]
    with pytest.raises(CorruptObjectError, match="is not of datum"):
        list(ShardReader(io.BytesIO(raw), other, shard))
    with pytest.raises(DataRepoError, match="offset order"):
        list(ShardReader(io.BytesIO(raw), ranges[::-1], shard))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_shard_reader_on_damaged_bytes_raises_only_its_error(repo_with_commit, data) -> None:  # type: ignore[no-untyped-def]
    repo, _ = repo_with_commit
    manifest = _manifest_once(repo)
    shard = manifest.shards[0]
    raw = bytearray(shard_file(repo.worktree, shard).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        for _ in ShardReader(io.BytesIO(bytes(raw)), manifest.ranges(shard), shard, verify=data.draw(st.booleans())):
            pass
    except CorruptObjectError:
        pass


_MANIFESTS: dict[str, Manifest] = {}


def _manifest_once(repo) -> Manifest:  # type: ignore[no-untyped-def]
    key = str(repo.worktree)
    if key not in _MANIFESTS:
        _MANIFESTS[key] = repo.manifest(repo.tree())
    return _MANIFESTS[key]


# fork safety ------------------------------------------------------------------------


def _read_in_child(repo, datums: list[str], queue) -> None:  # type: ignore[no-untyped-def]
    try:
        queue.put(("ok", [repo.read(d, verify=True) for d in datums], len(repo.manifest(repo.tree()))))
    except BaseException as e:
        queue.put(("error", repr(e), 0))


def test_a_repo_opened_before_a_fork_works_in_the_child_and_after(repo) -> None:  # type: ignore[no-untyped-def]
    repo, _ = repo
    tree = repo.tree()
    datums = [e.datum for e in tree]
    expected = [repo.read(d) for d in datums]  # the cache is open in the parent now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_read_in_child, args=(repo, datums, queue)) for _ in range(2)]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert results == [("ok", expected, 20)] * 2
    pid = os.fork()
    if pid == 0:  # a bare fork, as a DataLoader worker is made
        ok = repo.read(datums[3], verify=True) == expected[3] and len(repo.manifest(tree)) == 20
        repo.close()
        os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert [repo.read(d, verify=True) for d in datums] == expected  # the parent's connection is untouched
    repo.index.db.execute("SELECT count(*) FROM location").fetchone()


# page codec -------------------------------------------------------------------------

keys = st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12), unique=True, max_size=40)


def page_rows(keys: list[str], data) -> list[list]:  # type: ignore[no-untyped-def]
    keys = sorted(set(keys + data.draw(st.lists(st.sampled_from(['"', "\\", '\\"', "\n", "é", "\x00", "/", "0"]), unique=True))))
    return [[k, hash_bytes(k.encode()), data.draw(st.integers(0, 2**64))] for k in keys]


@settings(max_examples=200, deadline=None)
@given(keys, st.data())
def test_page_codec_round_trips_to_canonical_json(keys, data) -> None:  # type: ignore[no-untyped-def]
    """encode_page gives the bytes canonical_json gives for the page, and decoding them
    gives the rows back: keys with quotes, backslashes, control and non-ASCII characters,
    read from the text where no key needs an escape, else as JSON."""
    rows = page_rows(keys, data)
    raw = encode_page(rows)
    assert raw == canonical_json(TreePage(rows).to_json())
    page = decode(raw)
    assert isinstance(page, TreePage) and [list(r) for r in page.rows] == rows and page == TreePage(rows)
    assert [list(c) for c in page.columns] == ([list(c) for c in zip(*rows)] if rows else [[], [], []])
    assert [e.key for e in page.entries] == [r[0] for r in rows]
    escaped = any(c in '"\\' or c < " " for k in page.columns[0] for c in k)  # what JSON writes escaped
    assert (decode_page_text(raw) is None) == (escaped or not rows)


@settings(max_examples=300, deadline=None)
@given(keys, st.data())
def test_a_page_read_from_its_text_is_the_page_json_reads(keys, data) -> None:  # type: ignore[no-untyped-def]
    """Damaged bytes (a byte changed, some cut out or put in) are either refused by the
    text reader, or read as JSON reads them: never as another page, never with an error
    that JSON would not raise."""
    raw = damaged_bytes(encode_page(page_rows(keys, data)), data, b'0123456789abcdefg[],"\\\n :x\xc3\xa9')
    page = decode_page_text(bytes(raw))
    if page is None:
        return
    assert page == decode_page(json.loads(bytes(raw)))
    assert list(page.columns[2]) == [r[2] for r in json.loads(bytes(raw))["entries"]]


# the CLI through the API ---------------------------------------------------------------


def test_ls_glob_and_json(repo, cli) -> None:  # type: ignore[no-untyped-def]
    repo, _ = repo
    assert cli("ls", "--glob", "**/001[02]").output.split() == ["train/cat/0010", "train/cat/0012"]
    entries = json.loads(cli("ls", "--json").output)
    assert cli("ls", "--json").output == json.dumps(entries, indent=2, ensure_ascii=False) + "\n"
    assert entries == [{"key": e.key, "datum": e.datum, "size": e.size} for e in repo.tree()]
    assert cli("ls", "--json", "--prefix", "nope").output == "[]\n"
    dog = next(e for e in entries if e["key"] == "train/dog/0001")
    assert cli("ls", "-l", "--prefix", "train/dog/0001").output.split() == [dog["datum"][:12], str(dog["size"]), "train/dog/0001"]


def test_export_is_whole_or_absent(repo, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, files = repo
    (tmp_path / "empty").mkdir()
    cli("export", "HEAD", str(tmp_path / "empty"))  # an empty folder is taken
    got = {p.relative_to(tmp_path / "empty").as_posix(): p.read_bytes() for p in (tmp_path / "empty").rglob("*") if p.is_file()}
    assert got == files
    manifest = repo.manifest(repo.tree())
    last = manifest.ranges(len(manifest.shards) - 1)[-1]
    path = shard_file(repo.worktree, manifest.shards[-1])
    raw = bytearray(path.read_bytes())
    raw[last.offset + 512] ^= 0xFF  # the last datum read: everything else is written by then
    os.chmod(path, 0o644)
    path.write_bytes(raw)
    for args in ((), ("--shards",)):
        result = cli("export", "HEAD", str(tmp_path / "out"), *args, ok=False)
        assert result.exit_code == 1 and manifest.shards[-1] in result.output
        assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "work"]  # no temporary folder left


def test_readers_find_datums_a_repack_moved(repo, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Readers survive a repack: the datums of a manifest made before it are read through
    their new places, and an export after it reads the new shards."""
    repo, files = repo
    (repo.worktree / "train/cat/0000.jpg").write_bytes(b"changed")
    cli("add", ".")
    cli("commit", "-m", "second")  # a small shard: repack merges it with the others
    cli("tag", "first", "HEAD~1")
    before = repo.manifest(repo.tree())
    cli("repack", "--all")
    after = repo.manifest(repo.tree())
    gone = set(before.shards) - set(after.shards)
    assert gone and not any(shard_file(repo.worktree, s).exists() for s in gone)
    for i, shard in enumerate(before.shards):
        for r in before.ranges(i):
            assert repo.read(r.datum, verify=True) == repo.read(r.datum)
    cli("export", "first", str(tmp_path / "out"))
    got = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert got == files


def test_a_change_must_give_an_entry_of_its_own_key(repo) -> None:  # type: ignore[no-untyped-def]
    repo, _ = repo
    entry = repo.tree()["train/cat/0000"]
    with repo.lock, pytest.raises(DataRepoError, match="gives an entry of key"):
        repo.commit({"train/cat/0001": entry}, "a copy under another key, given as the original")
    with repo.lock:
        repo.commit({"train/cat/0001": entry._replace(key="train/cat/0001")}, "a copy")
    assert repo.tree()["train/cat/0001"].datum == entry.datum and len(repo.tree()) == 21


_MAINTAIN = """
import sys
from pathlib import Path
from click.testing import CliRunner
from datarepo.cli import main

root, rounds = Path(sys.argv[1]), int(sys.argv[2])
runner = CliRunner()
for i in range(rounds):
    (root / "extra").mkdir(exist_ok=True)
    (root / "extra" / f"{i}.bin").write_bytes(bytes([i]) * 3000)
    for args in (["-C", str(root), "add", "."], ["-C", str(root), "commit", "-m", f"extra {i}"],
                 ["-C", str(root), "repack", "--all"], ["-C", str(root), "gc"]):
        result = runner.invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, (args, result.output)
"""


def test_readers_run_while_repack_and_gc_replace_shards(repo, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """export, cat and ls of a tagged commit, again and again while another process
    commits, repacks every shard and collects garbage: each reads the whole, right data."""
    import subprocess
    import sys

    repo, files = repo
    cli("tag", "first")
    worker = subprocess.Popen([sys.executable, "-c", _MAINTAIN, str(repo.worktree), "4"], stderr=subprocess.PIPE)
    rounds = 0
    try:
        while worker.poll() is None or rounds < 2:
            out = tmp_path / f"out{rounds}"
            cli("export", "first", str(out))
            got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
            assert got == files
            assert cli("cat", "first:train/dog/0001.jpg").stdout_bytes == files["train/dog/0001.jpg"]
            assert len(cli("ls", "first").output.split()) == 20
            rounds += 1
    finally:
        worker.wait(timeout=120)
    assert worker.returncode == 0, worker.stderr.read().decode()[-2000:]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=6), max_size=5), max_size=5), st.data())
def test_keys_column_holds_keys_and_takes_any_order(pages, data) -> None:  # type: ignore[no-untyped-def]
    from datarepo.manifest import Keys

    flat = [k for page in pages for k in page]
    keys = Keys.of(pages)
    assert list(keys) == flat and len(keys) == len(flat) and keys == flat
    assert [keys[i] for i in range(len(flat))] == flat and keys[1:3] == flat[1:3] and keys[::2] == flat[::2]
    if flat:
        assert keys[-1] == flat[-1]
    with pytest.raises(IndexError):
        keys[len(flat)]
    order = data.draw(st.permutations(range(len(flat))))
    taken = keys.take(np.array(order, dtype=np.int64))
    assert list(taken) == [flat[i] for i in order]
    assert pickle.loads(pickle.dumps(taken)) == taken


def test_keys_take_a_large_scattered_order() -> None:
    """A million-row manifest's keys are put in shard order in chunks: an order that
    scatters 200,000 keys (several chunks) gives every key where the order says."""
    from datarepo.manifest import Keys

    flat = [f"train/c{i % 7}/{i:06d}" + "é" * (i % 3) for i in range(200_000)]
    keys = Keys.of([flat[i : i + 1000] for i in range(0, len(flat), 1000)])
    order = np.random.default_rng(0).permutation(len(flat))
    assert list(keys.take(order)) == [flat[i] for i in order.tolist()]
    assert list(keys.take(order[::-1].copy())) == [flat[i] for i in order[::-1].tolist()]


def test_a_member_without_extension_is_read_and_exported(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    cli("init")
    (cli.cwd / "README").write_bytes(b"read me")
    (cli.cwd / "a").mkdir()
    (cli.cwd / "a" / "x.txt").write_bytes(b"x")
    cli("add", ".")
    cli("commit", "-m", "files without an extension too")
    with datarepo.open(cli.cwd) as repo:
        manifest = repo.manifest(repo.tree())
        got = {}
        for shard in manifest.shards:
            with shard_file(repo.worktree, shard).open("rb") as f:
                got.update(ShardReader(f, manifest.ranges(shard), shard, verify=True))
        assert got == {"README": {"": b"read me"}, "a/x": {"txt": b"x"}}
        assert repo.read(repo.tree()["README"].datum) == {"": b"read me"}
    cli("export", "HEAD", str(tmp_path / "out"))
    assert (tmp_path / "out" / "README").read_bytes() == b"read me" and (tmp_path / "out" / "a" / "x.txt").read_bytes() == b"x"
