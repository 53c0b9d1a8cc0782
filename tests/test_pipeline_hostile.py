"""Pipelines used carelessly or with hostile intent: a damaged run cache, damaged lineage,
leftovers of a killed run, odd command outputs, odd transform results, odd declarations,
a branch that goes away under ``run --watch``. Each gives one clear line, or recovers;
nothing committed is lost."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest

import datarepo
from datarepo.objects import Blob
from datarepo.pipeline.run import Options, watch
from tests.conftest import Cli
from tests.test_pipeline_concurrency import start_held_run
from tests.test_pipeline_errors import head, one_error
from tests.test_pipelines import UPPER, committed_texts, run, write_pipeline, write_texts


@pytest.fixture
def texts(worktree: Path, cli: Cli) -> Path:
    return committed_texts(worktree, cli, 6)


def outputs(root: Path, prefix: str = "up/") -> dict[str, dict[str, bytes]]:
    with datarepo.open(root) as repo:
        return {e.key: repo.read(e.datum) for e in repo.tree().select(prefix=prefix)}


def sql(root: Path, script: str) -> None:
    db = sqlite3.connect(root / ".datarepo" / "index.sqlite")
    db.executescript(script)
    db.commit()
    db.close()


def failures(cli: Cli, *args: str) -> dict[str, str]:
    """Runs a run that fails some datums; returns base → 'Class: message' of each failure."""
    result = cli("run", "--json", *args, ok=False)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output[: result.output.rindex("}") + 1])
    return {base: f"{kind}: {message}" for p in report["pipelines"] for base, kind, message in p["failures"]}


# --- the run cache in index.sqlite ------------------------------------------------------------
@pytest.mark.parametrize("damage", [
    "UPDATE lineage_cache SET object = NULL",
    "UPDATE lineage_cache SET object = x'00ff'",
    "UPDATE lineage_cache SET object = '00000000000000000000000000000000'",  # an object that is not there
    "UPDATE lineage_cache SET object = (SELECT page FROM lineage_input LIMIT 1) || ''",  # a page without that success
    "DROP TABLE lineage_cache; CREATE TABLE lineage_cache (x)",
    "DROP TABLE lineage_input; CREATE VIEW lineage_input AS SELECT 1 AS datum, 2 AS page",
    "INSERT OR REPLACE INTO meta VALUES ('lineage-journals:upper', 'garbage' || char(10) || x'ff00')",
])
def test_damaged_run_cache_rows_cost_work_never_a_wrong_tree(texts: Path, cli: Cli, damage: str) -> None:
    write_pipeline(texts, "upper.py", UPPER)
    run(cli)
    expected = outputs(texts)
    (texts / "pipelines" / "upper.py").write_text((texts / "pipelines" / "upper.py").read_text().replace('"1"', '"2"'))
    run(cli)  # (the run cache now holds the successes of both versions)
    sql(texts, damage)
    (texts / "pipelines" / "upper.py").write_text((texts / "pipelines" / "upper.py").read_text().replace('"2"', '"1"'))
    counts = run(cli)["upper"]
    assert counts["processed"] + counts["reused"] == 6 and counts["failed"] == 0
    assert outputs(texts) == expected
    assert "0 problems" in cli("fsck").output


@pytest.mark.parametrize("damage", [
    "UPDATE lineage_input SET page = x'00'",
    "UPDATE lineage_input SET page = 7",
    "UPDATE lineage_input SET page = '00000000000000000000000000000000'",
    "DROP TABLE lineage_input; CREATE TABLE lineage_input (x)",
])
def test_damaged_lineage_index_rows_are_rebuilt_for_downstream_queries(texts: Path, cli: Cli, damage: str) -> None:
    write_pipeline(texts, "upper.py", UPPER)
    run(cli)
    sql(texts, damage)
    out = cli("lineage", "raw/a/003", "--downstream").output.splitlines()
    assert [line.split()[0] for line in out] == ["raw/a/003", "up/a/003"]


# --- lineage objects named by committed provenance ---------------------------------------------
def commit_crafted(root: Path, what: str, patch: dict[str, Any]) -> None:
    """A commit on HEAD whose provenance names a lineage root (or its first page) with
    ``patch`` applied: a valid object, as a damaged or hostile peer could give."""
    with datarepo.open(root) as repo, repo.lock:
        commit = repo.read_commit(repo.head())
        provenance = dict(commit.provenance)
        data = dict(repo.store.get_object(provenance["lineage"]).to_json())
        if what == "root":
            data.update(patch)
        else:
            page = dict(repo.store.get_object(data["pages"][0][2]).to_json()) | patch
            data["pages"] = [[*data["pages"][0][:2], repo.store.put_object(Blob(page))], *data["pages"][1:]]
        provenance["lineage"] = repo.store.put_object(Blob(data))
        repo.commit_tree(commit.tree, "crafted", repo.head(), provenance)


@pytest.mark.parametrize(("what", "patch", "field"), [
    ("root", {"inputs": {"raw/**": 5}}, "bad lineage root: inputs"),
    ("root", {"inputs": []}, "bad lineage root: inputs"),
    ("root", {"pages": "x"}, "bad lineage root: pages"),
    ("root", {"failed": [5]}, "bad lineage root: failed"),
    ("root", {"fingerprint": 5}, "bad lineage root: fingerprint"),
    ("root", {"output": 5}, "bad lineage root: output"),
    ("page", {"records": 5}, "bad lineage page"),
    ("page", {"records": [["up/a/003", "x", "y", "z", None, None]]}, "bad lineage record for 'up/a/003'"),
])
def test_malformed_lineage_objects_are_one_line_for_every_command(
    texts: Path, cli: Cli, what: str, patch: dict[str, Any], field: str
) -> None:
    write_pipeline(texts, "upper.py", UPPER)
    run(cli)
    commit_crafted(texts, what, patch)
    write_texts(texts, 1, start=6)
    cli("add", "raw")
    cli("commit", "-m", "more")
    before = head(texts)
    for args in (["lineage", "up/a/003"], ["lineage", "raw/a/003", "--downstream"], ["run"], ["dag"]):
        if what == "page" and args == ["dag"]:
            continue  # (dag reads roots only)
        assert field in one_error(cli, *args), args
    assert head(texts) == before
    fsck = cli("fsck", ok=False)
    assert fsck.exit_code == 1 and field in fsck.output


# --- a killed run's leftovers ------------------------------------------------------------------------
def test_a_killed_run_s_pin_neither_blocks_gc_nor_keeps_its_garbage(texts: Path, cli: Cli, tmp_path: Path) -> None:
    _, killed = start_held_run(texts, tmp_path, block_at=4)
    killed.kill()  # three batches journaled, their shards and journals named by no commit
    killed.communicate()
    assert (texts / ".datarepo" / "run.pin").exists() and (texts / ".datarepo" / "run.lock").exists()
    swept = json.loads(cli("gc", "--prune", "now", "--json").output)
    assert swept["shards"] == 3 and swept["objects"] >= 3  # the dead run's pin protects nothing
    (texts / ".datarepo" / "run.pin").write_bytes(b"\xff not a pin")  # nor does a damaged one
    assert json.loads(cli("gc", "--prune", "now", "--json").output)["shards"] == 0
    assert run(cli)["upper"] == {"processed": 6, "reused": 0, "failed": 0, "deleted": 0}
    assert not (texts / ".datarepo" / "run.pin").exists()
    assert "0 problems" in cli("fsck").output


# --- command transforms -----------------------------------------------------------------------------
def write_command(root: Path, script: str, **fields: Any) -> None:
    table = {"command": ["sh", "-c", script], "input": "raw/**", "output": "up/", **fields}
    lines = ["[pipeline.c]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    write_pipeline(root, "c.toml", "\n".join(lines) + "\n")


def test_a_hard_link_in_the_output_folder_is_an_output_only_if_the_command_s_own(texts: Path, cli: Cli, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    write_command(texts, 'ln "$DATAREPO_IN"/*.txt "$DATAREPO_OUT/p.txt"')  # an input passed on
    assert run(cli, "--executor", "serial")["c"]["processed"] == 6
    assert outputs(texts)["up/a/001"] == {"txt": b"text 1"}
    write_command(texts, f'ln {outside} "$DATAREPO_OUT/p.txt"')
    failed = failures(cli, "--executor", "serial")
    assert "'p.txt' is a hard link to a file outside" in failed["up/a/001"]
    assert sorted(outputs(texts)) == []  # (each datum failed: the first run's outputs are removed with them)
    assert all(b"secret" not in m for datum in outputs(texts).values() for m in datum.values())


def test_binary_garbage_on_stderr_is_recorded_as_one_clean_line(texts: Path, cli: Cli) -> None:
    write_command(texts, r"printf 'a\000b\033[2Jred\r\nline two\377\376\033]0;title\007' >&2; exit 3")
    result = cli("run", "--executor", "serial", ok=False)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 1 + 5 + 1  # the counts, a line for each of the first five failures, the error
    assert lines[0].startswith("c: ") and lines[-1].startswith("Error: ")
    assert all(line.startswith("  failed up/") for line in lines[1:-1])
    assert all(ch.isprintable() for line in lines for ch in line)
    assert "exited with status 3: a\\x00b\\x1b[2Jred line two" in lines[-1]


def test_a_program_that_leaves_a_child_running_is_done_when_it_exits(texts: Path, cli: Cli) -> None:
    # The child holds stderr open: waiting for its end would time the datum out.
    write_command(texts, 'sleep 60 & echo ok > "$DATAREPO_OUT/a.txt"', timeout=30)
    assert run(cli, "--executor", "serial")["c"] == {"processed": 6, "reused": 0, "failed": 0, "deleted": 0}


def test_over_deep_output_folders_fail_the_datum_and_are_cleaned_up(
    texts: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    deep = "import os\nos.chdir(os.environ['DATAREPO_OUT'])\nfor _ in range(1200):\n    os.mkdir('d')\n    os.chdir('d')\n"
    write_pipeline(texts, "c.toml", f'[pipeline.c]\ncommand = ["{{python}}", "-c", {json.dumps(deep)}]\n'
                                    'input = "raw/a/001"\noutput = "up/"\n')
    failed = failures(cli, "--executor", "serial")
    assert [m.endswith("nested folders more than 256 deep in its output folder") for m in failed.values()] == [True]
    assert list(scratch.iterdir()) == []


# --- Python transforms ---------------------------------------------------------------------------
ODD = '''
import os
from datarepo import pipeline

class Lying(bytes):
    def __len__(self):
        return 1000

    def __bytes__(self):
        return b"lie"

class Odd(BaseException):
    pass

Weird = type("Bad\\nName\\x1b[2J", (Exception,), {})

@pipeline(input="raw/**", output="up/", retries=1)
def odd(datum):
    key = datum["__key__"]
    first = datum["txt"].startswith(b"text")
    datum["txt"] = b"changed by the transform"
    if key == "raw/b/000":
        if first:
            raise ValueError("a first try fails; the second sees the input as it was")
        return {"txt": b"second try saw a changed input"}
    if key == "raw/a/001":
        raise Odd("odd\\nmulti\\x1b[31mline\\udcff")
    if key == "raw/b/002":
        raise Weird("m")
    if key == "raw/a/003":
        return pipeline.Drop("bad\\nreason\\udcff")
    if key == "raw/b/004":
        if os.fork() == 0:
            return {"txt": b"from a forked child"}
    return {"txt": Lying(b"bytes")}
'''


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_odd_results_and_errors_of_python_transforms(texts: Path, cli: Cli, executor: str) -> None:
    write_pipeline(texts, "odd.py", ODD)
    before = head(texts)
    result = cli("run", "--executor", executor, "--workers", "2", ok=False)
    assert result.exit_code == 1
    assert all(ch.isprintable() for ch in result.output.replace("\n", ""))
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1
    with datarepo.open(texts) as repo:
        assert repo.read_commit(repo.head()).parents == (before,)  # one commit: no forked copy made another
        got = {e.key: (repo.read(e.datum), e.size) for e in repo.tree().select(prefix="up/")}
    assert set(got) == {"up/b/004", "up/a/005"}  # raw/b/000's second try saw its input as it was, and failed again
    assert got["up/a/005"] == ({"txt": b"bytes"}, 5)  # its bytes, not what the subclass says of itself
    assert got["up/b/004"] == ({"txt": b"bytes"}, 5)  # the parent's answer, not the forked child's
    lines = cli("lineage", "raw/a/003", "--downstream").output.splitlines()
    assert lines[1].endswith("(dropped: bad reason\\udcff)")
    assert "Odd: odd multi\\x1b[31mline\\udcff" in result.output
    assert "Bad Name\\x1b[2J: m" in result.output


KILLER = '''
import os
from datarepo import pipeline

@pipeline(input="raw/**", output="up/", batch_size=6)
def upper(datum):
    if datum["__key__"] == "raw/a/003":
        os._exit(3)
    return {"txt": datum["txt"].upper()}
'''


def test_a_datum_that_kills_its_worker_fails_alone_not_its_batch(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "upper.py", KILLER)
    assert failures(cli, "--workers", "2") == {
        "up/a/003": "WorkerDied: the process running this batch died (killed, or out of memory)"}
    assert sorted(outputs(texts)) == ["up/a/001", "up/a/005", "up/b/000", "up/b/002", "up/b/004"]


def test_a_setup_that_returns_a_param_s_name_fails_each_datum_with_one_line(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "upper.py", '''
        from datarepo import pipeline

        def ready():
            return {"size": 3}

        @pipeline(input="raw/**", output="up/", params={"size": 2}, setup=ready)
        def upper(datum, size):
            return {"txt": datum["txt"][:size]}
    ''')
    failed = failures(cli, "--executor", "serial")
    assert set(failed.values()) == {"PipelineError: setup of 'upper' returned 'size', which is also one of its params"}


COLLIDING = '''
from datarepo import pipeline

@pipeline(input="raw/**", output="up/")
def upper(datum):
    if datum["__key__"] == "raw/a/001":
        return [("", {"txt": b"base"}), ("x", {"txt": b"from raw/a/001"})]
    return {"txt": datum["txt"].upper()}
'''


def test_two_units_writing_one_output_key_both_fail(texts: Path, cli: Cli) -> None:
    (texts / "raw" / "a" / "001").mkdir()
    (texts / "raw" / "a" / "001" / "x.txt").write_text("the other writer of up/a/001/x")
    cli("add", "raw")
    cli("commit", "-m", "a key under another")
    write_pipeline(texts, "upper.py", COLLIDING)
    failed = failures(cli, "--executor", "serial")
    assert failed == {"up/a/001": "TransformError: output key 'up/a/001/x' is also an output of 'up/a/001/x'",
                      "up/a/001/x": "TransformError: output key 'up/a/001/x' is also an output of 'up/a/001'"}
    assert "up/a/001/x" not in outputs(texts)
    # Against the units of the last run too: the unit that made up/a/001/x stays its producer.
    cli("rm", "raw/a/001")
    cli("commit", "-m", "one writer left")
    run(cli, "--executor", "serial")
    assert outputs(texts)["up/a/001/x"] == {"txt": b"from raw/a/001"}
    (texts / "raw" / "a" / "001").mkdir(exist_ok=True)
    (texts / "raw" / "a" / "001" / "x.txt").write_text("back")
    cli("add", "raw")
    cli("commit", "-m", "the other is back")
    failed = failures(cli, "--executor", "serial")
    assert failed == {"up/a/001/x": "TransformError: output key 'up/a/001/x' is also an output of 'up/a/001'"}
    assert outputs(texts)["up/a/001/x"] == {"txt": b"from raw/a/001"}


# --- declarations ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ("version=3", "upper.py: pipeline 'upper': version: must be a string"),
    ("depends=['../../outside.txt']", "depends: '../../outside.txt' is outside pipelines/"),
    ("depends=['/etc/hostname']", "depends: '/etc/hostname' is outside pipelines/"),
])
def test_declarations_the_docs_refuse_are_refused(texts: Path, cli: Cli, options: str, message: str) -> None:
    write_pipeline(texts, "upper.py", UPPER.replace('version="1"', options))
    assert message in one_error(cli, "run")


def test_an_input_at_a_revision_that_does_not_exist_names_the_pipeline(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "upper.py", UPPER.replace('input="raw/**"', 'input=pipeline.source("raw/**", rev="gone")'))
    assert one_error(cli, "run") == "Error: upper.py: pipeline 'upper': input raw/**@gone: unknown revision: 'gone'"


# --- run --watch while the branch goes away or back ---------------------------------------------
def test_watch_waits_for_a_deleted_branch_and_runs_on_a_reset_one(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "upper.py", UPPER)
    run(cli)
    with datarepo.open(texts) as repo:
        raw, ran = repo.resolve("HEAD~1"), repo.head()
        repo.refs.update("refs/heads/main", None, expected=ran, message="deleted")
    notes: list[str] = []
    reports: list[Any] = []
    looks = [0]

    def sleep(seconds: float) -> None:  # each look at the branch: the branch changes under the watch
        looks[0] += 1
        if looks[0] == 2:  # back, at the commit before the pipeline's
            with datarepo.open(texts) as repo:
                repo.refs.update("refs/heads/main", raw, expected=None, message="reset")

    runs = watch(texts, (), Options(executor="serial"), None, 0.01, 1, reports.append, sleep, notes.append)
    assert runs == 1 and len(notes) == 1 and "main names no commit" in notes[0]
    assert [(p.processed, p.reused) for p in reports[0].pipelines] == [(0, 6)]  # its outputs again, from the run cache
    assert outputs(texts)["up/a/001"] == {"txt": b"TEXT 1"}


def test_an_input_glob_of_many_stars_is_matched_in_bounded_time(worktree: Path, cli: Cli) -> None:
    """A glob whose regular expression would backtrack for hours over a long name (eight
    stars in one name) plans, runs and answers lineage at once."""
    cli("init")
    (worktree / "raw").mkdir()
    (worktree / "raw" / ("a" * 150 + ".txt")).write_text("long")
    (worktree / "raw" / "aaaaaaaaab.txt").write_text("match")
    cli("add", "raw")
    cli("commit", "-m", "raw")
    write_pipeline(worktree, "stars.py", UPPER.replace('input="raw/**"', 'input="raw/*a*a*a*a*a*a*a*a*b"'))
    assert run(cli)["upper"]["processed"] == 1
    (worktree / "raw" / ("a" * 149 + "c.txt")).write_text("long too")  # planned by difference
    cli("add", "raw")
    cli("commit", "-m", "more")
    assert run(cli)["upper"]["processed"] == 0
    assert outputs(worktree) == {"up/aaaaaaaaab": {"txt": b"MATCH"}}
    assert "raw/aaaaaaaaab" in cli("lineage", "up/aaaaaaaaab").output
