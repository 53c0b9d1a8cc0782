"""``datarepo run``: the driver (DESIGN §5).

Holding the run lock and its pin (:mod:`~datarepo.pipeline.pin`), not the writer lock,
for each pipeline in DAG order: plan (:mod:`~datarepo.pipeline.plan`) against the commit
the branch names, cut the units to compute into batches, map
:func:`~datarepo.pipeline.worker.run_batch` over them with an executor, adopt the shards
each batch published and note the journal object in which the batch wrote its records (so
a run interrupted later does not lose them). Then, under the writer lock only, write the
new lineage and one commit on top of what the branch names by then
(:mod:`~datarepo.pipeline.rebase`), whose ``provenance`` names the pipeline, its
fingerprint, the input commits read, the lineage root and the run's id. The branch moves
only at that commit, by compare-and-swap: a run interrupted (Ctrl-C, SIGKILL) leaves it
where it was, and the next run reuses every batch the interrupted one finished.

Outputs are committed on the branch the inputs are read from, under the pipeline's output
prefix, beside the raw data (as Pachyderm's output branch, but one tree).
"""

from __future__ import annotations

import contextlib
import gc
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from datarepo import executor as executors
from datarepo.errors import PipelineError
from datarepo.hashing import Oid
from datarepo.objects import Blob, TreeEntry
from datarepo.pipeline import dag, rebase
from datarepo.pipeline.cache import LineageCache
from datarepo.pipeline.fingerprint import fingerprint
from datarepo.pipeline.heads import heads
from datarepo.pipeline.lineage import Record, Root, read_root, update_pages
from datarepo.pipeline.pin import RunInProgressError, RunPin
from datarepo.pipeline.plan import Plan, make_plan, tree_at
from datarepo.pipeline.query import output_prefixes
from datarepo.pipeline.spec import Spec, load_specs
from datarepo.pipeline.worker import Batch, Outcome, Unit, run_batch, worker_died
from datarepo.refs import BRANCHES, HEAD
from datarepo.repo import Repo
from datarepo.write import adopt

BATCH_MAX = 5000
BATCH_MIN = 128
MANIFEST_FROM = 4096  # datums to locate from which the inputs' manifests are built
BATCH_BYTES = 64 << 20
FAILURES_SHOWN = 5
REPLANS = 3  # times a pipeline is planned again when the branch moved under it in a way it cannot commit on


@dataclass(frozen=True)
class Options:
    executor: str = "process"
    workers: int | None = None
    address: str | None = None
    dry_run: bool = False
    fail_fast: bool = False


@dataclass
class PipelineResult:
    """What a run did for one pipeline."""

    name: str
    fingerprint: str
    processed: int = 0
    reused: int = 0
    failed: int = 0
    deleted: int = 0
    dropped: int = 0
    repaired: int = 0
    commit: Oid | None = None
    reasons: dict[str, int] = field(default_factory=dict)  # (dry run) why units would be computed
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (base, error class, message), the first few

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "failures": [list(f) for f in self.failures]}


@dataclass(frozen=True)
class RunResult:
    run: str
    pipelines: list[PipelineResult]
    head: Oid | None = None  # what the branch named after the run's last commit (or when it last read it)
    behind: bool = False  # other commits landed on the branch during the run: the next run has work

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.pipelines)


def pipelines_folder(repo: Repo, folder: str | Path | None = None) -> Path:
    if folder is not None:
        return Path(folder).resolve()
    return repo.require_worktree() / repo.config.pipelines_dir


def chosen(specs: list[Spec], names: tuple[str, ...] | list[str]) -> list[Spec]:
    """``specs`` in DAG order (every spec is checked), only those named if any are."""
    ordered = dag.order(specs)
    if names:
        known = {s.name for s in specs}
        if unknown := [n for n in names if n not in known]:
            raise PipelineError(f"no pipeline named {unknown[0]!r} (known: {', '.join(sorted(known)) or 'none'})")
        ordered = [s for s in ordered if s.name in names]
    return ordered


_RUN_ID = re.compile(r"run-\d{8}T\d{6}-[0-9a-f]{6}")


def new_run_id(repo: Repo) -> str:
    stamp = repo.now().replace("-", "").replace(":", "")[:15]
    return f"run-{stamp}-{secrets.token_hex(3)}"


def is_run_id(text: str) -> bool:
    """Whether ``text`` has the form :func:`new_run_id` gives (a branch may be named run-x)."""
    return _RUN_ID.fullmatch(text) is not None


def run(repo: Repo, names: tuple[str, ...] = (), options: Options = Options(), folder: str | Path | None = None) -> RunResult:
    """Runs the pipelines of ``folder`` (default: ``pipelines/`` of the work tree), on the
    current branch. It holds the run lock throughout (another run waits, then stops) and
    the writer lock only to commit; a dry run holds neither."""
    where = pipelines_folder(repo, folder)
    every = load_specs(where)
    specs = chosen(every, names)
    run_id = new_run_id(repo)
    branch = repo.current_branch()
    results = []
    with contextlib.nullcontext() if options.dry_run else RunPin(repo.dotdir, run_id) as pin:
        driver = _Driver(repo, where, run_id, options, pin, BRANCHES + branch if branch else HEAD)
        driver.outputs = frozenset(s.output for s in every)
        try:
            for spec in specs:
                results.append(driver.run_one(spec))
        finally:
            driver.close()
    return RunResult(run_id, results, driver.head, driver.behind)


def previous_state(repo: Repo, head: Oid | None, name: str) -> tuple[Oid, Root] | None:
    """The last commit of pipeline ``name`` on the first-parent history of ``head``, with its
    lineage root."""
    state = next((s for s in heads(repo, head) if s.name == name), None)
    return None if state is None else (state.commit, read_root(repo.store, state.provenance["lineage"]))


class _Driver:
    def __init__(self, repo: Repo, folder: Path, run_id: str, options: Options, pin: RunPin | None, ref: str) -> None:
        self.repo, self.folder, self.run_id, self.options = repo, folder, run_id, options
        self.pin, self.ref = pin, ref  # the run's pin (None for a dry run); the ref it commits on
        self.cache = LineageCache(repo.index, repo.store)
        self._executors: dict[int, executors.Executor] = {}  # by worker count
        self.head: Oid | None = None  # the branch as the run last saw it
        self.behind = False
        self._seen = False
        self.outputs: frozenset[str] = frozenset()  # the output prefixes of the whole DAG

    def close(self) -> None:
        for executor in self._executors.values():
            executor.close()

    def executor(self, spec: Spec) -> executors.Executor:
        """The executor for a pipeline: ``--workers``, else the pipeline's ``workers``, else
        one a core; one of each size for the whole run."""
        o = self.options
        workers = o.workers or spec.workers or executors.worker_count()
        if workers not in self._executors:
            try:  # a batch whose worker died is recorded as failed, never run here
                self._executors[workers] = executors.open_executor(o.executor, workers, o.address, lost=worker_died)
            except (ImportError, ConnectionError) as e:  # not installed, or no cluster at the address
                raise PipelineError(f"the {o.executor} executor is not available: {e}") from None
        return self._executors[workers]

    def run_one(self, spec: Spec) -> PipelineResult:
        """Plans, computes and commits one pipeline; plans again (its finished batches are
        reused) when the branch moved under it in a way it cannot commit on."""
        fp = fingerprint(spec, self.folder)
        for _ in range(REPLANS + 1):
            head = self._read_head()
            previous = previous_state(self.repo, head, spec.name)
            plan = make_plan(self.repo, spec, fp, head, previous, self.cache)
            result = PipelineResult(spec.name, fp, reasons=dict(plan.reasons()))
            if self.options.dry_run or plan.idle:
                return _planned(result, plan, previous[1] if previous else None)
            if self.pin is not None:  # (a source at a fixed revision too: gc keeps what the workers read)
                self.pin.add([head, *plan.inputs.values()])
            done = self._compute(spec, plan)
            done = _without_collisions(plan, done)
            changes = {**plan.reuse, **{r.base: r for r in done}, **{b: None for b in plan.deleted}}
            self._tally(result, plan, done)
            with self.repo.lock:
                now = self.repo.refs.read(self._ref_now())
                why = (rebase.conflict(self.repo, spec, changes, head, now, previous[0] if previous else None)
                       or rebase.lost_outputs(self.repo, plan.reuse))
                if why is None:
                    result.commit = self._commit(spec, plan, changes, now, result)
                    self.head, self.behind = result.commit or now, self.behind or now != head
                    return result
        raise rebase.RunConflictError(f"{spec.name}: {why} while it computed, {REPLANS + 1} times in a row; "
                                      "nothing committed for it (its finished batches are kept for the next run)")

    def _read_head(self) -> Oid | None:
        """What the branch names now; noting whether it moved since the run last looked."""
        head = self.repo.refs.read(self._ref_now())
        if self._seen and head != self.head:
            self.behind = True  # a commit not the run's own landed since it last looked
        self.head, self._seen = head, True
        return head

    def _ref_now(self) -> str:
        """The ref to read and move: HEAD while it still points at the run's branch (so
        that HEAD's reflog has the commit, as any other), else the branch itself (a
        ``checkout`` meanwhile does not take the run's commits to another branch)."""
        symbolic = self.repo.refs.read_symbolic(HEAD)
        if self.ref == HEAD and symbolic is not None:
            raise rebase.RunConflictError("HEAD was moved to a branch while the run computed; nothing more committed: run again")
        return HEAD if self.ref in (HEAD, symbolic) else self.ref

    # computing ------------------------------------------------------------------------------
    def _compute(self, spec: Spec, plan: Plan) -> list[Record]:
        """Maps the batches; the units of a batch of several whose worker died are run
        again, in two halves (and so on), so that only a unit that kills its worker fails
        with it, not the others it shared a batch with."""
        if not plan.todo:
            return []
        batches = self._batches(spec, plan)
        records: list[Record] = []
        failures = 0
        while batches:
            again: list[Batch] = []
            outcomes = self.executor(spec).map(run_batch, batches)
            try:
                for batch, outcome in zip(batches, outcomes):
                    if outcome.died and len(batch.units) > 1:
                        again.extend(_halves(batch))
                        continue
                    self._keep(spec, plan, outcome)
                    records.extend(outcome.records)
                    failures += sum(1 for r in outcome.records if not r.ok)
                    self._stop_early(spec, outcome, failures)
            finally:
                if hasattr(outcomes, "close"):
                    outcomes.close()  # (on an error: the batches still running are not wanted)
            batches = again
        return records

    def _keep(self, spec: Spec, plan: Plan, outcome: Outcome) -> None:
        """Adopts a finished batch's shards and notes its journal."""
        adopt(self.repo, outcome.shards, set())
        if outcome.journal:
            self.cache.add_journal(spec.name, outcome.journal)

    def _stop_early(self, spec: Spec, outcome: Outcome, failures: int) -> None:
        first = next((r for r in outcome.records if not r.ok), None)
        if first is None:
            return
        limit = spec.max_failures
        if self.options.fail_fast or (limit is not None and failures > limit):
            why = "--fail-fast" if self.options.fail_fast else f"more than max_failures={limit} failed"
            kind, message = first.error  # type: ignore[misc]
            raise PipelineError(f"{spec.name}: {first.base}: {kind}: {message} ({why}; nothing committed)")

    def _batches(self, spec: Spec, plan: Plan) -> list[Batch]:
        places = self._locate(plan, {d for _, _, inputs in plan.todo for _, d in inputs})
        units = sorted(plan.todo, key=lambda u: places[u[2][0][1]][:2] if u[2] else ("", 0))
        workers = self.executor(spec).workers
        # Four batches a worker (each ends near the others), but not many small ones: each
        # writes a shard and a journal. At most BATCH_MAX units or BATCH_BYTES of input.
        n = len(units)
        share = max(math.ceil(n / (workers * 4)), min(BATCH_MIN, math.ceil(n / workers)))
        size = spec.batch_size or max(1, min(BATCH_MAX, share))
        batches, start, held = [], 0, 0
        for i, unit in enumerate(units):
            held += sum(places[d][2] for _, d in unit[2])
            if i + 1 - start >= size or held >= BATCH_BYTES or i + 1 == len(units):
                batches.append(self._batch(spec, plan, units[start : i + 1], places))
                start, held = i + 1, 0
        return batches

    def _locate(self, plan: Plan, datums: set[str]) -> dict[str, tuple[str, int, int]]:
        """Datum → (shard, offset, length): from the inputs' manifests when there are many
        (a first run), else one lookup a datum."""
        out: dict[str, tuple[str, int, int]] = {}
        if len(datums) > MANIFEST_FROM:
            for src in plan.spec.sources:
                m = self.repo.manifest(tree_at(self.repo, plan.inputs[src.label]).select(glob=src.glob))
                columns = zip(m.datums.tolist(), m.shard_index.tolist(), m.offsets.tolist(), m.lengths.tolist())
                for raw, shard, offset, length in columns:
                    if (datum := raw.decode()) in datums:
                        out[datum] = (m.shards[shard], offset, length)
        for datum in datums - out.keys():
            shard, loc = self.repo.locate(datum)
            out[datum] = (shard, loc.offset, loc.length)
        return out

    def _batch(self, spec: Spec, plan: Plan, units: list[Unit], places: dict[str, tuple[str, int, int]]) -> Batch:
        by_shard: dict[str, set[tuple[str, int, int]]] = {}
        for _, _, inputs in units:
            for _, d in inputs:
                shard, offset, length = places[d]
                by_shard.setdefault(shard, set()).add((d, offset, length))
        reads = [(shard, sorted(spans, key=lambda s: s[1])) for shard, spans in sorted(by_shard.items())]
        repo = self.repo
        folder, shard_size = str(self.folder), repo.config.shard_size
        return Batch(str(repo.dotdir), folder, spec.file, spec.name, plan.fingerprint, units, reads, shard_size)

    # committing -------------------------------------------------------------------------------
    def _tally(self, result: PipelineResult, plan: Plan, done: list[Record]) -> None:
        failed = [r for r in done if not r.ok]
        result.processed = len(done) - len(failed)
        result.failed = len(failed)
        result.dropped = sum(1 for r in done if r.ok and r.dropped is not None)
        result.deleted = len(plan.deleted)
        result.repaired = len(plan.repair)
        result.failures = [(r.base, *r.error) for r in failed[:FAILURES_SHOWN]]  # type: ignore[misc]

    def _commit(
        self, spec: Spec, plan: Plan, changes: dict[str, Record | None], head: Oid | None, result: PipelineResult
    ) -> Oid | None:
        """Writes the lineage and one commit on ``head`` (what the branch names now, under the
        writer lock) with the pipeline's output-prefix changes, by compare-and-swap."""
        repo = self.repo
        reader = plan.previous
        tree_changes: dict[str, TreeEntry | None] = dict(plan.repair)
        if reader is None:  # a first run: the prefix is the pipeline's, and what it holds goes
            tree_changes.update((e.key, None) for e in tree_at(repo, head).select(prefix=spec.output))
        outputs = reader.root.outputs if reader is not None else 0
        for base, new in changes.items():
            if (old := plan.old.get(base)) is not None:
                for key, _, _ in old.keys():
                    tree_changes[key] = None
                outputs -= len(old.outputs)
            if new is not None:
                for key, datum, size in new.keys():
                    tree_changes[key] = TreeEntry(key, Oid(datum), size)
                outputs += len(new.outputs)
        failed = set(reader.root.failed) if reader is not None else set()
        failed = (failed - set(changes)) | {b for b, r in changes.items() if r is not None and not r.ok}
        placed: dict[str, str] = {}
        pages = update_pages(reader, repo.store, changes, placed)
        root = Root(spec.name, plan.fingerprint, spec.input.label, spec.output,
                    {k: v for k, v in plan.inputs.items() if v is not None}, pages, tuple(sorted(failed)), outputs)
        result.reused = root.count - result.processed - result.failed
        if not tree_changes and reader is not None and (pages, root.failed) == (reader.root.pages, reader.root.failed):
            self.cache.clear_journals(spec.name)
            return None  # (the same failures again): no commit that changes nothing
        lineage = repo.store.put_object(Blob(root.to_json()))
        outputs = sorted(self.outputs | {spec.output} | set(output_prefixes(repo, head)))
        provenance = {"pipeline": spec.name, "fingerprint": plan.fingerprint, "inputs": root.inputs,
                      "lineage": lineage, "run": self.run_id, "output": spec.output, "outputs": outputs}
        message = (f"{spec.name}: {result.processed} processed, {result.reused} reused, {result.failed} failed, "
                   f"{result.deleted} deleted ({self.run_id})")
        commit = repo.commit(tree_changes, message, provenance=provenance, parent=head, ref=self._ref_now())
        if reader is not None:  # (its records must be indexed before the few written here are)
            self.cache.index_pages(p[2] for p in reader.root.pages)
        self.cache.index_written(placed, changes)
        self.cache.clear_journals(spec.name)
        _mark_sparse(repo, spec.output)
        return commit


def _halves(batch: Batch) -> list[Batch]:
    """The units of ``batch`` in two batches, each reading only its own inputs."""
    mid = len(batch.units) // 2
    out = []
    for units in (batch.units[:mid], batch.units[mid:]):
        datums = {d for _, _, inputs in units for _, d in inputs}
        reads = [(shard, kept) for shard, spans in batch.reads if (kept := [s for s in spans if s[0] in datums])]
        out.append(replace(batch, units=units, reads=reads))
    return out


def _without_collisions(plan: Plan, done: list[Record]) -> list[Record]:
    """``done`` where a unit that writes an output key another unit writes too (in this run,
    or an unchanged unit of the last one) fails instead (``TransformError``), each of them:
    a key has one producer, whose record its lineage names and whose deletion removes it.
    A result reused that collides is taken out of ``plan.reuse`` and fails likewise."""
    results = {**plan.reuse, **{r.base: r for r in done if r.ok}}
    clashes: dict[str, str] = {}
    owner: dict[str, str] = {}
    for base, record in sorted(results.items()):
        for key, _, _ in record.keys():
            if (other := owner.setdefault(key, base)) != base:
                clashes.setdefault(base, f"output key {key!r} is also an output of {other!r}")
                clashes.setdefault(other, f"output key {key!r} is also an output of {base!r}")
    if plan.previous is not None:
        changed = set(results) | set(plan.deleted) | {r.base for r in done}
        for base, record in results.items():
            for key, _, _ in record.keys() if base not in clashes else ():
                found = plan.previous.producer(key)
                if found is not None and found.base not in changed:
                    clashes[base] = f"output key {key!r} is also an output of {found.base!r}"
                    break
    if not clashes:
        return done
    for base in clashes.keys() & plan.reuse.keys():
        done.append(plan.reuse.pop(base))
    return [r._replace(outputs=(), dropped=None, error=("TransformError", clashes[r.base])) if r.base in clashes else r
            for r in done]


def _planned(result: PipelineResult, plan: Plan, previous: Root | None) -> PipelineResult:
    """``result`` of a dry run, or of a plan with nothing to do: what it would do."""
    fresh = sum(1 for b in [*(u[0] for u in plan.todo), *plan.reuse] if b not in plan.old)
    total = (previous.count if previous else 0) - len(plan.deleted) + fresh
    result.processed, result.deleted = len(plan.todo), len(plan.deleted)
    result.reused, result.repaired = total - len(plan.todo), len(plan.repair)
    return result


def _mark_sparse(repo: Repo, prefix: str) -> None:
    """Outputs are not materialised in the work tree (as ``ingest``'s are not): their prefix
    is marked sparse, so ``status`` and ``add`` leave it alone, unless the work tree has it."""
    if repo.worktree is not None and not (repo.worktree / prefix).exists() and prefix not in repo.config.sparse:
        repo.config = repo.config.with_sparse(prefix)
        repo.config.save(repo.dotdir / "config.toml")


# --- reading what runs did -------------------------------------------------------------------------
def commits_of_run(repo: Repo, run_id: str) -> list[tuple[Oid, Any]]:
    """The commits a run made (newest first), found on the branches' histories."""
    found, seen = [], set()
    stack = [oid for _, oid in repo.refs.list("refs/heads/")]
    if (head := repo.head()) is not None:
        stack.append(head)
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        commit = repo.read_commit(oid)
        if commit.provenance and commit.provenance.get("run") == run_id:
            found.append((oid, commit))
        stack.extend(commit.parents)
    if not found:
        raise PipelineError(f"no commit of run {run_id!r} on any branch")
    return sorted(found, key=lambda c: c[1].time, reverse=True)


def watch(repo_path: str | Path, names: tuple[str, ...], options: Options, folder: str | Path | None,
          interval: float, max_runs: int | None, report: Callable[[RunResult], None], sleep: Callable[[float], None],
          note: Callable[[str], None] = lambda message: None) -> int:
    """Runs the DAG, then again whenever the branch moves (polled every ``interval`` s; at
    once when commits landed during the run), until interrupted or ``max_runs`` runs are
    done; returns how many ran. A run that cannot commit (another run holds the run lock,
    the branch kept moving under it) is ``note``'d, and tried again at the next look."""
    import datarepo

    runs, seen, waiting = 0, None, False
    while max_runs is None or runs < max_runs:
        ran = False
        with datarepo.open(repo_path) as repo:
            head = repo.head()
            if head is None and not waiting:  # (deleted meanwhile, or never made): said once
                note(f"{repo.current_branch() or 'HEAD'} names no commit (deleted, or none yet): waiting for one")
            waiting = head is None
            if head != seen and head is not None:
                try:
                    result = run(repo, names, options, folder)
                except (RunInProgressError, rebase.RunConflictError) as e:
                    note(str(e))
                else:
                    report(result)
                    runs += 1
                    seen = _AGAIN if result.behind else result.head
                    ran = True
        if ran:
            # A run leaves reference cycles (the repository's closed cache and its parts), and
            # the CLI turns the cyclic collector off: freed here, a watch does not grow a run at a time.
            gc.collect()
            continue
        sleep(interval)
    return runs


_AGAIN = Oid("again")  # (no head is this: the next look runs)
