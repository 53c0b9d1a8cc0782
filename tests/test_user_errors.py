"""What a user types wrong gets one clear line and changes nothing: names and text that
are not UTF-8, sizes and times out of range, sources and destinations inside the
repository's own folder, paths that name nothing, and files with changes `rm` would lose."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from datarepo.repo import Repo


def _one_error_line(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and all(w in lines[0] for w in words), result.output


def _usage_error(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and all(w in error[0] for w in words), result.output


def _state(repo: Repo) -> list[tuple[str, bytes]]:
    """Every file of the repository's folder but the caches, to show nothing changed."""
    return sorted(
        (str(p.relative_to(repo.dotdir)), p.read_bytes())
        for p in repo.dotdir.rglob("*")
        if p.is_file() and not p.name.startswith("index.sqlite")
    )


def test_text_that_is_not_utf8_is_refused_before_anything_is_written(repo_with_commit, cli, monkeypatch) -> None:
    repo, _ = repo_with_commit
    before = _state(repo)
    _one_error_line(cli("commit", "--allow-empty", "-m", "bad\udcff", ok=False), "commit message is not valid UTF-8")
    _one_error_line(cli("branch", "b\udcff", ok=False), "invalid branch name")
    _one_error_line(cli("tag", "t\udcff", ok=False), "invalid tag name")
    _one_error_line(cli("checkout", "b\udcff", ok=False), "unknown revision")
    for author in ("\udcff", "a\nb"):
        monkeypatch.setenv("DATAREPO_AUTHOR", author)
        _one_error_line(cli("commit", "--allow-empty", "-m", "x", ok=False), "DATAREPO_AUTHOR")
    assert _state(repo) == before


@pytest.mark.parametrize("value", ["99999999999999999999", "0", "-1", "٣"])
def test_a_worker_count_out_of_range_is_one_line(repo_with_commit, cli, monkeypatch, value: str) -> None:
    monkeypatch.setenv("DATAREPO_WORKERS", value)
    _one_error_line(cli("status", ok=False), "DATAREPO_WORKERS must be a whole number from 1 to 1024")


def test_a_repository_of_another_format_is_not_used(repo_with_commit, cli) -> None:
    repo, _ = repo_with_commit
    config = repo.dotdir / "config.toml"
    config.write_text(config.read_text().replace("format = 1", "format = 2"))
    before = _state(repo)
    for args in (["status"], ["commit", "--allow-empty", "-m", "x"], ["log"]):
        _one_error_line(cli(*args, ok=False), "repository format 2 is not supported")
    assert _state(repo) == before


@pytest.mark.parametrize("folder", ["../outside", "/tmp", "a/../../x"])
def test_the_pipelines_folder_stays_inside_the_work_tree(repo_with_commit, cli, folder: str) -> None:
    repo, _ = repo_with_commit
    config = repo.dotdir / "config.toml"
    config.write_text(config.read_text().replace('pipelines_dir = "pipelines"', f'pipelines_dir = "{folder}"'))
    _one_error_line(cli("pipelines", ok=False), "pipelines_dir must be a folder inside the work tree")


@pytest.mark.parametrize("size", ["0", "-5", "inf", "nan", "x"])
def test_a_size_that_is_not_a_positive_number_of_bytes_is_refused(repo_with_commit, cli, tmp_path: Path, size: str) -> None:
    _usage_error(cli("export", "HEAD", str(tmp_path / "out"), "--shards", "--shard-size", size, ok=False), "size")
    _usage_error(cli("init", "--shard-size", size, str(tmp_path / "new"), ok=False), "size")
    assert not (tmp_path / "out").exists() and not (tmp_path / "new").exists()


@pytest.mark.parametrize("seconds", ["nan", "inf", "-1", "0"])
def test_a_spout_interval_out_of_range_is_refused(repo_with_commit, cli, seconds: str) -> None:
    _usage_error(cli("ingest", "-", "--prefix", "s/", "--commit-seconds", seconds, input="", ok=False), "--commit-seconds")


@pytest.mark.parametrize("src", ["x-{000..999999999}.tar", "x-{0..1}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}.tar"])
def test_braces_that_name_too_many_files_are_refused_at_once(repo_with_commit, cli, src: str) -> None:
    _one_error_line(cli("ingest", src, "--prefix", "b/", ok=False), "its braces name more than 1,000,000 files")


def test_nothing_is_read_from_or_written_into_the_repository_folder(repo_with_commit, cli, worktree: Path) -> None:
    repo, _ = repo_with_commit
    before = _state(repo)
    for src in (".datarepo", ".datarepo/objects", ".datarepo/*"):
        _one_error_line(cli("ingest", src, "--prefix", "dr/", ok=False), "inside the repository's own folder")
    for dest in (".datarepo/refs/tags/x", ".datarepo/refs/heads/zz"):
        _one_error_line(cli("export", "HEAD", dest, ok=False), "inside the repository's own folder")
        _one_error_line(cli("export", "HEAD", dest, "--shards", ok=False), "inside the repository's own folder")
    (worktree / "link").symlink_to(repo.dotdir / "refs" / "tags", target_is_directory=True)  # an empty folder there
    _one_error_line(cli("export", "HEAD", "link", ok=False), "inside the repository's own folder")
    _one_error_line(cli("export-dvc", "-o", ".datarepo/HEAD", ok=False), "inside the repository's own folder")
    assert _state(repo) == before
    assert len(cli("log", "--oneline").output.splitlines()) == 1


def test_export_through_a_link_to_an_empty_folder_fills_that_folder(repo_with_commit, cli, tmp_path: Path) -> None:
    _, files = repo_with_commit
    (tmp_path / "victim").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "victim", target_is_directory=True)
    cli("export", "HEAD", str(tmp_path / "link"))
    assert (tmp_path / "link").is_symlink()
    assert {str(p.relative_to(tmp_path / "victim")) for p in (tmp_path / "victim").rglob("*") if p.is_file()} == set(files)


def test_diff_takes_gits_range_form(repo_with_commit, cli, worktree: Path) -> None:
    (worktree / "train/cat/0000.jpg").write_bytes(b"new")
    cli("add", ".")
    cli("commit", "-m", "second")
    two = cli("diff", "HEAD~1", "HEAD", "--json").output
    assert json.loads(two)["modified"] == ["train/cat/0000"]
    assert cli("diff", "HEAD~1..HEAD", "--json").output == two
    assert cli("diff", "HEAD~1..", "--json").output == two


def test_a_log_replaced_by_a_symbolic_link_is_not_written_through(repo_with_commit, cli, tmp_path: Path) -> None:
    repo, _ = repo_with_commit
    victim = tmp_path / "victim"
    victim.write_text("victim\n")
    log = repo.dotdir / "logs" / "refs" / "heads" / "main"
    log.unlink()
    log.symlink_to(victim)
    cli("commit", "--allow-empty", "-m", "z")
    assert victim.read_text() == "victim\n"
    assert not log.is_symlink() and log.read_text().endswith("commit: z\n")


def test_an_empty_path_names_nothing(repo_with_commit, cli, worktree: Path) -> None:
    _, files = repo_with_commit
    for args in (["rm", ""], ["rm", "--cached", ""], ["add", ""]):
        _one_error_line(cli(*args, ok=False), "an empty path names nothing")
    assert {str(p.relative_to(worktree)) for p in worktree.glob("train/**/*") if p.is_file()} == set(files)


def test_rm_keeps_files_whose_changes_are_not_committed_unless_forced(repo_with_commit, cli, worktree: Path) -> None:
    (worktree / "train/cat/0000.jpg").write_bytes(b"precious, not committed")
    (worktree / "train/cat/0002.jpg").write_bytes(b"staged, not committed")
    cli("add", "train/cat/0002.jpg")
    for key in ("train/cat/0000", "train/cat/0002.jpg"):
        _one_error_line(cli("rm", key, ok=False), "changes that are not committed", "rm -f")
    assert (worktree / "train/cat/0000.jpg").read_bytes() == b"precious, not committed"
    assert (worktree / "train/cat/0002.jpg").read_bytes() == b"staged, not committed"
    assert cli("rm", "train/cat/0004").output == "rm train/cat/0004\n"  # committed as it is: deleted
    assert not (worktree / "train/cat/0004.jpg").exists()
    cli("rm", "--cached", "train/cat/0000")
    assert (worktree / "train/cat/0000.jpg").exists()
    cli("rm", "-f", "train/cat/0002")
    assert not (worktree / "train/cat/0002.jpg").exists()
    assert os.path.exists(worktree / "train/cat/0006.jpg")
    (worktree / "train/cat/0006.jpg").unlink()  # deleted by hand first, then staged as git rm does
    (worktree / "train/cat/0006.cls").unlink()
    assert cli("rm", "train/cat/0006").output == "rm train/cat/0006\n"


@pytest.mark.parametrize("line", ['{"__key__": "a", "x": NaN}', '{"__key__": "a", "x": 1e999}', '{"__key__": "a", "x": [-Infinity]}'])
def test_json_lines_take_only_json(repo_with_commit, cli, line: str) -> None:
    repo, _ = repo_with_commit
    head = repo.head()
    _one_error_line(cli("ingest", "-", "--prefix", "n/", input=line + "\n", ok=False), "<stdin>:1: bad JSON-lines datum")
    assert repo.head() == head


@pytest.mark.parametrize(
    "key, members",
    [("../../x", {"txt": b"1"}), (".datarepo/HEAD", {"txt": b"1"}), ("a", {"a/b": b"1"}), ("a/" * 300 + "x", {"txt": b"1"}),
     ("x" * 256, {"txt": b"1"})],
)
def test_the_write_api_takes_only_keys_the_key_rule_takes(repo_with_commit, key: str, members: dict[str, bytes]) -> None:
    from datarepo.errors import InvalidInputError

    repo, _ = repo_with_commit
    head = repo.head()
    with repo.lock:
        with pytest.raises(InvalidInputError, match="invalid"):
            with repo.writer() as w:
                w.put(key, members)
    assert repo.head() == head


@pytest.mark.parametrize("key", ["../../x", ".datarepo/HEAD", "a/" * 300 + "x", "x" * 256])
def test_a_commit_through_the_api_takes_only_valid_keys_of_stored_datums(repo_with_commit, key: str) -> None:
    from datarepo.errors import InvalidInputError

    repo, _ = repo_with_commit
    head = repo.head()
    stored = repo.tree()["train/cat/0000"].datum
    with repo.lock:
        with pytest.raises(InvalidInputError, match="invalid key"):
            repo.commit({key: (key, stored, 1)}, "never")
        with pytest.raises(InvalidInputError, match="is not stored"):
            repo.commit({"new/key": ("new/key", "0" * 32, 1)}, "never")
    assert repo.head() == head


def test_a_key_deeper_than_a_file_system_takes_is_refused_where_it_enters(repo_with_commit, cli) -> None:
    line = json.dumps({"__key__": "a/" * 300 + "x", "txt": "deep"})
    _one_error_line(cli("ingest", "-", "--prefix", "d/", input=line + "\n", ok=False), "deeper than 256 folders")


def test_an_ignore_line_no_pattern_can_hold_is_one_error_line(repo_with_commit, cli, worktree: Path) -> None:
    (worktree / ".datarepoignore").write_text("*.tmp\n[z-a]\n")
    for args in (["status"], ["add", "."]):
        _one_error_line(cli(*args, ok=False), ".datarepoignore line 2: not a gitignore pattern")


def test_a_tracked_folder_shaped_as_a_bare_repository_is_data(repo_with_commit, cli, worktree: Path) -> None:
    fake = worktree / "data" / "fake"
    (fake / "objects").mkdir(parents=True)
    (fake / "HEAD").write_text("ref: refs/heads/main\n")
    (fake / "config.toml").write_text("[core]\nformat = 1\n")
    cli("add", ".")
    cli("commit", "-m", "a folder of data")
    inside = type(cli)(fake)
    assert inside("log", "--oneline").output.splitlines()[0].endswith("a folder of data")
    inside("gc")
    assert not (fake / "lock").exists()


def test_ingest_follows_a_folders_symlinks_when_asked(repo_with_commit, cli, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a")
    (tmp_path / "target.txt").write_text("target")
    (source / "b.txt").symlink_to(tmp_path / "target.txt")
    out = cli("ingest", str(source), "--prefix", "s/").output
    assert "skipped symlink b.txt (use --follow to store its target)" in out
    cli("ingest", str(source), "--prefix", "s/", "--follow")
    assert cli("cat", "HEAD:s/b.txt").output == "target"


def test_paths_named_through_a_link_to_the_work_tree_are_inside_it(repo_with_commit, cli, worktree: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(worktree, target_is_directory=True)
    (worktree / "train/cat/0000.jpg").write_bytes(b"changed")
    cli("add", str(link / "train/cat/0000.jpg"))
    assert "modified: train/cat/0000" in cli("status").output
    assert cli("rm", "--cached", str(link / "train/cat/0000")).output == "rm train/cat/0000\n"


def test_folders_deeper_than_a_key_may_be_are_left_out_and_named(repo_with_commit, cli, worktree: Path) -> None:
    deep = worktree / "deep"
    for _ in range(300):
        deep = deep / "a"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("x")
    (worktree / "new.txt").write_text("new")
    out = cli("add", ".").output
    assert "deep/a/a/a" in out and "deeper or longer than a key may be (left out)" in out
    cli("commit", "-m", "the rest")
    assert "new" in cli("ls").output.split() and not any(k.startswith("deep/") for k in cli("ls").output.split())
    assert "deeper or longer than a key may be" in cli("status").output  # never "clean" while it leaves files out


@pytest.mark.parametrize("memo", ["not json", '{"stat": 5, "entries": []}', '{"stat": [1, 2, 3, 4, ""], "entries": [["../x", "0", 1]]}', "[]"])
def test_a_damaged_ingest_memo_is_read_as_none(repo_with_commit, cli, tmp_path: Path, memo: str) -> None:
    import sqlite3

    repo, _ = repo_with_commit
    source = tmp_path / "a.jsonl"
    source.write_text(json.dumps({"__key__": "k", "txt": "v"}) + "\n")
    cli("ingest", str(source), "--prefix", "j/")
    db = sqlite3.connect(repo.dotdir / "index.sqlite")
    with db:
        assert db.execute("UPDATE meta SET value=? WHERE name LIKE 'ingest:%'", (memo,)).rowcount == 1
    db.close()
    source.write_text(json.dumps({"__key__": "k", "txt": "w"}) + "\n")
    cli("ingest", str(source), "--prefix", "j/")  # the file is read again
    assert cli("cat", "HEAD:j/k.txt").output == "w"
