"""The key rule (datarepo.keys): every file a user adds is versioned and comes back byte for
byte, whatever its name, under both groupings, and stock WebDataset reads every shard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Cli
from hypothesis import given
from hypothesis import strategies as st

from datarepo import keys
from datarepo.errors import InvalidInputError
from datarepo.worktree import group

# A folder as users have them: files without an extension, dotfiles, names ending in a dot,
# a dot in a directory's name, and a file without an extension beside one with (same key).
ODD_FILES = {
    "README": b"readme\n",
    "README.md": b"# readme\n",
    "LICENSE": b"MIT\n",
    "Makefile": b"all:\n",
    "install-sh": b"#!/bin/sh\n",
    ".env": b"A=1\n",
    ".gitignore": b"*.o\n",
    ".config.json": b"{}",
    "x.": b"ends in a dot",
    "x": b"plain x",
    "x..y": b"two dots",
    "...": b"dots only",
    "a.b/c": b"dot in the folder",
    "a.b/c.txt": b"beside it",
    "src/.hidden/Dockerfile": b"FROM scratch\n",
    "data/empty": b"",
    "data/train.tar.gz": b"\x1f\x8b",
}

PATHS = [
    # path, wds (key, ext), file (key, ext)
    ("a/b/x.seg.png", ("a/b/x", "seg.png"), ("a/b/x.seg.png", "png")),
    ("README", ("README", ""), ("README", "bin")),
    ("dir/Makefile", ("dir/Makefile", ""), ("dir/Makefile", "bin")),
    (".env", (".env", ""), (".env", "bin")),
    ("d/.config.json", ("d/.config", "json"), ("d/.config.json", "json")),
    ("x.", ("x.", ""), ("x.", "bin")),
    ("x..y", ("x", ".y"), ("x..y", "y")),
    ("...", ("...", ""), ("...", "bin")),
    ("a.b/c", ("a.b/c", ""), ("a.b/c", "bin")),
    ("a.b/c.d", ("a.b/c", "d"), ("a.b/c.d", "d")),
]


@pytest.mark.parametrize(("path", "wds", "file"), PATHS)
def test_split_and_join(path: str, wds: tuple[str, str], file: tuple[str, str]) -> None:
    assert keys.split(path, "wds") == wds
    assert keys.split(path, "file") == file
    assert keys.join(*wds, "wds") == path
    assert keys.join(*file, "file") == path


# The names ``add`` can meet (it never stores .datarepo, .git, .dvc or .datarepoignore).
_name = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda p: p not in (".", "..", keys.IGNORE_FILE, *keys.RESERVED_DIRS)
)
_path = st.lists(_name, min_size=1, max_size=4).map("/".join)


@given(_path)
def test_every_path_splits_into_a_valid_key_and_back(path: str) -> None:
    for grouping in keys.GROUPINGS:
        key, ext = keys.split(path, grouping)
        assert keys.join(key, ext, grouping) == path
        assert keys.check_key(key) == key and keys.check_ext(ext) == ext
    key, ext = keys.split(path)
    # the member a file names is found again among its directory's files
    stem = key.rpartition("/")[2]
    assert keys.member_of(path.rpartition("/")[2], stem) == ext


@given(_path, st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), max_size=6))
def test_a_member_is_taken_in_exactly_when_its_file_gives_it_back(key: str, ext: str) -> None:
    """Ingest (and every writer) takes a key and member only if the file they come back to
    names them again: what a checkout writes, an ``add`` reads back under the same key."""
    try:
        path = keys.check_member(key, ext)
    except InvalidInputError:
        path = None
    assert (path is not None) == (keys.split(keys.join(key, ext)) == (key, ext))


@given(st.lists(_path, max_size=40))
def test_grouping_puts_each_file_where_the_rule_does(paths: list[str]) -> None:
    files = sorted(set(paths))
    for grouping in keys.GROUPINGS:
        expected: dict[str, dict[str, str]] = {}
        for rel in files:
            key, ext = keys.split(rel, grouping)
            expected.setdefault(key, {})[ext] = rel
        if grouping == "wds":
            assert group(files, grouping) == expected


@given(st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), max_size=10))
def test_shard_member_names_read_back(ext: str) -> None:
    datum = "0123456789abcdef0123456789abcdef"
    assert keys.split_member(keys.member_name(datum, ext)) == (datum, ext)


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/./b", "../x", "a/..", "a\x00b", "a\udcffb", ".datarepo/HEAD", "x/.git/config"]
)
def test_keys_that_cannot_be_stored_are_refused(key: str) -> None:
    with pytest.raises(InvalidInputError):
        keys.check_key(key)


@pytest.mark.parametrize("prefix", [".datarepo", "a/.git", "x/../y", ""])
def test_prefixes_that_cannot_hold_keys_are_refused(prefix: str, worktree: Path, cli: Cli) -> None:
    cli("init")
    result = cli("ingest", "-", "--prefix", prefix, input='{"__key__": "k", "txt": "x"}\n', ok=False)
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
    assert cli("log").output == ""


@pytest.mark.parametrize("ext", ["a/b", "x\x00", "\udcff"])
def test_member_names_that_cannot_be_stored_are_refused(ext: str) -> None:
    with pytest.raises(InvalidInputError):
        keys.check_ext(ext, "k")


@pytest.mark.parametrize("path", [".datarepo", ".git", "a/.datarepoignore"])
def test_paths_the_repository_keeps_are_never_written(path: str) -> None:
    with pytest.raises(InvalidInputError):
        keys.check_path(path)


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _read(root: Path) -> dict[str, bytes]:
    found = {}
    for d, dirs, names in os.walk(root):
        dirs[:] = [n for n in dirs if not (d == str(root) and n == ".datarepo")]
        for n in names:
            found[os.path.relpath(os.path.join(d, n), root)] = Path(d, n).read_bytes()
    return found


def _stock_webdataset_members(dotdir: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every shard, as stock WebDataset reads it: datum id → members."""
    import webdataset as wds

    shards = sorted(str(p) for p in (dotdir / "shards").glob("*/*.tar"))
    assert shards
    return {
        s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
        for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)
    }


@pytest.mark.parametrize("grouping", ["wds", "file"])
def test_odd_names_are_versioned_and_come_back_byte_for_byte(grouping: str, worktree: Path, cli: Cli, tmp_path: Path) -> None:
    _write(worktree, ODD_FILES)
    cli("init", "--grouping", grouping)
    added = cli("add", ".")
    assert "note:" not in added.output, added.output
    cli("commit", "-m", "odd names")
    assert "nothing to commit, work tree clean" in cli("status").output
    listed = {e["key"] for e in json.loads(cli("ls", "--json").stdout)}
    assert listed == {keys.split(rel, grouping)[0] for rel in ODD_FILES}
    if grouping == "wds":  # README and README.md: one datum, two members
        assert cli("cat", "HEAD:README.md").stdout_bytes == ODD_FILES["README.md"]
    # export
    cli("export", "HEAD", str(tmp_path / "out"))
    assert _read(tmp_path / "out") == ODD_FILES
    # checkout into an emptied work tree
    for rel in ODD_FILES:
        (worktree / rel).unlink()
    cli("checkout", "-f", "HEAD")
    assert _read(worktree) == ODD_FILES
    assert "nothing to commit, work tree clean" in cli("status").output
    # stock WebDataset reads every member of every datum, names without an extension included
    samples = _stock_webdataset_members(worktree / ".datarepo")
    stored = sorted(data for members in samples.values() for data in members.values())
    assert len(stored) == len(ODD_FILES) and sorted(ODD_FILES.values()) == stored


def test_a_file_without_an_extension_is_a_change_like_any_other(worktree: Path, cli: Cli) -> None:
    """Added, modified and deleted as one datum's member: status sees each change, and a
    checkout of an older commit removes the file again."""
    _write(worktree, {"README.md": b"md"})
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "one")
    (worktree / "README").write_bytes(b"plain")
    (worktree / "Makefile").write_bytes(b"all:")
    status = cli("status").output
    assert "modified: README" in status and "added:    Makefile" in status
    cli("add", ".")
    cli("commit", "-m", "two")
    (worktree / "README").write_bytes(b"changed")
    assert "modified: README" in cli("status").output
    cli("checkout", "-f", "HEAD~1")
    assert _read(worktree) == {"README.md": b"md"}
    cli("checkout", "main")
    assert _read(worktree) == {"README.md": b"md", "README": b"plain", "Makefile": b"all:"}
    assert "work tree clean" in cli("status").output
    (worktree / "Makefile").unlink()
    assert "deleted:  Makefile" in cli("status").output


def test_export_as_shards_gives_a_file_without_an_extension_to_stock_webdataset(worktree: Path, cli: Cli, tmp_path: Path) -> None:
    import webdataset as wds

    _write(worktree, {"doc/README": b"plain", "doc/README.md": b"md", "doc/LICENSE": b"lic"})
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "x")
    cli("export", "HEAD", str(tmp_path / "out"), "--shards")
    urls = sorted(str(p) for p in (tmp_path / "out").glob("*.tar"))
    samples = {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
               for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}
    assert samples == {"doc/LICENSE": {"": b"lic"}, "doc/README": {"": b"plain", "md": b"md"}}
    # and the shard set ingests back to the same datums
    cli("ingest", urls[0], "--prefix", "again")
    assert cli("cat", "HEAD:again/doc/README").stdout_bytes == b"plain"
    assert cli("cat", "HEAD:again/doc/README.md").stdout_bytes == b"md"


def test_a_nested_repository_is_still_passed_over(worktree: Path, cli: Cli) -> None:
    _write(worktree, {"a.txt": b"a", "inner/.git/HEAD": b"ref", "inner/x.txt": b"x"})
    cli("init")
    cli("add", ".")
    assert sorted(json.loads(cli("status", "--json").stdout)["added"]) == ["a", "inner/x"]
