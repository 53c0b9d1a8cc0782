"""Commits and what reads them: commit, log, show, diff, ls, cat, branch, tag."""

from __future__ import annotations

import contextlib
import heapq
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import BinaryIO

from datarepo import snapshot
from datarepo import tree as trees
from datarepo.errors import BadRevisionError, CorruptObjectError, DataRepoError, InvalidInputError, ObjectNotFoundError
from datarepo.hashing import Oid
from datarepo.objects import Commit, TreeEntry
from datarepo.pathspec import Selection as PathSelection
from datarepo.pathspec import parse, select
from datarepo.porcelain import Changes
from datarepo.refs import BRANCHES, HEAD, REMOTES, TAGS, check_name
from datarepo.repo import Repo
from datarepo.shards import LARGE_FILE, DatumLoc, MemberData, copy_member, member_hash
from datarepo.store import check_datum, datum_members
from datarepo.worktree import split_path


class NothingToCommitError(DataRepoError):
    """``commit`` found no staged change."""


class CommittedButError(DataRepoError):
    """The commit was made (its branch moved), but the staging area could not be cleared
    after it: an error must not say that the commit failed."""

    def __init__(self, oid: Oid, error: Exception) -> None:
        reason = f"index.sqlite: {error}" if isinstance(error, sqlite3.Error) else (error.strerror or str(error))
        super().__init__(f"committed {oid[:12]}, but the staging area could not be cleared after it ({reason})")
        self.oid = oid


@dataclass(frozen=True)
class CommitResult:
    oid: Oid
    branch: str | None
    changes: int


def commit(repo: Repo, message: str, allow_empty: bool = False) -> CommitResult:
    """Records the staged changes as a new commit on the current branch."""
    if not message.strip():
        raise InvalidInputError("empty commit message (use -m)")
    with repo.lock:
        parent = repo.head()
        repo.index.staging.check()  # a damaged staged row (an invalid key, say) is never committed
        count = repo.index.staging.count()
        if count and parent is not None and repo.index.staging.tree_of_any_head() == repo.read_commit(parent).tree:
            repo.index.staging.unstage()  # committed already (see CommittedButError): nothing is staged
            count = 0
        if not count and not allow_empty:
            raise NothingToCommitError("nothing to commit (use \"datarepo add\" first)")
        before = snapshot.token(repo, follow=False) if repo.worktree is not None else None
        if (tree := repo.index.staging.tree(parent)) is not None and repo.store.has_object(tree):
            # ``add`` stored this tree, and every datum it names, for exactly this HEAD and staging area.
            oid = repo.commit_tree(tree, message, parent)
        else:
            for datum in sorted(repo.index.staging.unstored()):
                if not _placed_again(repo, datum):
                    raise ObjectNotFoundError("staged datum", datum)
            oid = repo.commit(trees.staged_changes(repo.index.staging.rows()), message, parent=parent)
        try:
            repo.index.staging.unstage()
            if before is not None:
                snapshot.carry(repo, before, commit=True)
        except (OSError, sqlite3.Error) as e:  # (a full disk) after the ref moved: the commit stands
            raise CommittedButError(oid, e) from None
    return CommitResult(oid, repo.current_branch(), count)


def _placed_again(repo: Repo, datum: str) -> bool:
    """Whether a staged datum whose location row does not read (damaged) is placed once
    that row's shard is read again from its ``.idx``. A datum without a row is not."""
    locations = repo.index.locations
    if not locations.has_row(datum):
        return False
    return locations.locate(datum) is not None or (repo.sync_locations() > 0 and locations.locate(datum) is not None)


def log(repo: Repo, rev: str = "HEAD", limit: int | None = None, exclude: str | None = None) -> Iterator[tuple[Oid, Commit]]:
    """Yields commits reachable from ``rev``, newest first; with ``exclude``, only those
    not reachable from it (git's ``exclude..rev``)."""
    hidden = {oid for oid, _ in log(repo, exclude)} if exclude is not None else set()
    if rev == "HEAD" and repo.head() is None:
        return
    start = repo.resolve(rev)
    heap = [(_neg_time(repo.read_commit(start)), start)]
    seen = {start}
    count = 0
    while heap and (limit is None or count < limit):
        _, oid = heapq.heappop(heap)
        if oid in hidden:  # (and so are its parents)
            continue
        c = repo.read_commit(oid)
        yield oid, c
        count += 1
        for p in c.parents:
            if p not in seen:
                seen.add(p)
                heapq.heappush(heap, (_neg_time(repo.read_commit(p)), p))


def _neg_time(c: Commit) -> tuple[str, ...]:
    # ISO-8601 UTC strings sort by time; invert them so the newest pops first.
    return tuple(chr(0x10FFFF - ord(ch)) for ch in c.time)


def diff(repo: Repo, a: str | None, b: str | None) -> Iterator[trees.Change]:
    """Yields the keys that differ between two revisions (``None``: the empty tree)."""
    return _tree(repo, a).diff(_tree(repo, b))


def _tree(repo: Repo, rev: str | None) -> trees.Tree:
    return repo.tree(rev) if rev is not None else trees.Tree(repo.store, None)


def changes_of(changes: Iterator[trees.Change]) -> Changes:
    out = Changes()
    for c in changes:
        (out.added if c.old is None else out.deleted if c.new is None else out.modified).append(c.key)
    return out


def show(repo: Repo, rev: str) -> tuple[Oid, Commit, Changes]:
    oid = repo.resolve(rev)
    c = repo.read_commit(oid)
    parent = repo.tree(c.parents[0]) if c.parents else trees.Tree(repo.store, None)
    return oid, c, changes_of(parent.diff(trees.Tree(repo.store, c.tree, oid)))


def ls(repo: Repo, rev: str = "HEAD", prefix: str = "", glob: str | None = None,
       paths: list[str] | None = None) -> trees.Selection | Within:
    """The entries of ``rev`` under ``prefix`` (and matching ``glob``, and selected by the
    path arguments ``paths``: :mod:`datarepo.pathspec`), read as iterated."""
    tree = repo.tree(rev)
    entries = tree.select(prefix=prefix, glob=glob)
    if not paths:
        return entries
    specs = parse(repo.require_worktree(), paths)
    keep = select(repo, specs, None, lambda: {e.key: e.datum for e in tree.select()})
    return entries if keep is None else Within(entries, keep)


class Within:
    """A tree's selection, of the keys path arguments select only."""

    def __init__(self, entries: trees.Selection, keep: PathSelection) -> None:
        self.entries, self.keep = entries, keep

    def columns(self) -> Iterator[tuple[Sequence[str], Sequence[Oid], Sequence[int] | None]]:
        """As :meth:`datarepo.tree.Selection.columns`."""
        for columns in self.entries.columns():
            chosen = [k in self.keep for k in columns[0]]
            if all(chosen):
                yield columns
            elif any(chosen):
                yield tuple(list(compress(c, chosen)) if c is not None else None for c in columns)  # type: ignore[misc]


def resolve_member(repo: Repo, spec: str) -> tuple[TreeEntry, str | None]:
    """Finds the datum and member named by ``REV:path`` (a key, or key.ext)."""
    oid, path = repo.split_rev_key(spec)
    tree = trees.Tree(repo.store, repo.read_commit(oid).tree, oid)
    if (entry := tree.get(path)) is not None:
        return entry, None
    split = split_path(path, repo.config.grouping)
    if split is not None and (entry := tree.get(split[0])) is not None:
        return entry, split[1]
    raise BadRevisionError(spec, "no such key")


def cat(repo: Repo, spec: str, out: BinaryIO) -> None:
    """Writes one member (``REV:key.ext``, or ``REV:key`` of a one-member datum) to ``out``.

    The datum is checked against its id with the hash of what was written, so a large
    member is read once; a mismatch raises CorruptObjectError once its bytes are out.
    """
    entry, ext = resolve_member(repo, spec)
    shard, loc, members, checked = repo.at_location(entry.datum, lambda shard, loc: _cat_members(repo, shard, loc))
    if ext is None and "" in members:  # ``REV:README`` names the file README: the member without an extension
        ext = ""
    if ext is None:
        if len(members) != 1:
            raise InvalidInputError(f"{entry.key} has members {', '.join(sorted(members))}; name one as KEY.EXT")
        ext = next(iter(members))
    if ext not in members:
        raise InvalidInputError(f"{entry.key} has no member {ext!r} (it has {', '.join(sorted(members))})")
    hashes = {} if checked else {e: member_hash(m) for e, m in members.items() if e != ext}
    data = members[ext]
    if isinstance(data, bytes):  # in memory: checked before a byte is out
        if not checked:
            hashes[ext] = member_hash(data)
            check_datum(shard, loc, hashes)
        out.write(data)
    else:  # streamed, and so read once: checked once it is out
        hashes[ext] = copy_member(data, out)
        check_datum(shard, loc, hashes)


def _cat_members(repo: Repo, shard: str, loc: DatumLoc) -> tuple[str, DatumLoc, dict[str, MemberData], bool]:
    """A datum's members, and whether they are checked: all in memory, they are, here, where
    bytes that are not the datum's send :meth:`Repo.at_location` to the shard's ``.idx``."""
    members = datum_members(repo.store, shard, loc, LARGE_FILE, verify=False)
    checked = all(isinstance(m, bytes) for m in members.values())
    if checked:
        check_datum(shard, loc, {e: member_hash(m) for e, m in members.items()})  # type: ignore[arg-type]
    return shard, loc, members, checked


def list_refs(repo: Repo, prefix: str) -> list[tuple[str, Oid]]:
    return list(repo.refs.list(prefix))


def create_ref(repo: Repo, prefix: str, name: str, rev: str = "HEAD", force: bool = False) -> Oid:
    """Creates a branch or tag; refuses to move an existing one unless ``force``."""
    check_name(name, "branch" if prefix == BRANCHES else "tag")
    oid = repo.resolve(rev)
    repo.read_commit(oid)  # a ref names a commit that is there (HEAD, or a ref, may name a lost one)
    with repo.lock:
        try:
            old: Oid | None | bool = repo.refs.read(prefix + name)
        except CorruptObjectError:
            if not force:
                raise
            old = True  # a forced update may replace a ref that names no commit: the way to mend it
        if old is not None and not force:
            raise InvalidInputError(f"{'branch' if prefix == BRANCHES else 'tag'} {name!r} already exists")
        if isinstance(old, str) and prefix == BRANCHES and repo.current_branch() == name:
            # (as git: the work tree and staging area were made from its commit, and would
            # describe neither that one nor the new one; a damaged one may be mended)
            raise InvalidInputError(f"cannot move the branch {name!r}: it is checked out (check out another one first)")
        repo.refs.update(prefix + name, oid, expected=old, message=f"created from {rev}")
    return oid


def delete_ref(repo: Repo, prefix: str, name: str, force: bool = False) -> Oid:
    """Deletes a branch or tag. As git's ``branch -d``, a branch whose commit no other
    branch, tag or HEAD reaches is kept unless ``force``: its history would be left to the
    reflog, and ``gc`` deletes it once that expires."""
    if prefix == BRANCHES and repo.current_branch() == name:
        raise InvalidInputError(f"cannot delete the branch {name!r}: it is checked out")
    with repo.lock:
        old = repo.refs.read(prefix + name)
        if old is None:
            raise InvalidInputError(f"no such {'branch' if prefix == BRANCHES else 'tag'}: {name!r}")
        if prefix == BRANCHES and not force and not _reached_elsewhere(repo, prefix + name, old):
            raise InvalidInputError(
                f"the branch {name!r} is not merged: no other branch, tag or HEAD reaches {old[:12]} "
                "(branch -d -f deletes it; its commits are then kept only as long as the reflog)"
            )
        repo.refs.update(prefix + name, None, expected=old, message="deleted")
    return old


def _reached_elsewhere(repo: Repo, ref: str, oid: Oid) -> bool:
    """Whether a ref other than ``ref`` (a branch, tag, remote branch or HEAD) reaches commit ``oid``."""
    stack: list[Oid] = []
    for name in [HEAD, *repo.refs.names(BRANCHES), *repo.refs.names(TAGS), *repo.refs.names(REMOTES)]:
        with contextlib.suppress(DataRepoError):  # (a damaged ref reaches nothing; fsck names it)
            if name != ref and (start := repo.refs.read(name)) is not None:
                stack.append(start)
    seen: set[str] = set()
    while stack:
        commit = stack.pop()
        if commit == oid:
            return True
        if commit not in seen:
            seen.add(commit)
            with contextlib.suppress(DataRepoError):
                stack.extend(repo.read_commit(commit).parents)
    return False

