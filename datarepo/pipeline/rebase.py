"""Whether a pipeline's result may be committed on a branch that moved while it computed.

A run plans against the commit ``read`` its branch named, computes without the writer
lock, then, under it, commits on top of whatever the branch names *now*: the new head's
tree with the pipeline's output-prefix changes applied, the provenance still naming
``read`` (the commit the outputs were computed from). Commits between ``read`` and now
are the next run's: their keys differ from ``read``'s, and the next run plans the
difference from there.

That is right unless the branch moved in a way the result cannot be applied to
(:func:`conflict`): something else changed the output prefix (the prefix is the
pipeline's), another commit of the pipeline landed, the branch no longer holds the
pipeline's last commit, or an input of a unit the run writes outputs for was deleted
(its output would come back for a datum that is gone); or, whether or not the branch
moved, ``gc`` collected outputs the run reuses from an earlier run (:func:`lost_outputs`).
The driver then plans again against the new head; the batches it finished are reused,
not computed again.
"""

from __future__ import annotations

from collections.abc import Mapping

from datarepo import tree as trees
from datarepo.errors import PipelineError
from datarepo.hashing import Oid
from datarepo.pipeline.lineage import Record
from datarepo.pipeline.plan import selection_diff, tree_at
from datarepo.pipeline.spec import Spec
from datarepo.repo import Repo


class RunConflictError(PipelineError):
    """The branch kept moving under a pipeline in ways its result cannot be committed on."""


def conflict(repo: Repo, spec: Spec, changes: Mapping[str, Record | None], read: Oid | None, now: Oid | None,
             last: Oid | None) -> str | None:
    """Why ``changes`` (planned at ``read``, the pipeline's last commit there ``last``)
    cannot be committed on ``now``; None if they can."""
    if now == read:
        return None
    if now is None:
        return "the branch was deleted"
    if (why := _history(repo, spec.name, read, now, last)) is not None:
        return why
    before, after = tree_at(repo, read), tree_at(repo, now)
    for change in selection_diff(before, after, spec.output + "**"):
        return f"{change.key} (under its output prefix) was changed on the branch"
    gone = _deleted_inputs(spec, before, after, {k for r in changes.values() if r is not None and r.outputs for k, _ in r.inputs})
    if gone:
        return f"its input {min(gone)} was deleted from the branch"
    return None


def lost_outputs(repo: Repo, reused: Mapping[str, Record]) -> str | None:
    """Why results the run reuses (from an earlier run's journal or lineage) cannot be
    committed: ``gc`` took away the shards of outputs no commit named (under the writer
    lock, so that once checked they stay until the commit names them)."""
    datums = {d for r in reused.values() for _, d, _ in r.outputs}
    if lost := len(datums - repo.stored(datums)):
        return f"gc collected {lost} outputs it was to reuse from an earlier run"
    return None


def _history(repo: Repo, name: str, read: Oid | None, now: Oid | None, last: Oid | None) -> str | None:
    """Walks the first-parent history from ``now`` back to ``read``: a commit of the
    pipeline on the way must be its last one (a branch moved back to it)."""
    oid = now
    while oid is not None and oid != read:
        commit = repo.read_commit(oid)
        prov = commit.provenance
        if prov and prov.get("pipeline") == name and isinstance(prov.get("lineage"), str):
            return None if oid == last else "another commit of it landed on the branch"
        oid = commit.parents[0] if commit.parents else None
    if oid is None and last is not None:
        return "the branch no longer holds its last commit"
    return None


def _deleted_inputs(spec: Spec, before: trees.Tree, after: trees.Tree, keys: set[str]) -> set[str]:
    """Those of ``keys`` that the branch's inputs (sources without a fixed revision) held
    at ``before`` and no longer hold at ``after``."""
    gone: set[str] = set()
    if keys:
        for src in spec.sources:
            if src.rev is None:
                gone.update(c.key for c in selection_diff(before, after, src.glob) if c.new is None and c.key in keys)
    return gone
