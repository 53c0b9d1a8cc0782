"""The DAG of pipelines: a pipeline depends on another when it reads that one's output."""

from __future__ import annotations

from datarepo.errors import PipelineError
from datarepo.pipeline.spec import Spec
from datarepo.tree import glob_literal_prefix


def _overlap(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


def edges(specs: list[Spec]) -> dict[str, list[str]]:
    """Pipeline → the pipelines whose output it reads (inputs at a fixed revision excluded).

    Raises:
        PipelineError: two pipelines write the same prefix (or one inside the other).
    """
    for i, a in enumerate(specs):
        for b in specs[i + 1 :]:
            if _overlap(a.output, b.output):
                raise PipelineError(f"pipelines {a.name!r} and {b.name!r} both write under {min(a.output, b.output, key=len)!r}")
    return {s.name: sorted(u.name for u in specs if _reads(s, u.output)) for s in specs}


def _reads(spec: Spec, prefix: str) -> bool:
    """True when an input of ``spec`` (at the branch being run) can select keys under ``prefix``."""
    return any(src.rev is None and _overlap(glob_literal_prefix(src.glob), prefix) for src in spec.sources)


def order(specs: list[Spec]) -> list[Spec]:
    """``specs`` upstream first (ties by name).

    Raises:
        PipelineError: a cycle (a pipeline that reads its own output, or a loop).
    """
    deps = edges(specs)
    by_name = {s.name: s for s in specs}
    done: list[str] = []
    left = dict(deps)
    while left:
        ready = sorted(n for n, d in left.items() if all(x in done for x in d))
        if not ready:
            raise PipelineError(f"the pipelines form a cycle (each reads the next one's output): {' -> '.join(_cycle(left))}")
        done.append(ready[0])
        del left[ready[0]]
    return [by_name[n] for n in done]


def _cycle(left: dict[str, list[str]]) -> list[str]:
    path = [min(left)]
    while True:
        nxt = min(d for d in left[path[-1]] if d in left)
        if nxt in path:
            return path[path.index(nxt) :] + [nxt]
        path.append(nxt)
