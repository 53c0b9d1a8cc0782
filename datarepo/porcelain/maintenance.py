"""fsck, gc and repack: checking and compacting the store."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TypeVar

from datarepo.errors import CorruptObjectError, DataRepoError, ObjectNotFoundError
from datarepo.fsutil import TMP_PREFIX, batched, remove
from datarepo.hashing import Oid, is_oid
from datarepo.objects import Blob, Commit, Tree, TreePage
from datarepo.pipeline import lineage
from datarepo.pipeline.cache import LineageCache
from datarepo.pipeline.pin import Pinned, live_pin
from datarepo.porcelain import Progress, begin, tick
from datarepo.porcelain.checkout import checkout_leftovers
from datarepo.refs import HEAD, RUNS
from datarepo.repo import Repo
from datarepo.shards import ShardIndex
from datarepo.staging import first_bad_key
from datarepo.store import Store
from datarepo.write import RepoWriter

DAY = 86400.0
T = TypeVar("T")


@dataclass
class Reachable:
    """Everything some root (ref, reflog entry, staged tree or datum) reaches."""

    objects: set[str] = field(default_factory=set)
    datums: dict[str, str] = field(default_factory=dict)  # datum → a key that names it
    missing: list[str] = field(default_factory=list)
    lineage: list[str] = field(default_factory=list)  # lineage objects, for fsck to check
    bad_keys: list[str] = field(default_factory=list)  # tree pages with a key the key rule refuses


def roots(repo: Repo, problems: list[str] | None = None) -> set[Oid]:
    """Ref targets, reflog entries younger than the expiry window, and the tree ``add``
    stored for the next commit. A ref that names no commit is an error, or, with
    ``problems``, noted there (what it reached stays unknown, so nothing may be deleted)."""
    named: dict[str, Oid] = {}
    try:
        branch = repo.refs.read_symbolic(HEAD)
        heads = [] if branch else [HEAD]  # a detached HEAD names a commit
    except CorruptObjectError as e:  # (missing, or naming no ref): the refs are still checked
        if problems is None:
            raise
        problems.append(str(e))
        branch, heads = None, []
    for name in [*repo.refs.names("refs/"), *heads]:
        try:
            oid = repo.refs.read(name)
            if oid is not None:
                _check_named(repo, name, oid)
        except (CorruptObjectError, ObjectNotFoundError) as e:
            if problems is None:
                raise
            problems.append(f"ref {name}: {e}" if name not in str(e) else str(e))
            continue
        if oid is not None:
            named[name] = oid
    found = set(named.values())
    if (staged := repo.index.staging.tree(named.get(branch or HEAD))) is not None:
        found.add(staged)
    horizon = time.time() - repo.config.reflog_expire_days * DAY
    for name in repo.refs.iter_reflogs():
        for old, new, when, _ in repo.refs.reflog(name):
            if when >= horizon:
                found.update(o for o in (old, new) if o)
    return found


def _reachable_whole(repo: Repo, command: str, pinned: Iterable[str] = ()) -> Reachable:
    """What the roots (and a running pipeline's ``pinned`` commits) reach, for a command
    that deletes or retires what they do not: one that cannot read an object (nor know
    what it reaches) refuses to run."""
    seen = reachable(repo, pinned=pinned)
    if seen.missing:
        raise DataRepoError(f"{command} refuses to run on a damaged repository: {seen.missing[0]} (run fsck)")
    return seen


def _check_named(repo: Repo, name: str, oid: Oid) -> None:
    """A run's ref names a run record; any other ref a commit. A ref that names another
    object (a tree copied into a branch) is corrupt: what it was meant to reach is unknown."""
    obj = repo.store.get_object(oid)
    if name.startswith(RUNS):
        if not (isinstance(obj, Blob) and obj.data.get("type") == "run"):
            raise CorruptObjectError(name, f"names {oid}, which is not a run record")
    elif not isinstance(obj, Commit):
        raise CorruptObjectError(name, f"names {oid}, which is not a commit")


def reachable(repo: Repo, problems: list[str] | None = None, pinned: Iterable[str] = ()) -> Reachable:
    """Walks commits, trees, pages and other objects from every root (see :func:`roots`),
    and from the commits a running pipeline run has ``pinned``."""
    seen = walk(repo.store, [*roots(repo, problems), *pinned])
    for datum in repo.index.staging.datums():
        seen.datums.setdefault(datum, "")
    return seen


def walk(
    store: Store, starts: Iterable[str], had: Callable[[str], bool] | None = None, edges: dict[str, list[str]] | None = None
) -> Reachable:
    """Walks commits, trees, pages and other objects of ``store`` from ``starts``. An
    object ``had`` says is had is passed over with all it reaches (``push`` and ``fetch``
    stop at what the other side has); ``edges``, if given, gets each object's children."""
    seen = Reachable()
    stack = list(starts)
    while stack:
        oid = stack.pop()
        if oid in seen.objects or (had is not None and had(oid)):
            continue
        try:
            obj = store.get_object(oid)
        except DataRepoError as e:
            seen.missing.append(str(e))
            continue
        seen.objects.add(oid)
        if isinstance(obj, TreePage) and (bad := first_bad_key(obj.keys_and_datums[0])) is not None:
            seen.bad_keys.append(f"tree page {oid}: {bad}")
        if isinstance(obj, Blob) and lineage.children(obj.data) is not None:
            seen.lineage.append(oid)
        children = list(_children(obj, seen))
        if edges is not None:
            edges[oid] = children
        stack.extend(children)
    return seen


def _children(obj: object, seen: Reachable) -> Iterator[str]:
    if isinstance(obj, Commit):
        yield obj.tree
        yield from obj.parents
        if obj.provenance:
            yield from _provenance_objects(obj.provenance, seen)
    elif isinstance(obj, Tree):
        yield from (p.page for p in obj.pages)
    elif isinstance(obj, TreePage):  # (its columns, without an entry object a row: a long
        keys, datums = obj.keys_and_datums  # history has millions of rows in its pages)
        named = seen.datums
        named.update((datum, key) for datum, key in zip(datums, keys) if datum not in named)
    elif isinstance(obj, Blob) and obj.data.get("type") == "run":
        # A training run's record keeps the commit (and tree) it read; the rest of it is
        # the user's (extras may hold any 32-hex-digit string, which is no object here).
        yield from (v for v in (obj.data.get("commit"), obj.data.get("tree")) if isinstance(v, str) and is_oid(v))
    elif isinstance(obj, Blob):
        named = lineage.children(obj.data)  # a lineage object names objects, and datums only as records
        yield from named if named is not None else _oids_in(obj.data, seen)


def _provenance_objects(provenance: dict[str, object], seen: Reachable) -> Iterator[str]:
    """A pipeline commit's provenance names its lineage root and input commits (its
    fingerprint is an oid of nothing stored); any other provenance is searched for oids."""
    if "pipeline" in provenance and isinstance(provenance.get("lineage"), str):
        inputs = provenance.get("inputs")
        yield provenance["lineage"]  # type: ignore[misc]
        yield from (v for v in (inputs.values() if isinstance(inputs, dict) else ()) if isinstance(v, str) and is_oid(v))
    else:
        yield from _oids_in(provenance, seen)


def _oids_in(value: object, seen: Reachable) -> Iterator[str]:
    """Oid-shaped strings inside a lineage or run object: objects to walk, else datums to keep."""
    if isinstance(value, str) and is_oid(value):
        seen.datums.setdefault(value, "")
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _oids_in(v, seen)
    elif isinstance(value, list):
        for v in value:
            yield from _oids_in(v, seen)


@dataclass
class FsckResult:
    objects: int = 0
    shards: int = 0
    datums: int = 0
    problems: list[str] = field(default_factory=list)
    garbage: list[str] = field(default_factory=list)
    unreachable_objects: int = 0
    reindexed: bool = False
    rebuilt: list[str] = field(default_factory=list)  # shards whose .idx was written anew from the tar
    retired: int = 0  # shards repack or gc took out of use, kept for readers until gc prunes them


@dataclass
class _Shards:
    """What the shards in use hold, as fsck found it."""

    stored: set[str] = field(default_factory=set)  # datums in sound shards
    damaged: dict[str, str] = field(default_factory=dict)  # datum → a shard that failed its check, whose .idx lists it
    failed: set[str] = field(default_factory=set)  # shards that failed their check (not for a missing .idx)
    unindexed: dict[str, set[str]] = field(default_factory=dict)  # shard without its .idx → the datums its tar names


def fsck(repo: Repo, rebuild_index: bool = False, progress: Progress = None) -> FsckResult:
    """Re-hashes every object and shard and checks that every ref reaches whole data.

    With ``rebuild_index``, a shard whose ``.idx`` is missing or does not match its tar
    gets a new one, built from the tar (which must hash to its name, and each datum to
    its id), and the location cache is refilled from every ``.idx``.
    """
    with repo.lock if rebuild_index else contextlib.nullcontext():
        return _fsck(repo, rebuild_index, progress)


def _check_run_records(repo: Repo, result: FsckResult) -> None:
    """Each run record's values, as ``runs``, ``runs show`` and ``from_run`` read them (a
    record of another type is reported with the refs)."""
    from datarepo.torch.runs import NotARunError, run_object

    for name in repo.refs.names(RUNS):
        try:
            oid = repo.refs.read(name)
            obj = repo.store.get_object(oid) if oid is not None else None
            if isinstance(obj, Blob) and obj.data.get("type") == "run":
                run_object(repo, oid, name)  # type: ignore[arg-type]
        except NotARunError as e:
            result.problems.append(str(e))
        except DataRepoError:
            pass  # (an object that cannot be read is reported with the objects)


def _fsck(repo: Repo, rebuild_index: bool, progress: Progress) -> FsckResult:
    result = FsckResult()
    begin(progress, None)
    for oid in repo.store.iter_objects():
        result.objects += 1
        _check(result, repo.store.verify_object, oid)
        tick(progress)
    shards = _Shards()
    for shard in repo.store.iter_shard_files():
        result.shards += 1
        _check_shard(repo, shard, shards, result, rebuild_index)
        tick(progress)
    result.problems.extend(f"index.sqlite: a damaged staged row, dropped: {d.reason}" for d in repo.index.staging.damage())
    seen = reachable(repo, result.problems)
    result.problems.extend(seen.missing + seen.bad_keys)
    for oid in seen.lineage:
        _check(result, lambda o: lineage.check(repo.store, o), oid)
    _check_run_records(repo, result)
    result.datums = len(seen.datums)
    lost = sorted((d, k) for d, k in seen.datums.items() if k and d not in shards.stored)
    only_in: dict[str, list[str]] = {}  # a shard (damaged, or without its .idx) → the keys only it holds
    in_no_shard = set()
    for d, k in lost:
        shard = shards.damaged.get(d) or next((s for s, held in shards.unindexed.items() if d in held), None)
        if shard is None:
            result.problems.append(f"datum {d} (key {k}) is in no shard")
            in_no_shard.add(d)
        else:
            only_in.setdefault(shard, []).append(k)
    # One line a shard, not one a datum (a shard holds thousands).
    for shard, keys in sorted(only_in.items()):
        if shard in shards.unindexed:
            result.problems.append(
                f"shard {shard} has no index and is the only copy of {len(keys)} reachable datums "
                f"(keys {_some(keys)}): run fsck --rebuild-index"
            )
        else:
            result.problems.append(
                f"shard {shard} is damaged and is the only copy of {len(keys)} reachable datums (keys {_some(keys)})"
            )
    result.unreachable_objects = result.objects - len(seen.objects & set(repo.store.iter_objects()))
    result.garbage = [_relative(repo, p) for p in leftovers(repo)]
    result.garbage += [repo.store.shard_name(s) for s in sorted(shards.unindexed) if s not in only_in]
    result.retired = sum(1 for _ in repo.store.iter_retired())
    locations = repo.index.locations
    # (a check that finds all as the last one did writes nothing: it works on a full disk)
    if locations.damaged() != shards.failed or locations.lost() != in_no_shard:
        with repo.index.transaction():  # (their copies no longer count as stored: add restores them)
            locations.set_damaged(shards.failed)
            locations.set_lost(in_no_shard)  # (and these, whose copy went with its index)
    if rebuild_index:
        with repo.index.transaction():
            repo.index.locations.clear()
        repo.sync_locations()
        result.reindexed = True
    result.problems.extend(repo.index.locations.disagreements(lambda shard: _quietly(repo.store.read_index, shard)))
    return result


def _check_shard(repo: Repo, shard: str, shards: _Shards, result: FsckResult, rebuild_index: bool) -> None:
    """Checks one shard in use, noting what it holds in ``shards`` (or a problem)."""
    try:
        shards.stored.update(d.datum for d in repo.store.verify_shard(shard).datums)
        return
    except ObjectNotFoundError as e:
        missing, error = e.kind == "shard index", e
    except CorruptObjectError as e:
        missing, error = False, e
    if rebuild_index:
        try:
            shards.stored.update(d.datum for d in repo.store.rebuild_index(shard).datums)
            result.rebuilt.append(shard)
            return
        except DataRepoError:
            pass  # the tar itself is damaged: say what the check found
    if missing:
        if (held := _check(result, repo.store.scan_datums, shard)) is not None:
            shards.unindexed[shard] = held
        return
    result.problems.append(str(error))
    shards.failed.add(shard)
    if (listed := _quietly(repo.store.read_index, shard)) is not None:
        shards.damaged.update((d.datum, shard) for d in listed.datums)


def _relative(repo: Repo, path: PurePath | str) -> str:
    return os.path.relpath(str(path), repo.dotdir)


# A temporary file that no lock tells to be a live writer's counts as left over from this age
# on: ``status`` writes its caches at the top of the repository's folder without the writer
# lock, and pushes upload into a folder remote's objects/ and shards/ side by side.
LEFTOVER_AGE = 3600.0


def leftovers(repo: Repo) -> Iterator[Path]:
    """Files interrupted writers left: the store's (see ``Store.iter_garbage``), temporary
    files among the refs and at the top of the repository's folder (``HEAD``,
    ``config.toml`` and the index's caches are written there by rename), and those of a
    killed ``checkout`` (in ``tmp/``; a live one holds the writer lock)."""
    yield from (Path(p) for p in repo.store.iter_garbage())
    for folder, _, names in os.walk(repo.dotdir / "refs"):
        yield from (Path(folder, name) for name in sorted(names) if name.startswith(TMP_PREFIX))
    horizon = time.time() - LEFTOVER_AGE
    with os.scandir(repo.dotdir) as entries:
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                if entry.stat(follow_symlinks=False).st_mtime < horizon:
                    yield Path(entry.path)
    yield from checkout_leftovers(repo)


def _quietly(fn: Callable[[str], T], oid: str) -> T | None:
    try:
        return fn(oid)
    except DataRepoError:
        return None


def _some(keys: list[str], shown: int = 3) -> str:
    ordered = sorted(keys)
    return ", ".join(ordered[:shown]) + (f" and {len(ordered) - shown} more" if len(ordered) > shown else "")


def _check(result: FsckResult, fn: Callable[[str], T], oid: str) -> T | None:
    """Runs one check, recording a DataRepoError as a problem instead of stopping."""
    try:
        return fn(oid)
    except DataRepoError as e:
        result.problems.append(str(e))
        return None


# How long a shard taken out of use (by repack or gc) stays where readers find it: a reader
# that looked its datums up before (an export, a DataLoader worker) goes on reading it.
PRUNE_AFTER = 3600.0


@dataclass(frozen=True)
class GcResult:
    objects: int  # unreachable objects deleted
    shards: int  # shards without a reachable datum, taken out of use (retired)
    pruned: int  # retired shards deleted, their grace period over
    garbage: int  # files interrupted writers left, deleted
    bytes_freed: int


def gc(repo: Repo, dry_run: bool = False, prune_after: float = PRUNE_AFTER) -> GcResult:
    """Deletes objects no root reaches and files left by interrupted writers; retires shards
    none of whose datums is reachable, and deletes retired shards (of ``repack`` too) once
    they are ``prune_after`` seconds retired (0: now, as git's ``--prune=now``).

    A shard is never deleted while it holds a reachable datum that no other shard in use
    holds; a tar whose ``.idx`` is lost is read for its datum ids first. While a pipeline
    run computes, what it wrote since it began and the commits it reads are kept (its pin:
    :mod:`datarepo.pipeline.pin`).
    """
    with repo.lock:
        objects, shards, garbage = list(repo.store.iter_objects()), list(repo.store.iter_shard_files()), list(leftovers(repo))
        pin = live_pin(repo.dotdir)  # (after the listing: a run that begins later writes only files not listed)
        seen = _reachable_whole(repo, "gc", pin.commits if pin else ())
        dead_objects = [o for o in objects if o not in seen.objects and not _run_wrote(pin, repo.store.modified(o))]
        held = {shard: _datums_in(repo, shard) for shard in shards}
        dead = [s for s, datums in held.items() if datums is not None and datums.isdisjoint(seen.datums) and _tar_holds(repo, s, datums)]
        dead += _replaced_damaged(repo, {s: d for s, d in held.items() if d is not None and s not in dead}, seen.datums.keys())
        dead = [s for s in dead if not _run_wrote(pin, repo.store.modified(s, shard=True))]
        kept = set().union(*(datums for s, datums in held.items() if datums is not None and s not in dead))
        garbage = [p for p in garbage if not _run_wrote(pin, _mtime(p))]
        now = time.time()
        if not dry_run:
            retire_shards(repo, dead, now)
            repo.index.locations.set_damaged(repo.index.locations.damaged() - set(dead))
        prunable = [
            r for r in repo.store.iter_retired()
            if r.since <= now - prune_after and seen.datums.keys() & repo.store.retired_datums(r) <= kept
            and (pin is None or r.since < pin.since - 1)  # (retired since the run began: it may read it)
        ]
        freed = sum(map(repo.store.retired_size, prunable)) + sum(_size(p) for p in garbage)
        pruned = len(prunable) + (len(dead) if dry_run and prune_after <= 0 else 0)
        if not dry_run:
            for r in prunable:
                repo.store.delete_retired(r)
            for oid in dead_objects:
                repo.store.delete_object(oid)
            if dead_objects:  # (the lineage tables may name them: they are filled again as needed)
                LineageCache(repo.index, repo.store).clear()
            for path in garbage:
                remove(path)
    return GcResult(len(dead_objects), len(dead), pruned, len(garbage), freed)


def _run_wrote(pin: Pinned | None, mtime: float) -> bool:
    """Whether a file was written since the running pipeline run (if any) began."""
    return pin is not None and pin.spares(mtime)


def _mtime(path: Path) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0


def _replaced_damaged(repo: Repo, in_use: dict[str, set[str]], wanted: Set[str]) -> list[str]:
    """The shards ``fsck`` found damaged whose reachable datums all have a copy in a sound
    shard (an ``add`` of the same content stored them again): nothing needs them any more."""
    damaged = repo.index.locations.damaged() & in_use.keys()
    sound = set().union(*(datums for s, datums in in_use.items() if s not in damaged))
    return sorted(s for s in damaged if wanted & in_use[s] <= sound and _tar_holds(repo, s, in_use[s]))


def retire_shards(repo: Repo, shards: list[str], now: float | None = None) -> None:
    """Takes shards out of use: their rows leave the location cache (new readers look their
    datums up elsewhere), then their files move aside (see ``Store.retire_shard``)."""
    with repo.index.transaction():
        for shard in shards:
            repo.index.locations.drop_shard(shard)
    with batched(repo.store.fs):  # (their folder fsync'ed once, not twice a shard)
        for shard in shards:
            repo.store.retire_shard(shard, now)


def _datums_in(repo: Repo, shard: str) -> set[str] | None:
    """The datums a shard in use holds, by its ``.idx`` or else by its tar's member names;
    None if neither can be read (nothing may then be deleted on its account)."""
    try:
        return {d.datum for d in repo.store.read_index(shard).datums}
    except DataRepoError:
        pass
    try:
        return set(repo.store.scan_datums(shard))
    except DataRepoError:
        return None


def _held(repo: Repo, index: ShardIndex) -> set[str]:
    """The datums a shard holds by its ``.idx`` and, where its tar can be read, by its
    tar's member names too (an ``.idx`` may list too few)."""
    held = {d.datum for d in index.datums}
    try:
        held |= repo.store.scan_datums(index.shard)
    except DataRepoError:
        pass
    return held


def _tar_holds(repo: Repo, shard: str, datums: set[str]) -> bool:
    """Whether a shard's tar holds just the datums its ``.idx`` lists: a shard is retired
    on its ``.idx``'s word only when its tar agrees (an ``.idx`` that lists too few would
    otherwise retire the only copy of the rest); one whose tar cannot be read is left as
    it is, for ``fsck`` to report."""
    try:
        return repo.store.scan_datums(shard) == datums
    except DataRepoError:
        return False


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


@dataclass(frozen=True)
class RepackResult:
    shards_in: int
    shards_out: int
    datums: int
    bytes_before: int
    bytes_after: int
    unreadable: int = 0  # reachable datums no copy of which read whole
    kept: list[str] = field(default_factory=list)  # the shards kept for them


def repack(repo: Repo, all_shards: bool = False, progress: Progress = None) -> RepackResult:
    """Merges small or sparse shards into new full ones, keeping only reachable datums.
    The shards it replaces are retired, not deleted: a reader that looked a datum up
    before still finds it, until ``gc`` prunes them."""
    with repo.lock:
        shards = list(repo.store.iter_shards())
        pin = live_pin(repo.dotdir)  # (after the listing, as in gc: a running pipeline's new shards stay)
        seen = _reachable_whole(repo, "repack", pin.commits if pin else ())
        target = repo.config.shard_size
        damaged = repo.index.locations.damaged()
        chosen, suspect = [], set()  # suspect: damaged, or a tar that does not hold what its .idx says
        for shard in shards:
            if _run_wrote(pin, repo.store.modified(shard, shard=True)):
                continue
            index = repo.store.read_index(shard)
            live = sum(d.length for d in index.datums if d.datum in seen.datums)
            wanted = all_shards or index.size < target // 2 or live < index.size // 2
            if shard in damaged or ((wanted or all_shards) and not _tar_holds(repo, shard, {d.datum for d in index.datums})):
                suspect.add(shard)  # (taken as a damaged one: what reads whole is copied, and it
            if wanted or shard in suspect:  # is retired only if nothing reachable is left in it)
                chosen.append(index)
        has_dead = any(d.datum not in seen.datums for i in chosen for d in i.datums)
        if len(chosen) < 2 and not has_dead and not suspect:
            return RepackResult(0, 0, 0, 0, 0)
        live_datums = sorted(
            {d.datum for i in chosen for d in i.datums if d.datum in seen.datums}, key=lambda d: (seen.datums[d], d)
        )
        begin(progress, len(live_datums))
        lost = set()  # datums no copy of which reads whole
        with RepoWriter(repo, rewrite=True) as writer:
            for datum in live_datums:
                try:
                    writer.put_datum(datum, repo.members(datum))  # (members checked against the datum's id)
                except DataRepoError:
                    lost.add(datum)
                tick(progress)
        new = writer.shards  # adopted: every live datum's location points into them
        # A shard whose reachable datums did not all read whole is kept (a damaged shard's
        # datums that still match their ids are salvaged; ``add`` of the files restores the rest).
        copied = set(live_datums) - lost
        done = [i.shard for i in chosen if _held(repo, i) & seen.datums.keys() <= copied]
        retire_shards(repo, [shard for shard in done if shard not in {s.oid for s in new}])
        repo.index.locations.set_damaged(damaged - set(done))  # (one written again whole is sound)
    kept = sorted(i.shard for i in chosen if i.shard not in done)
    return RepackResult(
        len(done), len(new), len(live_datums) - len(lost), sum(i.size for i in chosen), sum(s.size for s in new), len(lost), kept
    )
