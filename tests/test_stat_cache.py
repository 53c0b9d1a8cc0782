"""Changes the stat cache and the status snapshot must not miss: a file that keeps its size,
its mtime (set back, as ``touch -r``, ``cp -p``, ``rsync -a`` and ``tar x`` do) or its inode
(rewritten in place, or made again where its inode is reused) is still seen changed, and
file times out of the ordinary (before 1970, at 0, in the future, past 2262) are handled."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import age

OLD = 1_600_000_000_123_456_789  # an mtime in 2020, with nanoseconds
WHOLE = 1_600_000_000 * 10**9  # one in whole seconds, as a coarse file system keeps it
FUTURE = 4_102_444_800 * 10**9  # 2100
NEGATIVE = -100 * 10**9  # before 1970
FAR = 2**40 * 10**9  # far past 2262: beyond an int64 of nanoseconds


def _hashed(output: str) -> int:
    return int(re.search(r"hashed (\d+) files", output).group(1))


def _status(cli) -> dict[str, list[str]]:
    return json.loads(cli("status", "--json").stdout)


def _committed(worktree: Path, cli) -> None:
    """The work tree's files, aged past the racy rule, in a first commit."""
    age(worktree)
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "first")


def _set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """New bytes of the same size into the same inode, the old mtime set back."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
    _set_mtime(path, st.st_mtime_ns)
    assert path.stat().st_ino == st.st_ino and path.stat().st_mtime_ns == st.st_mtime_ns


def _made_again(path: Path, data: bytes) -> None:
    """Deleted and made again with the same size and mtime (its inode may well be reused)."""
    mtime = path.stat().st_mtime_ns
    path.unlink()
    path.write_bytes(data)
    _set_mtime(path, mtime)


def _renamed_over(path: Path, data: bytes) -> None:
    """Replaced by rename, as an editor or ``sed -i`` does, the old mtime kept (``cp -p``)."""
    mtime = path.stat().st_mtime_ns
    tmp = path.with_name(path.name + ".new~")
    tmp.write_bytes(data)
    _set_mtime(tmp, mtime)
    os.replace(tmp, path)


# Each key's file: its mtime when added, and how it is changed to new bytes of the same size.
CHANGES: dict[str, tuple[int, Callable[[Path, bytes], None]]] = {
    "inplace": (OLD, _rewrite_in_place),
    "seconds": (WHOLE, _rewrite_in_place),
    "again": (OLD, _made_again),
    "renamed": (OLD, _renamed_over),
    "future": (FUTURE, _rewrite_in_place),
    "negative": (NEGATIVE, _rewrite_in_place),
    "zero": (0, _rewrite_in_place),
    "far": (FAR, _rewrite_in_place),
}


def _tree(root: Path) -> None:
    """One file a key of CHANGES, with the mtime it names, and one left alone; all of them
    older than the racy rule asks, so the stat cache trusts what it can."""
    for key in CHANGES:
        (root / f"{key}.txt").write_bytes(b"before:" + key.encode())
    (root / "same.txt").write_bytes(b"never changed")
    for key, (mtime, _) in CHANGES.items():
        _set_mtime(root / f"{key}.txt", mtime)
    age(root, 0)  # (each mtime kept)


def _change_all(root: Path) -> None:
    for key, (_, change) in CHANGES.items():
        change(root / f"{key}.txt", b"after!:" + key.encode())


@pytest.mark.parametrize("through", ["snapshot", "stat cache"])
def test_a_change_that_keeps_size_mtime_or_inode_is_seen(worktree: Path, cli, through: str) -> None:
    _tree(worktree)
    cli("init")
    assert _hashed(cli("add", ".").output) == len(CHANGES) + 1
    cli("commit", "-m", "before")
    assert _status(cli) == {"added": [], "modified": [], "deleted": []}
    # Only the files in the future (2100 and past 2262) are read again: never trusted.
    assert _hashed(cli("add", ".").output) == 2
    _change_all(worktree)
    if through == "stat cache":  # a snapshot of another token: each file against its cached hash
        (worktree / ".datarepoignore").write_text("*.tmp\n")
    assert _status(cli) == {"added": [], "modified": sorted(CHANGES), "deleted": []}
    assert _status(cli) == {"added": [], "modified": sorted(CHANGES), "deleted": []}  # and again, from the snapshot
    out = cli("add", ".").output
    assert f"staged 0 added, {len(CHANGES)} modified, 0 deleted" in out
    cli("commit", "-m", "after")
    for key in CHANGES:
        assert cli("cat", f"HEAD:{key}.txt").stdout_bytes == b"after!:" + key.encode()
    assert _status(cli) == {"added": [], "modified": [], "deleted": []}


def test_a_change_between_two_statuses_is_seen_by_the_second(worktree: Path, cli) -> None:
    _tree(worktree)
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "before")
    for key, (_, change) in CHANGES.items():
        assert _status(cli)["modified"] == []  # (the snapshot is saved again: nothing changed)
        change(worktree / f"{key}.txt", b"after!:" + key.encode())
        assert _status(cli)["modified"] == [key]
        cli("add", ".")
        cli("commit", "-m", key)
        assert cli("cat", f"HEAD:{key}.txt").stdout_bytes == b"after!:" + key.encode()


def test_files_with_times_out_of_the_ordinary_are_added_and_read_back(worktree: Path, cli) -> None:
    for name, mtime in (("far", FAR), ("future", FUTURE), ("negative", NEGATIVE), ("zero", 0)):
        (worktree / f"{name}.txt").write_bytes(name.encode())
        _set_mtime(worktree / f"{name}.txt", mtime)
    cli("init")
    assert _status(cli)["added"] == ["far", "future", "negative", "zero"]
    assert "staged 4 added" in cli("add", ".").output
    cli("commit", "-m", "times")
    assert _status(cli) == {"added": [], "modified": [], "deleted": []}
    (worktree / "far.txt").write_bytes(b"FAR")
    _set_mtime(worktree / "far.txt", FAR + 10**9)  # another time past 2262, held as the same int64
    assert _status(cli)["modified"] == ["far"]


def test_a_trusted_file_is_not_read_again(worktree: Path, cli) -> None:
    """The change time does not make the stat cache useless: a file left alone for longer
    than the racy rule asks is not read by add, even with its mtime set back."""
    (worktree / "a.txt").write_bytes(b"a")
    (worktree / "b.txt").write_bytes(b"b")
    _committed(worktree, cli)
    assert _hashed(cli("add", ".").output) == 0
    _set_mtime(worktree / "a.txt", OLD)  # metadata only: read once more, found unchanged
    age(worktree, only=[worktree / "a.txt"])
    out = cli("add", ".").output
    assert _hashed(out) == 1 and "staged 0 added, 0 modified, 0 deleted" in out
    assert _hashed(cli("add", ".").output) == 0


def test_members_folders_and_links_that_replace_files_are_seen(worktree: Path, cli) -> None:
    (worktree / "x.cls").write_bytes(b"1")
    (worktree / "y.cls").write_bytes(b"2")
    (worktree / "y.jpg").write_bytes(b"jpeg")
    (worktree / "d").mkdir()
    (worktree / "d" / "in.txt").write_bytes(b"inside")
    (worktree / "f").write_bytes(b"a file")
    (worktree / "l.txt").write_bytes(b"linked")
    (worktree / "other.txt").write_bytes(b"linked")
    _committed(worktree, cli)
    assert _status(cli) == {"added": [], "modified": [], "deleted": []}
    (worktree / "x.jpg").write_bytes(b"jpeg")  # a member beside an unchanged one
    (worktree / "y.jpg").unlink()  # a member gone, its partner unchanged
    shutil.rmtree(worktree / "d")  # a folder replaced by a file of the same name
    (worktree / "d").write_bytes(b"inside")
    (worktree / "f").unlink()  # a file replaced by a folder
    (worktree / "f").mkdir()
    (worktree / "f" / "in.txt").write_bytes(b"a file")
    (worktree / "l.txt").unlink()  # a file replaced by a link to the same bytes
    (worktree / "l.txt").symlink_to("other.txt")
    want = {"added": ["d", "f/in"], "modified": ["x", "y"], "deleted": ["d/in", "f", "l"]}
    assert _status(cli) == want
    assert _status(cli) == want  # from the snapshot
    (worktree / ".datarepo" / "index.listing").unlink()
    assert _status(cli) == want  # without it
    assert json.loads(cli("status", "--json", "--follow").stdout) == {**want, "deleted": ["d/in", "f"]}


def _back_at_the_first_of_two_commits(cli, worktree: Path) -> None:
    """Commits the work tree (v1), then ``a.txt`` as ``version 2`` (v2), and checks v1 out."""
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "v1")
    (worktree / "a.txt").write_bytes(b"version 2")
    cli("add", ".")
    cli("commit", "-m", "v2")
    cli("checkout", "HEAD~1")


def test_a_file_checkout_wrote_then_changed_at_once_is_seen(worktree: Path, cli) -> None:
    (worktree / "a.txt").write_bytes(b"version 1")
    age(worktree)
    _back_at_the_first_of_two_commits(cli, worktree)
    _rewrite_in_place(worktree / "a.txt", b"version 3")  # at once, its mtime set back
    assert _status(cli)["modified"] == ["a"]
    cli("checkout", "-f", "main")
    assert (worktree / "a.txt").read_bytes() == b"version 2"
    _made_again(worktree / "a.txt", b"version 4")
    assert _status(cli)["modified"] == ["a"]


def test_a_clock_set_back_since_the_cache_was_made_does_not_hide_a_change(worktree: Path, cli) -> None:
    """Entries made while the clock ran an hour ahead (then set back) trust every file as
    older than the racy rule asks: a change must still differ from the entry."""
    (worktree / "a.txt").write_bytes(b"version 1")
    (worktree / "b.txt").write_bytes(b"version 1")
    _back_at_the_first_of_two_commits(cli, worktree)  # (its entries are rows of the stat table)
    with sqlite3.connect(worktree / ".datarepo" / "index.sqlite") as db:
        assert db.execute("UPDATE stat SET seen_ns = seen_ns + 3600 * 1000000000").rowcount > 0
    db.close()
    (worktree / ".datarepoignore").write_text("*.tmp\n")  # no snapshot: the stat cache alone
    assert _status(cli) == {"added": [], "modified": [], "deleted": []}
    _rewrite_in_place(worktree / "a.txt", b"version 3")
    assert _status(cli)["modified"] == ["a"]


def test_a_folder_ingest_sees_the_changes_add_sees(tmp_path: Path, worktree: Path, cli) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    cli("init")
    first = json.loads(cli("ingest", str(src), "--prefix", "in/", "--json").output)
    assert len(first["added"]) == len(CHANGES) + 1
    again = json.loads(cli("ingest", str(src), "--prefix", "in/", "--json").output)
    assert again["commit"] is None and again["reused_files"] == len(CHANGES) - 1  # the two in the future are read
    _change_all(src)
    third = json.loads(cli("ingest", str(src), "--prefix", "in/", "--json").output)
    assert third["modified"] == sorted(f"in/{key}" for key in CHANGES)
    for key in CHANGES:
        assert cli("cat", f"HEAD:in/{key}.txt").stdout_bytes == b"after!:" + key.encode()


@pytest.mark.parametrize("change", [_rewrite_in_place, _made_again, _renamed_over])
@pytest.mark.parametrize("kind", ["tar", "jsonl"])
def test_an_ingested_file_changed_with_its_size_and_mtime_kept_is_read_again(
    tmp_path: Path, worktree: Path, cli, kind: str, change: Callable[[Path, bytes], None]
) -> None:
    def source(text: bytes) -> bytes:
        path = tmp_path / "made"
        if kind == "jsonl":
            path.write_bytes(b'{"__key__": "k", "txt": "' + text + b'"}\n')
        else:
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
                info = tarfile.TarInfo("k.txt")
                info.size, info.mtime = len(text), 0
                tf.addfile(info, io.BytesIO(text))
        return path.read_bytes()

    src = tmp_path / f"src.{kind}"
    src.write_bytes(source(b"before"))
    _set_mtime(src, OLD)
    age(tmp_path, 0, only=[src])
    cli("init")
    cli("ingest", str(src), "--prefix", "s/")
    again = json.loads(cli("ingest", str(src), "--prefix", "s/", "--json").output)
    assert again["commit"] is None and again["reused_files"] == 1
    new = source(b"after!")
    assert len(new) == src.stat().st_size
    change(src, new)
    third = json.loads(cli("ingest", str(src), "--prefix", "s/", "--json").output)
    assert third["modified"] == ["s/k"] and third["reused_files"] == 0
    assert cli("cat", "HEAD:s/k.txt").stdout_bytes == b"after!"


@pytest.mark.parametrize("looks", ["status", "add"])
def test_a_look_at_new_files_alone_keeps_the_cache_of_the_others(worktree: Path, cli, looks: str) -> None:
    """A status or add that hashes only new files (the snapshot names no other) adds them to
    the stat cache: it does not make a cache of those files alone, which forgot every other."""
    for name in "abc":
        (worktree / f"{name}.txt").write_bytes(name.encode())
    _committed(worktree, cli)
    (worktree / "d.txt").write_bytes(b"d")
    age(worktree, only=[worktree / "d.txt"])
    if looks == "add":
        assert _hashed(cli("add", ".").output) == 1
    else:
        assert _status(cli)["added"] == ["d"]
    (worktree / ".datarepoignore").write_text("*.tmp\n")  # another token: every key is looked at
    out = cli("add", ".").output
    if looks == "add":
        assert _hashed(out) == 0 and "staged 0 added" in out
    else:  # d is read once more, to be stored (a status stores nothing); a, b and c are not
        assert _hashed(out) == 1 and "staged 1 added" in out
