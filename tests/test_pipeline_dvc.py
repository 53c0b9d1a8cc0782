"""``datarepo export-dvc``: the real ``dvc repro`` and ``dvc dag`` drive the pipelines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Cli
from tests.test_pipelines import REVERSE, UPPER, commit_raw, write_pipeline, write_texts

BIN = Path(sys.executable).parent


def dvc(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "DATAREPO_AUTHOR": "Test <test@example.com>"}
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def report(root: Path, name: str) -> dict[str, int]:
    return json.loads((root / ".datarepo-dvc" / f"{name}.json").read_text())["pipelines"][0]


def test_dvc_repro_and_dag_drive_the_pipelines(worktree: Path, cli: Cli) -> None:
    cli("init", "--shard-size", "16K")
    write_texts(worktree, 20)
    commit_raw(cli)
    write_pipeline(worktree, "upper.py", UPPER)
    write_pipeline(worktree, "reverse.py", REVERSE)
    cli("export-dvc", "-o", "dvc.yaml")
    stages = (worktree / "dvc.yaml").read_text()
    assert "cmd: mkdir -p .datarepo-dvc && echo '*' > .datarepo-dvc/.datarepoignore && datarepo run upper --json" in stages
    dvc(worktree, "init", "--no-scm", "-q")

    out = dvc(worktree, "repro")
    assert out.index("Running stage 'upper'") < out.index("Running stage 'reverse'")
    assert report(worktree, "upper")["processed"] == 20 and report(worktree, "reverse")["processed"] == 20
    assert '"upper" -> "reverse"' in dvc(worktree, "dag", "--dot").replace("\t", "")
    assert ".datarepo-dvc" not in cli("status").output  # DVC's outputs, not data

    (worktree / "raw/a/001.txt").write_text("changed")
    commit_raw(cli, "change one")
    dvc(worktree, "repro")
    assert (report(worktree, "upper")["processed"], report(worktree, "upper")["reused"]) == (1, 19)
    assert report(worktree, "reverse")["processed"] == 1
