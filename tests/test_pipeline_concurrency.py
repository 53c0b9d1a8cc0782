"""A run computes without the writer lock and takes it only to commit: other writers (a
spout, add, the Python API) commit meanwhile, the run lands on top of them, gc leaves its
uncommitted work alone, and a second run waits for the first or stops with one line.

The transform blocks on files the test controls: the tests count events, never time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import datarepo
from tests.conftest import Cli
from tests.test_pipeline_errors import head, one_error
from tests.test_pipelines import committed_texts, counts, write_pipeline

WAIT = 60.0  # seconds a step may take before the test gives up (never asserted)


class Gate:
    """A pipeline whose ``block_at``-th transform call (in the run's process) says so in a
    file and waits for the test to open the gate; only once (the ``armed`` file)."""

    def __init__(self, root: Path) -> None:
        self.armed, self.started, self.go = root / "armed", root / "started", root / "go"

    def pipeline(self, block_at: int) -> str:
        self.arm(block_at)
        return f'''
import os, time
from datarepo import pipeline

CALLS = [0]

@pipeline(input="raw/**", output="up/", version="1", batch_size=1)
def upper(datum):
    CALLS[0] += 1
    if os.path.exists({str(self.armed)!r}) and CALLS[0] == int(open({str(self.armed)!r}).read()):
        os.unlink({str(self.armed)!r})
        open({str(self.started)!r}, "w").close()
        deadline = time.monotonic() + {WAIT}
        while not os.path.exists({str(self.go)!r}):
            if time.monotonic() > deadline:
                raise RuntimeError("the gate was never opened")
            time.sleep(0.005)
    return {{"txt": datum["txt"].upper()}}
'''

    def arm(self, block_at: int) -> None:
        """Blocks the ``block_at``-th call of the next run (the pipeline's text, and so its
        fingerprint, stays the same)."""
        self.started.unlink(missing_ok=True)
        self.armed.write_text(str(block_at))

    def wait_started(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + WAIT
        while not self.started.exists():
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "the run never reached the gate"
            time.sleep(0.005)

    def open(self) -> None:
        self.go.write_text("")


def start_run(cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATAREPO_AUTHOR": "Test <test@example.com>"}
    return subprocess.Popen([sys.executable, "-m", "datarepo.cli", "run", "--executor", "serial", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def start_held_run(texts: Path, tmp_path: Path, block_at: int = 6, *args: str) -> tuple[Gate, subprocess.Popen[bytes]]:
    """A serial run of a pipeline that holds at its ``block_at``-th datum, once it is held."""
    gate = Gate(tmp_path)
    write_pipeline(texts, "upper.py", gate.pipeline(block_at=block_at))
    proc = start_run(texts, *args)
    gate.wait_started(proc)
    return gate, proc


def finish(proc: subprocess.Popen[bytes]) -> str:
    out = proc.communicate(timeout=WAIT)[0].decode()
    assert proc.returncode == 0, out
    return out


def run_counts(out: str) -> list[dict[str, int]]:
    return [counts(line) for line in out.splitlines() if line.startswith("upper: ")]


def spout_line(key: str, text: str) -> str:
    return json.dumps({"__key__": key, "txt": text}) + "\n"


def lineage(cli: Cli, key: str) -> dict:
    return json.loads(cli("lineage", key, "--json").output)


def outputs(root: Path) -> dict[str, bytes]:
    with datarepo.open(root) as repo:
        return {e.key: repo.read(e.datum, verify=True)["txt"] for e in repo.tree().select(prefix="up/")}


def expected(n: int, skip: tuple[int, ...] = ()) -> dict[str, bytes]:
    return {f"up/{'a' if i % 2 else 'b'}/{i:03d}": b"TEXT %d" % i for i in range(n) if i not in skip}


def older(folder: Path) -> None:
    """Dates the files under ``folder`` two hours back."""
    old = time.time() - 7200
    for path in folder.rglob("*"):
        os.utime(path, (old, old))


@pytest.fixture
def texts(worktree: Path, cli: Cli) -> Path:
    return committed_texts(worktree, cli, 6)


def test_a_spout_commits_while_a_pipeline_computes_and_the_run_lands_on_top(
    texts: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = head(texts)
    gate, proc = start_held_run(texts, tmp_path)
    monkeypatch.setenv("DATAREPO_LOCK_TIMEOUT", "0")  # a writer that had to wait for the lock fails at once
    cli("ingest", "-", "--prefix", "raw/", "--commit-every", "1", input=spout_line("c/100", "text 100"))
    arrived = head(texts)
    assert arrived != read
    gate.open()
    assert run_counts(finish(proc)) == [{"processed": 6, "reused": 0, "failed": 0, "deleted": 0}]

    with datarepo.open(texts) as repo:
        top = repo.read_commit(repo.head())
        assert top.parents == (arrived,)  # on top of the spout's commit, which it keeps
        assert top.provenance["inputs"] == {"raw/**": read}  # computed from the commit it read
        assert repo.tree().get("raw/c/100") is not None
        first = repo.head()
    assert outputs(texts) == expected(6)  # the datums the run saw; the new one is the next run's
    node = lineage(cli, "up/a/001")
    assert (node["commit"], node["pipeline"]) == (first, "upper")
    assert [(n["key"], n["commit"]) for n in node["links"]] == [("raw/a/001", read)]

    monkeypatch.setenv("DATAREPO_LOCK_TIMEOUT", "20")
    assert run_counts(cli("run", "--executor", "serial").output) == [{"processed": 1, "reused": 6, "failed": 0, "deleted": 0}]
    assert outputs(texts) == {**expected(6), "up/c/100": b"TEXT 100"}
    node = lineage(cli, "up/c/100")
    assert [(n["key"], n["commit"]) for n in node["links"]] == [("raw/c/100", first)]
    assert "0 problems" in cli("fsck").output


def test_gc_during_a_run_keeps_what_the_run_has_not_committed_yet(
    texts: Path, cli: Cli, tmp_path: Path
) -> None:
    with datarepo.open(texts) as repo, repo.lock, repo.writer() as w:  # garbage from before the run: a shard no commit names
        w.put("stray", {"txt": b"never committed"})
    older(texts / ".datarepo" / "shards")
    gate, proc = start_held_run(texts, tmp_path)  # five batches published, adopted and journaled
    swept = json.loads(cli("gc", "--prune", "now", "--json").output)
    # The stray shard only is retired (the run's five stay), and kept aside until the run ends.
    assert (swept["shards"], swept["pruned"]) == (1, 0)
    gate.open()
    assert run_counts(finish(proc)) == [{"processed": 6, "reused": 0, "failed": 0, "deleted": 0}]
    assert outputs(texts) == expected(6)  # every output readable (and its bytes checked)
    assert "0 problems" in cli("fsck").output
    swept = json.loads(cli("gc", "--prune", "now", "--json").output)
    assert (swept["shards"], swept["pruned"]) == (0, 1)
    assert outputs(texts) == expected(6)


def test_gc_during_a_run_that_reuses_a_killed_run_s_work_does_not_lose_it(texts: Path, cli: Cli, tmp_path: Path) -> None:
    gate, killed = start_held_run(texts, tmp_path)
    killed.kill()  # five batches journaled, their shards named by no commit
    killed.communicate(timeout=WAIT)
    older(texts / ".datarepo" / "shards")  # (written more than the pin's second of slack before the next run)
    gate.arm(block_at=1)  # the next run reuses those five and blocks on the one left
    proc = start_run(texts)
    gate.wait_started(proc)
    swept = json.loads(cli("gc", "--prune", "now", "--json").output)
    assert swept["shards"] == 5  # the killed run's: older than this run, and no commit names them
    gate.open()
    # Its reused outputs are gone: planned again, the five are computed, the sixth reused.
    assert run_counts(finish(proc)) == [{"processed": 5, "reused": 1, "failed": 0, "deleted": 0}]
    assert outputs(texts) == expected(6)
    assert "0 problems" in cli("fsck").output


def test_a_second_run_waits_for_the_first_then_stops_with_one_line(
    texts: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = head(texts)
    gate, proc = start_held_run(texts, tmp_path, 3)
    monkeypatch.setenv("DATAREPO_LOCK_TIMEOUT", "0")
    line = one_error(cli, "run", "--executor", "serial")
    assert "another run of this repository's pipelines is in progress" in line
    # A dry run takes no lock; it sees the two batches the run finished, for it would reuse them.
    assert cli("run", "--dry-run").output.startswith("upper: would process 4 (6 new), reuse 2")
    assert head(texts) == before
    gate.open()
    assert run_counts(finish(proc)) == [{"processed": 6, "reused": 0, "failed": 0, "deleted": 0}]
    out = cli("run", "--executor", "serial").output
    assert "(nothing to commit)" in out and run_counts(out)[0]["reused"] == 6
    assert outputs(texts) == expected(6)


@pytest.mark.parametrize("change", ["an input deleted", "an output added by hand"])
def test_a_branch_that_moved_in_a_way_the_result_cannot_land_on_is_planned_again(
    texts: Path, cli: Cli, tmp_path: Path, change: str
) -> None:
    gate, proc = start_held_run(texts, tmp_path)
    with datarepo.open(texts) as repo, repo.lock:  # through the Python API, while the run computes
        if change == "an input deleted":
            repo.commit({"raw/a/001": None}, "raw/a/001 deleted")
        else:
            with repo.writer() as w:
                entry = w.put("up/by-hand", {"txt": b"not the pipeline's"})
            repo.commit({entry.key: entry}, "an output by hand")
        moved = repo.head()
    gate.open()
    out = finish(proc)
    n = 5 if change == "an input deleted" else 6
    # Planned again against the moved branch: every finished batch reused, nothing computed twice.
    assert run_counts(out) == [{"processed": 0, "reused": n, "failed": 0, "deleted": 0}]
    with datarepo.open(texts) as repo:
        top = repo.read_commit(repo.head())
        assert top.parents == (moved,) and top.provenance["inputs"] == {"raw/**": moved}
    assert outputs(texts) == expected(6, skip=(1,) if n == 5 else ())
    assert "0 problems" in cli("fsck").output


def test_watch_runs_again_at_once_for_what_landed_while_it_computed(texts: Path, cli: Cli, tmp_path: Path) -> None:
    gate, proc = start_held_run(texts, tmp_path, 6, "--watch", "--interval", "0.05", "--max-runs", "2")
    cli("ingest", "-", "--prefix", "raw/", "--commit-every", "1", input=spout_line("c/100", "text 100"))
    gate.open()  # no commit after this one: the second run is for the datum that came during the first
    assert run_counts(finish(proc)) == [{"processed": 6, "reused": 0, "failed": 0, "deleted": 0},
                                        {"processed": 1, "reused": 6, "failed": 0, "deleted": 0}]
    assert outputs(texts) == {**expected(6), "up/c/100": b"TEXT 100"}


def test_a_checkout_while_a_run_computes_leaves_its_commit_on_the_branch_it_read(
    texts: Path, cli: Cli, tmp_path: Path
) -> None:
    read = head(texts)
    gate, proc = start_held_run(texts, tmp_path)
    cli("checkout", "-b", "other")
    gate.open()
    finish(proc)
    with datarepo.open(texts) as repo:
        assert repo.current_branch() == "other" and repo.head() == read
        main = repo.resolve("main")
        assert repo.read_commit(main).parents == (read,)
        assert sum(1 for _ in repo.tree("main").select(prefix="up/")) == 6
