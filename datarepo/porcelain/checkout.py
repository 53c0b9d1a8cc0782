"""checkout: make the work tree match a revision."""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from datarepo import snapshot
from datarepo import tree as trees
from datarepo.errors import CorruptObjectError, DirtyWorktreeError, InvalidInputError, UnsafePathError
from datarepo.fsutil import TMP_PREFIX, WorktreePaths, atomic_file, prune_dirs, remove, same_device
from datarepo.hashing import Oid
from datarepo.keys import check_key, member_of
from datarepo.porcelain import Progress, begin, tick
from datarepo.porcelain.history import create_ref
from datarepo.porcelain.stage import status, worktree_datums
from datarepo.refs import BRANCHES, check_name
from datarepo.repo import Repo
from datarepo.shards import LARGE_FILE, DatumLoc, MemberData, copy_member
from datarepo.statcols import FileStat, file_stat
from datarepo.store import check_datum, datum_members
from datarepo.worktree import PassedOver, file_and_dir, member_path, split_path


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
    which also resets to ``rev`` every datum HEAD or the staging area holds; a datum
    never added (untracked, in git's words) is left as it is, unless ``rev`` holds its key.
    """
    root = repo.require_worktree()
    if new_branch is not None:  # made once the checkout can be done: one it refuses leaves no branch behind
        check_name(new_branch, "branch")
        if repo.refs.read(BRANCHES + new_branch) is not None:
            raise InvalidInputError(f"branch {new_branch!r} already exists")
    target = repo.resolve(rev)
    # A branch name stays attached, and so does HEAD itself (``checkout -f HEAD``), as in git.
    branch = new_branch if new_branch is not None else (repo.current_branch() if rev == "HEAD" else rev if repo.refs.read(BRANCHES + rev) is not None else None)
    with repo.lock:
        for path in checkout_leftovers(repo):  # a killed checkout's: the lock says it is gone
            remove(path)
        head_tree = repo.tree_of(None)
        new_tree = repo.read_commit(target).tree
        moves = {c.key: c for c in trees.diff_trees(repo.store, head_tree, new_tree) if not repo.config.is_sparse(c.key)}
        total, staged = status(repo).total, repo.index.staging.changes()
        dirty = total.keys() | staged.keys()
        clash = sorted(dirty & moves.keys())
        if clash and not force:
            clash = _unlike_target(repo, clash, moves, staged.keys())
        if clash and not force:
            more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
            raise DirtyWorktreeError(f"uncommitted changes to {clash[0]}{more} would be overwritten")
        # As with git's -f, a datum neither HEAD nor the staging area holds is left alone,
        # unless its files are in the way of the revision's.
        untracked = set(total.added) - staged.keys() if force else set()
        if force:
            for key in dirty - moves.keys() - untracked:
                moves[key] = trees.Change(key, None, trees.lookup(repo.store, new_tree, key))
        before = snapshot.token(repo, follow=False)
        written, removed = _apply(repo, root, moves, progress, untracked)
        if force:
            repo.index.staging.unstage()
        else:
            repo.index.staging.unstage(moves)
        if new_branch is not None:
            create_ref(repo, BRANCHES, new_branch, target)
        if branch:
            repo.refs.set_symbolic(BRANCHES + branch)
        else:
            repo.refs.detach(target, f"checkout: moving to {rev}")
        if not force:  # --force also unstages keys whose files it did not touch
            snapshot.carry(repo, before, moved=moves)
    return CheckoutResult(target, branch, written, removed)


def _apply(
    repo: Repo, root: Path, moves: dict[str, trees.Change], progress: Progress, untracked: set[str]
) -> tuple[int, int]:
    """Removes the files the moved keys no longer have, then writes their new members.
    Paths that cannot all be (a file where a directory is needed, or the reverse) are
    refused before a file is written, or, where they depend on the work tree, before a
    file is written and after the removals (of files HEAD holds, or --force discards,
    and of the ``untracked`` datums in the way)."""
    grouping = repo.config.grouping
    found = {key: repo.locate(c.new.datum) if c.new else None for key, c in sorted(moves.items())}
    exts = {key: [m.ext for m in at[1].members] if at else [] for key, at in found.items()}
    files = {member_path(key, ext, grouping) for key, keep in exts.items() for ext in keep}
    clash, dirs = file_and_dir(files)
    if clash:
        raise InvalidInputError(f"cannot check out: {clash} would be both a file and a directory")
    paths = _check_paths(root, moves.keys(), files)
    in_the_way, below = _in_the_way(root, untracked, files, dirs, grouping)
    for rel in in_the_way:
        remove(root / rel)
    for key in below:
        exts[key] = []
    removed = len(in_the_way) + _remove_stale(root, exts, grouping)
    _check_in_the_way(root, files, dirs)
    written: dict[str, tuple[FileStat, Oid]] = {}
    begin(progress, len(moves))
    tmp = _temp_dir(repo)
    for key, at in found.items():
        if at is not None:
            # Each file's stat is taken as soon as its datum is written: taken at the end,
            # it would hold any change made to the file since, and pair it with what the
            # checkout wrote (a long checkout: trusted by the next status, never read again).
            for rel, oid in write_datum(repo, *at, root, key, paths, tmp).items():
                with contextlib.suppress(OSError):  # (gone already: nothing to cache)
                    written[rel] = file_stat(os.lstat(root / rel)), oid
        tick(progress)
    _record_stats(repo, written)
    return len(written), removed


def write_datum(
    repo: Repo,
    shard: str,
    loc: DatumLoc,
    root: Path,
    key: str,
    paths: WorktreePaths | None = None,
    tmp: _TempDirs | None = None,
) -> dict[str, Oid]:
    """Writes a datum's members as the files of ``key`` below ``root`` (never beyond a
    symbolic link: ``paths`` checks them); returns each file's hash. The datum's id is
    checked against the hashes of what was written, so a large member is read once: on a
    mismatch its files are removed again and CorruptObjectError names the shard. Each
    file is written under a temporary name (in ``tmp``'s folder where it can be) and
    renamed into place."""
    paths = paths or WorktreePaths(root)
    written = {}
    hashes: dict[str, Oid] = {}
    try:
        for ext, data in datum_members(repo.store, shard, loc, LARGE_FILE, verify=False).items():
            rel = member_path(key, ext, repo.config.grouping)
            written[rel] = hashes[ext] = _write_file(paths.check(rel), data, tmp)
        check_datum(shard, loc, hashes)
    except CorruptObjectError:
        for rel in written:
            remove(root / rel)
        raise
    return written


def _unlike_target(repo: Repo, clash: list[str], moves: dict[str, trees.Change], staged: set[str]) -> list[str]:
    """Of the keys changed in the work tree that the checkout would write, those whose
    files are not already what it would write: a checkout killed half-way left the files
    it had written, which are changes to HEAD, but no reason to refuse the same checkout."""
    unstaged = set(clash) - staged
    now = worktree_datums(repo, unstaged)
    wanted = {k: None if (new := moves[k].new) is None else new.datum for k in unstaged}
    return [k for k in clash if k not in unstaged or now.get(k) != wanted[k]]


def _in_the_way(
    root: Path, untracked: set[str], files: set[str], dirs: set[str], grouping: str
) -> tuple[list[str], set[str]]:
    """The files of untracked datums that stand where a directory is needed, and the
    untracked keys whose files lie below where a file is needed (all of them are in the way)."""
    if not untracked:
        return [], set()
    in_the_way = sorted(
        rel for rel in dirs
        if (split := split_path(rel, grouping)) is not None and split[0] in untracked and (root / rel).is_file()
    )
    below = set()
    ordered = sorted(untracked)
    for rel in files:
        at = bisect.bisect_left(ordered, rel + "/")
        while at < len(ordered) and ordered[at].startswith(rel + "/"):
            below.add(ordered[at])
            at += 1
    return in_the_way, below


def _check_in_the_way(root: Path, files: set[str], dirs: set[str]) -> None:
    """Refuses a file of the work tree where a directory is needed, or a directory that is
    not empty where a file is needed (an empty one is removed)."""
    for rel in sorted(dirs):
        if (root / rel).is_file():
            raise InvalidInputError(f"cannot check out: {rel} is a file where a directory is needed")
    subdirs: dict[str, set[str]] = {}
    for rel in sorted(files):
        parent, _, name = rel.rpartition("/")
        if parent not in subdirs:
            try:  # each directory listed once, without a stat per file
                subdirs[parent] = {e.name for e in os.scandir(root / parent) if e.is_dir(follow_symlinks=False)}
            except OSError:  # not there yet: nothing in the way
                subdirs[parent] = set()
        if name in subdirs[parent]:
            try:
                os.rmdir(root / rel)
            except OSError:
                raise InvalidInputError(f"cannot check out: {rel} is a directory where a file is needed") from None


def _remove_stale(root: Path, exts: dict[str, list[str]], grouping: str) -> int:
    """Removes the files of each key's members that its new datum does not have (all of
    them, for a key the revision lacks), then the directories that leaves empty. Each
    directory is listed once, not once a key: a checkout of 10,000 keys in one directory
    took 1 min 43 s to remove their 20,000 files, listing it again for every key. A file
    the ignore files leave out is kept, as git keeps ignored files: its name made it a
    member of the key (``x.jpg.tmp`` of ``x``, DVC's ``x.csv.dvc``), and a checkout that
    moved ``x`` deleted it."""
    passed_over = PassedOver(root)
    count = 0
    emptied: set[Path] = set()
    by_stem: dict[str, dict[str, list[str]]] = {}  # a directory's files, by the key stem they begin with
    for key, keep in exts.items():
        if grouping == "file":
            path = root / key
            if not keep and path.is_file() and not passed_over(key):
                remove(path)
                emptied.add(path.parent)
                count += 1
            continue
        rel_dir, _, stem = key.rpartition("/")
        if rel_dir not in by_stem:
            by_stem[rel_dir] = _files_by_stem(root / rel_dir)
        for name in by_stem[rel_dir].get(stem.partition(".")[0], ()):  # (an ingested key may hold a dot)
            if (ext := member_of(name, stem)) is None or ext in keep or passed_over(f"{rel_dir}/{name}" if rel_dir else name):
                continue
            remove(root / rel_dir / name)
            count += 1
        if not keep:
            emptied.add(root / rel_dir)
    for path in sorted(emptied, key=lambda p: len(p.parts), reverse=True):  # the deepest first
        prune_dirs(root, path)
    return count


def _files_by_stem(path: Path) -> dict[str, list[str]]:
    """A directory's regular files by the part of their name before its first dot (all of it:
    a file without an extension is a member too)."""
    found: dict[str, list[str]] = {}
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        stem = entry.name.partition(".")[0]
        if entry.is_file(follow_symlinks=False):
            found.setdefault(stem, []).append(entry.name)
    return found


def _write_file(path: Path, data: MemberData, tmp: _TempDirs | None) -> Oid:
    """Replaces a work-tree file whole (a reader never sees half of it); returns its hash.
    It is the user's file: made as git and every program makes one, 0666 less the umask."""
    with atomic_file(path, mode=0o666, durable=False, tmp_dir=tmp.for_folder(path.parent) if tmp else None) as f:
        return copy_member(data, f)


class _TempDirs:
    """Where the temporary file of a work-tree file is written: the repository's ``tmp/``
    when it is on the same file system as the file's folder (a rename must not cross
    file systems), else the folder itself."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._chosen: dict[Path, Path] = {}

    def for_folder(self, folder: Path) -> Path:
        if (chosen := self._chosen.get(folder)) is None:
            folder.mkdir(parents=True, exist_ok=True)
            chosen = self._chosen[folder] = self.tmp if same_device(self.tmp, folder) else folder
        return chosen


def _temp_dir(repo: Repo) -> _TempDirs:
    """Where checkout writes each file before renaming it into place: below the repository's
    folder, so that a killed checkout leaves nothing in the work tree (the next one removes it)."""
    repo.temp_dir.mkdir(exist_ok=True)
    return _TempDirs(repo.temp_dir)


def checkout_leftovers(repo: Repo) -> list[Path]:
    """The temporary files a killed checkout left in the repository's ``tmp/`` (whoever holds
    the writer lock knows no checkout is writing them)."""
    try:
        with os.scandir(repo.temp_dir) as entries:
            return sorted(Path(e.path) for e in entries if e.name.startswith(TMP_PREFIX))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _check_paths(root: Path, keys: Iterable[str], files: set[str]) -> WorktreePaths:
    """Refuses, before anything is written or removed, a key whose files lie beyond a
    symbolic link in the work tree: checkout writes and deletes only inside it."""
    paths = WorktreePaths(root)
    for rel in sorted(files):
        paths.check(rel)
    for key in sorted(keys):
        if (linked := paths.linked_folder(check_key(key).rpartition("/")[0])) is not None:
            raise UnsafePathError(key, linked)
    return paths


def _record_stats(repo: Repo, written: dict[str, tuple[FileStat, Oid]]) -> None:
    """Caches the stat each file had once written, so the next status need not hash those
    written more than two seconds before the checkout ended (the racy rule:
    :func:`datarepo.statcache.trusted`)."""
    seen = time.time_ns()
    entries = [(rel, (*stat, seen, oid)) for rel, (stat, oid) in written.items()]
    with repo.index.transaction():
        repo.index.stats.save(entries)
