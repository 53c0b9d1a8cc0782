"""What a run of one pipeline must do, and why (DESIGN §5).

A *unit* is what the transform is called on once: one input datum (a glob, a union), a
tuple (cross, join) or a group. Its *base* is the output key it gives, its *cache key*
``xxh3_128(fingerprint ‖ input datum ids)`` (DESIGN §3.5: sorted, within each input of a
combination, the inputs in their declared order).

Two ways to plan:

* **by difference** (a glob or a union, the fingerprint and input as last run): only the
  keys that differ between the input the last run read and the input now, and the units
  that failed last time, are looked at. Tree pages both inputs share (by oid) are not
  opened, so a run where nothing changed costs a few root reads, whatever the size;
* **in full** (first run, new code, another input, a cross, join or group): every unit
  of the input now, against every record of the last run.

A unit whose cache key has a recorded success, in the last run or in the run cache
(:mod:`~datarepo.pipeline.cache`: earlier runs, an interrupted run's journal, a
colleague's pulled results), is reused, not computed.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from datarepo import tree as trees
from datarepo.errors import DataRepoError, PipelineError
from datarepo.hashing import Oid, hash_bytes
from datarepo.objects import PageRef, TreeEntry
from datarepo.pipeline.cache import LineageCache, read_records
from datarepo.pipeline.lineage import Reader, Record, Root
from datarepo.pipeline.spec import Combine, Source, Spec
from datarepo.pipeline.worker import Unit
from datarepo.repo import Repo
from datarepo.store import Store

NEW, CHANGED, FAILED, CODE = "new", "changed", "failed", "code"


@dataclass
class Plan:
    """One pipeline's work: units to compute (each with why), results to reuse, units gone,
    and output keys to restore where the tree no longer holds what the last run wrote."""

    spec: Spec
    fingerprint: Oid
    inputs: dict[str, Oid | None]  # each source's label → the commit read
    previous: Reader | None
    todo: list[Unit] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)  # base → new / changed / failed / code
    reuse: dict[str, Record] = field(default_factory=dict)  # base → a cached result
    deleted: list[str] = field(default_factory=list)
    repair: dict[str, TreeEntry | None] = field(default_factory=dict)
    old: dict[str, Record] = field(default_factory=dict)  # base → the last run's record, of the units above

    @property
    def idle(self) -> bool:
        return not (self.todo or self.reuse or self.deleted or self.repair)

    def reasons(self) -> Counter[str]:
        return Counter(self.why.values())


def cache_key(fingerprint: str, inputs: Iterable[Iterable[str]]) -> Oid:
    """``xxh3_128(fingerprint ‖ sorted input datum ids)``, the ids of each input sorted."""
    parts = [fingerprint]
    for ids in inputs:
        parts.append(",".join(sorted(ids)))
    return hash_bytes("|".join(parts).encode())


def make_plan(repo: Repo, spec: Spec, fp: Oid, head: Oid | None, previous: tuple[Oid, Root] | None, cache: LineageCache) -> Plan:
    inputs = {s.label: _commit_of(repo, s, head, spec) for s in spec.sources}
    reader = Reader(repo.store, previous[1]) if previous else None
    plan = Plan(spec, fp, inputs, reader)
    if previous is not None:
        _repair(repo, spec, previous[0], head, plan)
    if reader is not None and _same_run(spec, fp, reader.root, inputs):
        _plan_by_difference(repo, plan)
    else:
        _plan_in_full(repo, plan)
    if plan.todo:
        _reuse_cached(repo, plan, cache)
    return plan


def _commit_of(repo: Repo, src: Source, head: Oid | None, spec: Spec) -> Oid | None:
    try:
        return repo.resolve(src.rev) if src.rev is not None else head
    except DataRepoError as e:  # (a branch deleted since, a tag never made): which pipeline reads it
        raise PipelineError(f"{spec.file}: pipeline {spec.name!r}: input {src.label}: {e}") from None


def _same_run(spec: Spec, fp: Oid, root: Root, inputs: dict[str, Oid | None]) -> bool:
    return (spec.keyed and root.fingerprint == fp and root.input == spec.input.label
            and root.output == spec.output and set(root.inputs) == set(inputs))


def tree_at(repo: Repo, commit: str | None) -> trees.Tree:
    """The tree of a commit (None: the empty tree)."""
    return trees.Tree(repo.store, repo.read_commit(commit).tree, Oid(commit)) if commit else trees.Tree(repo.store, None)


# --- differences of selections ----------------------------------------------------------------
def selection_diff(old: trees.Tree, new: trees.Tree, glob: str) -> Iterator[trees.Change]:
    """The keys ``glob`` selects that differ from ``old`` to ``new``, in key order. Of the
    pages that can hold such keys, those both trees share are not opened.

    Pages are cut where keys hash to a boundary, so where only values changed, each page
    of one tree has a twin in the other, of the same keys: such twins are compared column
    by column (in C), and only their changed keys cost a step each. The other pages (keys
    added or deleted) are read into mappings and compared key by key."""
    if old.oid == new.oid:
        return
    prefix = trees.glob_literal_prefix(glob)
    match = None if glob == prefix + "**" and prefix.endswith("/") else trees.compile_glob(glob).fullmatch
    a, b = _pages(old, prefix), _pages(new, prefix)
    shared = {p.page for p in a} & {p.page for p in b}
    a, b = [p for p in a if p.page not in shared], [q for q in b if q.page not in shared]
    changes, twinned = [], set()
    twins = {(p.first_key, p.count): p for p in a}
    for q in b:
        p = twins.get((q.first_key, q.count))
        if p is not None and (found := _twin_diff(old.store, p.page, q.page)) is not None:
            changes += [c for c in found if c.key.startswith(prefix) and (match is None or match(c.key))]
            twinned |= {p.page, q.page}
    before = _selected(old, [p for p in a if p.page not in twinned], prefix, match)
    after = _selected(new, [q for q in b if q.page not in twinned], prefix, match)
    for key in before.keys() ^ after.keys() | {k for k, v in before.items() if k in after and after[k][0] != v[0]}:
        x, y = before.get(key), after.get(key)
        changes.append(trees.Change(key, TreeEntry(key, *x) if x else None, TreeEntry(key, *y) if y else None))
    yield from sorted(changes, key=operator.itemgetter(0))


def _twin_diff(store: Store, old: str, new: str) -> list[trees.Change] | None:
    """The keys whose datum differs between two pages of the same keys (None if their keys
    differ)."""
    a, b = trees.read_page(store, old), trees.read_page(store, new)
    (keys, before), (others, after) = a.keys_and_datums, b.keys_and_datums
    if len(keys) != len(others) or not all(map(operator.eq, keys, others)):
        return None
    changed = list(itertools.compress(range(len(keys)), map(operator.ne, before, after)))
    if not changed:
        return []
    old_sizes, new_sizes = a.columns[2], b.columns[2]
    return [trees.Change(keys[i], TreeEntry(keys[i], before[i], old_sizes[i]), TreeEntry(keys[i], after[i], new_sizes[i]))
            for i in changed]


def _pages(tree: trees.Tree, prefix: str) -> list[PageRef]:
    pages = tree.pages
    at = max(bisect.bisect_right([p.first_key for p in pages], prefix) - 1, 0)
    out = []
    for ref in pages[at:]:
        if prefix and ref.first_key > prefix and not ref.first_key.startswith(prefix):
            break
        out.append(ref)
    return out


def _selected(
    tree: trees.Tree, pages: list[PageRef], prefix: str, match: Callable[[str], object] | None
) -> dict[str, tuple[str, int]]:
    """Key → (datum, size), of the keys under ``prefix`` that ``match`` takes (all, if it
    is None: a glob ``prefix/**``), in ``pages``."""
    found: dict[str, tuple[str, int]] = {}
    for ref in pages:
        keys, datums, sizes = trees.read_page(tree.store, ref.page).columns
        rows = zip(keys, zip(datums, sizes))
        if match is None and keys and keys[0].startswith(prefix) and keys[-1].startswith(prefix):
            found.update(rows)  # (keys are sorted: the page lies wholly under the prefix)
        else:
            found.update((k, v) for k, v in rows if k.startswith(prefix) and (match is None or match(k)))
    return found


def _repair(repo: Repo, spec: Spec, last: Oid, head: Oid | None, plan: Plan) -> None:
    """Output keys that changed since the pipeline's last commit (an ``add`` that deleted
    them, a hand edit) are put back as that commit had them."""
    for change in selection_diff(tree_at(repo, head), tree_at(repo, last), spec.output + "**"):
        plan.repair[change.key] = change.new


# --- by difference --------------------------------------------------------------------------------
def _plan_by_difference(repo: Repo, plan: Plan) -> None:
    spec, reader = plan.spec, plan.previous
    assert reader is not None
    seen: set[str] = set()
    for src in spec.sources:
        old, new = tree_at(repo, reader.root.inputs[src.label]), tree_at(repo, plan.inputs[src.label])
        for key, before, after in selection_diff(old, new, src.glob):
            base = spec.base(key)
            seen.add(base)
            if after is None:
                _delete(plan, base)
            else:
                _add(plan, base, ((key, after.datum),), NEW if before is None else CHANGED)
    _retry_failed(repo, plan, [b for b in reader.root.failed if b not in seen])


def _retry_failed(repo: Repo, plan: Plan, bases: list[str]) -> None:
    """Plans again the units that failed last time (each page of the input read once)."""
    spec = plan.spec
    keys = {spec.strip + base[len(spec.output) :]: base for base in bases}
    for src in spec.sources:
        match = src.matcher().fullmatch
        found = tree_at(repo, plan.inputs[src.label]).get_many(k for k in keys if match(k))
        for key, entry in sorted(found.items()):
            _add(plan, keys.pop(key), ((key, entry.datum),), FAILED)
    for base in keys.values():  # their input is gone
        _delete(plan, base)


def _add(plan: Plan, base: str, inputs: tuple[tuple[str, str], ...], why: str) -> None:
    if base in plan.why:
        return
    plan.why[base] = why
    groups = [[d for _, d in inputs]] if plan.spec.keyed else _by_source(plan.spec, inputs)
    plan.todo.append((base, cache_key(plan.fingerprint, groups), inputs))
    if plan.previous is not None and (old := plan.previous.get(base)) is not None:
        plan.old[base] = old


def _delete(plan: Plan, base: str) -> None:
    assert plan.previous is not None
    if (old := plan.previous.get(base)) is not None:
        plan.old[base] = old
        plan.deleted.append(base)


def _by_source(spec: Spec, inputs: tuple[tuple[str, str], ...]) -> list[list[str]]:
    if isinstance(spec.input, Combine) and spec.input.kind == "group":
        return [[d for _, d in inputs]]
    return [[d] for _, d in inputs]


# --- in full --------------------------------------------------------------------------------------
def _plan_in_full(repo: Repo, plan: Plan) -> None:
    spec = plan.spec
    before = {r.base: r for r in plan.previous} if plan.previous is not None else {}
    code = plan.previous is not None and plan.previous.root.fingerprint != plan.fingerprint
    units = list(_units(repo, spec, plan))
    for base, inputs in units:
        groups = [[d for _, d in inputs]] if spec.keyed else _by_source(spec, inputs)
        cache = cache_key(plan.fingerprint, groups)
        old = before.get(base)
        if old is not None and old.cache == cache and old.ok:
            continue
        plan.why[base] = CODE if code else NEW if old is None else FAILED if not old.ok and old.inputs == inputs else CHANGED
        plan.todo.append((base, cache, inputs))
        if old is not None:
            plan.old[base] = old
    now = {base for base, _ in units}
    for base, old in before.items():
        if base not in now:
            plan.old[base] = old
            plan.deleted.append(base)


def _units(repo: Repo, spec: Spec, plan: Plan) -> Iterator[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every unit of the input now: (base, ((key, datum), ...)), bases unique."""
    entries = [list(tree_at(repo, plan.inputs[s.label]).select(glob=s.glob)) for s in spec.sources]
    kind = spec.input.kind if isinstance(spec.input, Combine) else "glob"
    seen: set[str] = set()
    if kind in ("glob", "union"):
        for src_entries in entries:
            for e in src_entries:
                base = spec.base(e.key)
                if base not in seen:
                    seen.add(base)
                    yield base, ((e.key, e.datum),)
    elif kind == "cross":
        for combo in itertools.product(*entries):
            rels = [e.key[len(s.strip) :] for e, s in zip(combo, spec.sources)]
            yield spec.output + "/".join(rels), tuple((e.key, e.datum) for e in combo)
    else:
        on = re.compile(spec.input.on or "")  # type: ignore[union-attr]
        yield from _joined(spec, entries, on) if kind == "join" else _grouped(spec, entries[0], on)


def _value(on: re.Pattern[str], key: str) -> str | None:
    m = on.search(key)
    if m is None:
        return None
    value = m.group(1) if m.groups() else m.group(0)
    return (value or "").strip("/") or None  # (a group that took no part: no value)


def _joined(spec: Spec, entries: list[list[TreeEntry]], on: re.Pattern[str]) -> Iterator[tuple[str, tuple[tuple[str, str], ...]]]:
    sides = []
    for src_entries in entries:
        side: dict[str, list[TreeEntry]] = {}
        for e in src_entries:
            if (v := _value(on, e.key)) is not None:
                side.setdefault(v, []).append(e)
        sides.append(side)
    for value in sorted(set(sides[0]).intersection(*sides[1:])):
        combos = list(itertools.product(*(side[value] for side in sides)))
        for i, combo in enumerate(combos):
            base = spec.output + value + (f"/{i}" if len(combos) > 1 else "")
            yield base, tuple((e.key, e.datum) for e in combo)


def _grouped(spec: Spec, entries: list[TreeEntry], on: re.Pattern[str]) -> Iterator[tuple[str, tuple[tuple[str, str], ...]]]:
    groups: dict[str, list[TreeEntry]] = {}
    for e in entries:
        if (v := _value(on, e.key)) is not None:
            groups.setdefault(v, []).append(e)
    for value in sorted(groups):
        yield spec.output + value, tuple((e.key, e.datum) for e in groups[value])


# --- the run cache --------------------------------------------------------------------------------
def _reuse_cached(repo: Repo, plan: Plan, cache: LineageCache) -> None:
    """Takes out of ``plan.todo`` the units whose cache key has a success on record whose
    outputs are still stored, and reuses that success."""
    if plan.previous is not None:
        cache.index_pages(p[2] for p in plan.previous.root.pages)
    records: dict[str, Record] = {}
    for journal in cache.journals(plan.spec.name):  # an unfinished run's batches
        try:
            records.update((r.cache, r) for r in read_records(repo.store, journal) if r.ok)
        except DataRepoError:  # gc deleted it since: its work is done again
            continue
    records.update(cache.successes(c for _, c, _ in plan.todo if c not in records))
    hits = {c: records[c] for _, c, _ in plan.todo if c in records}
    if not hits:
        return
    stored = repo.stored({d for r in hits.values() for _, d, _ in r.outputs})
    keep = []
    for base, cache_id, inputs in plan.todo:
        hit = hits.get(cache_id)
        if hit is not None and all(d in stored for _, d, _ in hit.outputs):
            plan.reuse[base] = hit._replace(base=base, inputs=inputs)
        else:
            keep.append((base, cache_id, inputs))
    plan.todo = keep

