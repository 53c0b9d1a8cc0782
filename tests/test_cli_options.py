"""Every option of the command line with values a user may type wrong: each bad value is
one error line naming the option, a non-zero exit, and no change to the repository; and
what the docs show a command print is what it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from datarepo.repo import Repo


def _state(repo: Repo) -> list[tuple[str, bytes]]:
    """Every file of the repository's folder but the caches, to show nothing changed."""
    return sorted(
        (str(p.relative_to(repo.dotdir)), p.read_bytes())
        for p in repo.dotdir.rglob("*")
        if p.is_file() and not p.name.startswith("index.sqlite")
    )


def _refused(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    """A refused command: exit 1 (or 2, a bad value of an option), and one ``Error:`` line."""
    assert result.exit_code in (1, 2), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and all(w in lines[0] for w in words), result.output


# Each option that takes a number, with the command it belongs to ({} is the value).
COUNTS = {
    "log -n": ["log", "-n", "{}"],
    "ingest --commit-every": ["ingest", "-", "--prefix", "s/", "--commit-every", "{}"],
    "run -j": ["run", "-j", "{}", "--dry-run"],
    "run --max-runs": ["run", "--watch", "--max-runs", "{}"],
    "runs show --epoch": ["runs", "show", "r", "--keys", "--epoch", "{}"],
}
SECONDS = {
    "ingest --commit-seconds": ["ingest", "-", "--prefix", "s/", "--commit-seconds", "{}"],
    "run --interval": ["run", "--watch", "--max-runs", "1", "--interval", "{}"],
}
AGES = {"gc --prune": ["gc", "-n", "--prune", "{}"]}
SIZES = {
    "init --shard-size": ["init", "--shard-size", "{}", "new"],
    "export --shard-size": ["export", "HEAD", "out", "--shards", "--shard-size", "{}"],
}
PATHS = {
    "init PATH": ["init", "{}"],
    "export DEST": ["export", "HEAD", "{}"],
    "export-dvc -o": ["export-dvc", "-o", "{}"],
    "clone DIRECTORY": ["clone", "somewhere", "{}"],
    "run --pipelines": ["run", "--dry-run", "--pipelines", "{}"],
    "pipelines --pipelines": ["pipelines", "--pipelines", "{}"],
    "dag --pipelines": ["dag", "--pipelines", "{}"],
    "run --ray-address": ["run", "--executor", "ray", "--ray-address", "{}"],
    "clone URL": ["clone", "{}", "somewhere"],
}


def _with(args: list[str], value: str) -> list[str]:
    return [value if a == "{}" else a for a in args]


# What each kind of value must refuse: what is no number at all, or none of that kind, or
# out of its range (a count is whole, seconds and ages finite, a size a whole number of bytes).
BAD_VALUES = (
    (COUNTS, ["", "abc", "1.5", "1e3", "0x10", "٣", "9223372036854775808"]),
    (SECONDS, ["", "nan", "inf", "-inf", "1e309", "9223372036854775808", "abc", "٣", "-1", "0"]),
    (AGES, ["", "nan", "inf", "1e309", "1e309d", "abc", "٣", "-1", "-2h", "soon", "1x"]),
    (SIZES, ["", " ", "1.5", "1e309K", "9223372036854775808", "16E", "٣K", "0", "-1K"]),
)


@pytest.mark.parametrize(("option", "value"),
                         [(option, value) for options, values in BAD_VALUES for option in options for value in values])
def test_a_value_not_of_its_option_s_kind_is_one_line_and_changes_nothing(repo_with_commit, cli, worktree: Path,
                                                                          option: str, value: str) -> None:
    repo, _ = repo_with_commit
    args = next(options[option] for options, _ in BAD_VALUES if option in options)
    before = _state(repo)
    _refused(cli(*_with(args, value), input="", ok=False), repr(value), option.split()[-1])
    assert _state(repo) == before and not (worktree / "new").exists() and not (worktree / "out").exists()


@pytest.mark.parametrize(("option", "value"), [("run -j", "0"), ("run -j", "1025"), ("run --max-runs", "0"),
                                                ("ingest --commit-every", "-1"), ("runs show --epoch", "-1")])
def test_a_count_below_or_above_its_range_names_the_range(repo_with_commit, cli, option: str, value: str) -> None:
    _refused(cli(*_with(COUNTS[option], value), input="", ok=False), repr(value), "from")


@pytest.mark.parametrize("option", PATHS)
def test_an_empty_path_or_address_is_an_error_never_the_default(repo_with_commit, cli, option: str) -> None:
    repo, _ = repo_with_commit
    before = _state(repo)
    _refused(cli(*_with(PATHS[option], ""), ok=False))
    assert _state(repo) == before


@pytest.mark.parametrize("command", ["run --dry-run", "pipelines", "dag", "export-dvc"])
def test_a_pipelines_folder_that_is_not_there_is_an_error(repo_with_commit, cli, command: str) -> None:
    _refused(cli(*command.split(), "--pipelines", "no-such-folder", ok=False), "--pipelines", "no-such-folder")


@pytest.mark.parametrize("command", [["branch"], ["tag"], ["checkout", "-b"]])
def test_an_empty_ref_name_is_refused_never_taken_as_no_name(repo_with_commit, cli, command: list[str]) -> None:
    repo, _ = repo_with_commit
    before = _state(repo)
    _refused(cli(*command, "", ok=False), "name: ''")
    assert _state(repo) == before and repo.current_branch() == "main"


@pytest.mark.parametrize(
    "args",
    [
        ["lineage", "a\nb"],
        ["branch", "-d", "a\nb"],
        ["tag", "-d", "a\rb"],
        ["add", "a\nb"],
        ["rm", "--cached", "a\x1bb"],
        ["cat", "HEAD:a\nb"],
        ["log", "a\nb"],
        ["diff", "a\nb", "HEAD"],
        ["runs", "show", "a\nb"],
        ["remote", "remove", "a\nb"],
        ["push", "-r", "a\nb"],
    ],
)
def test_a_value_with_control_characters_is_escaped_in_the_one_error_line(repo_with_commit, cli, args: list[str]) -> None:
    result = cli(*args, ok=False)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: ") and "\x1b" not in result.output and "\r" not in result.output


@pytest.mark.parametrize("prefix", ["a\nb/", 'q"\\/', "t\tu\x7f/"])
def test_an_ingest_prefix_with_control_characters_leaves_the_config_readable(repo_with_commit, cli, prefix: str) -> None:
    repo, _ = repo_with_commit
    cli("ingest", "-", "--prefix", prefix, input='{"__key__": "k", "txt": "x"}\n')
    assert prefix in tomllib.loads((repo.dotdir / "config.toml").read_text())["core"]["sparse"]
    listed = cli("ls", "--prefix", prefix).output.splitlines()
    assert listed == [json.dumps(prefix + "k") if not prefix.isprintable() else prefix + "k"], listed  # (quoted)
    cli("log")
    cli("status")


def test_show_indents_every_line_of_the_message_as_log_does(repo_with_commit, cli) -> None:
    cli("commit", "--allow-empty", "-m", "subject\n\nbody line")
    for args in (["show"], ["log", "-n", "1"]):
        out = cli(*args).output
        assert "\n    subject\n    \n    body line\n" in out, out



def test_a_locale_that_is_not_utf8_reads_keys_and_file_names_as_utf8(repo_with_commit, cli, worktree: Path) -> None:
    (worktree / "é.txt").write_bytes(b"hi")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "LC_ALL": "C", "PYTHONUTF8": "0"}
    run = lambda *args: subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=worktree, env=env, capture_output=True)
    added = run("add", "é.txt")
    assert added.returncode == 0 and b"1 added" in added.stdout and b"not valid UTF-8" not in added.stderr, added
    assert run("commit", "-m", "é").returncode == 0
    assert run("cat", "HEAD:é.txt").stdout == b"hi"


@pytest.mark.parametrize(
    "args",
    [["status"], ["log"], ["show"], ["diff", "HEAD"], ["ls"], ["branch"], ["tag"], ["runs"], ["pipelines"],
     ["remote", "list"], ["lineage", "train/cat/0000"], ["fsck"], ["gc", "-n"], ["repack"]],
)
def test_every_listing_command_takes_json(repo_with_commit, cli, args: list[str]) -> None:
    json.loads(cli(*args, "--json").output)


def test_a_missing_argument_still_shows_the_usage(repo_with_commit, cli) -> None:
    result = cli("remote", "modify", "origin", ok=False)
    assert result.exit_code == 2 and "Usage: " in result.output and "Missing argument 'OPTION'" in result.output


@pytest.mark.parametrize("command", [["commit", "--allow-empty"], ["ingest", "-", "--prefix", "j/"]])
def test_a_message_given_twice_is_two_paragraphs_as_in_git(repo_with_commit, cli, command: list[str]) -> None:
    cli(*command, "-m", "subject", "-m", "body", input='{"__key__": "k", "txt": "x"}\n')
    assert json.loads(cli("log", "-n", "1", "--json").output)[0]["message"] == "subject\n\nbody"


def test_log_takes_gits_range_form(repo_with_commit, cli) -> None:
    for message in ("second", "third"):
        cli("commit", "--allow-empty", "-m", message)
    oneline = lambda *args: [line.split(" ", 1)[1] for line in cli("log", "--oneline", *args).output.splitlines()]
    assert oneline("HEAD~2..HEAD") == oneline("HEAD~2..") == ["third", "second"]
    assert oneline("HEAD..HEAD~1") == [] and oneline("-n", "1", "HEAD~2..") == ["third"]
    result = cli("log", "HEAD~1...HEAD", ok=False)
    assert result.exit_code == 1 and "A...B is not supported" in result.output


@pytest.mark.parametrize(("args", "unbuffered"), [(["cat", "HEAD:big.bin"], ""), (["cat", "HEAD:big.bin"], "1"),
                                                  (["ls", "--json"], "1"), (["log", "--json"], "1")])
def test_output_into_a_pipe_closed_early_ends_with_status_141(repo_with_commit, cli, worktree: Path, args: list[str],
                                                              unbuffered: str) -> None:
    """As git: a reader that goes away (``| head -c 1``) ends the command quietly with 128 +
    SIGPIPE, never status 0 with the output cut short, PYTHONUNBUFFERED set or not."""
    (worktree / "big.bin").write_bytes(os.urandom(1 << 20))
    cli("add", "big.bin")
    cli("commit", "-m", "x" * 100_000)  # (a log of more than a pipe holds)
    lines = "".join(f'{{"__key__": "k{i:05d}", "txt": "{i}"}}\n' for i in range(3000))
    cli("ingest", "-", "--prefix", "many/", input=lines)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONUNBUFFERED": unbuffered}
    child = subprocess.Popen([sys.executable, "-m", "datarepo.cli", *args], cwd=worktree, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.read(1)
    child.stdout.close()
    assert child.wait(timeout=60) == 141 and child.stderr.read() == b""


def test_push_head_pushes_the_current_branch_as_in_git(repo_with_commit, cli, tmp_path: Path) -> None:
    repo, _ = repo_with_commit
    cli("remote", "add", "origin", str(tmp_path / "remote"), "-d")
    cli("branch", "exp")
    cli("checkout", "exp")
    pushed = cli("push", "HEAD", "main").output
    assert "refs/heads/exp\t(new)" in pushed and "refs/heads/main\t(new)" in pushed and "refs/heads/HEAD" not in pushed
    cli("checkout", repo.head() or "")
    _refused(cli("push", "HEAD", ok=False), "HEAD is detached")


def test_gits_everyday_flags_are_taken(repo_with_commit, cli, worktree: Path) -> None:
    """add -A, rm -r and branch -D, as a git user types them."""
    (worktree / "train" / "new.cls").write_bytes(b"1")
    assert "staged 1 added" in cli("add", "-A").output
    assert "rm train/cat/0000" in cli("rm", "-r", "--cached", "train/cat").output
    cli("commit", "-m", "x")
    cli("checkout", "-b", "gone")
    cli("commit", "--allow-empty", "-m", "only here")
    cli("checkout", "main")
    assert "not merged" in cli("branch", "-d", "gone", ok=False).output
    assert "Deleted branch gone" in cli("branch", "-D", "gone").output


def test_notes_and_failures_naming_odd_file_names_or_messages_stay_one_line_each(repo_with_commit, cli, worktree: Path) -> None:
    """A file name or an exception's message with a newline or an escape sequence is shown
    escaped: one line a note, and nothing written to the terminal that it would obey."""
    (worktree / "odd").mkdir()
    (worktree / "odd" / "l\nk").symlink_to("nowhere")
    os.mkfifo(worktree / "odd" / "f\x1b[2Jifo")
    for args in (["status"], ["add", "odd"]):
        notes = [line for line in cli(*args).output.splitlines() if line.startswith("note: ")]
        assert sorted(notes) == ["note: not a regular file: odd/f\\x1b[2Jifo (left out)",
                                 "note: skipped symlink odd/l\\nk (use --follow to store its target)"], notes
    (worktree / "pipelines").mkdir()
    (worktree / "pipelines" / "bad.py").write_text(
        "from datarepo import pipeline\n\n@pipeline(input='train/cat/**', output='bad/')\n"
        "def bad(datum):\n    raise ValueError('first\\nsecond\\x1b[2J')\n")
    result = cli("run", "--executor", "serial", ok=False)
    failed = [line for line in result.output.splitlines() if "failed" in line and "ValueError" in line]
    assert failed and all("second\\x1b[2J" in line for line in failed), result.output
    assert "\x1b" not in result.output and "\nsecond" not in result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["export", "HEAD", "out", "--shard-size", "1M"], "--shard-size does nothing without --shards"),
        (["run", "--interval", "5"], "--interval does nothing without --watch"),
        (["run", "--max-runs", "1"], "--max-runs does nothing without --watch"),
        (["runs", "show", "r", "--epoch", "1"], "--epoch does nothing without --keys"),
        (["branch", "-f"], "--force does nothing without a branch NAME"),
        (["tag", "-f"], "--force does nothing without a tag NAME"),
        (["runs", "--json", "show", "r"], "--json of runs lists the runs: give it after the subcommand"),
    ],
)
def test_an_option_that_does_nothing_without_another_is_refused(repo_with_commit, cli, worktree: Path, args: list[str],
                                                                 words: str) -> None:
    """Ignored, it would do other than what was asked (files where shards were meant)."""
    repo, _ = repo_with_commit
    before = _state(repo)
    result = cli(*args, ok=False)
    assert result.exit_code == 2 and f"Error: {words}" in result.output, result.output
    assert _state(repo) == before and not (worktree / "out").exists()


@pytest.mark.parametrize("command", [["commit", "--allow-empty"], ["ingest", "-", "--prefix", "j/"],
                                     ["ingest", "-", "--prefix", "j/", "--commit-every", "1"]])
def test_an_empty_message_is_refused_never_replaced(repo_with_commit, cli, command: list[str]) -> None:
    repo, _ = repo_with_commit
    before = _state(repo)
    _refused(cli(*command, "-m", " ", input='{"__key__": "k", "txt": "x"}\n', ok=False), "empty commit message")
    assert _state(repo) == before


@pytest.mark.parametrize("src", ["{}/stream.jsonl", "{}/*.jsonl", "{}/{{stream.jsonl,shard.tar}}", "{}/shard.tar"])
def test_an_ingest_source_that_is_a_fifo_is_refused_never_waited_on(repo_with_commit, cli, tmp_path: Path, src: str) -> None:
    for name in ("stream.jsonl", "shard.tar"):
        os.mkfifo(tmp_path / name)
    repo, _ = repo_with_commit
    before = _state(repo)
    _refused(cli("ingest", src.format(tmp_path), "--prefix", "f/", ok=False), "not a regular file", "stdin: -")
    assert _state(repo) == before


@pytest.mark.parametrize("value", ["٣", "１", "1e309"])
def test_a_number_of_seconds_from_the_environment_is_ascii_and_finite(repo_with_commit, cli, monkeypatch, value: str) -> None:
    monkeypatch.setenv("DATAREPO_LOCK_TIMEOUT", value)
    _refused(cli("commit", "--allow-empty", "-m", "x", ok=False), "DATAREPO_LOCK_TIMEOUT", repr(value))
