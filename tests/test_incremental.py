"""Incremental work: only new or changed files are read, hashed and stored."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import tarfile
from pathlib import Path

import pytest
from conftest import age, write_samples

from datarepo import statcache
from datarepo.hashing import datum_id, hash_bytes
from datarepo.repo import Repo


def _hashed(output: str) -> int:
    return int(re.search(r"hashed (\d+) files", output).group(1))


def test_add_rereads_only_changed_files(worktree: Path, cli) -> None:
    write_samples(worktree, 30)
    age(worktree)
    cli("init")
    assert _hashed(cli("add", ".").output) == 60
    cli("commit", "-m", "first")
    assert _hashed(cli("add", ".").output) == 0
    changed = [worktree / f"train/{['cat', 'dog'][i % 2]}/{i:04d}.jpg" for i in (0, 7, 12)]
    for i, p in enumerate(changed):
        p.write_bytes(b"new content %d" % i)
    age(worktree, only=changed)
    out = cli("add", ".").output
    # The 3 changed .jpg and, to write the 3 new datums whole, their unchanged .cls partners.
    assert _hashed(out) == 6 and "staged 0 added, 3 modified" in out and "stored 3 new datums" in out
    assert _hashed(cli("add", ".").output) == 0


def test_a_first_add_keeps_its_stat_cache_in_one_file(worktree: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_samples(worktree, 30)
    for name in ("é/x.txt", "日本/y.txt", "a-b.txt", "a.b.txt", "z z.txt"):  # sorted apart from key order
        (worktree / name).parent.mkdir(exist_ok=True)
        (worktree / name).write_bytes(name.encode())
        files[name] = name.encode()
    age(worktree)
    cli("init")
    assert _hashed(cli("add", ".").output) == 65
    repo = Repo.open(worktree)
    assert repo.index.db.execute("SELECT count(*) FROM stat").fetchone()[0] == 0  # no row per file
    cache = repo.index.stats.load()
    assert sorted(cache) == sorted(files)
    hashes = {rel: entry[4] for rel, entry in cache.items()}
    assert hashes == {rel: hash_bytes(data) for rel, data in files.items()}
    wanted = [*sorted(files)[::7], "é/x.txt", "日本/y.txt", "missing.txt", "", "zzz"]
    assert repo.index.stats.lookup(wanted) == {p: cache[p] for p in wanted if p in cache}  # searched for
    monkeypatch.setattr(statcache, "_FEW_PATHS", 2)
    assert repo.index.stats.lookup(wanted) == {p: cache[p] for p in wanted if p in cache}  # read whole
    cli("commit", "-m", "first")
    changed = worktree / "train/cat/0004.jpg"
    changed.write_bytes(b"new")
    age(worktree, only=[changed])
    out = cli("add", ".").output
    assert _hashed(out) == 2 and "1 modified" in out  # the file and its partner, written with it
    assert _hashed(cli("add", ".").output) == 0  # its new hash is a row, which wins over the base


@pytest.mark.parametrize("damage", ["none", "truncated", "emptied", "flipped", "deleted"])
def test_a_damaged_stat_cache_file_is_read_as_empty(worktree: Path, cli, damage: str) -> None:
    write_samples(worktree, 10)
    age(worktree)
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "first")
    base = worktree / ".datarepo" / "index.stats"
    raw = base.read_bytes()
    if damage == "truncated":
        base.write_bytes(raw[: len(raw) // 2])
    elif damage == "emptied":
        base.write_bytes(b"")
    elif damage == "flipped":
        base.write_bytes(raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:])  # one hash digit
    elif damage == "deleted":
        base.unlink()
    (worktree / ".datarepoignore").write_text("*.tmp\n")  # a new ignore file: every file is looked at again
    out = cli("add", ".").output
    assert "staged 0 added, 0 modified, 0 deleted" in out
    assert _hashed(out) == (0 if damage == "none" else 20)  # a damaged file is not trusted: all read again
    assert json.loads(cli("status", "--json").output) == {"added": [], "modified": [], "deleted": []}
    assert _hashed(cli("add", ".").output) == 0


def test_a_datum_staged_again_unread_keeps_its_size(worktree: Path, cli) -> None:
    # A key whose files all have trusted cached hashes is staged without being read: its
    # size then comes from the files' stats, as a read key's comes from its bytes.
    write_samples(worktree, 4)
    age(worktree)
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "first")
    cli("rm", "--cached", "train/cat/0000")
    cli("commit", "-m", "untracked")
    out = cli("add", ".").output
    assert _hashed(out) == 0 and "staged 1 added" in out
    cli("commit", "-m", "again")
    sizes = {e["key"]: e["size"] for e in json.loads(cli("ls", "HEAD", "--json").output)}
    files = sorted(worktree.glob("train/*/*.*"))
    assert sizes == {k: sum(p.stat().st_size for p in files if str(p.relative_to(worktree)).startswith(k + ".")) for k in sizes}
    assert sizes == {e["key"]: e["size"] for e in json.loads(cli("ls", "HEAD~2", "--json").output)}


def test_racy_file_changed_in_the_same_tick_is_detected(worktree: Path, cli) -> None:
    p = worktree / "a.txt"
    p.write_bytes(b"version 1")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "v1")
    st = os.stat(p)
    p.write_bytes(b"version 2")  # same size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only the racy rule can see it
    assert os.stat(p).st_ino == st.st_ino
    assert json.loads(cli("status", "--json").output)["modified"] == ["a"]


def test_unchanged_content_with_new_mtime_is_not_a_change(repo_with_commit, worktree: Path, cli) -> None:
    age(worktree, 30)
    assert json.loads(cli("status", "--json").output) == {"added": [], "modified": [], "deleted": []}


def test_status_refreshes_the_stat_cache(repo_with_commit, worktree: Path, cli) -> None:
    age(worktree, 30)
    cli("status")
    assert _hashed(cli("add", ".").output) == 0


def test_same_content_under_two_keys_is_stored_once(worktree: Path, cli) -> None:
    (worktree / "a.bin").write_bytes(b"same" * 100)
    (worktree / "b.bin").write_bytes(b"same" * 100)
    cli("init")
    assert "stored 1 new datums" in cli("add", ".").output


def test_ingest_folder_twice_stores_nothing_new(tmp_path: Path, worktree: Path, cli) -> None:
    src = tmp_path / "src"
    files = write_samples(src, 20)
    age(src)
    cli("init")
    first = json.loads(cli("ingest", str(src), "--prefix", "extra/", "--json").output)
    assert first["stored"] == 20 and len(first["added"]) == 20
    again = json.loads(cli("ingest", str(src), "--prefix", "extra/", "--json").output)
    assert again["stored"] == 0 and again["commit"] is None and again["reused_files"] == 40
    (src / "train/cat/0000.jpg").write_bytes(b"changed")
    (src / "train/dog/0001.jpg").unlink()
    (src / "train/dog/0001.cls").unlink()
    third = json.loads(cli("ingest", str(src), "--prefix", "extra/", "--json").output)
    assert third["stored"] == 1 and third["modified"] == ["extra/train/cat/0000"] and third["deleted"] == ["extra/train/dog/0001"]
    assert cli("cat", "HEAD:extra/train/cat/0002.jpg").stdout_bytes == files["train/cat/0002.jpg"]
    assert not (worktree / "extra").exists()
    assert json.loads(cli("status", "--json").output) == {"added": [], "modified": [], "deleted": []}


def test_ingest_tar_shard_set_and_jsonl(tmp_path: Path, worktree: Path, cli) -> None:
    src = tmp_path / "shards"
    src.mkdir()
    for n in range(3):
        with tarfile.open(src / f"part-{n:03d}.tar", "w") as tf:
            for i in range(4):
                for ext, data in (("jpg", b"img%d-%d" % (n, i)), ("cls", b"%d" % i)):
                    info = tarfile.TarInfo(f"./s{n}/{i:03d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    age(src)
    cli("init")
    out = json.loads(cli("ingest", str(src / "part-{000..002}.tar"), "--prefix", "wds", "--json").output)
    assert out["datums"] == 12 and out["stored"] == 12
    assert cli("cat", "HEAD:wds/s1/002.jpg").stdout_bytes == b"img1-2"
    again = json.loads(cli("ingest", str(src / "part-*.tar"), "--prefix", "wds", "--json").output)
    assert again["commit"] is None and again["reused_files"] == 3

    lines = tmp_path / "d.jsonl"
    lines.write_text(
        '{"__key__": "a/1", "txt": "hello", "cls": 3}\n'
        '{"__key__": "a/2", "bin": {"base64": "AAEC"}, "json": {"x": [1]}}\n'
    )
    cli("ingest", str(lines), "--prefix", "text")
    assert cli("cat", "HEAD:text/a/1.txt").stdout_bytes == b"hello"
    assert cli("cat", "HEAD:text/a/1.cls").stdout_bytes == b"3"
    assert cli("cat", "HEAD:text/a/2.bin").stdout_bytes == b"\x00\x01\x02"
    assert cli("cat", "HEAD:text/a/2.json").stdout_bytes == b'{"x":[1]}'
    cli("ingest", "-", "--prefix", "stream", "--append", input='{"__key__": "k", "txt": "one"}\n')
    cli("ingest", "-", "--prefix", "stream", "--append", input='{"__key__": "j", "txt": "two"}\n')
    assert [e["key"] for e in json.loads(cli("ls", "--prefix", "stream/", "--json").output)] == ["stream/j", "stream/k"]
    assert "0 problems" in cli("fsck").output


def test_ingest_export_round_trip(repo_with_commit, tmp_path: Path, worktree: Path, cli) -> None:
    _, files = repo_with_commit
    cli("export", "HEAD", str(tmp_path / "out"), "--shards", "--shard-size", "4K")
    repo = Repo.open(worktree)
    shards_before = set(repo.store.iter_shards())
    out = json.loads(cli("ingest", str(tmp_path / "out" / "*.tar"), "--prefix", "copy", "--json").output)
    assert out["datums"] == 20 and out["stored"] == 0  # the same content is stored once
    assert set(repo.store.iter_shards()) == shards_before
    ours = {e["key"]: e["datum"] for e in json.loads(cli("ls", "--json").output)}
    for key, datum in ours.items():
        if not key.startswith("copy/"):
            assert ours["copy/" + key] == datum


def _trees_after_each_commit(root: Path, steps, drop_staged_tree: bool) -> list[str]:
    from datarepo.porcelain.history import commit
    from datarepo.porcelain.stage import add, rm

    write_samples(root, 40)
    repo = Repo.init(root)
    trees = []
    for step in steps:
        for op, arg in step:
            if op == "write":
                (root / arg[0]).parent.mkdir(parents=True, exist_ok=True)
                (root / arg[0]).write_bytes(arg[1])
            elif op == "delete":
                (root / arg).unlink()
            elif op == "add":
                add(repo, [str(root / p) for p in arg])
            else:
                rm(repo, [str(root / arg)], cached=True)
        used = repo.index.staging.tree(repo.head())
        if drop_staged_tree:
            with repo.index.transaction():
                repo.index.db.execute("DELETE FROM meta WHERE name='staged_tree'")
        commit(repo, "step")
        trees.append((repo.read_commit(repo.head()).tree, used is not None))
    return trees


def test_the_tree_add_stores_is_the_one_commit_would_build(tmp_path: Path) -> None:
    """``add`` stores the next commit's tree when it can; built from the staging area
    instead, the tree is the same, step by step."""
    steps = [
        [("add", ["."])],  # a first add: HEAD is unborn
        [("write", ("train/cat/0000.cls", b"9")), ("add", ["train/cat"]),  # two adds chain
         ("write", ("train/dog/0001.cls", b"9")), ("add", ["train/dog/0001.cls"])],
        [("rm", "train/cat/0002.jpg"), ("write", ("train/dog/0003.cls", b"7")), ("add", ["."])],  # rm: built by commit
        [("write", ("train/dog/0005.cls", b"5")), ("write", ("train/dog/0007.cls", b"8")), ("add", ["."]),
         ("write", ("train/dog/0005.cls", b"1")), ("add", ["."])],  # 0005 back to HEAD's value
        [("write", ("new/a.jpg", b"new")), ("delete", "train/cat/0004.jpg"), ("delete", "train/cat/0004.cls"),
         ("add", ["."])],  # an added key and a deleted one
    ]
    fast = _trees_after_each_commit(tmp_path / "a", steps, drop_staged_tree=False)
    slow = _trees_after_each_commit(tmp_path / "b", steps, drop_staged_tree=True)
    assert [t for t, _ in fast] == [t for t, _ in slow]
    assert [used for _, used in fast] == [True, True, False, True, True]


def test_gc_between_add_and_commit_keeps_the_staged_tree(repo_with_commit, worktree: Path, cli) -> None:
    (worktree / "train/cat/0000.cls").write_bytes(b"changed")
    cli("add", ".")
    repo = Repo.open(worktree)
    staged = repo.index.staging.tree(repo.head())
    cli("gc")
    assert staged is not None and repo.store.has_object(staged)  # a root, like the staged datums
    cli("commit", "-m", "after gc")
    assert "0 problems" in cli("fsck").output
    assert cli("cat", "HEAD:train/cat/0000.cls").stdout_bytes == b"changed"


def test_a_new_index_has_16_kib_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """16 KiB pages take a first add's location rows in fewer page writes. SQLite can only
    set the size before the file's first write, so an existing index keeps the size it has."""
    import sqlite3

    from datarepo.index import PAGE_SIZE, Index

    new = Index(tmp_path / "new.sqlite")
    assert PAGE_SIZE == 16384 and new.db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    new.close()
    old = sqlite3.connect(tmp_path / "old.sqlite")
    old.execute("PRAGMA page_size=4096")
    old.execute("CREATE TABLE t (x)")
    old.commit()
    old.close()
    index = Index(tmp_path / "old.sqlite")
    assert index.db.execute("PRAGMA page_size").fetchone()[0] == 4096
    with index.transaction():
        index.stats.save([("a.jpg", (1, 2, 3, 4, "0" * 32))])
    assert index.stats.load() == {"a.jpg": (1, 2, 3, 4, "0" * 32)}


def test_a_file_that_grew_since_its_stat_is_read_to_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unless it grew past the size up to which files are read whole: then it is being
    written, and is an error rather than held whole in memory."""
    from datarepo import write
    from datarepo.errors import InvalidInputError
    from datarepo.statcols import StatColumns
    from datarepo.worktree import lstat

    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 10)
    files = {"a.bin": lstat(str(path), "a.bin")}  # as a scan saw it
    grown = os.urandom(3 << 20)  # read in more than one call
    path.write_bytes(grown)
    read = StatColumns()
    datum, items, size = write.read_datum(f"{tmp_path}/", {"bin": "a.bin"}, files, read)
    assert items == [("bin", grown)] and size == len(grown)
    assert datum == datum_id({"bin": hash_bytes(grown)})
    assert read.names == ["a.bin"] and read.stat(0) == files["a.bin"]  # the stat it was read at
    monkeypatch.setattr(write, "LARGE_FILE", 2 << 20)
    with pytest.raises(InvalidInputError, match="file changed while it was being read: a.bin"):
        write.read_datum(f"{tmp_path}/", {"bin": "a.bin"}, files, StatColumns())


@pytest.mark.parametrize("count", [0, 1, 99, 100, 101, 250])
def test_rows_inserted_a_hundred_to_a_statement_are_all_there_and_the_last_wins(tmp_path: Path, count: int) -> None:
    """Staging, stat and location rows go to SQLite in statements of many rows: every row
    arrives whatever the count (a generator's too), and of two rows with one key, as
    one by one, the later one stays."""
    from datarepo.index import Index

    index = Index(tmp_path / "index.sqlite")
    rows = [(f"k/{i:04d}", f"{i:032x}", i) for i in range(count)]
    twice = [(k, f"{i + 1:032x}", 7) for i, (k, _, _) in enumerate(rows[::3])]
    with index.transaction():
        index.staging.stage(row for row in rows + twice)  # a key staged twice in one statement, too
        index.stats.save(((k, (1, 2, 3, 4, d)) for k, d, _ in rows), scope="s")
    expected = {k: (d, size) for k, d, size in rows + twice}
    assert {k: (d, size) for k, d, size in index.db.execute("SELECT key, datum, size FROM staged")} == expected
    assert index.stats.load("s") == {k: (1, 2, 3, 4, d) for k, d, _ in rows}
    # Location rows, whose datums come in no order (they are sorted before they go in).
    located = [(f"{(i * 7919) % 1000:032x}", "s" * 32, i, 1, f"{i} 1 jpg") for i in range(count)]
    moved = [(d, "t" * 32, 2 * off, 1, "0 1 jpg") for d, _, off, _, _ in located[::3]]
    with index.transaction():
        index.locations.put(row for row in located + moved)
    where = {d: (shard, off) for d, shard, off, _, _ in located + moved}
    assert {d: (shard, off) for d, shard, off in index.db.execute("SELECT datum, shard, offset FROM location")} == where


def test_a_checkpoint_puts_the_log_into_the_database_file_outside_transactions(tmp_path: Path) -> None:
    """A checkpoint moves SQLite's write-ahead log into the database file; inside a
    transaction it is left for later, not an error."""
    from datarepo.index import Index

    def rows_in_file_alone(where: Path, table: str) -> int:
        alone = tmp_path / "alone"
        alone.mkdir(exist_ok=True)
        shutil.copyfile(where / "index.sqlite", alone / "index.sqlite")  # without its -wal
        db = sqlite3.connect(alone / "index.sqlite")
        try:
            return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            db.close()
            (alone / "index.sqlite").unlink()

    index = Index(tmp_path / "index.sqlite")
    index.checkpoint()  # (the schema, into the file)
    with index.transaction():
        index.staging.stage([("k", "0" * 32, 1)])
        index.checkpoint()
    assert rows_in_file_alone(tmp_path, "staged") == 0  # still only in the log
    index.checkpoint()
    assert rows_in_file_alone(tmp_path, "staged") == 1
    index.close()
