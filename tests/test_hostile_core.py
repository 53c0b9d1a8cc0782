"""The core commands as a careless or hostile user meets them: damaged HEAD and refs, refs
to what is not a commit, and the other cases below. Each gives one error line and a
non-zero exit, and loses nothing committed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import paths_under
from hypothesis import given, settings
from hypothesis import strategies as st

from datarepo.repo import Repo
from datarepo.tree import KeyGlob, glob_regex


def _one_line_error(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(w in lines[0] for w in words), result.output


def _objects(repo: Repo) -> list[str]:
    return sorted(repo.store.iter_objects())


def test_a_missing_head_is_damage_never_an_empty_repository(repo_with_commit, worktree: Path, cli, tmp_path: Path) -> None:
    repo, files = repo_with_commit
    head, objects = repo.head(), _objects(repo)
    (repo.dotdir / "HEAD").unlink()
    (worktree / "new.txt").write_text("x")
    for args in (["status"], ["log"], ["ls"], ["show", "HEAD"], ["diff", "HEAD"], ["add", "."], ["commit", "-m", "x"],
                 ["branch", "b"], ["tag", "t"], ["checkout", "main"], ["export", "HEAD", str(tmp_path / "out")],
                 ["ingest", "-", "--prefix", "p/"], ["gc"]):
        _one_line_error(cli(*args, ok=False, input='{"__key__": "k", "txt": "a"}\n'), "HEAD", "missing")
    assert not (tmp_path / "out").exists() and not (repo.dotdir / "HEAD").exists()
    assert _objects(repo) == objects and repo.refs.read("refs/heads/main") == head  # nothing committed, nothing deleted
    fsck = cli("fsck", ok=False)  # names the damage, and still checks the rest
    assert fsck.exit_code == 1 and "HEAD: the file is missing" in fsck.output
    assert f"{len(files) // 2} reachable datums; 1 problems" in fsck.output
    (repo.dotdir / "HEAD").write_text("ref: refs/heads/main\n")  # mended as the message says
    assert cli("log", "--oneline").output.count("\n") == 1
    cli("fsck")


def test_a_new_repository_has_its_head_before_it_is_one(tmp_path: Path, cli) -> None:
    cli("init")
    assert (cli.cwd / ".datarepo/HEAD").read_text() == "ref: refs/heads/main\n"
    cli("status")
    cli("fsck")


@pytest.mark.parametrize("command", [["branch", "x"], ["tag", "x"], ["checkout", "-b", "x"], ["branch", "-f", "main"]])
def test_a_ref_is_created_only_at_a_commit_that_is_there(repo_with_commit, cli, command: list[str]) -> None:
    repo, _ = repo_with_commit
    head = repo.head()
    tree = repo.read_commit(head).tree
    # a whole oid of another kind of object is no revision
    _one_line_error(cli(*command, tree, ok=False), "unknown revision")
    _one_line_error(cli("show", tree, ok=False), "unknown revision")
    assert repo.refs.read("refs/heads/main") == head and repo.refs.read("refs/heads/x") is None
    # a branch that names a lost commit passes the loss on to no new ref
    lost = "0123456789abcdef0123456789abcdef"
    (repo.dotdir / "refs/heads/lost").write_text(f"{lost}\n")
    _one_line_error(cli(*command, "lost", ok=False), "object not found", lost)
    assert repo.refs.read("refs/heads/main") == head and repo.refs.read("refs/heads/x") is None
    assert repo.refs.read("refs/tags/x") is None
    # the way to mend the lost branch: move it to a commit that is there
    cli("branch", "-f", "lost", head)
    assert repo.refs.read("refs/heads/lost") == head


@pytest.mark.parametrize(("args", "words"), [
    (["show", "HEAD^^^^"], ["no such parent: 'HEAD^^^^'"]),
    (["show", "HEAD~5~1"], ["no such ancestor: 'HEAD~5~1'"]),
    (["log", "nope..HEAD"], ["unknown revision: 'nope'"]),  # (git's A..B: each end named as given)
    (["log", "HEAD...HEAD~1"], ["'HEAD...HEAD~1'", "A...B", "not supported"]),
    (["ls", "nope~1"], ["unknown revision: 'nope~1'"]),
    (["diff", "HEAD...HEAD~1"], ["'HEAD...HEAD~1'", "A...B", "not supported"]),
    (["diff", "nope..HEAD"], ["unknown revision: 'nope'"]),
])
def test_a_bad_revision_is_named_whole(repo_with_commit, cli, args: list[str], words: list[str]) -> None:
    _one_line_error(cli(*args, ok=False), *words)


def test_an_export_destination_that_cannot_be_made_is_named_as_given(repo_with_commit, cli, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for dest in (tmp_path / "afile" / "out", tmp_path / "afile" / "a" / "b"):
        _one_line_error(cli("export", "HEAD", str(dest), ok=False), f"cannot create the export destination {dest}",
                        "a file is in the way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "work"]  # no temporary folder left
    cli("export", "HEAD", str(tmp_path / "new" / "a" / "b"))
    assert (tmp_path / "new" / "a" / "b" / "train").is_dir()


def test_deleting_a_branch_no_other_ref_reaches_needs_force(repo_with_commit, worktree: Path, cli) -> None:
    repo, _ = repo_with_commit
    first = repo.head()
    cli("checkout", "-b", "exp")
    (worktree / "train/cat/0000.cls").write_text("9")
    cli("add", ".")
    cli("commit", "-m", "on exp")
    work = repo.head()
    cli("checkout", "main")
    _one_line_error(cli("branch", "-d", "exp", ok=False), "'exp' is not merged", work[:12], "-f")
    assert repo.refs.read("refs/heads/exp") == work
    cli("tag", "v1", "exp")  # reached by a tag: deleted as git deletes a merged branch
    cli("branch", "-d", "exp")
    cli("branch", "exp2", "main")  # main reaches it
    cli("branch", "-d", "exp2")
    cli("tag", "-d", "v1")  # tags are deleted as git deletes them
    cli("branch", "lone", work)
    cli("branch", "-d", "-f", "lone")
    assert repo.refs.read("refs/heads/lone") is None and repo.refs.read("refs/heads/main") == first


def test_a_json_line_longer_than_the_limit_is_one_line_and_commits_nothing(repo_with_commit, cli, tmp_path: Path,
                                                                         monkeypatch) -> None:
    from datarepo import sources

    repo, _ = repo_with_commit
    head = repo.head()
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 1000)
    fits = '{"__key__": "a", "txt": "' + "x" * 900 + '"}\n'
    endless = b"\0" * 5000  # (as < /dev/zero: no newline ever)
    (tmp_path / "long.jsonl").write_bytes(fits.encode() + endless)
    for args, source in ((["ingest", str(tmp_path / "long.jsonl")], str(tmp_path / "long.jsonl")),
                         (["ingest", "-"], "<stdin>"), (["ingest", "-", "--commit-every", "5"], "<stdin>")):
        _one_line_error(cli(*args, "--prefix", "p/", ok=False, input=fits.encode() + endless),
                        f"{source}:2: a line longer than 0 MiB")
    assert repo.head() == head
    cli("ingest", "-", "--prefix", "p/", input=fits + fits.replace('"a"', '"b"'))  # lines within the limit are read
    assert cli("ls", "--prefix", "p/").output == "p/a\np/b\n"


def _header(name: bytes, size: bytes, kind: bytes) -> bytes:
    """A ustar header block with a size field as given (octal text, or GNU base-256)."""
    block = bytearray(512)
    block[: len(name)] = name
    block[100:108], block[108:116], block[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    block[124:136], block[136:148], block[156:157] = size, b"00000000000\0", kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


@pytest.mark.parametrize("kind", [b"x", b"L"])
@pytest.mark.parametrize("claimed", [1 << 60, 3 << 30])
def test_a_tar_claiming_a_huge_extended_header_is_refused_before_it_is_read(repo_with_commit, cli, tmp_path: Path,
                                                                           kind: bytes, claimed: int) -> None:
    repo, _ = repo_with_commit
    head = repo.head()
    tar = tmp_path / "hostile.tar"
    tar.write_bytes(_header(b"././@PaxHeader", b"\x80" + claimed.to_bytes(11, "big"), kind) + bytes(2048))
    _one_line_error(cli("ingest", str(tar), "--prefix", "p/", ok=False), str(tar), f"an extended header of {claimed} bytes")
    assert repo.head() == head


@pytest.mark.parametrize("shards", [[], ["--shards"]])
def test_an_export_prefix_no_key_starts_with_is_an_error_not_an_empty_data_set(repo_with_commit, cli, tmp_path: Path,
                                                                               shards: list[str]) -> None:
    _one_line_error(cli("export", "HEAD", str(tmp_path / "out"), "--prefix", "trian/", *shards, ok=False),
                    "no key of HEAD starts with 'trian/'")
    assert not (tmp_path / "out").exists()
    cli("export", "HEAD", str(tmp_path / "out"), "--prefix", "train/cat/", *shards)
    assert any((tmp_path / "out").iterdir())


def test_a_brace_pattern_naming_a_missing_shard_fails_and_deletes_no_key(repo_with_commit, cli, tmp_path: Path) -> None:
    repo, _ = repo_with_commit
    cli("export", "HEAD", str(tmp_path / "set"), "--shards", "--shard-size", "8K")
    shards = sorted((tmp_path / "set").iterdir())
    assert len(shards) >= 3
    pattern = str(tmp_path / "set" / f"{{000000..{len(shards) - 1:06d}}}.tar")
    cli("ingest", pattern, "--prefix", "copy/")
    keys = cli("ls", "--prefix", "copy/").output
    shards[1].unlink()  # one shard of the set lost (a download cut short)
    _one_line_error(cli("ingest", pattern, "--prefix", "copy/", ok=False), f"no such file: {shards[1]}", pattern)
    assert cli("ls", "--prefix", "copy/").output == keys


def test_files_under_a_sparse_prefix_are_said_to_be_left_out_and_never_silently_unstaged(
    repo_with_commit, cli, worktree: Path
) -> None:
    cli("ingest", "-", "--prefix", "events/", input='{"__key__": "e1", "txt": "x"}\n')  # sparse: no events/ here
    (worktree / "events").mkdir()
    (worktree / "events" / "mine.txt").write_text("mine")
    (worktree / "events.txt").write_text("a file beside the prefix is a key like any other")
    st = cli("status")
    assert "note: skipped events/: a sparse prefix" in st.output and "added:    events\n" in st.output
    for path in ("events/mine.txt", "events", "events/nothing.txt"):
        _one_line_error(cli("add", path, ok=False), f"{path} is under the sparse prefix events/", "core.sparse")
    assert "note: skipped events/" in cli("add", ".").output
    cli("commit", "-m", "x")
    assert cli("ls", "--prefix", "events").output == "events\nevents/e1\n"


def test_add_of_a_path_the_scan_passes_over_is_refused_not_a_silent_nothing(repo_with_commit, cli, worktree: Path) -> None:
    repo, _ = repo_with_commit
    (worktree / ".datarepoignore").write_text("*.log\nscratch/\n")
    (worktree / "a.log").write_text("x")
    (worktree / "scratch").mkdir()
    (worktree / "scratch" / "b.txt").write_text("y")
    (worktree / "sub" / ".git").mkdir(parents=True)
    (worktree / "sub" / ".git" / "config").write_text("z")
    (worktree / "train" / "cat" / "0000.cls").rename(worktree / "train" / "cat" / "0000.log")  # now ignored
    (worktree / "linked").symlink_to(worktree / "train", target_is_directory=True)
    for path, why in (("a.log", "is ignored by a .datarepoignore pattern"),
                      ("scratch/b.txt", "is in scratch/, which is ignored"), ("scratch", "is ignored"),
                      (".datarepoignore", "is never added"), ("sub/.git/config", "is in sub/.git/, which is never added"),
                      ("train/cat/0000.log", "is ignored"),
                      ("linked/dog/0001.jpg", "is in linked/, which is a symbolic link")):
        _one_line_error(cli("add", path, ok=False), f"{path} {why}")
    assert not repo.index.staging.count()
    cli("add", ".")  # the whole tree: the ignored files are left out, as the ignore file says
    assert "train/cat/0000" in cli("status").output


def test_a_checkout_b_that_is_refused_leaves_no_branch(repo_with_commit, cli, worktree: Path) -> None:
    repo, _ = repo_with_commit
    (worktree / "train/cat/0000.cls").write_text("9")
    cli("add", ".")
    cli("commit", "-m", "second")
    (worktree / "train/cat/0000.cls").write_text("local, not committed")
    _one_line_error(cli("checkout", "-b", "old", "HEAD~1", ok=False), "uncommitted changes to train/cat/0000")
    _one_line_error(cli("checkout", "-b", "main", ok=False), "branch 'main' already exists")
    _one_line_error(cli("checkout", "-b", "x", "nope", ok=False), "unknown revision: 'nope'")
    assert [name for name in repo.refs.names("refs/heads/")] == ["refs/heads/main"]
    assert repo.current_branch() == "main"
    cli("checkout", "-b", "new")  # at HEAD: the uncommitted change is kept, as in git
    assert repo.current_branch() == "new" and repo.resolve("new") == repo.resolve("main")
    assert (worktree / "train/cat/0000.cls").read_text() == "local, not committed"


def test_add_restores_a_datum_fsck_found_in_no_shard_even_after_a_status(worktree: Path, cli, make_samples) -> None:
    """A shard cut short whose .idx is lost too: fsck finds its datums in no shard, and an
    add of the work tree (whatever status ran between) stores them again, as documented."""
    for path in make_samples(worktree, 20):
        os.utime(worktree / path, (time.time() - 3600,) * 2)  # files the stat cache trusts
    cli("init", "--shard-size", "16K")
    cli("add", ".")
    cli("commit", "-m", "first")
    repo = Repo.open(worktree)
    tar = sorted(repo.dotdir.glob("shards/*/*.tar"))[0]
    tar.chmod(0o644)
    tar.write_bytes(tar.read_bytes()[:1500])
    tar.with_suffix(".idx").unlink()
    for p in repo.dotdir.glob("index.sqlite*"):
        p.unlink()
    fsck = cli("fsck", "--rebuild-index", ok=False)
    assert fsck.exit_code == 1 and "is in no shard" in fsck.output
    assert "work tree clean" in cli("status").output
    assert "stored 0 new datums" not in cli("add", ".").output
    cli("fsck")
    cli("export", "HEAD", str(repo.dotdir.parent.parent / "out"))


def _program(cwd: Path, *args: str, close: int) -> subprocess.CompletedProcess[str]:
    """The real program in a process of its own, started with descriptor ``close`` closed."""
    env = {**os.environ, "DATAREPO_AUTHOR": "t", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, preexec_fn=lambda: os.close(close))


@pytest.mark.parametrize("args", [["log"], ["cat", "HEAD:train/cat/0000.cls"], ["ls", "--json"]])
def test_a_closed_standard_output_is_one_line_and_a_closed_standard_error_is_no_traceback(
    repo_with_commit, worktree: Path, args: list[str]
) -> None:
    closed_out = _program(worktree, *args, close=1)
    assert closed_out.returncode == 1 and closed_out.stderr.strip().splitlines() == [
        "Error: standard output is closed (redirect it to /dev/null to discard what is printed)"]
    closed_err = _program(worktree, *args, close=2)
    assert closed_err.returncode == 0 and closed_err.stdout
    assert _program(worktree, "show", "nope", close=2).returncode == 1


def test_no_repository_is_made_inside_a_repository_folder(repo_with_commit, cli, tmp_path: Path) -> None:
    repo, _ = repo_with_commit
    before = paths_under(repo.dotdir)
    for args in (["init", ".datarepo"], ["init", ".datarepo/objects/x"], ["init", "--bare", ".datarepo/b"]):
        _one_line_error(cli(*args, ok=False), "is inside the repository folder", "cannot be made there")
    cli("init", "--bare", str(tmp_path / "bare"))
    _one_line_error(cli("init", str(tmp_path / "bare" / "sub"), ok=False), "is inside the repository folder")
    assert paths_under(repo.dotdir) == before
    cli("init", "nested")  # a repository in a folder of the work tree is made, as git makes one


@settings(max_examples=300, deadline=None)
@given(pattern=st.lists(st.sampled_from(["a", "b", "*", "?", "/", "**", "[ab]", "[!a]", "\\*", "**/", "/**"]),
                        min_size=1, max_size=7).map("".join),
       keys=st.lists(st.lists(st.text("ab*", min_size=1, max_size=5), min_size=1, max_size=4).map("/".join),
                     min_size=1, max_size=10))
def test_a_glob_matches_as_its_regular_expression_does(pattern: str, keys: list[str]) -> None:
    try:
        regex = re.compile(glob_regex(pattern), re.DOTALL)
    except re.error:
        return
    glob = KeyGlob(pattern)
    for key in keys:
        assert bool(glob.fullmatch(key)) == (regex.fullmatch(key) is not None), (pattern, key)


def test_a_glob_of_many_stars_is_matched_without_backtracking_for_ever(worktree: Path, cli) -> None:
    cli("init")
    (worktree / ("a" * 120 + ".txt")).write_text("x")
    (worktree / "a" / "a" / "a").mkdir(parents=True)
    (worktree / "a" / "a" / "a" / "ab.txt").write_text("y")
    cli("add", ".")
    cli("commit", "-m", "x")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for glob, found in (("*a*a*a*a*a*a*a*a*a*a*a*a*b", ""), ("*a*a*a*a*a*a*a*a*a*", "a" * 120 + "\n"),
                        ("**a**a**a**a**a**a**a**a**b", ""), ("**/a/**/a/**/*b", "a/a/a/ab\n")):
        ls = subprocess.run([sys.executable, "-m", "datarepo.cli", "ls", "--glob", glob], cwd=worktree, env=env,
                            capture_output=True, text=True, timeout=120)  # (a regular expression ran for hours)
        assert ls.returncode == 0 and ls.stdout == found, (glob, ls.stderr)


@pytest.mark.parametrize("pattern", ["*a*a*a*a*a*a*a*a*a*a*b", "*[!a]*[!a]*[!a]*[!a]*[!a]*[!a]*c"])
def test_an_ignore_pattern_of_many_stars_is_matched_without_backtracking_for_ever(worktree: Path, cli, tmp_path: Path,
                                                                                   pattern: str) -> None:
    """A folder to ingest (or a work tree) may bring its own .datarepoignore."""
    cli("init")
    src = tmp_path / "src"
    src.mkdir()
    (src / ".datarepoignore").write_text(pattern + "\n")
    (src / ("a" * 200 + ".txt")).write_text("x")
    (src / ("b" * 200 + ".txt")).write_text("y")
    (worktree / ".datarepoignore").write_text(pattern + "\n")
    (worktree / ("a" * 200 + ".txt")).write_text("x")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "DATAREPO_AUTHOR": "t"}
    for args in (["ingest", str(src), "--prefix", "p/"], ["status"]):
        done = subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=worktree, env=env, capture_output=True,
                              text=True, timeout=120)  # (its regular expression backtracked for hours)
        assert done.returncode == 0, done.stderr
    assert len(cli("ls", "--prefix", "p/").output.splitlines()) == 2


def test_an_ignore_pattern_keeps_gits_meaning(worktree: Path, cli) -> None:
    cli("init")
    (worktree / ".datarepoignore").write_text("a*b*c\nx[!y]z\n")
    for name in ("a1b2c", "aXbYc.txt", "x/z", "xqz", "keep"):
        (worktree / name).parent.mkdir(parents=True, exist_ok=True)
        (worktree / name).write_text("x")
    _one_line_error(cli("add", "a1b2c", ok=False), "ignored")
    cli("add", ".")
    cli("commit", "-m", "x")
    assert cli("ls").output == "aXbYc\nkeep\nx/z\n"  # [!y] matches no '/', as in git


def test_an_ignore_pattern_of_more_than_two_runs_of_folders_is_one_line(worktree: Path, cli) -> None:
    cli("init")
    (worktree / ".datarepoignore").write_text("ok/**/x\n**/a/**/b/**/c\n")
    (worktree / "f").write_text("x")
    _one_line_error(cli("status", ok=False), ".datarepoignore line 2", "more than 2 runs of folders")


def test_the_checked_out_branch_is_not_moved_by_branch_f(repo_with_commit, worktree: Path, cli) -> None:
    """As git: moving the checked-out branch would leave the work tree and staging area made
    from a commit the branch no longer names."""
    repo, _ = repo_with_commit
    first = repo.head()
    (worktree / "new.txt").write_text("new")
    cli("add", "new.txt")
    cli("commit", "-m", "second")
    second = repo.head()
    _one_line_error(cli("branch", "-f", "main", first, ok=False), "'main'", "checked out")
    assert repo.head() == second and "work tree clean" in cli("status").output
    cli("checkout", "-b", "other")
    cli("branch", "-f", "main", first)  # not checked out any more
    assert repo.refs.read("refs/heads/main") == first and repo.head() == second
