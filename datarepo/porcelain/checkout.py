"""checkout: make the work tree match a revision."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from datarepo import tree as trees
from datarepo.errors import DirtyWorktreeError
from datarepo.hashing import Oid
from datarepo.index import StatEntry
from datarepo.porcelain import Progress, begin, snapshot, tick
from datarepo.porcelain.history import create_ref
from datarepo.porcelain.stage import status
from datarepo.refs import BRANCHES
from datarepo.repo import Repo
from datarepo.shards import MemberData, copy_member
from datarepo.fsutil import atomic_file, remove
from datarepo.worktree import member_path, safe_path


@dataclass(frozen=True)
class CheckoutResult:
    oid: Oid
    branch: str | None
    written: int
    removed: int


def checkout(
    repo: Repo, rev: str, force: bool = False, new_branch: str | None = None, progress: Progress = None
) -> CheckoutResult:
    """Switches HEAD to ``rev`` (a branch stays attached) and rewrites the changed datums.

    Refuses when a datum it must touch has uncommitted changes, unless ``force``,
    which also resets every changed datum to ``rev``.
    """
    root = repo.require_worktree()
    if new_branch:
        create_ref(repo, BRANCHES, new_branch, rev)
        rev = new_branch
    target = repo.resolve(rev)
    branch = rev if repo.refs.read(BRANCHES + rev) is not None else None
    with repo.lock:
        head_tree = repo.tree_of(None)
        new_tree = repo.commit(target).tree
        moves = {c.key: c for c in trees.diff_trees(repo.store, head_tree, new_tree) if not repo.config.is_sparse(c.key)}
        dirty = status(repo).total.keys() | set(repo.index.staged())
        clash = sorted(dirty & moves.keys())
        if clash and not force:
            more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
            raise DirtyWorktreeError(f"uncommitted changes to {clash[0]}{more} would be overwritten (use --force)")
        if force:
            for key in dirty - moves.keys():
                moves[key] = trees.Change(key, None, trees.lookup(repo.store, new_tree, key))
        before = snapshot.token(repo, follow=False)
        written, removed = _apply(repo, root, moves, progress)
        if force:
            repo.index.unstage()
        else:
            repo.index.unstage(moves)
        if branch:
            repo.refs.set_symbolic(BRANCHES + branch)
        else:
            repo.refs.detach(target, f"checkout: moving to {rev}")
        if not force:  # --force also unstages keys whose files it did not touch
            snapshot.carry(repo, before)
    return CheckoutResult(target, branch, written, removed)


def _apply(repo: Repo, root: Path, moves: dict[str, trees.Change], progress: Progress) -> tuple[int, int]:
    grouping = repo.config.grouping
    written: dict[str, Oid] = {}
    removed = 0
    begin(progress, len(moves))
    for key in sorted(moves):
        new = moves[key].new
        members = repo.members(new.datum) if new else {}
        removed += _remove_stale(root, key, set(members), grouping)
        for ext, data in members.items():
            rel = member_path(key, ext, grouping)
            written[rel] = _write_file(safe_path(root, rel), data)
        tick(progress)
    _record_stats(repo, root, written)
    return len(written), removed


def _remove_stale(root: Path, key: str, keep: set[str], grouping: str) -> int:
    """Removes the files of ``key``'s members that the new datum does not have."""
    if grouping == "file":
        path = root / key
        if not keep and path.is_file():
            remove(path)
            _prune_dirs(root, path.parent)
            return 1
        return 0
    parent = (root / key).parent
    stem = key.rsplit("/", 1)[-1] + "."
    count = 0
    if parent.is_dir():
        for entry in os.scandir(parent):
            name = entry.name
            if name.startswith(stem) and name[len(stem) :] not in keep and entry.is_file(follow_symlinks=False):
                remove(Path(entry.path))
                count += 1
        if not keep:
            _prune_dirs(root, parent)
    return count


def _prune_dirs(root: Path, path: Path) -> None:
    while path != root and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


def _write_file(path: Path, data: MemberData) -> Oid:
    """Replaces a work-tree file whole (a reader never sees half of it); returns its hash."""
    with atomic_file(path, mode=0o644, durable=False) as f:
        return copy_member(data, f)


def _record_stats(repo: Repo, root: Path, written: dict[str, Oid]) -> None:
    """Caches the stat of every file written, so the next status need not hash them."""
    seen = time.time_ns()
    entries = []
    for rel, oid in written.items():
        st = os.stat(root / rel)
        entries.append((rel, StatEntry(st.st_size, st.st_mtime_ns, st.st_ino, seen, oid)))
    with repo.index.transaction():
        repo.index.save_stats(entries)
