"""``datarepo export-dvc``: ``dvc.yaml`` stages that call ``datarepo run``.

One stage per pipeline, in DAG order. Its command runs the one pipeline and writes the
run's JSON report to ``.datarepo-dvc/NAME.json``, the stage's output (not cached by DVC:
the data stays in datarepo; nor versioned by datarepo: the folder's ``.datarepoignore``
leaves it out). Its dependencies are the pipeline's file (and the files it
declares it depends on), the branch's ref file (it moves with every commit, so DVC calls
the stage again when the input may have changed; datarepo then computes only what did),
and the reports of the pipelines it reads from: so ``dvc dag`` draws the same DAG and
``dvc repro`` runs the stages upstream first.
"""

from __future__ import annotations

import json
from pathlib import Path

from datarepo.errors import PipelineError
from datarepo.pipeline import dag
from datarepo.pipeline.run import pipelines_folder
from datarepo.pipeline.spec import load_specs
from datarepo.repo import Repo

REPORTS = ".datarepo-dvc"
# The reports' folder ignores itself, as the repository's own folder does for git: they are
# DVC's outputs, not data, and a run (every `dvc repro`) changes them.
_MAKE_REPORTS = f"mkdir -p {REPORTS} && echo '*' > {REPORTS}/.datarepoignore"


def dvc_yaml(repo: Repo, folder: str | Path | None = None) -> str:
    """The text of a ``dvc.yaml`` for the pipelines of ``folder``."""
    root = repo.require_worktree()
    where = pipelines_folder(repo, folder)
    specs = dag.order(load_specs(where))
    edges = dag.edges(specs)
    branch = repo.current_branch()
    if branch is None:
        raise PipelineError("export-dvc needs a branch checked out (HEAD is detached)")
    ref = (repo.dotdir / "refs" / "heads" / branch).relative_to(root).as_posix()
    rel = _relative(where, root)
    option = f" --pipelines {rel}" if rel != repo.config.pipelines_dir else ""
    lines = ["stages:"]
    for spec in specs:
        files = [f"{rel}/{spec.file}"] + [f"{rel}/{d}" for d in spec.depends if (where / d).is_file()]
        deps = files + [ref] + [f"{REPORTS}/{u}.json" for u in edges[spec.name]]
        lines += [
            f"  {spec.name}:",
            f"    cmd: {_MAKE_REPORTS} && datarepo run {spec.name}{option} --json > {REPORTS}/{spec.name}.json",
            "    deps:",
            *[f"      - {json.dumps(d)}" for d in deps],
            "    outs:",
            f"      - {json.dumps(f'{REPORTS}/{spec.name}.json')}:",
            "          cache: false",
        ]
    return "\n".join(lines) + "\n"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise PipelineError(f"the pipelines folder {path} is not in the work tree") from None
