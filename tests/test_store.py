"""The Store and Refs over a filesystem: one contract, run against the local filesystem and
against real fsspec filesystems (the interface DVC remotes use), and every object read
checked against its oid."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from datarepo import objects
from datarepo.errors import CorruptObjectError, InvalidInputError, ObjectNotFoundError
from datarepo.fsutil import LocalFileSystem
from datarepo.hashing import datum_id, hash_bytes
from datarepo.objects import Commit, PageRef, Tree
from datarepo.refs import Refs
from datarepo.shards import member_hash
from datarepo.store import ShardRange, Store, datum_members


@pytest.fixture(params=["local", "fsspec-file", "fsspec-memory"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, object | None]]:
    """A repository folder and the filesystem it lives on (None: the store's own local one)."""
    if request.param == "local":
        yield str(tmp_path / "repo"), None
        return
    fsspec = pytest.importorskip("fsspec")
    if request.param == "fsspec-file":
        yield str(tmp_path / "repo"), fsspec.filesystem("file")
        return
    fs = fsspec.filesystem("memory")
    root = f"/datarepo-{uuid.uuid4().hex}"
    yield root, fs
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def store(place: tuple[str, object | None]) -> Store:
    root, fs = place
    return Store(root, fs)  # type: ignore[arg-type]


def _datum(members: dict[str, bytes]) -> str:
    return datum_id({ext: member_hash(data) for ext, data in members.items()})


def _write_shard(store: Store, datums: list[dict[str, bytes]]):  # type: ignore[no-untyped-def]
    writer = store.new_shard()
    for members in datums:
        writer.add(_datum(members), sorted(members.items()))
    tmp, index = writer.finish()
    store.put_shard(tmp, index)
    assert not tmp.exists()
    return index


def test_objects_round_trip(store: Store) -> None:
    commit = Commit(hash_bytes(b"tree"), (), "me", "2026-01-01T00:00:00Z", "hello")
    oid = store.put_object(commit)
    assert store.put_object(commit) == oid  # stored once
    assert store.get_object(oid) == commit and store.has_object(oid)
    assert list(store.iter_objects()) == [oid]
    assert store.objects_with_prefix(oid[:6]) == [oid]
    assert store.get_text(oid) == objects.encode(commit).decode()
    store.verify_object(oid)
    store.delete_object(oid)
    assert not store.has_object(oid)
    with pytest.raises(ObjectNotFoundError):
        store.get_object(oid)
    with pytest.raises(ObjectNotFoundError):  # a name that is not an oid names no file
        store.get_object("../../../etc/passwd")


def test_an_object_copied_over_another_is_refused(store: Store) -> None:
    old = store.put_object(Tree((PageRef("a", 1, hash_bytes(b"p1")),)))
    new = store.put_object(Tree((PageRef("a", 2, hash_bytes(b"p2")),)))
    fs, root = store.fs, str(store.root)
    data = fs.cat_file(f"{root}/objects/{old[:2]}/{old[2:]}")
    fs.rm_file(f"{root}/objects/{new[:2]}/{new[2:]}")
    fs.pipe_file(f"{root}/objects/{new[:2]}/{new[2:]}", data)  # a valid object, under another's name
    for read in (store.get_object, store.get_text, store.verify_object):
        with pytest.raises(CorruptObjectError, match=f"{new}: content hashes to {old}"):
            read(new)


def test_shards_round_trip(store: Store) -> None:
    small = {"cls": b"1", "jpg": b"j" * 3000}
    large = {"bin": bytes(range(256)) * 64, "txt": b"t"}
    index = _write_shard(store, [small, large])
    shard = index.shard
    assert list(store.iter_shards()) == [shard] == list(store.iter_shard_files())
    assert store.read_index(shard) == index and store.has_shard(shard)
    with store.open_shard(shard) as f:
        raw = f.read()
    assert hash_bytes(raw) == shard and len(raw) == index.size
    first, second = index.datums
    assert store.read_range(shard, first.offset, first.length) == raw[first.offset : first.offset + first.length]
    assert datum_members(store, shard, first, large=1 << 20) == small
    ranged = datum_members(store, shard, second, large=100)  # the large member stays in the shard
    assert isinstance(ranged["bin"], ShardRange) and ranged["txt"] == b"t"
    with ranged["bin"].open() as f:
        assert f.read(ranged["bin"].size) == large["bin"]
    assert store.verify_shard(shard) == index
    assert store.scan_datums(shard) == {first.datum, second.datum}


def test_a_lost_index_is_rebuilt_from_the_tar_byte_for_byte(store: Store) -> None:
    index = _write_shard(store, [{"cls": b"1", "jpg": b"j" * 3000}, {"x" * 120: b"a pax header"}, {"txt": b""}])
    root, shard = str(store.root), index.shard
    idx = f"{root}/shards/{shard[:2]}/{shard[2:]}.idx"
    before = store.fs.cat_file(idx)
    store.fs.rm_file(idx)
    assert list(store.iter_shards()) == [] and list(store.iter_shard_files()) == [shard]
    with pytest.raises(ObjectNotFoundError, match="shard index"):
        store.read_index(shard)
    assert store.rebuild_index(shard) == index
    assert store.fs.cat_file(idx) == before


def test_a_rebuild_refuses_a_tar_that_does_not_hash_to_its_name(store: Store) -> None:
    index = _write_shard(store, [{"cls": b"1"}])
    root, shard = str(store.root), index.shard
    tar = f"{root}/shards/{shard[:2]}/{shard[2:]}.tar"
    raw = bytearray(store.fs.cat_file(tar))
    raw[520] ^= 1
    store.fs.rm_file(tar)
    store.fs.pipe_file(tar, bytes(raw))
    with pytest.raises(CorruptObjectError, match=f"{shard}.tar: content hashes to"):
        store.rebuild_index(shard)


def test_a_retired_shard_is_still_read_until_deleted(store: Store) -> None:
    index = _write_shard(store, [{"cls": b"1", "jpg": b"j" * 100}])
    shard, (loc,) = index.shard, index.datums
    store.retire_shard(shard, now=1000)
    assert list(store.iter_shards()) == [] and not store.has_shard(shard)
    (retired,) = store.iter_retired()
    assert (retired.shard, retired.since) == (shard, 1000)
    assert store.retired_datums(retired) == {loc.datum}
    # A reader that looked the datum up before still reads it.
    assert datum_members(store, shard, loc, large=1 << 20)["jpg"] == b"j" * 100
    assert store.read_index(shard) == index
    store.delete_retired(retired)
    fresh = Store(store.root, None if isinstance(store.fs, LocalFileSystem) else store.fs)
    with pytest.raises(ObjectNotFoundError, match=f"shard not found: {shard}"):
        fresh.read_range(shard, loc.offset, loc.length)


def test_refs_over_the_filesystem(place: tuple[str, object | None]) -> None:
    root, fs = place
    refs = Refs(root, fs=fs)  # type: ignore[arg-type]
    a, b = hash_bytes(b"a"), hash_bytes(b"b")
    refs.update("refs/heads/main", a, expected=None, message="first")
    refs.set_symbolic("refs/heads/main")
    refs.update("HEAD", b, expected=a, message="second")
    assert refs.read("HEAD") == b == refs.read("refs/heads/main")
    assert refs.read_symbolic() == "refs/heads/main"
    refs.update("refs/tags/v1", a, expected=None)
    assert list(refs.list("refs/tags/")) == [("v1", a)]
    assert [(old, new) for old, new, _, _ in refs.reflog("refs/heads/main")] == [(None, a), (a, b)]
    assert "refs/heads/main" in set(refs.iter_reflogs())
    with pytest.raises(InvalidInputError):
        refs.update("refs/heads/../../x", a)
    assert refs.read("refs/heads/../../x") is None


def test_every_object_read_is_checked_through_the_cli(repo_with_commit, worktree: Path, cli, tmp_path: Path) -> None:
    """An older tree page copied over a newer one: ls, diff and export say so in one line
    and exit non-zero, instead of giving the old content."""
    repo, _ = repo_with_commit
    (worktree / "train/cat/0000.jpg").write_bytes(b"changed")
    cli("add", ".")
    cli("commit", "-m", "second")
    old_page = repo.store.get_object(repo.read_commit(repo.resolve("HEAD~1")).tree).pages[0].page  # type: ignore[union-attr]
    new_page = repo.store.get_object(repo.read_commit(repo.head()).tree).pages[0].page  # type: ignore[union-attr]
    assert old_page != new_page
    path = repo.dotdir / "objects" / new_page[:2] / new_page[2:]
    os.chmod(path, 0o644)
    path.write_bytes((repo.dotdir / "objects" / old_page[:2] / old_page[2:]).read_bytes())
    for args in (["ls"], ["diff", "HEAD~1", "HEAD"], ["export", "HEAD", str(tmp_path / "out")], ["cat", "HEAD:train/cat/0000.jpg"]):
        result = cli(*args, ok=False)
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [f"Error: corrupt object {new_page}: content hashes to {old_page}"]
    assert f"corrupt object {new_page}" in cli("fsck", ok=False).output


def test_the_local_filesystem_does_not_import_fsspec(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from datarepo.cli import main; from datarepo.repo import Repo; "
        "r = Repo.init(__import__('pathlib').Path(sys.argv[1])); r.store.put_object(r.store.get_object("
        "r.store.put_object_bytes(b'{\"format\":1,\"type\":\"x\"}'))); print('fsspec' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_store_on_another_filesystem_leaves_nothing_in_the_temporary_folder(tmp_path: Path) -> None:
    """Shards bound for another filesystem are written in the temporary folder first; the
    folder goes when the process ends."""
    import subprocess
    import sys

    pytest.importorskip("fsspec")
    code = (
        "import fsspec; from datarepo.store import Store; from datarepo.hashing import datum_id; "
        "from datarepo.shards import member_hash\n"
        "store = Store('/shared', fsspec.filesystem('memory'))\n"
        "writer = store.new_shard()\n"
        "writer.add(datum_id({'txt': member_hash(b'x')}), [('txt', b'x')])\n"
        "tmp, index = writer.finish()\n"
        "store.put_shard(tmp, index)\n"
        "print(list(store.iter_shards()) == [index.shard])\n"
    )
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "True"
    assert list(tmp.iterdir()) == []
