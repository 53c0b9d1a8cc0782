"""The work tree against the index and HEAD: status, add, rm."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar
from dataclasses import dataclass, field
from pathlib import Path

from datarepo import tree as trees
from datarepo.errors import InvalidInputError
from datarepo.fsutil import remove
from datarepo.hashing import Oid
from datarepo.porcelain import Changes, Progress, begin, compare, snapshot, tick
from datarepo.repo import Repo
from datarepo.worktree import SIZE, Hasher, Scan, group, member_path, scan
from datarepo.writer import DatumSink


STORE_BATCH = 256
T = TypeVar("T")


@dataclass
class WorkTree:
    """The work tree grouped into datums, with a hasher that trusts the stat cache."""

    members: dict[str, dict[str, str]]
    notes: list[str]
    hasher: Hasher

    def size(self, key: str) -> int:
        return sum(self.hasher.files[rel][SIZE] for rel in self.members[key].values())


@dataclass
class Status:
    staged: Changes
    unstaged: Changes
    total: Changes
    notes: list[str] = field(default_factory=list)


def key_filter(repo: Repo, paths: list[str] | None) -> tuple[str, ...] | None:
    """Turns path arguments into key prefixes (``None``: the whole tree)."""
    if not paths:
        return None
    root = repo.require_worktree()
    prefixes = []
    for p in paths:
        full = Path(os.path.abspath(p))
        try:
            rel = full.relative_to(root).as_posix()
        except ValueError:
            raise InvalidInputError(f"path is outside the work tree: {p}") from None
        if rel in ("", "."):
            return None
        prefixes.append(rel + "/" if full.is_dir() else rel)
    return tuple(prefixes)


def _selected(key: str, prefixes: tuple[str, ...] | None) -> bool:
    if prefixes is None:
        return True
    return any(key.startswith(p) if p.endswith("/") else key == p or p.startswith(key + ".") for p in prefixes)


def _sparse(repo: Repo, key: str) -> bool:
    return any(key.startswith(p) for p in repo.config.sparse)


def read_worktree(repo: Repo, follow: bool = False) -> WorkTree:
    """Scans the work tree into datums; raises on files that cannot be taken."""
    root = repo.require_worktree()
    found = scan(root, follow=follow, skip_prefixes=repo.config.sparse)
    found.raise_errors()
    notes = list(found.notes)
    members = group(sorted(found.files), repo.config.grouping, notes)
    return WorkTree(members, notes, Hasher(root, found.files, repo.index.load_stats(), found.started_ns))


def head_datums(repo: Repo) -> dict[str, Oid]:
    tree = repo.tree_of(None)
    entries = trees.iter_tree(repo.store, tree) if tree else ()
    return {e.key: e.datum for e in entries if not _sparse(repo, e.key)}


def index_datums(repo: Repo, head: dict[str, Oid]) -> dict[str, Oid]:
    """HEAD overlaid with the staging area."""
    state = dict(head)
    for key, (datum, _) in repo.index.staged().items():
        if datum is None:
            state.pop(key, None)
        else:
            state[key] = datum
    return state


def status(repo: Repo, follow: bool = False) -> Status:
    """Compares HEAD, the staging area and the work tree.

    Keys whose files have not changed since the last status keep the result
    the status snapshot holds for them; only the others are looked at again.
    """
    root = repo.require_worktree()
    found = scan(root, follow=follow, skip_prefixes=repo.config.sparse)
    found.raise_errors()
    token = snapshot.token(repo, follow)
    snap = snapshot.load(repo, token)
    if snap is not None and snap.digest == snapshot.digest(found.files.items()):
        old = snap.status
        return Status(*(snapshot.changes_from_json(old[n]) for n in _PARTS), found.notes + old["group_notes"])
    keys = snapshot.changed_keys(snap, found.files, repo.config.grouping) if snap else None
    if snap is not None and keys is not None and len(keys) <= PARTIAL_LIMIT:
        result, group_notes = _partial_status(repo, found, snap, keys)
    else:
        result, group_notes = _full_status(repo, found)
    saved = {n: getattr(result, n).to_json() for n in _PARTS}
    snapshot.save(repo, token, found, {**saved, "group_notes": group_notes})
    result.notes = found.notes + group_notes
    return result


_PARTS = ("staged", "unstaged", "total")
PARTIAL_LIMIT = 20_000


def _full_status(repo: Repo, found: Scan) -> tuple[Status, list[str]]:
    notes: list[str] = []
    members = group(sorted(found.files), repo.config.grouping, notes)
    hasher = Hasher(repo.require_worktree(), found.files, repo.index.load_stats(), found.started_ns)
    now = {key: hasher.datum(m)[0] for key, m in members.items()}
    _save_stats(repo, hasher)
    head = head_datums(repo)
    index = index_datums(repo, head)
    return Status(compare(head, index), compare(index, now), compare(head, now)), notes


def _partial_status(repo: Repo, found: Scan, snap: snapshot.Snapshot, keys: set[str]) -> tuple[Status, list[str]]:
    notes: list[str] = []
    members = group(sorted(found.files), repo.config.grouping, notes)
    paths = [rel for k in keys if k in members for rel in members[k].values()]
    hasher = Hasher(repo.require_worktree(), found.files, repo.index.load_stats_for(paths), found.started_ns)
    now = {k: hasher.datum(members[k])[0] for k in keys if k in members}
    _save_stats(repo, hasher)
    tree = repo.tree_of(None)
    found_head = trees.lookup_many(repo.store, tree, keys) if tree else {}
    head = {k: e.datum for k, e in found_head.items() if not _sparse(repo, k)}
    index = dict(head)
    for key, (datum, _) in repo.index.staged_for(keys).items():
        if datum is None:
            index.pop(key, None)
        else:
            index[key] = datum
    fresh = (compare(head, index), compare(index, now), compare(head, now))
    merged = [snapshot.merge(snapshot.changes_from_json(snap.status[n]), keys, c) for n, c in zip(_PARTS, fresh)]
    return Status(*merged), notes


def _save_stats(repo: Repo, hasher: Hasher) -> None:
    if hasher.updated:
        with repo.index.transaction():
            repo.index.save_stats(hasher.updated.items())


@dataclass(frozen=True)
class AddResult:
    changes: Changes
    stored: int
    stored_bytes: int
    hashed: int
    notes: list[str]


def add(repo: Repo, paths: list[str] | None = None, follow: bool = False, progress: Progress = None) -> AddResult:
    """Stores new or changed datums under ``paths`` and stages them (and deletions)."""
    prefixes = key_filter(repo, paths)
    with repo.lock:
        work = read_worktree(repo, follow)
        head = head_datums(repo)
        index = index_datums(repo, head)
        keys = [k for k in sorted(work.members) if _selected(k, prefixes)]
        datums = {k: work.hasher.known_datum(work.members[k]) for k in keys}
        present = repo.index.stored(d for d in datums.values() if d)
        to_read = [k for k in keys if datums[k] not in present]
        begin(progress, len(keys))
        tick(progress, len(keys) - len(to_read))
        with DatumSink(repo) as sink:
            reads = ((k, work.hasher.read(work.members[k])) for k in to_read)
            for batch in _batched(reads, STORE_BATCH):
                datums.update(zip((k for k, _ in batch), sink.put_many([r for _, r in batch])))
                tick(progress, len(batch))
        staged = [(k, datums[k], work.size(k)) for k in keys if index.get(k) != datums[k]]
        gone = [k for k in index if k not in work.members and _selected(k, prefixes)]
        staged.extend((k, None, 0) for k in gone)
        _stage(repo, staged, head, work.hasher)
    changes = compare({k: index.get(k) for k, _, _ in staged if k in index}, {k: d for k, d, _ in staged if d})
    return AddResult(changes, len(sink.written), sum(sink.written.values()), len(work.hasher.updated), work.notes)


def _batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _stage(repo: Repo, staged: list[tuple[str, Oid | None, int]], head: dict[str, Oid], hasher: Hasher) -> None:
    """Writes staged changes, dropping those that only restore HEAD's value."""
    with repo.index.transaction():
        repo.index.unstage(k for k, d, _ in staged if head.get(k) == d)
        repo.index.stage((k, d, s) for k, d, s in staged if head.get(k) != d)
        repo.index.save_stats(hasher.updated.items())


def rm(repo: Repo, paths: list[str], cached: bool = False) -> list[str]:
    """Stages the deletion of the datums under ``paths``; removes their files unless ``cached``."""
    prefixes = key_filter(repo, paths)
    root = repo.require_worktree()
    with repo.lock:
        head = head_datums(repo)
        index = index_datums(repo, head)
        keys = sorted(k for k in index if _selected(k, prefixes))
        if not keys:
            raise InvalidInputError(f"no tracked datum matches {' '.join(paths)}")
        if not cached:
            for key in keys:
                _, loc = repo.locate(index[key])
                for m in loc.members:
                    remove(root / member_path(key, m.ext, repo.config.grouping))
        with repo.index.transaction():
            repo.index.unstage(k for k in keys if k not in head)
            repo.index.stage((k, None, 0) for k in keys if k in head)
    return keys
