"""Names never lead outside the repository's folder or the work tree: ref names (git's
check-ref-format), symbolic refs, revisions, symlinked folders of the work tree, and the
temporary files of a killed checkout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import paths_under
from hypothesis import given, settings
from hypothesis import strategies as st

from datarepo.errors import DataRepoError, InvalidInputError
from datarepo.hashing import hash_bytes
from datarepo.refs import Refs, check_name, is_ref_name, is_valid_ref_format

BAD_NAMES = [
    "HEAD", "refs/heads/x", "ab.", "-x", "a..b", "a/.b", ".a", "x.lock", "a/x.lock/b", "a b", "a~1", "a^", "a:b",
    "a?", "a*", "a[b", "a\\b", "@", "a@{1}", "a/", "/a", "a//b", "tab\there", "del\x7f", "",
]
GOOD_NAMES = ["feature/x", "v1.0", "a-b_c", "ab.c", "@x", "x@y", "a.lock.b", "ü"]


def _one_line_error(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(w in lines[0] for w in words), result.output


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_ref_format_refuses_what_git_refuses(name: str) -> None:
    with pytest.raises(ValueError, match="invalid branch name"):
        check_name(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_check_ref_format_takes_what_git_takes(name: str) -> None:
    assert check_name(name) == name and is_valid_ref_format(f"refs/heads/{name}")


NAME_PARTS = st.lists(st.sampled_from(["a", "b", ".", "..", "/", "refs/", "heads/", "HEAD", ".lock", "@{", "~", " ", "\x00", "é", "-"]), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), NAME_PARTS.map("".join)))
def test_no_name_resolves_outside_the_repository(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    """Any text as a branch or ref name: refused with our error, or a path inside ``refs/``."""
    root = tmp_path_factory.getbasetemp() / "names" / "repo"
    refs = Refs(root)
    try:
        check_name(name)
    except InvalidInputError:
        pass
    else:
        full = os.path.normpath(root / "refs/heads" / name)
        assert full.startswith(str(root / "refs/heads") + os.sep)
    if is_ref_name(name) and name != "HEAD":
        assert os.path.normpath(root / name).startswith(str(root / "refs") + os.sep)
    try:
        assert refs.read(name) is None
        refs.update(name, hash_bytes(b"c"), expected=None)
        refs.update(name, None)
    except (DataRepoError, OSError):  # refused, or a folder where a ref would be (git refuses it too)
        pass
    written = [p for p in (root.parent).rglob("*") if p.is_file()]
    assert all(p.is_relative_to(root) for p in written)


@pytest.mark.parametrize("name", ["HEAD", "refs/heads/x", "ab.", "a..b", "x.lock", "../../../../x"])
def test_bad_branch_and_tag_names_are_refused_through_the_cli(repo_with_commit, worktree: Path, cli, name: str) -> None:
    repo, _ = repo_with_commit
    before = paths_under(worktree.parent)
    _one_line_error(cli("branch", "--", name, ok=False), "invalid branch name")
    _one_line_error(cli("tag", "--", name, ok=False), "invalid tag name")
    _one_line_error(cli("checkout", "-b", name, ok=False), "invalid branch name")
    assert paths_under(worktree.parent) == before
    assert [line.split()[1] for line in cli("branch").output.splitlines()] == ["main"]


@pytest.mark.parametrize("target", ["refs/heads/../../../../x", "../x", "HEAD", "refs/heads/a..b", "/tmp/x"])
def test_head_pointing_outside_refs_is_refused(repo_with_commit, worktree: Path, cli, target: str) -> None:
    repo, _ = repo_with_commit
    (repo.dotdir / "HEAD").write_text(f"ref: {target}\n")
    (worktree / "new.txt").write_text("x")
    before = sorted(p.relative_to(worktree.parent) for p in worktree.parent.rglob("*") if ".datarepo" not in p.parts)
    for args in (["commit", "-m", "x"], ["log"], ["status"], ["branch"], ["checkout", "main"]):
        _one_line_error(cli(*args, ok=False), "corrupt object HEAD", "not a valid ref name")
    after = sorted(p.relative_to(worktree.parent) for p in worktree.parent.rglob("*") if ".datarepo" not in p.parts)
    assert after == before and not (repo.dotdir.parent.parent / "x").exists()
    (repo.dotdir / "HEAD").write_text("ref: refs/heads/main\n")  # mended
    cli("log")


def test_revisions_with_dots_name_no_file(repo_with_commit, worktree: Path, cli) -> None:
    repo, _ = repo_with_commit
    outside = worktree.parent / "outside"
    outside.write_text(f"{repo.head()}\n")  # a file holding a commit id, outside the repository
    for rev in ("../../../outside", "refs/heads/../../../../outside", "refs/../../outside"):
        _one_line_error(cli("log", rev, ok=False), "unknown revision")
        _one_line_error(cli("cat", f"{rev}:train/cat/0000.jpg", ok=False), "unknown revision")


def test_files_in_refs_with_invalid_names_are_not_refs(repo_with_commit, cli) -> None:
    repo, _ = repo_with_commit
    for name in ("x.lock", ".hidden", "a..b"):
        (repo.dotdir / "refs/heads" / name).write_text(f"{repo.head()}\n")
    assert [line.split()[1] for line in cli("branch").output.splitlines()] == ["main"]


def _link_folder(worktree: Path, outside: Path) -> None:
    """Replaces the work tree's ``train/cat`` with a symbolic link to ``outside``, a copy."""
    outside.mkdir()
    for p in sorted((worktree / "train/cat").iterdir()):
        (outside / p.name).write_bytes(p.read_bytes())
        p.unlink()
    (worktree / "train/cat").rmdir()
    (worktree / "train/cat").symlink_to(outside, target_is_directory=True)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_checkout_never_writes_through_a_symlinked_folder(repo_with_commit, worktree: Path, cli, tmp_path: Path) -> None:
    repo, files = repo_with_commit
    (worktree / "train/cat/0000.jpg").write_bytes(b"second")
    cli("add", ".")
    cli("commit", "-m", "second")
    outside = tmp_path / "outside"
    _link_folder(worktree, outside)
    (outside / "0000.jpg").write_bytes(b"someone else's")
    kept = _contents(outside)
    for args in (["checkout", "-f", "HEAD"], ["checkout", "-f", "HEAD~1"]):
        _one_line_error(cli(*args, ok=False), "beyond the symbolic link train/cat")
        assert _contents(outside) == kept
    assert (worktree / "train/cat").is_symlink()
    (worktree / "train/cat").unlink()  # the user's own way out
    cli("checkout", "-f", "HEAD~1")
    assert (worktree / "train/cat/0000.jpg").read_bytes() == files["train/cat/0000.jpg"]


def test_rm_never_deletes_through_a_symlinked_folder(repo_with_commit, worktree: Path, cli, tmp_path: Path) -> None:
    repo, _ = repo_with_commit
    outside = tmp_path / "outside"
    _link_folder(worktree, outside)
    kept = _contents(outside)
    _one_line_error(cli("rm", "train", ok=False), "beyond the symbolic link train/cat")
    assert _contents(outside) == kept
    cli("rm", "--cached", "train")  # only unstages: touches no file
    assert _contents(outside) == kept


def test_a_killed_checkout_leaves_no_temporary_file_in_the_work_tree(tmp_path: Path, worktree: Path, cli) -> None:
    big = {f"big{i}.bin": bytes([i]) * (40 << 20) for i in range(3)}  # streamed: over the 32 MiB read-whole limit
    for name, data in big.items():
        (worktree / name).write_bytes(data)
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "big")
    temp = worktree / ".datarepo/tmp"
    command = [sys.executable, "-c", "from datarepo.cli import run; run()", "checkout", "-f", "HEAD"]
    killed = False
    for _ in range(10):
        for name in big:
            (worktree / name).unlink(missing_ok=True)
        proc = subprocess.Popen(command, cwd=worktree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            if temp.is_dir() and any(p.name.startswith(".tmp-") for p in temp.iterdir()):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.001)
        proc.wait()
        if killed:
            break
    assert killed, "the checkout never got killed while it wrote a file"
    in_work_tree = [p for p in worktree.rglob(".tmp-*") if ".datarepo" not in p.relative_to(worktree).parts]
    assert in_work_tree == []
    assert [p.name[:5] for p in temp.iterdir()] == [".tmp-"]
    assert "garbage: tmp/.tmp-" in cli("fsck").output
    cli("checkout", "-f", "HEAD")  # the next checkout removes what the killed one left
    assert list(temp.iterdir()) == []
    assert {name: (worktree / name).read_bytes() for name in big} == big
    assert "work tree clean" in cli("status").output


def test_a_ref_cannot_be_a_folder_of_another_and_deleting_one_frees_its_name(repo_with_commit, cli) -> None:
    repo, _ = repo_with_commit
    cli("branch", "a/b")
    _one_line_error(cli("branch", "a", ok=False), "cannot create refs/heads/a: refs/heads/a/b exists")
    cli("branch", "-d", "a/b")
    cli("branch", "a")  # (its folder, and the folder of its log, went with a/b)
    _one_line_error(cli("branch", "a/b/c", ok=False), "cannot create refs/heads/a/b/c: refs/heads/a exists")
    cli("tag", "x")
    _one_line_error(cli("tag", "x/y", ok=False), "cannot create refs/tags/x/y: refs/tags/x exists")
    assert [line.split()[-2] for line in cli("branch").output.splitlines()] == ["a", "main"]
    assert sorted(p.name for p in (repo.dotdir / "refs/heads").iterdir()) == ["a", "main"]
    assert [(old, new) for old, new, _, _ in repo.refs.reflog("refs/heads/a")] == [(None, repo.head())]


def test_an_empty_revision_is_an_unknown_revision(repo_with_commit, cli) -> None:
    for args in (["diff", "HEAD", ""], ["diff", "", "HEAD"], ["checkout", ""], ["log", ""], ["ls", ""]):
        _one_line_error(cli(*args, ok=False), "unknown revision: ''")


@pytest.mark.parametrize("glob", ["[z-a]", "train/[9-0]*"])
def test_a_glob_no_pattern_can_hold_is_one_error_line(repo_with_commit, cli, glob: str) -> None:
    _one_line_error(cli("ls", "HEAD", "--glob", glob, ok=False), f"bad glob {glob!r}")
