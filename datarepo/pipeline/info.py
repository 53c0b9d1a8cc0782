"""What ``datarepo pipelines`` and ``datarepo dag`` show: each pipeline, its state, its edges."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datarepo.pipeline import dag
from datarepo.pipeline.fingerprint import fingerprint
from datarepo.pipeline.lineage import read_root
from datarepo.pipeline.query import states
from datarepo.pipeline.run import pipelines_folder
from datarepo.pipeline.spec import load_specs
from datarepo.repo import Repo


@dataclass(frozen=True)
class PipelineInfo:
    name: str
    kind: str
    file: str
    fingerprint: str  # as declared now
    current: bool  # the last run had this fingerprint
    input: str
    output: str
    upstream: tuple[str, ...]  # the pipelines whose output it reads
    run: str  # the id of the last run that committed for it ("" if none)
    commit: str
    units: int
    outputs: int
    failed: int

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "upstream": list(self.upstream)}


def describe(repo: Repo, folder: str | Path | None = None) -> list[PipelineInfo]:
    """The pipelines of ``folder``, in DAG order, with their last runs on the current branch."""
    where = pipelines_folder(repo, folder)
    specs = dag.order(load_specs(where))
    edges = dag.edges(specs)
    found = {s.name: s for s in states(repo, repo.head(), {s.name for s in specs})}
    rows = []
    for spec in specs:
        fp = fingerprint(spec, where)
        state = found.get(spec.name)
        root = read_root(repo.store, state.provenance["lineage"]) if state else None
        rows.append(PipelineInfo(
            spec.name, spec.kind, spec.file, fp, root is not None and root.fingerprint == fp, spec.input.label,
            spec.output, tuple(edges[spec.name]), str(state.provenance.get("run", "")) if state else "",
            state.commit if state else "", root.count if root else 0, root.outputs if root else 0,
            len(root.failed) if root else 0,
        ))
    return rows


def dot(rows: list[PipelineInfo]) -> str:
    """The DAG in Graphviz's dot language: raw inputs as folders, pipelines as boxes."""
    lines = ["digraph pipelines {", "  rankdir=LR;", "  node [shape=box];"]
    for r in rows:
        label = f"{r.name}\\n{r.units} in, {r.outputs} out" + (f", {r.failed} failed" if r.failed else "")
        lines.append(f'  "{r.name}" [label="{label}"];')
        if r.upstream:
            lines += [f'  "{u}" -> "{r.name}";' for u in r.upstream]
        else:
            lines.append(f'  "{r.input}" [shape=folder];')
            lines.append(f'  "{r.input}" -> "{r.name}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
