"""Pipelines end to end through the CLI: incremental runs, the run cache, lineage, runs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import datarepo
from tests.conftest import Cli

UPPER = '''
from datarepo import pipeline

@pipeline(input="raw/**", output="up/", version="1")
def upper(datum):
    if datum["txt"].startswith(b"bad"):
        raise ValueError("cannot take " + datum["__key__"])
    return {"txt": datum["txt"].upper()}
'''

REVERSE = '''
from datarepo import pipeline

@pipeline(input="up/**", output="rev/", version="1")
def reverse(datum):
    return {"txt": datum["txt"][::-1], "n": str(len(datum["txt"]))}
'''


def write_pipeline(root: Path, name: str, text: str) -> None:
    (root / "pipelines").mkdir(exist_ok=True)
    (root / "pipelines" / name).write_text(textwrap.dedent(text))


def write_texts(root: Path, n: int, start: int = 0, word: str = "text") -> None:
    for i in range(start, start + n):
        path = root / "raw" / ("a" if i % 2 else "b") / f"{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{word} {i}")


def commit_raw(cli: Cli, message: str = "raw") -> None:
    cli("add", "raw")
    cli("commit", "-m", message)


def committed_texts(worktree: Path, cli: Cli, n: int) -> Path:
    """A new repository of small shards whose first commit holds ``n`` texts under raw/."""
    cli("init", "--shard-size", "16K")
    write_texts(worktree, n)
    commit_raw(cli)
    return worktree


def counts(line: str) -> dict[str, int]:
    """``name: 3 processed, 2 reused, ...`` → {"processed": 3, ...}"""
    body = line.split(": ", 1)[1].split(" -> ")[0].split(" (")[0]
    return {part.split()[1]: int(part.split()[0]) for part in body.split(", ")}


def run(cli: Cli, *args: str, ok: bool = True) -> dict[str, dict[str, int]]:
    out = cli("run", *args, ok=ok).output
    return {line.split(":")[0]: counts(line) for line in out.splitlines() if " processed, " in line}


@pytest.fixture
def texts(worktree: Path, cli: Cli) -> Path:
    cli("init", "--shard-size", "16K")
    write_texts(worktree, 40)
    commit_raw(cli)
    write_pipeline(worktree, "upper.py", UPPER)
    return worktree


def test_first_run_then_only_changes_are_processed(texts: Path, cli: Cli) -> None:
    first = run(cli)["upper"]
    assert first == {"processed": 40, "reused": 0, "failed": 0, "deleted": 0}
    with datarepo.open(texts) as repo:
        tree = repo.tree()
        assert repo.read(tree["up/a/001"].datum) == {"txt": b"TEXT 1"}
        assert sum(1 for _ in tree.select(prefix="up/")) == 40
        prov = repo.read_commit(repo.head()).provenance
        assert prov["pipeline"] == "upper" and set(prov) >= {"fingerprint", "inputs", "lineage", "run"}

    assert run(cli)["upper"] == {"processed": 0, "reused": 40, "failed": 0, "deleted": 0}  # no-op
    (texts / "raw/a/001.txt").write_text("changed")
    (texts / "raw/b/002.txt").unlink()
    write_texts(texts, 2, start=100)
    commit_raw(cli, "change")
    dry = cli("run", "--dry-run").output
    assert "would process 3 (1 changed, 2 new)" in dry and "delete 1" in dry
    assert run(cli)["upper"] == {"processed": 3, "reused": 38, "failed": 0, "deleted": 1}
    with datarepo.open(texts) as repo:
        tree = repo.tree()
        assert repo.read(tree["up/a/001"].datum) == {"txt": b"CHANGED"}
        assert "up/b/002" not in tree and "up/a/101" in tree
        assert sum(1 for _ in tree.select(prefix="up/")) == 41
    for raw, out in (("raw/b/004", "up/b/004"), ("raw/a/001", "up/a/001"), ("raw/a/101", "up/a/101")):  # kept, changed, new
        assert [c["key"] for c in json.loads(cli("lineage", raw, "--downstream", "--json").output)["links"]] == [out]


def test_a_first_run_owns_its_prefix(texts: Path, cli: Cli) -> None:
    with datarepo.open(texts) as repo, repo.lock:
        with repo.writer() as w:
            w.put("up/stale", {"txt": b"left by hand"})
        repo.commit(w.entries, "something under up/")
    run(cli)
    with datarepo.open(texts) as repo:
        keys = {e.key for e in repo.tree().select(prefix="up/")}
    assert "up/stale" not in keys and len(keys) == 40


def test_no_op_run_makes_no_commit(texts: Path, cli: Cli) -> None:
    run(cli)
    with datarepo.open(texts) as repo:
        head = repo.head()
    assert "nothing to commit" in cli("run").output
    with datarepo.open(texts) as repo:
        assert repo.head() == head


def test_code_change_reprocesses_everything_and_reverting_reuses(texts: Path, cli: Cli) -> None:
    run(cli)
    write_pipeline(texts, "upper.py", UPPER.replace('version="1"', 'version="2"'))
    assert "would process 40 (40 code)" in cli("run", "--dry-run").output
    assert run(cli)["upper"]["processed"] == 40
    write_pipeline(texts, "upper.py", UPPER)  # back to version 1: its results are in the run cache
    assert run(cli)["upper"] == {"processed": 0, "reused": 40, "failed": 0, "deleted": 0}


def test_failures_are_recorded_reported_and_retried(texts: Path, cli: Cli) -> None:
    (texts / "raw/a/003.txt").write_text("bad one")
    commit_raw(cli, "one bad")
    result = cli("run", ok=False)
    assert result.exit_code == 1
    assert "Error: 1 datum(s) failed, first upper up/a/003: ValueError: cannot take raw/a/003" in result.output
    with datarepo.open(texts) as repo:
        tree = repo.tree()
        assert "up/a/003" not in tree and sum(1 for _ in tree.select(prefix="up/")) == 39  # the others are committed
    assert "would process 1 (1 failed)" in cli("run", "--dry-run").output
    (texts / "raw/a/003.txt").write_text("fixed")
    commit_raw(cli, "fix")
    assert run(cli)["upper"] == {"processed": 1, "reused": 39, "failed": 0, "deleted": 0}


@pytest.mark.parametrize("how", ["--fail-fast", "max_failures=0"])
def test_fail_fast_and_max_failures_commit_nothing(texts: Path, cli: Cli, how: str) -> None:
    (texts / "raw/a/003.txt").write_text("bad one")
    commit_raw(cli, "one bad")
    if how != "--fail-fast":
        write_pipeline(texts, "upper.py", UPPER.replace('version="1"', 'version="1", max_failures=0'))
    with datarepo.open(texts) as repo:
        head = repo.head()
    result = cli("run", *([how] if how == "--fail-fast" else []), "--executor", "serial", ok=False)
    why = "--fail-fast" if how == "--fail-fast" else "more than max_failures=0 failed"
    assert result.exit_code == 1 and f"up/a/003: ValueError: cannot take raw/a/003 ({why}; nothing committed)" in result.output
    with datarepo.open(texts) as repo:
        assert repo.head() == head


def test_retries_within_a_run(texts: Path, cli: Cli, tmp_path: Path) -> None:
    tries = tmp_path / "tries"
    tries.mkdir()
    write_pipeline(texts, "upper.py", f'''
        import os
        from datarepo import pipeline

        @pipeline(input="raw/**", output="up/", retries=2)
        def upper(datum):
            mark = os.path.join({str(tries)!r}, datum["__key__"].replace("/", "_"))
            open(mark, "a").write("x")
            if len(open(mark).read()) < 3:
                raise OSError("flaky")
            return {{"txt": datum["txt"]}}
    ''')
    assert run(cli)["upper"] == {"processed": 40, "reused": 0, "failed": 0, "deleted": 0}
    assert {p.read_text() for p in tries.iterdir()} == {"xxx"} and len(list(tries.iterdir())) == 40


def test_dag_lineage_upstream_and_downstream(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "reverse.py", REVERSE)
    out = run(cli)
    assert out["upper"]["processed"] == 40 and out["reverse"]["processed"] == 40
    up = json.loads(cli("lineage", "rev/a/005", "--json").output)
    assert (up["pipeline"], up["key"]) == ("reverse", "rev/a/005")
    (mid,) = up["links"]
    assert (mid["pipeline"], mid["key"]) == ("upper", "up/a/005")
    (raw,) = mid["links"]
    assert raw["key"] == "raw/a/005" and "pipeline" not in raw and raw["links"] == []
    with datarepo.open(texts) as repo:
        assert raw["datum"] == repo.tree()["raw/a/005"].datum
        assert mid["fingerprint"] == repo.read_commit(mid["commit"]).provenance["fingerprint"]
    down = json.loads(cli("lineage", "raw/a/005", "--downstream", "--json").output)
    assert [c["key"] for c in down["links"]] == ["up/a/005"]
    assert [c["key"] for c in down["links"][0]["links"]] == ["rev/a/005"]
    text = cli("lineage", "rev/a/005").output
    assert "raw/a/005" in text and "[upper" in text and "[raw]" in text


def test_lineage_index_is_rebuilt_from_objects(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "reverse.py", REVERSE)
    run(cli)
    (texts / ".datarepo" / "index.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (texts / ".datarepo" / f"index.sqlite{suffix}").unlink(missing_ok=True)
    down = json.loads(cli("lineage", "raw/b/010", "--downstream", "--json").output)
    assert [c["key"] for c in down["links"]] == ["up/b/010"]
    assert run(cli)["upper"] == {"processed": 0, "reused": 40, "failed": 0, "deleted": 0}


def test_show_run_lists_its_commits(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "reverse.py", REVERSE)
    out = json.loads(cli("run", "--json").output)
    run_id = out["run"]
    shown = cli("show", run_id).output.splitlines()
    assert len(shown) == 2 and "reverse" in shown[0] and "upper" in shown[1]
    with datarepo.open(texts) as repo:
        assert {line.split()[0] for line in shown} == {repo.head(), repo.resolve("HEAD~1")}
    assert cli("show", "run-00000000T000000-000000", ok=False).exit_code == 1


def test_outputs_deleted_by_hand_are_restored(texts: Path, cli: Cli) -> None:
    run(cli)
    with datarepo.open(texts) as repo, repo.lock:
        repo.commit({"up/a/001": None, "up/a/003": None}, "oops")
    line = cli("run").output
    assert "2 outputs restored" in line
    with datarepo.open(texts) as repo:
        assert sum(1 for _ in repo.tree().select(prefix="up/")) == 40


def test_gc_keeps_lineage_and_fsck_checks_it(texts: Path, cli: Cli) -> None:
    run(cli)
    (texts / "raw/a/001.txt").write_text("changed")
    commit_raw(cli, "change")
    run(cli)
    cli("gc")
    fsck = cli("fsck").output
    assert "0 problems" in fsck
    assert run(cli)["upper"]["processed"] == 0
    assert json.loads(cli("lineage", "up/a/001@HEAD~2", "--json").output)["links"][0]["key"] == "raw/a/001"
    down = json.loads(cli("lineage", "raw/b/002", "--downstream", "--json").output)
    assert [c["key"] for c in down["links"]] == ["up/b/002"]


def test_serial_and_process_executors_give_the_same_tree(texts: Path, cli: Cli) -> None:
    cli("branch", "other")
    run(cli, "--executor", "process", "--workers", "2")
    with datarepo.open(texts) as repo:
        by_process = repo.tree().oid
    cli("checkout", "other")
    run(cli, "--executor", "serial")
    with datarepo.open(texts) as repo:
        assert repo.tree().oid == by_process


def test_pipelines_and_dag_listings(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "reverse.py", REVERSE)
    assert "never run" in cli("pipelines").output
    run(cli)
    rows = json.loads(cli("pipelines", "--json").output)
    assert [(r["name"], r["units"], r["outputs"], r["current"]) for r in rows] == [("upper", 40, 40, True), ("reverse", 40, 40, True)]
    assert rows[1]["upstream"] == ["upper"] and rows[0]["input"] == "raw/**"
    dot = cli("dag", "--format", "dot").output
    assert '"upper" -> "reverse";' in dot and '"raw/**" -> "upper";' in dot and "40 in, 40 out" in dot
    assert "reverse: upper -> rev/  (40 in, 40 out, 0 failed)" in cli("dag").output


def test_fsck_reports_a_malformed_lineage_record(texts: Path, cli: Cli) -> None:
    from datarepo.objects import Blob

    with datarepo.open(texts) as repo, repo.lock:
        page = repo.store.put_object(Blob({"format": 1, "type": "lineage-page",
                                           "records": [["up/x", "not-a-cache-key", [], [], None, None]]}))
        root = repo.store.put_object(Blob({"format": 1, "type": "lineage", "pipeline": "p", "fingerprint": "0" * 32,
                                           "input": "raw/**", "output": "up/", "inputs": {}, "pages": [["up/x", 1, page]],
                                           "failed": [], "outputs": 0}))
        repo.commit({}, "a bad lineage", provenance={"pipeline": "p", "fingerprint": "0" * 32, "inputs": {},
                                                      "lineage": root, "run": "run-x", "output": "up/"})
    result = cli("fsck", ok=False)
    assert result.exit_code == 1 and f"corrupt object {page}: bad lineage record for 'up/x'" in result.output
