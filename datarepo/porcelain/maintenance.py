"""fsck, gc and repack: checking and compacting the store."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from datarepo.errors import CorruptObjectError, DataRepoError
from datarepo.fsutil import TMP_PREFIX, remove
from datarepo.hashing import Oid, is_oid
from datarepo.objects import Blob, Commit, Tree, TreePage
from datarepo.porcelain import Progress, begin, tick
from datarepo.refs import HEAD
from datarepo.repo import Repo
from datarepo.write import RepoWriter

DAY = 86400.0
T = TypeVar("T")


@dataclass
class Reachable:
    """Everything some root (ref, reflog entry, staged tree or datum) reaches."""

    objects: set[str] = field(default_factory=set)
    datums: dict[str, str] = field(default_factory=dict)  # datum → a key that names it
    missing: list[str] = field(default_factory=list)


def roots(repo: Repo, problems: list[str] | None = None) -> set[Oid]:
    """Ref targets, reflog entries younger than the expiry window, and the tree ``add``
    stored for the next commit. A ref that names no commit is an error, or, with
    ``problems``, noted there (what it reached stays unknown, so nothing may be deleted)."""
    branch = repo.refs.read_symbolic(HEAD)
    named: dict[str, Oid] = {}
    for name in [*repo.refs.names("refs/"), *([] if branch else [HEAD])]:  # a detached HEAD names a commit
        try:
            oid = repo.refs.read(name)
        except CorruptObjectError as e:
            if problems is None:
                raise
            problems.append(str(e))
            continue
        if oid is not None:
            named[name] = oid
    found = set(named.values())
    if (staged := repo.index.staged_tree(named.get(branch or HEAD))) is not None:
        found.add(staged)
    horizon = time.time() - repo.config.reflog_expire_days * DAY
    for name in repo.refs.iter_reflogs():
        for old, new, when, _ in repo.refs.reflog(name):
            if when >= horizon:
                found.update(o for o in (old, new) if o)
    return found


def reachable(repo: Repo, problems: list[str] | None = None) -> Reachable:
    """Walks commits, trees, pages and other objects from every root (see :func:`roots`)."""
    seen = Reachable()
    stack = list(roots(repo, problems))
    while stack:
        oid = stack.pop()
        if oid in seen.objects:
            continue
        try:
            obj = repo.store.get(oid)
        except DataRepoError as e:
            seen.missing.append(str(e))
            continue
        seen.objects.add(oid)
        stack.extend(_children(obj, seen))
    for datum in repo.index.iter_staged_datums():
        seen.datums.setdefault(datum, "")
    return seen


def _children(obj: object, seen: Reachable) -> Iterator[str]:
    if isinstance(obj, Commit):
        yield obj.tree
        yield from obj.parents
        if obj.provenance:
            yield from _oids_in(obj.provenance, seen)
    elif isinstance(obj, Tree):
        yield from (p.page for p in obj.pages)
    elif isinstance(obj, TreePage):
        for e in obj.entries:
            seen.datums.setdefault(e.datum, e.key)
    elif isinstance(obj, Blob):
        yield from _oids_in(obj.data, seen)


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


def fsck(repo: Repo, rebuild_index: bool = False, progress: Progress = None) -> FsckResult:
    """Re-hashes every object and shard and checks that every ref reaches whole data."""
    result = FsckResult()
    stored: set[str] = set()
    damaged: dict[str, str] = {}  # datum → a shard that failed its check, whose .idx lists it
    begin(progress, None)
    for oid in repo.store.iter_objects():
        result.objects += 1
        _check(result, repo.store.verify_object, oid)
        tick(progress)
    for shard in repo.store.iter_shards():
        result.shards += 1
        index = _check(result, repo.store.verify_shard, shard)
        if index is not None:
            stored.update(d.datum for d in index.datums)
        elif (listed := _quietly(repo.store.read_index, shard)) is not None:
            damaged.update((d.datum, shard) for d in listed.datums)
        tick(progress)
    seen = reachable(repo, result.problems)
    result.problems.extend(seen.missing)
    result.datums = len(seen.datums)
    lost = sorted((d, k) for d, k in seen.datums.items() if k and d not in stored)
    result.problems.extend(f"datum {d} (key {k}) is in no shard" for d, k in lost if d not in damaged)
    # A damaged shard's reachable datums: one line for the shard, not one a datum (a shard holds thousands).
    only_there: dict[str, list[str]] = {}
    for d, k in lost:
        if d in damaged:
            only_there.setdefault(damaged[d], []).append(k)
    result.problems.extend(
        f"shard {shard} is damaged and is the only copy of {len(keys)} reachable datums (keys {_some(keys)})"
        for shard, keys in sorted(only_there.items())
    )
    result.unreachable_objects = result.objects - len(seen.objects & set(repo.store.iter_objects()))
    result.garbage = [str(p.relative_to(repo.dotdir)) for p in leftovers(repo)]
    if rebuild_index:
        with repo.lock:
            with repo.index.transaction():
                repo.index.clear_locations()
            repo.sync_locations()
        result.reindexed = True
    return result


# A temporary file at the top of the repository's folder counts as left over from this age on:
# ``status`` writes its caches there (the listing, the stat base) without the writer lock.
TOP_LEFTOVER_AGE = 3600.0


def leftovers(repo: Repo) -> Iterator[Path]:
    """Files interrupted writers left: the store's (see ``Store.iter_garbage``), and temporary
    files among the refs and at the top of the repository's folder (``HEAD``, ``config.toml``
    and the index's caches are written there by rename)."""
    yield from repo.store.iter_garbage()
    for folder, _, names in os.walk(repo.dotdir / "refs"):
        yield from (Path(folder, name) for name in sorted(names) if name.startswith(TMP_PREFIX))
    horizon = time.time() - TOP_LEFTOVER_AGE
    with os.scandir(repo.dotdir) as entries:
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                if entry.stat(follow_symlinks=False).st_mtime < horizon:
                    yield Path(entry.path)


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


@dataclass(frozen=True)
class GcResult:
    objects: int
    shards: int
    garbage: int
    bytes_freed: int


def gc(repo: Repo, dry_run: bool = False) -> GcResult:
    """Deletes objects and shards no root reaches, and files left by interrupted writers."""
    with repo.lock:
        seen = reachable(repo)
        if seen.missing:
            raise DataRepoError(f"gc refuses to run on a damaged repository: {seen.missing[0]} (run fsck)")
        dead_objects = [o for o in repo.store.iter_objects() if o not in seen.objects]
        dead_shards = []
        for shard in repo.store.iter_shards():
            index = repo.store.read_index(shard)
            if not any(d.datum in seen.datums for d in index.datums):
                dead_shards.append((shard, index.size))
        garbage = list(leftovers(repo))
        freed = sum(s for _, s in dead_shards) + sum(p.stat().st_size for p in garbage if p.exists())
        if not dry_run:
            _delete(repo, dead_objects, [s for s, _ in dead_shards], garbage)
    return GcResult(len(dead_objects), len(dead_shards), len(garbage), freed)


def _delete(repo: Repo, dead_objects: list[Oid], dead_shards: list[str], garbage: list[Path]) -> None:
    repo.drop_shards(dead_shards)
    for oid in dead_objects:
        repo.store.delete_object(oid)
    for path in garbage:
        remove(path)


@dataclass(frozen=True)
class RepackResult:
    shards_in: int
    shards_out: int
    datums: int
    bytes_before: int
    bytes_after: int


def repack(repo: Repo, all_shards: bool = False, progress: Progress = None) -> RepackResult:
    """Merges small or sparse shards into new full ones, keeping only reachable datums."""
    with repo.lock:
        seen = reachable(repo)
        target = repo.config.shard_size
        chosen = []
        for shard in repo.store.iter_shards():
            index = repo.store.read_index(shard)
            live = sum(d.length for d in index.datums if d.datum in seen.datums)
            if all_shards or index.size < target // 2 or live < index.size // 2:
                chosen.append(index)
        has_dead = any(d.datum not in seen.datums for i in chosen for d in i.datums)
        if len(chosen) < 2 and not has_dead:
            return RepackResult(0, 0, 0, 0, 0)
        live_datums = sorted(
            {d.datum for i in chosen for d in i.datums if d.datum in seen.datums}, key=lambda d: (seen.datums[d], d)
        )
        begin(progress, len(live_datums))
        with RepoWriter(repo, rewrite=True) as writer:
            for datum in live_datums:
                writer.put_datum(datum, repo.members(datum))  # (members checked against the datum's id)
                tick(progress)
        new = writer.shards  # adopted: every live datum's location points into them
        repo.drop_shards([i.shard for i in chosen if i.shard not in {s.oid for s in new}])
    return RepackResult(len(chosen), len(new), len(live_datums), sum(i.size for i in chosen), sum(s.size for s in new))

