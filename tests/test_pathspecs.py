"""How users name paths on the command line (git's pathspecs), through the CLI: one rule for
add, rm, status and diff, from the top folder, a subfolder, a folder reached through a
symbolic link and with -C; every way of spelling a path; and bad paths refused in one line,
with nothing committed lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Cli

FILES = {
    "a.txt": b"a",
    "b.txt": b"b",
    "a[1].txt": b"bracket",
    "a1.txt": b"one",
    "x.jpg": b"x-jpg",
    "x.cls": b"0",
    "y.jpg": b"y-jpg",
    "y.cls": b"1",
    "sub/c.txt": b"c",
    "sub/deep/d.txt": b"d",
    "sub/e.jpg": b"e",
}
KEYS = ["a", "a1", "a[1]", "b", "sub/c", "sub/deep/d", "sub/e", "x", "y"]


def _committed(worktree: Path, cli: Cli, files: dict[str, bytes], *init: str) -> Path:
    """``files`` written, then ``init`` (with the options given), ``add .`` and a commit."""
    for rel, data in files.items():
        (worktree / rel).parent.mkdir(parents=True, exist_ok=True)
        (worktree / rel).write_bytes(data)
    cli("init", *init)
    cli("add", ".")
    cli("commit", "-m", "first")
    return worktree


@pytest.fixture
def repo(worktree: Path, cli: Cli) -> Path:
    """A committed work tree (grouping wds: ``x.jpg`` and ``x.cls`` are the datum ``x``)."""
    return _committed(worktree, cli, FILES)


def _changed(root: Path) -> None:
    """Changes every file, so that each datum has a change to stage."""
    for rel in FILES:
        (root / rel).write_bytes(FILES[rel] + b" changed")


def _staged(cli: Cli) -> list[str]:
    out = cli("status").output
    if "Changes to be committed:" not in out:
        return []
    part = out.split("Changes to be committed:\n")[1].split("Changes not staged")[0]
    return sorted(line.split()[-1] for line in part.splitlines() if line.startswith("  "))


def _head(cli: Cli) -> list[str]:
    return [e["key"] for e in json.loads(cli("ls", "--json").output)]


def _one_line_error(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for w in words:
        assert w in lines[0], result.output


# Globs ---------------------------------------------------------------------------------------


def test_a_glob_adds_the_files_it_matches_from_the_current_folder(repo: Path, cli: Cli) -> None:
    _changed(repo)
    cli("add", "*.txt")  # ``*`` stays within a name, as in ls --glob: the top folder's .txt files
    assert _staged(cli) == ["a", "a1", "a[1]", "b"]
    Cli(repo / "sub")("add", "*.txt")  # from a subfolder: relative to it
    assert _staged(cli) == ["a", "a1", "a[1]", "b", "sub/c"]
    cli("add", "**/*.jpg")  # ``**`` across folders, the top one included
    assert _staged(cli) == ["a", "a1", "a[1]", "b", "sub/c", "sub/e", "x", "y"]
    Cli(repo / "sub")("add", "../s?b/**")
    assert _staged(cli) == sorted(KEYS)


def test_a_glob_matches_a_folder_and_what_it_holds(repo: Path, cli: Cli) -> None:
    _changed(repo)
    cli("add", "s*")
    assert _staged(cli) == ["sub/c", "sub/deep/d", "sub/e"]


def test_rm_of_a_glob_takes_datums_whose_files_are_deleted(repo: Path, cli: Cli) -> None:
    """The glob is matched against the tracked datums' paths too (``x.jpg`` of the datum x),
    not only the files still in the work tree."""
    for rel in ("x.jpg", "x.cls", "y.jpg", "y.cls", "sub/e.jpg"):
        (repo / rel).unlink()
    assert sorted(cli("rm", "**/*.jpg").output.split()) == sorted(["rm", "rm", "rm", "x", "y", "sub/e"])
    cli("commit", "-m", "no images")
    assert _head(cli) == ["a", "a1", "a[1]", "b", "sub/c", "sub/deep/d"]


def test_add_of_a_glob_stages_deleted_members(repo: Path, cli: Cli) -> None:
    (repo / "x.jpg").unlink()
    cli("add", "*.jpg")
    assert _staged(cli) == ["x"]
    assert "modified: x" in cli("status").output


@pytest.mark.parametrize("command", [("add",), ("rm", "--cached"), ("status",), ("diff", "--"), ("ls", "--")])
def test_a_glob_that_matches_nothing_is_refused(repo: Path, cli: Cli, command: tuple[str, ...]) -> None:
    _one_line_error(cli(*command, "*.png", ok=False), "matches '*.png'")
    _one_line_error(cli(*command, "a.txt", "**/zz*", ok=False), "matches '**/zz*'")
    assert _staged(cli) == [] and _head(cli) == sorted(KEYS)


def test_an_existing_file_with_glob_characters_is_itself(repo: Path, cli: Cli) -> None:
    _changed(repo)
    cli("add", "a[1].txt")  # the file of that name, not a1.txt, which the glob would match
    assert _staged(cli) == ["a[1]"]
    assert cli("rm", "--cached", "a[1].txt").output == "rm a[1]\n"


def test_a_glob_also_names_the_key_it_spells(repo: Path, cli: Cli) -> None:
    """``a[1]`` is no file (the file is a[1].txt), so it is a glob; as in git, it also
    matches the key spelled so, not only a1."""
    out = cli("rm", "--cached", "a[1]").output
    assert sorted(out.split()) == ["a1", "a[1]", "rm", "rm"]


# Every argument must match --------------------------------------------------------------------


def test_rm_refuses_an_argument_that_matches_nothing_beside_one_that_does(repo: Path, cli: Cli) -> None:
    _one_line_error(cli("rm", "a.txt", "nothere.txt", ok=False), "no tracked datum matches 'nothere.txt'")
    assert (repo / "a.txt").read_bytes() == b"a" and _staged(cli) == []


def test_rm_of_an_untracked_file_is_refused(repo: Path, cli: Cli) -> None:
    (repo / "new.txt").write_bytes(b"new")
    _one_line_error(cli("rm", "new.txt", ok=False), "no tracked datum matches 'new.txt'")
    assert (repo / "new.txt").exists()


@pytest.mark.parametrize("name", ["a.txt ", "a.txt\n", " a.txt", "a.png", "a.txt.x"])
def test_a_path_that_is_not_there_names_only_what_is_tracked(repo: Path, cli: Cli, name: str) -> None:
    """A name near a tracked member's path (a trailing space or newline, another extension)
    is no path of the datum ``a``: refused, where it staged ``a`` (and rm removed it)."""
    _changed(repo)
    _one_line_error(cli("add", name, ok=False), "no file or tracked datum matches")
    _one_line_error(cli("rm", "-f", name, ok=False), "no tracked datum matches")
    assert _staged(cli) == [] and (repo / "a.txt").exists()


def test_a_key_is_named_by_itself_or_a_member_path(repo: Path, cli: Cli) -> None:
    _changed(repo)
    (repo / "z.jpg").write_bytes(b"z")
    (repo / "z.cls").write_bytes(b"2")
    cli("add", "x", "z")  # the keys (no such files), tracked or not
    (repo / "y.jpg").unlink()
    cli("add", "y.jpg")  # a member whose file is gone
    assert _staged(cli) == ["x", "y", "z"]
    assert cli("rm", "--cached", "z").output == "rm z\n"  # (staged, so tracked: unstaged)
    assert _staged(cli) == ["x", "y"] and (repo / "z.jpg").exists()


def test_a_dot_in_a_folder_name_names_no_key(worktree: Path, cli: Cli) -> None:
    """``a.b/c.txt`` is the datum a.b/c; it named the datum ``a`` (of a.txt) too."""
    _committed(worktree, cli, {"a.b/c.txt": b"c", "a.txt": b"a"})
    (worktree / "a.txt").write_bytes(b"changed")
    (worktree / "a.b/c.txt").write_bytes(b"changed")
    cli("add", "a.b/c.txt")
    assert _staged(cli) == ["a.b/c"]
    (worktree / "a.b/c.txt").unlink()
    cli("rm", "--cached", "a.b/c.txt")
    assert _staged(cli) == ["a.b/c"]


def test_file_grouping_names_the_file_only(worktree: Path, cli: Cli) -> None:
    """With grouping file, ``a.txt`` is its own key: it named the datum ``a`` (the file a) too."""
    _committed(worktree, cli, {"a": b"a", "a.txt": b"a.txt"}, "--grouping", "file")
    (worktree / "a").write_bytes(b"changed")
    (worktree / "a.txt").write_bytes(b"changed")
    cli("add", "a.txt")
    assert _staged(cli) == ["a.txt"]
    cli("add", "*.txt", "a")
    assert _staged(cli) == ["a", "a.txt"]


# Folders -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["sub", "sub/", "./sub/", "sub/deep/..", "sub//"])
def test_a_deleted_folder_stages_the_deletion_of_what_it_held(repo: Path, cli: Cli, spelling: str) -> None:
    """(``sub/deep/..`` is written out as git does, by its text: ``sub``, though deep is gone.)"""
    for rel in ("sub/c.txt", "sub/deep/d.txt", "sub/e.jpg"):
        (repo / rel).unlink()
    (repo / "sub/deep").rmdir()
    (repo / "sub").rmdir()
    cli("add", spelling)
    assert _staged(cli) == ["sub/c", "sub/deep/d", "sub/e"]
    cli("commit", "-m", "no sub")
    assert cli("rm", spelling, ok=False).exit_code == 1


def test_rm_of_a_deleted_folder_with_a_slash(repo: Path, cli: Cli) -> None:
    (repo / "sub/deep/d.txt").unlink()
    (repo / "sub/deep").rmdir()
    assert cli("rm", "sub/deep/").output == "rm sub/deep/d\n"
    _one_line_error(cli("rm", "a.txt/", ok=False), "no tracked datum matches 'a.txt/'")  # a file is no folder
    _one_line_error(cli("rm", "a.txt/.", ok=False), "no tracked datum matches 'a.txt/.'")
    _one_line_error(cli("add", "a.txt/.", ok=False), "no file or tracked datum matches 'a.txt/.'")
    assert (repo / "a.txt").exists() and _staged(cli) == ["sub/deep/d"]


def test_checkout_of_a_path_says_it_takes_a_revision(repo: Path, cli: Cli) -> None:
    _changed(repo)
    _one_line_error(cli("checkout", "a.txt", ok=False), "'a.txt' is a path, not a revision")
    assert (repo / "a.txt").read_bytes() == b"a changed"


# Spellings of one path -----------------------------------------------------------------------

TOP = ["sub/c.txt", "./sub/c.txt", "sub/./c.txt", "sub/deep/../c.txt", ".//sub//c.txt", "{root}/sub/c.txt", "{link}/sub/c.txt"]
SUB = ["c.txt", "./c.txt", "../sub/c.txt", "deep/../c.txt", "{root}/sub/c.txt", "{link}/sub/c.txt"]


@pytest.mark.parametrize(("where", "spelling"), [("", s) for s in TOP] + [("sub", s) for s in SUB])
def test_every_spelling_of_a_path_names_it(repo: Path, cli: Cli, where: str, spelling: str) -> None:
    (repo.parent / "link").symlink_to(repo)
    path = spelling.format(root=repo, link=repo.parent / "link")
    at = Cli(repo / where)
    _changed(repo)
    at("add", path)
    assert _staged(cli) == ["sub/c"]
    assert at("status", path).output.count("sub/c") == 1
    assert at("diff", path).output == "M\tsub/c\n"
    assert at("ls", path).output == at("ls", "HEAD", "--", path).output == "sub/c\n"
    assert at("rm", "--cached", path).output == "rm sub/c\n"


@pytest.mark.parametrize("via", ["top", "sub"])
def test_a_current_folder_reached_through_a_symlink(repo: Path, cli: Cli, via: str) -> None:
    """``cd /tmp/link-to-repo/sub && datarepo add x``: the folder is where the link leads."""
    link = repo.parent / "link"
    link.symlink_to(repo if via == "top" else repo / "sub")
    at = Cli(link / "sub" if via == "top" else link)
    _changed(repo)
    at("add", "c.txt", "../a.txt", "deep")
    assert _staged(cli) == ["a", "sub/c", "sub/deep/d"]
    at("add", "*.jpg")
    assert _staged(cli) == ["a", "sub/c", "sub/deep/d", "sub/e"]
    at("add", "..")
    assert _staged(cli) == sorted(KEYS)


def test_dash_c_with_each_spelling(repo: Path, cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(repo)
    outside = Cli(tmp_path)
    _changed(repo)
    outside("-C", "work", "add", "./a.txt", "sub/deep/../c.txt")
    outside("-C", "link/sub", "add", "*.jpg", "../b.txt")
    outside("-C", "work", "-C", "sub", "add", f"{repo}/x.jpg", "deep/")
    assert _staged(cli) == ["a", "b", "sub/c", "sub/deep/d", "sub/e", "x"]
    outside("-C", "link", "add", f"{tmp_path}/link/y.*")  # an absolute glob through the link
    assert _staged(cli) == ["a", "b", "sub/c", "sub/deep/d", "sub/e", "x", "y"]
    _one_line_error(outside("-C", "work/sub", "add", "../../elsewhere", ok=False), "outside the work tree")


def test_duplicate_and_overlapping_arguments(repo: Path, cli: Cli) -> None:
    _changed(repo)
    assert "staged 0 added, 1 modified" in cli("add", "a.txt", "a.txt", "./a.txt").output
    assert "staged 0 added, 3 modified" in cli("add", "sub", "sub/c.txt", "sub/*.txt").output
    cli("commit", "-m", "second")
    assert cli("rm", "-f", "sub", "sub/c.txt", "sub/**").output.splitlines() == ["rm sub/c", "rm sub/deep/d", "rm sub/e"]


# Bad paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("add",), ("rm", "-f"), ("status",), ("diff", "--"), ("ls", "HEAD", "--")])
def test_bad_paths_are_refused_in_one_line(repo: Path, cli: Cli, command: tuple[str, ...]) -> None:
    sub = Cli(repo / "sub")
    cases = [
        (cli, "", "an empty path names nothing"),
        (cli, "/", "outside the work tree"),
        (cli, "..", "outside the work tree"),
        (cli, str(repo.parent / "other" / "x.txt"), "outside the work tree"),
        (sub, "../..", "outside the work tree"),
        (sub, "../../work2/a.txt", "outside the work tree"),
        (cli, ".datarepo", "repository's own folder"),
        (cli, ".datarepo/HEAD", "repository's own folder"),
        (sub, "../.datarepo/objects", "repository's own folder"),
        (Cli(repo / ".datarepo"), ".", "repository's own folder"),
        (cli, "nothere/", "matches 'nothere/'"),
    ]
    for at, arg, words in cases:
        _one_line_error(at(*command, arg, ok=False), words)
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file() and ".datarepo" not in p.parts) == sorted(FILES)
    assert _staged(cli) == [] and _head(cli) == sorted(KEYS)


def test_dashes_part_revisions_from_paths(repo: Path, cli: Cli) -> None:
    _changed(repo)
    cli("branch", "b.txt")  # a branch named as a file: ambiguous, unless -- says which it is
    for command in (("diff", "b.txt"), ("ls", "b.txt"), ("diff", "HEAD", "b.txt")):
        _one_line_error(cli(*command, ok=False), "'b.txt' is both a revision and a path", "--")
    assert cli("diff", "b.txt", "--stat", "--").output == "0 added, 9 modified, 0 deleted\n"  # the branch
    assert cli("diff", "--", "b.txt").output == "M\tb\n"
    assert cli("diff", "HEAD", "--", "b.txt").output == "M\tb\n"
    assert len(cli("ls", "b.txt", "--").output.split()) == len(KEYS)  # the branch's keys
    assert cli("ls", "--", "b.txt").output == "b\n"
    _one_line_error(cli("ls", "HEAD", "HEAD~0", ok=False), "ls takes one revision")
    cli("add", ".")
    cli("commit", "-m", "second")
    assert cli("diff", "HEAD~1", "HEAD", "--", "sub/*.txt").output == "M\tsub/c\n"
    assert cli("diff", "HEAD~1..HEAD", "a.txt").output == "M\ta\n"
    (repo / "a.txt").unlink()
    _one_line_error(cli("diff", "a.txt", ok=False), "unknown revision: 'a.txt', nor a path in the work tree")  # git: use --
    assert cli("diff", "--", "a.txt").output == "D\ta\n"
    _one_line_error(cli("diff", "HEAD", "HEAD~1", "HEAD", ok=False), "at most two revisions")
    (repo / "-x.txt").write_bytes(b"dash")
    assert "staged 1 added" in cli("add", "--", "-x.txt").output
    assert cli("status", "--", "-x.txt").output.count("-x") == 1


def test_status_and_diff_of_paths_show_only_those(repo: Path, cli: Cli) -> None:
    _changed(repo)
    (repo / "sub/new.txt").write_bytes(b"new")
    sub = Cli(repo / "sub")
    assert json.loads(sub("status", "--json", ".").output) == {"added": ["sub/new"], "modified": ["sub/c", "sub/deep/d", "sub/e"], "deleted": []}
    assert json.loads(sub("diff", "--json", "*.txt").output) == {"added": ["sub/new"], "modified": ["sub/c"], "deleted": []}
    assert sub("diff", "HEAD", "deep").output == "M\tsub/deep/d\n"
    assert "nothing to commit" not in sub("status", "..").output
    assert sub("status", "../a.txt").output.endswith("modified: a\n")
    (repo / "b.txt").write_bytes(FILES["b.txt"])
    assert sub("status", "--", "../b.txt").output.splitlines()[-1] == "nothing to commit, no change under the paths given"


def test_ls_of_paths_lists_the_keys_of_the_revision_they_select(repo: Path, cli: Cli) -> None:
    """Matched against the revision's keys and members' paths, not the work tree's files."""
    for rel in ("x.jpg", "x.cls", "sub/e.jpg"):
        (repo / rel).unlink()
    cli("add", ".")
    cli("commit", "-m", "no x")
    sub = Cli(repo / "sub")
    assert sub("ls").output.split() == sorted(k for k in KEYS if k not in ("x", "sub/e"))  # (every key, as git ls-tree -r)
    assert sub("ls", "HEAD~1", "*.jpg").output == "sub/e\n"
    assert sub("ls", "HEAD~1", "../*.jpg").output == "x\ny\n"
    assert sub("ls", "-l", "--", ".").output.count("\n") == 2
    _one_line_error(sub("ls", "HEAD", "--", "e.jpg", ok=False), "matches 'e.jpg'")


def test_add_of_an_ignored_path_or_glob_is_refused(repo: Path, cli: Cli) -> None:
    (repo / ".datarepoignore").write_text("*.tmp\n")
    (repo / "scratch.tmp").write_bytes(b"x")
    _one_line_error(cli("add", "scratch.tmp", ok=False), "ignored")
    _one_line_error(cli("add", "*.tmp", ok=False), "matches '*.tmp'")


def test_glob_characters_reach_no_file_outside(repo: Path, cli: Cli) -> None:
    """A glob is matched only against the work tree's paths: ``../*`` from the top is outside."""
    _one_line_error(cli("add", "../*", ok=False), "outside the work tree")
    _one_line_error(cli("add", "/*", ok=False), "outside the work tree")


def test_the_api_takes_the_same_paths(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datarepo.porcelain.stage import add
    from datarepo.repo import Repo

    _changed(repo)
    monkeypatch.chdir(repo / "sub")
    with Repo.open(repo) as r:
        assert add(r, ["*.txt"]).changes.modified == ["sub/c"]


def test_paths_in_a_repository_without_a_work_tree(tmp_path: Path) -> None:
    Cli(tmp_path)("init", "--bare", "bare")
    bare = Cli(tmp_path / "bare")
    _one_line_error(bare("add", "x", ok=False), "needs a work tree")
    _one_line_error(bare("diff", "--", "x", ok=False), "needs a work tree")


def test_a_symlink_in_the_work_tree_is_no_way_out(repo: Path, cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(b"s")
    os.symlink(tmp_path / "outside", repo / "out")
    _one_line_error(cli("add", "out/secret.txt", ok=False), "symbolic link")
    _one_line_error(cli("rm", "out/secret.txt", ok=False), "no tracked datum matches")
    assert (tmp_path / "outside" / "secret.txt").read_bytes() == b"s"


def test_add_of_a_path_lists_only_the_folders_it_selects_in(repo: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """``add PATH`` reads what PATH can select, as ``git add PATH`` does, not the whole work
    tree: a file or key needs only its own folder (a datum's files share it), a folder the
    folders within it. Its cost grows with PATH, not with the tree."""
    _changed(repo)
    listed: list[str] = []
    real = os.scandir

    def scandir(path: str = ".") -> object:
        listed.append(os.path.relpath(path, repo))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    cli("add", "sub/c.txt")
    assert listed == ["sub"] and _staged(cli) == ["sub/c"]
    listed.clear()
    cli("add", "sub/deep", "x")  # a folder, and a key named by its name (x.jpg and x.cls)
    assert sorted(listed) == [".", "sub/deep"]
    assert _staged(cli) == ["sub/c", "sub/deep/d", "x"]


def test_add_of_a_path_keeps_the_ignore_rules_of_the_folders_above(repo: Path, cli: Cli) -> None:
    (repo / ".datarepoignore").write_text("*.tmp\nsub/deep/skip/\n")
    (repo / "sub" / "deep" / ".datarepoignore").write_text("local.*\n")
    for rel in ("sub/deep/n.tmp", "sub/deep/local.txt", "sub/deep/skip/s.txt", "sub/deep/kept.txt"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(rel)
    cli("add", "sub/deep")
    assert _staged(cli) == ["sub/deep/kept"]
    _one_line_error(cli("add", "sub/deep/skip/s.txt", ok=False), "ignored")


def test_add_of_a_path_stages_the_deletions_under_it(repo: Path, cli: Cli) -> None:
    """The keys a path selects that have no files left are tracked keys, found without a
    look at the whole tree: a deleted member, a deleted datum, a folder's deleted datums."""
    for rel in ("x.cls", "sub/deep/d.txt", "sub/e.jpg"):
        (repo / rel).unlink()
    cli("add", "x.jpg")
    cli("add", "sub")
    status = json.loads(cli("status", "--json").output)
    assert status == {"added": [], "modified": ["x"], "deleted": ["sub/deep/d", "sub/e"]}
    assert _staged(cli) == ["sub/deep/d", "sub/e", "x"]
    cli("commit", "-m", "deletions")
    assert _head(cli) == ["a", "a1", "a[1]", "b", "sub/c", "x", "y"]


@pytest.mark.parametrize("seed", range(4))
def test_add_of_a_path_stages_what_status_shows_under_it_and_nothing_else(repo: Path, seed: int) -> None:
    """After random edits, ``add PATH`` leaves no change unstaged among the keys PATH selects,
    and every other key's status as it was."""
    import random

    from datarepo.errors import InvalidInputError
    from datarepo.porcelain import stage
    from datarepo.repo import Repo

    rng = random.Random(seed)
    with Repo.open(repo) as r:
        for step in range(12):
            files = sorted(p for p in repo.rglob("*") if p.is_file() and ".datarepo" not in p.parts)
            for p in rng.sample(files, min(3, len(files))):
                rng.choice([lambda p: p.write_bytes(rng.randbytes(5)), lambda p: p.unlink()])(p)
            new = repo / rng.choice(["", "sub/", "sub/deep/", "new/"]) / f"n{step}.{rng.choice(['jpg', 'cls'])}"
            new.parent.mkdir(exist_ok=True)
            new.write_bytes(b"new")
            before = stage.status(r)
            tracked = sorted(stage.tracked(r, with_head=True))
            path = rng.choice([*(str(p.relative_to(repo)) for p in files if p.exists()), "sub", "sub/deep", "new",
                               *(k for k in tracked if "[" not in k)])  # (``a[1]``, not there, is a glob)
            try:
                stage.add(r, [str(repo / path)])
            except InvalidInputError as e:  # (a path that names nothing left: refused, nothing staged)
                assert "matches" in str(e), e
                continue
            after = stage.status(r)
            mine = {k for k in [*before.total.added, *before.total.modified, *before.total.deleted, *tracked]
                    if k == path or k.startswith(path + "/") or k == path.split(".")[0]}
            for part in ("added", "modified", "deleted"):
                assert not set(getattr(after.unstaged, part)) & mine, (step, path)
                assert set(getattr(after.total, part)) == set(getattr(before.total, part)), (step, path)
                assert set(getattr(after.unstaged, part)) - mine == set(getattr(before.unstaged, part)) - mine, (step, path)
