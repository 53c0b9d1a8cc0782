"""ingest - with --commit-every / --commit-seconds: a spout, committing a long-lived stream as it comes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from datarepo.repo import Repo

DATAREPO = str(Path(sys.executable).parent / "datarepo")


def _line(key: str, text: str) -> str:
    return json.dumps({"__key__": key, "txt": text}) + "\n"


def _commits(cli) -> list[dict]:
    return json.loads(cli("log", "--json").output)


def _tree(path: Path) -> dict[str, bytes]:
    with Repo.open(path) as repo:
        return {e.key: repo.read(e.datum)["txt"] for e in repo.tree()}


def test_a_spout_commits_every_n_datums_and_at_the_end(worktree: Path, cli) -> None:
    cli("init")
    cli("ingest", "-", "--prefix", "old/", input=_line("a", "kept"))
    stream = "".join(_line(f"{i:02d}", f"text {i}") for i in range(7))
    result = cli("ingest", "-", "--prefix", "events/", "--commit-every", "3", input=stream)
    assert len(result.output.splitlines()) == 3  # one line a commit: 3 + 3 + 1 datums
    commits = _commits(cli)
    assert len(commits) == 4
    tree = _tree(worktree)
    assert tree == {"old/a": b"kept", **{f"events/{i:02d}": b"text %d" % i for i in range(7)}}
    with Repo.open(worktree) as repo:  # each commit holds the datums sent up to it
        assert [sum(1 for _ in repo.tree(c["commit"]).select(prefix="events/")) for c in commits[:3]] == [7, 6, 3]


def test_a_spout_is_a_log_the_newest_datum_of_a_key_wins_and_older_keys_stay(worktree: Path, cli) -> None:
    cli("init")
    cli("ingest", "-", "--prefix", "events/", "--commit-every", "10", input=_line("x", "first") + _line("y", "y"))
    cli("ingest", "-", "--prefix", "events/", "--commit-every", "10", input=_line("x", "second") + _line("x", "third"))
    assert _tree(worktree) == {"events/x": b"third", "events/y": b"y"}


def test_a_bad_line_fails_the_spout_and_keeps_what_it_committed(worktree: Path, cli) -> None:
    cli("init")
    stream = _line("a", "1") + _line("b", "2") + "{not json\n" + _line("c", "3")
    result = cli("ingest", "-", "--prefix", "events/", "--commit-every", "2", input=stream, ok=False)
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].startswith("Error: <stdin>:3: bad JSON-lines datum")
    assert _tree(worktree) == {"events/a": b"1", "events/b": b"2"}
    cli("fsck")


def test_spout_options_need_a_stream(worktree: Path, cli) -> None:
    cli("init")
    (worktree / "f.txt").write_text("x")
    result = cli("ingest", "f.txt", "--prefix", "p/", "--commit-every", "2", ok=False)
    assert result.exit_code == 2 and "give - as SRC" in result.output


def test_a_quiet_producer_s_datums_are_committed_after_t_seconds_without_holding_the_lock(worktree: Path, cli) -> None:
    """With --commit-seconds the spout commits what it holds while its producer is still
    connected but quiet; between its commits the writer lock is free for other writers."""
    cli("init")
    env = {**os.environ, "DATAREPO_LOCK_TIMEOUT": "20"}
    proc = subprocess.Popen([DATAREPO, "ingest", "-", "--prefix", "events/", "--commit-seconds", "0.2"], cwd=worktree,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        proc.stdin.write((_line("a", "1") + _line("b", "2")).encode())
        proc.stdin.flush()
        first = proc.stdout.readline()  # the spout's line for its first commit, while stdin is still open
        assert first.startswith(b"[") and b"2 datums" in first
        assert proc.poll() is None
        cli("ingest", "-", "--prefix", "other/", input=_line("z", "z"))  # the lock is free between commits
        proc.stdin.write(_line("c", "3").encode())
        proc.stdin.close()
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert len(out.splitlines()) == 1  # the last commit, at the end of input or after T seconds
    assert _tree(worktree) == {"events/a": b"1", "events/b": b"2", "events/c": b"3", "other/z": b"z"}
    assert len(_commits(cli)) == 3
