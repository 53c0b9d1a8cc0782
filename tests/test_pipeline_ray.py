"""Pipelines on the Ray executor: a real local Ray instance, the same results as local processes."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import RAY, Cli
from test_pipeline_bad_specs import EXITS, failures
from test_pipeline_errors import KILLS_ITS_WORKER, one_error
from test_pipelines import run, texts, write_pipeline  # noqa: F401 (texts: a fixture)

import datarepo

pytestmark = RAY


def test_ray_and_local_processes_give_the_same_tree_and_lineage(texts: Path, cli: Cli, tmp_path: Path, ray_cluster: object) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(texts, copy)  # (a repository of its own: no run cache shared with the first)
    assert run(cli, "--executor", "process", "--workers", "2")["upper"]["processed"] == 40
    assert run(Cli(copy), "--executor", "ray", "--workers", "2")["upper"]["processed"] == 40
    with datarepo.open(texts) as by_process, datarepo.open(copy) as by_ray:
        assert by_ray.tree().oid == by_process.tree().oid
        assert by_ray.read_commit(by_ray.head()).provenance["lineage"] == by_process.read_commit(by_process.head()).provenance["lineage"]
    assert run(Cli(copy), "--executor", "ray")["upper"] == {"processed": 0, "reused": 40, "failed": 0, "deleted": 0}


def test_a_ray_worker_killed_fails_its_batch_not_the_run(texts: Path, cli: Cli, ray_cluster: object) -> None:
    write_pipeline(texts, "upper.py", KILLS_ITS_WORKER)
    line = one_error(cli, "run", "--executor", "ray", "--workers", "2")
    assert "up/a/005: WorkerDied: the process running this batch died" in line
    with datarepo.open(texts) as repo:
        assert sum(1 for _ in repo.tree().select(prefix="up/")) == 39


def test_a_transform_raising_system_exit_on_ray_fails_its_datum_only(texts: Path, cli: Cli, ray_cluster: object) -> None:
    write_pipeline(texts, "upper.py", EXITS.format(setup="ready"))
    failed = failures(cli, "--executor", "ray", "--workers", "2")
    assert failed == {"up/a/001": ["SystemExit", "bye"], "up/b/002": ["SystemExit", "3"],
                      "up/a/003": ["KeyboardInterrupt", "not a Ctrl-C"], "up/b/004": ["GeneratorExit", "closed"]}
    with datarepo.open(texts) as repo:
        assert sum(1 for _ in repo.tree().select(prefix="up/")) == 36


def test_a_ray_cluster_that_cannot_be_reached_is_one_clear_error(worktree: Path, cli: Cli) -> None:
    cli("init")
    write_pipeline(worktree, "upper.py", "from datarepo import pipeline\n\n@pipeline(input='raw/**', output='up/')\ndef upper(d):\n    return d\n")
    (worktree / "raw").mkdir()
    (worktree / "raw" / "x.txt").write_text("x")
    cli("add", "raw")
    cli("commit", "-m", "raw")
    line = one_error(cli, "run", "--executor", "ray", "--ray-address", "127.0.0.1:9")
    assert line == "Error: cannot reach Ray at 127.0.0.1:9: Connection refused"
    with datarepo.open(worktree) as repo:
        assert [e.key for e in repo.tree()] == ["raw/x"]
