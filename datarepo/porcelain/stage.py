"""The work tree against the index and HEAD: status, add, rm."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from datarepo import executor, snapshot
from datarepo import tree as trees
from datarepo.errors import InvalidInputError
from datarepo.fsutil import WorktreePaths, prune_dirs, remove
from datarepo.hashing import Oid
from datarepo.objects import TreeEntry
from datarepo.pathspec import Pathspec, Selection, parse, select
from datarepo.porcelain import Changes, Progress, compare, history, retain
from datarepo.repo import Repo
from datarepo.statcache import write_base
from datarepo.statcols import FileStat, StatColumns, StatRow
from datarepo.worktree import Scan, group, left_out, member_path, scan, split_all
from datarepo.write import hash_datum, store_files


@dataclass
class Status:
    staged: Changes
    unstaged: Changes
    total: Changes
    notes: list[str] = field(default_factory=list)
    # How many keys were looked at again (their files changed since the last status): 0 when
    # the saved verdict stood; None when every key was (no status to start from).
    looked_at: int | None = None
    files: list[str] = field(default_factory=list)  # the work-tree files it looked at

    def only(self, keep: Selection | None) -> Status:
        """The status of the keys in ``keep`` (None: of all)."""
        if keep is None:
            return self
        return Status(self.staged.only(keep), self.unstaged.only(keep), self.total.only(keep), self.notes, self.looked_at, self.files)


def _selected(key: str, selection: Selection | None) -> bool:
    return selection is None or key in selection


def head_datums(repo: Repo, keys: Iterable[str] | None = None) -> dict[str, Oid]:
    """HEAD's datum per key (only ``keys``, if given), sparse prefixes left out."""
    tree = repo.tree_of(None)
    if tree is None:
        return {}
    if keys is None:
        entries: Iterable[TreeEntry] = trees.iter_tree(repo.store, tree)
    else:
        entries = trees.lookup_many(repo.store, tree, keys).values()
    return {e.key: e.datum for e in entries if not repo.config.is_sparse(e.key)}


def index_datums(repo: Repo, head: dict[str, Oid], keys: Iterable[str] | None = None) -> dict[str, Oid]:
    """HEAD overlaid with the staging area (only ``keys``, if given)."""
    state = dict(head)
    staged = repo.index.staging.changes() if keys is None else repo.index.staging.changes_for(keys)
    for key, (datum, _) in staged.items():
        if datum is None:
            state.pop(key, None)
        else:
            state[key] = datum
    return state


@dataclass
class _WorktreeState:
    """One look at the work tree, and what the status snapshot says about it.

    ``keys`` are the keys to look at again: those whose files changed since
    the snapshot (and, for ``add``, those the snapshot saw differ from the
    index); the snapshot's verdict holds for every other key. None means there
    is no usable snapshot (or too much changed), so every key must be looked at.
    """

    repo: Repo
    found: Scan
    snap: snapshot.Snapshot | None
    keys: set[str] | None
    follow: bool = False
    digest: str | None = None
    whole: bool = True  # False: ``found`` lists only some folders (no snapshot can be made of it)

    @cached_property
    def grouped(self) -> tuple[dict[str, dict[str, str]], list[str]]:
        """The members of the keys to look at, and the notes on files that fit no datum."""
        grouping = self.repo.config.grouping
        if self.keys is None or self.snap is None:
            notes: list[str] = []
            return group(sorted(self.found.names), grouping, notes), notes
        # Every changed path could be grouped, so the snapshot's notes still hold.
        return group(sorted(self.key_files), grouping, []), list(self.snap.status["group_notes"])

    @cached_property
    def key_files(self) -> dict[str, FileStat]:
        """The files of the keys to look at, with their stats."""
        return self.found.files_of(self.keys or (), self.repo.config.grouping)

    @property
    def members(self) -> dict[str, dict[str, str]]:
        return self.grouped[0]

    def stat_view(self) -> tuple[dict[str, FileStat], dict[str, StatRow]]:
        """The stats of the files to look at (every file, or those of the keys to look at
        again) and their stat-cache entries. A scan that stat'ed no file (a first add, every
        file to be read) gives no stats: each file is stat'ed as it is read."""
        if self.keys is None:
            files = self.found.files if self.found.stats is not None else {}
            return files, self.repo.index.stats.load()
        return self.key_files, self.repo.index.stats.lookup(self.key_files)

    def save(self, result: Status, keys: set[str] | None, read: StatColumns, recheck: Iterable[str] = ()) -> Status:
        """Stores ``result`` (fresh for ``keys`` only, or for all) as the new snapshot, with the
        stats of the files ``read`` (a first add's scan took none); returns it whole. The keys
        to ``recheck`` keep a stale verdict, so the next status looks at them whatever it finds."""
        self.found.fill_stats(self.repo.require_worktree(), [(read.names, read.stats)])
        if keys is not None and self.snap is not None:
            old = self.snap.status
            result = Status(*(snapshot.merge(snapshot.changes_from_json(old[n]), keys, getattr(result, n)) for n in _PARTS))
        group_notes = self.grouped[1]
        token = snapshot.token(self.repo, self.follow)
        saved = {**{n: getattr(result, n).to_json() for n in _PARTS}, "group_notes": group_notes, "recheck": sorted(recheck)}
        snapshot.save(self.repo, token, self.found, saved, self.digest)
        result.notes = self.found.notes + group_notes
        return result


_PARTS = ("staged", "unstaged", "total")
PARTIAL_LIMIT = 20_000
# From this many staged changes, ``add`` builds the tree (and a first add's stat base) in
# worker processes while it stages: 85-150 ms and 70-110 ms for 50,000 keys and 100,000 files.
ASIDE_MIN = 20_000


def _look(repo: Repo, follow: bool, with_unstaged: bool = False, within: list[str] | None = None) -> _WorktreeState:
    """Scans the work tree and works out which keys need a new look (``with_unstaged``:
    also those the snapshot saw differ from the index, which ``add`` stages). Only bad
    entries ``within`` those paths (all, if None) stop it (:meth:`Scan.raise_errors`)."""
    snap = snapshot.load(repo, snapshot.token(repo, follow))
    # With no snapshot and an empty stat cache (a first add or status), every file will be
    # read: each is stat'ed as it is opened, not by path beforehand.
    with_stats = snap is not None or repo.index.stats.any()
    found = scan(repo.require_worktree(), follow=follow, skip_prefixes=repo.config.sparse, with_stats=with_stats)
    found.raise_errors(within)
    keys, seen = None, snapshot.digest(found) if snap is not None else None
    if snap is not None and snap.digest == seen:
        keys = set()
    elif snap is not None:
        keys = snapshot.changed_keys(snap, found, repo.config.grouping)
        if keys is not None and len(keys) > PARTIAL_LIMIT:
            keys = None
    if keys is not None and snap is not None:
        keys |= set(snap.status["recheck"])  # moved by a checkout since: their files may be gone
        if with_unstaged:
            keys |= snapshot.changes_from_json(snap.status["unstaged"]).keys()
    return _WorktreeState(repo, found, snap, keys, follow, seen)


def _look_within(repo: Repo, follow: bool, specs: list[Pathspec]) -> tuple[_WorktreeState, Selection] | None:
    """The look of an ``add`` of ``specs`` at only the folders they can select keys in, as
    ``git add PATH`` reads only PATH (a datum's files share its folder: a file or key named
    needs only its own folder, not the folders below it), and the keys they select. None
    where one may select keys anywhere (a glob with no folder of its own)."""
    regions = [(s.within, True) if s.kind in ("dir", "glob") else (s.within.rpartition("/")[0], False) for s in specs]
    if ("", True) in regions:
        return None
    root, grouping = repo.require_worktree(), repo.config.grouping
    found = scan(root, follow=follow, skip_prefixes=repo.config.sparse, only=regions)
    found.raise_errors(_within(specs))
    selection = select(repo, specs, found.names, lambda: tracked(repo, with_head=True))
    keys = {k for k, _ in split_all(found.names, grouping) if k in selection}
    keys.update(_tracked_in(repo, selection))
    return _WorktreeState(repo, found, None, keys, follow, whole=False), selection


def _tracked_in(repo: Repo, selection: Selection) -> set[str]:
    """The tracked keys (HEAD's and the staging area's) ``selection`` selects: those of HEAD
    read from the pages that can hold them, not the whole tree."""
    keys = {k for k in repo.index.staging.changes() if k in selection}
    if (head := repo.tree_of(None)) is not None:
        keys.update(trees.lookup_many(repo.store, head, selection.keys))
        for folder in selection.dirs:
            keys.update(e.key for e in trees.iter_tree(repo.store, head, folder))
    return keys


def _verdict(head: dict[str, Oid], index: dict[str, Oid], now: dict[str, Oid]) -> Status:
    return Status(compare(head, index), compare(index, now), compare(head, now))


def status(repo: Repo, follow: bool = False, paths: list[str] | None = None) -> Status:
    """Compares HEAD, the staging area and the work tree (the keys ``paths`` select, if given).

    Keys whose files have not changed since the last status keep the verdict
    the status snapshot holds for them; only the others are looked at again.
    """
    specs = parse(repo.require_worktree(), paths or ())
    result = _status(repo, follow)
    return result.only(select(repo, specs, result.files, lambda: tracked(repo, with_head=True)))


def _status(repo: Repo, follow: bool) -> Status:
    look = _look(repo, follow)
    keys = look.keys
    if keys is not None and not keys and look.snap is not None:
        old = look.snap.status
        if look.digest != look.snap.digest:  # files moved in the listing, no key changed: the next status need not look
            snapshot.save(repo, snapshot.token(repo, follow), look.found, old, look.digest)
        parts = (snapshot.changes_from_json(old[n]) for n in _PARTS)
        return Status(*parts, look.found.notes + old["group_notes"], 0, look.found.names)
    files, cache = look.stat_view()
    root, read = repo.require_worktree(), StatColumns()
    now = {k: hash_datum(root, m, files, cache, read) for k, m in look.members.items() if keys is None or k in keys}
    if read:
        with repo.index.best_effort(), repo.index.transaction():
            repo.index.stats.record(read, look.found.started_ns, bulk=_empty(repo, cache))
    head = head_datums(repo, keys)
    result = look.save(_verdict(head, index_datums(repo, head, keys), now), keys, read)
    result.looked_at = None if keys is None else len(keys)
    result.files = look.found.names
    return result


def diff(repo: Repo, a: str | None, b: str | None, paths: list[str] | None = None) -> Changes:
    """The keys that differ (those ``paths`` select, if given): between revisions ``a`` and
    ``b``; between ``a`` and the work tree; or (neither) between HEAD and the work tree."""
    specs = parse(repo.require_worktree(), paths or ()) if paths else None
    if b is not None:
        changes = history.changes_of(history.diff(repo, a, b))
        return changes.only(select(repo, specs, None, lambda: {**_datums(repo, a), **_datums(repo, b)}))
    now = _status(repo, False)
    changes = now.total if a in (None, "HEAD") else diff_worktree(repo, a, now)

    def known() -> dict[str, Oid]:  # (the keys of HEAD, the staging area and ``a``)
        return {**tracked(repo, with_head=True), **_datums(repo, a)}

    return changes.only(select(repo, specs, now.files, known))


def _datums(repo: Repo, rev: str | None) -> dict[str, Oid]:
    """The datum of each key of ``rev``."""
    tree = repo.tree_of(rev) if rev is not None else None
    return {e.key: e.datum for e in trees.iter_tree(repo.store, tree)} if tree is not None else {}


def diff_worktree(repo: Repo, rev: str, now: Status | None = None) -> Changes:
    """The keys that differ between ``rev`` and the work tree (``git diff REV``): those that
    differ between ``rev`` and HEAD, or between HEAD and the work tree, each compared again
    with its datum in the work tree (hashed through the stat cache) and in ``rev``."""
    dirty = (now or status(repo)).total.keys()
    base = repo.tree_of(rev)
    moved = {c.key: c for c in trees.diff_trees(repo.store, base, repo.tree_of(None)) if not repo.config.is_sparse(c.key)}
    keys = dirty | moved.keys()
    then = {k: e.datum for k, e in (trees.lookup_many(repo.store, base, keys) if base else {}).items()}
    now = {k: c.new.datum for k, c in moved.items() if c.new is not None and k not in dirty}
    now.update(worktree_datums(repo, dirty))
    return compare(then, now)


def worktree_datums(repo: Repo, keys: set[str]) -> dict[str, Oid]:
    """The datum each of ``keys`` makes in the work tree (hashed through the stat cache);
    a key without files there is not in it."""
    root, grouping = repo.require_worktree(), repo.config.grouping
    found = scan(root, skip_prefixes=repo.config.sparse)
    found.raise_errors()
    files = found.files_of(keys, grouping)  # the files of these keys only, grouped as they are now
    cache, read = repo.index.stats.lookup(files), StatColumns()
    return {k: hash_datum(root, m, files, cache, read) for k, m in group(sorted(files), grouping, []).items()}


@dataclass(frozen=True)
class AddResult:
    changes: Changes
    stored: int
    stored_bytes: int
    hashed: int
    notes: list[str]
    looked_at: int | None  # keys looked at again (see :class:`Status`); None: every key


def add(repo: Repo, paths: list[str] | None = None, follow: bool = False, progress: Progress = None) -> AddResult:
    """Stores new or changed datums under ``paths`` and stages them (and deletions).

    With a status snapshot, only keys whose files changed since it, or that it
    saw differ from the index, are looked at.
    """
    specs = parse(repo.require_worktree(), paths or ())
    for spec in specs or ():
        _check_not_sparse(repo, spec)
        _check_not_left_out(repo, spec)
    with repo.lock:
        if repo.forget_missing_shards():  # datums whose copy is gone or damaged: stored again from their files
            snapshot.drop(repo)
        before = ""  # (the snapshot's token before staging, where it is carried over)
        if specs is None or (within := _look_within(repo, follow, specs)) is None:
            look = _look(repo, follow, with_unstaged=True, within=_within(specs))
            prefixes = select(repo, specs, look.found.names, lambda: tracked(repo, with_head=True))
        else:
            look, prefixes = within
            before = snapshot.token(repo, follow)
        keys, members = look.keys, look.members
        head = head_datums(repo, keys)
        index = index_datums(repo, head, keys)
        if keys is not None:
            candidates: Iterable[str] = keys
        else:  # the members' keys, grouped from sorted paths, come nearly sorted: a quick sort, unlike a set's
            candidates = [*members, *((index.keys() | head.keys()) - members.keys())]
        chosen = sorted(candidates if prefixes is None else (k for k in candidates if _selected(k, prefixes)))
        files, cache = look.stat_view()
        parent = repo.head()
        # The tree ``commit`` will write is built here where a stored tree is at hand to apply
        # the changes to: the one the last add stored, or HEAD's own when nothing is staged.
        base = repo.index.staging.tree(parent)
        buildable = base is not None or not repo.index.staging.count()
        base = base if base is not None else repo.tree_of(None)
        stored = store_files(repo, repo.require_worktree(), members, [k for k in chosen if k in members], files, cache, progress)
        now, sizes = stored.datums, stored.sizes
        deleted = [k for k in chosen if k not in members and k in index]
        staged = [(k, d, sizes[k]) for k, d in now.items() if index.get(k) != d]
        staged.extend((k, None, 0) for k in deleted)
        after = {**index, **now}  # (a key with files and no staged change already had its datum)
        for k in deleted:
            del after[k]
        # The tree and a first add's stat base are built beside the staging (in worker
        # processes, with many changes): both from plain data, each the same wherever it runs.
        aside = executor.for_work(len(staged) >= ASIDE_MIN)
        tree_job = aside.map(trees.build_tree, [(str(repo.dotdir), base, staged)]) if buildable and staged else None
        bulk = _empty(repo, cache) and len(stored.read) > 0
        base_path = str(repo.index.stats.base_path(""))
        base_job = aside.map(write_base, [(base_path, stored.read, look.found.started_ns)]) if bulk else None
        _stage(repo, staged, head, StatColumns() if bulk else stored.read, look.found.started_ns)
        if not look.whole:  # the last snapshot holds, but for the keys chosen: the next status looks at them again
            snapshot.carry(repo, before, moved=chosen, follow=follow)
        elif keys is not None:  # head and the index hold only those keys; now, only the chosen ones with files
            # The keys it looked at and did not choose (their files changed, or they were not
            # staged) keep the snapshot's verdict, now stale: the next status looks at them again.
            done = keys if prefixes is None else set(chosen)
            look.save(_verdict(_only(head, done), _only(after, done), now), done, stored.read, recheck=keys - done)
        elif prefixes is None:  # every key was looked at, with no snapshot to start from
            look.save(_verdict(head, after, now), keys, stored.read)
        tree = next(tree_job) if tree_job is not None else base if buildable else None
        with repo.index.transaction():
            if tree is not None:
                repo.index.staging.set_tree(parent, tree)
            if base_job is not None:
                repo.index.stats.name_base(next(base_job))
    changes = compare({k: index[k] for k, _, _ in staged if k in index}, {k: d for k, d, _ in staged if d})
    notes = look.found.notes + look.grouped[1]
    retain(look, stored, head, index, now, sizes, after, staged)
    looked_at = None if keys is None else len(keys)
    return AddResult(changes, len(stored.written), sum(stored.written.values()), stored.hashed, notes, looked_at)


def tracked(repo: Repo, with_head: bool = False) -> dict[str, Oid]:
    """The datum of every tracked key: HEAD's overlaid with the staging area (and, ``with_head``,
    HEAD's keys whose deletion is staged)."""
    head = head_datums(repo)
    index = index_datums(repo, head)
    return {**head, **index} if with_head else index


def _within(specs: list[Pathspec] | None) -> list[str] | None:
    """The work-tree paths the arguments lie in (None: the whole tree)."""
    within = [s.within for s in specs or ()]
    return None if not within or "" in within else within


def _check_not_sparse(repo: Repo, spec: Pathspec) -> None:
    """Refuses a path argument under a sparse prefix, where ``add`` does not look: it would
    stage nothing, and say nothing of it."""
    path = spec.within
    if prefix := next((p for p in repo.config.sparse if (path + "/").startswith(p)), None):
        raise InvalidInputError(
            f"{spec.arg} is under the sparse prefix {prefix}, whose keys only ingest writes: add does not look there "
            "(take the prefix out of core.sparse in .datarepo/config.toml to add files there)"
        )


def _check_not_left_out(repo: Repo, spec: Pathspec) -> None:
    """Refuses, as git does, a path argument the scan passes over (ignored, or never
    added): add would stage nothing for it, or the deletion of its datum."""
    if spec.kind in ("file", "dir") and (why := left_out(repo.require_worktree(), spec.path)):
        raise InvalidInputError(f"{spec.arg} is {why}: add does not look at it (rm --cached stops tracking a datum)")


def _empty(repo: Repo, cache: dict[str, StatRow]) -> bool:
    """Whether the work tree's stat cache is empty, ``cache`` being what was looked up in
    it: the files read then make a new base. None of a few keys' files in the cache is no
    empty cache: a base of those files alone would drop every file of the last one."""
    return not cache and not repo.index.stats.any()


def _only(state: dict[str, Oid], keys: set[str]) -> dict[str, Oid]:
    return {k: v for k, v in state.items() if k in keys}


def _stage(repo: Repo, staged: list[tuple[str, Oid | None, int]], head: dict[str, Oid], read: StatColumns, seen_ns: int) -> None:
    """Writes staged changes, dropping those that only restore HEAD's value, with stat-cache
    rows for the files ``read``."""
    with repo.index.transaction():
        if head:  # (a first add has none to compare its 50,000 keys with)
            repo.index.staging.unstage(k for k, d, _ in staged if head.get(k) == d)
            staged = [row for row in staged if head.get(row[0]) != row[1]]
        repo.index.staging.stage(staged)
        repo.index.stats.record(read, seen_ns)


def _would_lose(now: Status) -> set[str]:
    """The keys whose files hold changes not committed (a key whose files are gone has
    none left to lose)."""
    return ({*now.unstaged.modified, *now.staged.added, *now.staged.modified}) - set(now.unstaged.deleted)


def rm(repo: Repo, paths: list[str], cached: bool = False, force: bool = False) -> list[str]:
    """Stages the deletion of the datums under ``paths``; removes their files unless ``cached``.

    As git, it refuses to delete the files of a datum whose work-tree files or staged
    datum differ from HEAD's (their content exists nowhere else, or only in the staging
    area), unless ``force``.
    """
    root = repo.require_worktree()
    specs = parse(root, paths)
    now = None if cached or force else status(repo)
    with repo.lock:
        before = snapshot.token(repo, follow=False)
        head = head_datums(repo)
        index = index_datums(repo, head)
        selection = select(repo, specs, None, lambda: index)
        keys = sorted(k for k in index if _selected(k, selection))
        if not keys:
            raise InvalidInputError(f"no tracked datum matches {' '.join(paths)}")
        if not cached:  # the files, then the directories that leaves empty, as git rm does
            emptied = set()
            safe = WorktreePaths(root)  # never deleting beyond a symbolic link: all checked first
            files = [safe.check(member_path(k, m.ext, repo.config.grouping)) for k in keys for m in repo.locate(index[k])[1].members]
            if now is not None and (changed := [k for k in keys if k in _would_lose(now)]):
                more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
                raise InvalidInputError(
                    f"{changed[0]}{more}: changes that are not committed (rm --cached keeps the files; rm -f deletes them)"
                )
            for path in files:
                remove(path)
                emptied.add(path.parent)
            for path in sorted(emptied, key=lambda p: len(p.parts), reverse=True):  # the deepest first
                prune_dirs(root, path)
        with repo.index.transaction():
            repo.index.staging.unstage(k for k in keys if k not in head)
            repo.index.staging.stage((k, None, 0) for k in keys if k in head)
        snapshot.carry(repo, before, moved=keys)  # only these keys' verdicts moved
    return keys
