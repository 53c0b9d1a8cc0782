"""push, fetch, pull and clone: exchanging commits with a remote (docs/remotes.md).

A remote holds ``objects/``, ``shards/`` and ``refs/`` in the layout of ``.datarepo/``,
on any filesystem DVC reaches (see :mod:`datarepo.remotes_config`). Both sides keep one
invariant: an object is there only after everything it reaches, so a walk stops at the
first commit (or page) the other side has. Everything read from a remote is checked
against its oid before it is stored here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from datarepo.config import Config, env_seconds
from datarepo.errors import CorruptObjectError, DataRepoError, DirtyWorktreeError, InvalidInputError, ObjectNotFoundError
from datarepo.fsutil import TMP_PREFIX, FolderMadeWhole, LocalFileSystem, WriterLock, batched
from datarepo.hashing import Oid, is_oid
from datarepo.objects import Blob, Commit
from datarepo.porcelain.maintenance import LEFTOVER_AGE, walk
from datarepo.refs import BRANCHES, HEAD, REMOTES, RUNS, TAGS, Refs, check_name, is_ref_name
from datarepo.remotes_config import LOCAL, RemoteError, RemoteFS, download, open_remote, speaking
from datarepo.repo import Repo
from datarepo.store import Store

FETCH_DIR = "fetch-"  # downloads in progress, in the repository's tmp/ (removed under the lock)


class Transfer(NamedTuple):
    """What one push or fetch moved."""

    remote: str
    objects: int
    shards: int
    bytes: int


class RefUpdate(NamedTuple):
    ref: str
    old: Oid | None
    new: Oid


class PushResult(NamedTuple):
    transfer: Transfer
    updated: list[RefUpdate]  # refs written on the remote (those already equal are left out)


class FetchResult(NamedTuple):
    transfer: Transfer
    updated: list[RefUpdate]  # local refs written (remote-tracking branches, new tags and runs)
    kept: list[str]  # local tags that differ from the remote's, kept as they are


class PullResult(NamedTuple):
    fetched: FetchResult
    branch: str
    old: Oid | None
    new: Oid | None
    written: int
    removed: int


# A clone is made in ``.tmp-clone-<random>`` beside its destination.
CLONE_TAG = "clone"


class CloneResult(NamedTuple):
    path: Path
    fetched: FetchResult
    branch: str | None
    commit: Oid | None


class Remote:
    """The repository layout on a remote filesystem: what it holds (listed once), and
    writes that a reader never sees half done (a local folder's file is written under a
    temporary name and renamed: :func:`~datarepo.remotes_config.local_filesystem`; an
    object store's PUT is whole by itself)."""

    def __init__(self, rfs: RemoteFS) -> None:
        self.name, self.url, self.fs, self.root = rfs.name, rfs.url, rfs.fs, rfs.root
        self.protocol = rfs.protocol
        self.store = Store(self.root, fs=self.fs)
        self.refs = Refs(self.root, fs=self.fs)
        self.objects: set[str] = set()
        self.shards: set[str] = set()  # shards whose .tar and .idx are both there
        self._etags: dict[str, str | None] = {}  # (S3) each ref's version as last read
        self.leftovers: set[str] = set()  # temporary files in objects/ and shards/ (a local folder's)

    def list(self) -> None:
        self.objects = set(self._oids("objects", ""))
        tars = set(self._oids("shards", ".tar"))
        self.shards = {oid for oid in self._oids("shards", ".idx") if oid in tars}

    def _oids(self, top: str, suffix: str) -> Iterator[str]:
        try:
            paths = self.fs.find(f"{self.root}/{top}")
        except FileNotFoundError:
            return
        for path in paths:
            head, sub, name = str(path).rsplit("/", 2)
            if name.startswith(TMP_PREFIX):
                self.leftovers.add(str(path))
            elif name.endswith(suffix) and (head.endswith(f"/{top}") or head == top):
                oid = sub + name[: len(name) - len(suffix)]
                if is_oid(oid):
                    yield oid

    def _ref_leftovers(self) -> Iterator[str]:
        """The temporary files of HEAD and ref writes a killed push left: at the top and
        under ``refs/``."""
        for folder in (self.root, f"{self.root}/refs"):
            try:
                paths = self.fs.ls(folder, detail=False) if folder == self.root else self.fs.find(folder)
            except FileNotFoundError:
                continue
            yield from (str(p) for p in paths if str(p).rsplit("/", 1)[-1].startswith(TMP_PREFIX))

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def remove_leftovers(self) -> None:
        """Removes from a local folder the temporary files of uploads that pushes killed
        long ago left (:data:`LEFTOVER_AGE`: a live push may be uploading beside this one,
        and nothing but their age tells them apart). An object store has none: an upload
        there is whole or absent."""
        if self.protocol not in LOCAL:
            return
        horizon = time.time() - LEFTOVER_AGE
        for path in sorted(self.leftovers | set(self._ref_leftovers())):
            with contextlib.suppress(OSError):  # (gone already: another push removed it)
                if os.lstat(path).st_mtime < horizon:
                    os.unlink(path)

    def write(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(rel), data)

    def upload(self, local: Path, rel: str) -> None:
        self.fs.put_file(str(local), self.path(rel))

    def read_ref(self, name: str) -> Oid | None:
        if self.protocol == "s3":  # its version first: a write after it is seen as one (see write_ref)
            path = self.path(name)
            self.fs.invalidate_cache(path)
            try:
                info = self.fs.info(path)
            except FileNotFoundError:
                info = {}
            self._etags[name] = info.get("ETag")
            if info.get("type") != "file":  # (a key prefix, refs/heads/a of refs/heads/a/b: no ref)
                return None
        return self.refs.read(name)

    def ref_lock(self) -> contextlib.AbstractContextManager[Any]:
        """Held while refs are read again and written, so that of two pushes to one ref
        the second sees the first's commit: on a folder an ``flock`` on its ``lock`` file
        (released by the kernel if the pusher dies). S3 has no lock: each ref write there
        is conditional on the version read (:meth:`write_ref`). Other stores have neither."""
        if self.protocol in LOCAL:
            self.fs.makedirs(self.root, exist_ok=True)
            return WriterLock(Path(self.root) / "lock", timeout=env_seconds("DATAREPO_LOCK_TIMEOUT", 60))
        return contextlib.nullcontext()

    def write_ref(self, name: str, old: Oid | None, new: Oid) -> None:
        """Moves a ref from ``old`` (as :meth:`read_ref` read it) to ``new``; on S3 only if
        no other push wrote it since (If-Match, If-None-Match)."""
        data = f"{new}\n".encode()
        if self.protocol != "s3":
            self.write(name, data)
            return
        etag = self._etags.get(name)
        try:
            self.fs.pipe_file(self.path(name), data, **({"IfMatch": etag} if etag else {"IfNoneMatch": "*"}))
        except OSError:
            now = self.read_ref(name)
            if now == new:  # written: the answer was lost, and the write tried again found it done
                return
            if now == old:
                raise
            raise RemoteError(f"{name} on remote {self.name!r} was moved by another push meanwhile: fetch, then push again") from None


def _connect(repo: Repo, name: str | None, listed: bool = True) -> Remote:
    rfs = open_remote(repo, name)
    remote = Remote(rfs)
    if listed:
        with speaking(remote.name):
            remote.list()
    return remote


# --- push ------------------------------------------------------------------------------------------
def push(repo: Repo, remote: str | None = None, revs: Iterable[str] = (), all_refs: bool = False, force: bool = False) -> PushResult:
    """Uploads what the remote lacks of the pushed refs, then moves the remote's refs
    (fast-forward only, unless ``force``). The default is the current branch."""
    refs = _refs_to_push(repo, list(revs), all_refs)
    r = _connect(repo, remote, listed=False)
    with speaking(r.name):
        _check_place(repo, r)
    # A folder remote's lock is held from the listing to the refs: the gc of whoever keeps
    # a repository there takes it too, and would otherwise delete what was uploaded (or
    # what the listing said the remote had) before a ref names it.
    with speaking(r.name), r.ref_lock():
        r.list()
        if (checked_out := _checked_out(r)) in {name for name, _ in refs}:
            raise RemoteError(
                f"remote {r.name!r} ({r.url}) has branch {checked_out[len(BRANCHES) :]} checked out in its work tree: "
                "pull from there instead, or check out another branch there first"
            )
        for name, new in refs:
            _check_update(repo, r, name, new, force)
        edges: dict[str, list[str]] = {}
        seen = walk(repo.store, [oid for _, oid in refs], had=r.objects.__contains__, edges=edges)
        if seen.missing or seen.bad_keys:
            raise DataRepoError(f"cannot push a damaged repository: {(seen.missing + seen.bad_keys)[0]} (run fsck)")
        with batched(r.fs):  # (made durable together before any ref names them)
            sent = _push_shards(repo, r, seen.datums)
            count = len(sent)
            size = sum(sent)
            for oid in _children_first(edges):
                data = repo.store.stored_bytes(oid)
                r.write(f"objects/{oid[:2]}/{oid[2:]}", data)
                size += len(data)
        updated = []
        with batched(r.fs):  # (one fsync of each folder, not one of each ref's: push --all of 4,000 refs)
            for name, new in refs:
                old = _check_update(repo, r, name, new, force)  # read again just before writing (S3 has no lock)
                if old != new:
                    r.write_ref(name, old, new)
                    updated.append(RefUpdate(name, old, new))
        _set_remote_head(repo, r, [name for name, _ in refs])
        r.remove_leftovers()
    return PushResult(Transfer(r.name, len(edges), count, size), updated)


LAYOUT = {HEAD, "objects", "shards", "refs", "lock"}  # what a remote holds at its top


def _check_place(repo: Repo, r: Remote) -> None:
    """Refuses to make a repository where it would mix with other files: a folder in the
    work tree (its files would be added as data), or a place that holds other files and
    no repository (a home folder, a bucket's data)."""
    if r.protocol in LOCAL and repo.worktree is not None:
        root, worktree = Path(r.root).resolve(), repo.worktree.resolve()
        if root == repo.dotdir.resolve():
            raise RemoteError(f"remote {r.name!r} ({r.url}) is this repository itself")
        if root.is_relative_to(worktree) and not root.is_relative_to(repo.dotdir.resolve()):
            raise RemoteError(f"remote {r.name!r} ({r.url}) is in the work tree: what is pushed there would be added as data")
    if r.fs.exists(r.path(HEAD)):
        return
    try:
        top = {str(p).rstrip("/").rpartition("/")[2] for p in r.fs.ls(r.root, detail=False)}
    except (FileNotFoundError, NotADirectoryError):
        return
    if other := sorted(n for n in top - LAYOUT if not n.startswith(TMP_PREFIX)):  # (a killed push's half-written HEAD)
        raise RemoteError(f"remote {r.name!r} ({r.url}) holds other files ({other[0]}, …) and no repository: push to an empty place")


def _checked_out(r: Remote) -> str | None:
    """The branch checked out in the work tree of the repository a local remote names
    (the work tree, or its ``.datarepo``). A push must not move it: that work tree's files
    would no longer match its branch, and its next commit would undo the push (git
    refuses it too)."""
    config = Path(r.root) / "config.toml"
    if r.protocol not in LOCAL or not config.is_file():
        return None
    try:
        if Config.load(config).bare:
            return None
    except InvalidInputError:
        return None
    return r.refs.read_symbolic(HEAD)


def _refs_to_push(repo: Repo, revs: list[str], all_refs: bool) -> list[tuple[str, Oid]]:
    if all_refs:
        found = [(full, oid) for prefix in (BRANCHES, TAGS, RUNS) for full in repo.refs.names(prefix) if (oid := repo.refs.read(full))]
        if not found:
            raise InvalidInputError("nothing to push: no branch, tag or run")
        return found
    if not revs or "HEAD" in revs:  # HEAD: the current branch, as ``git push origin HEAD``
        branch = repo.current_branch()
        if branch is None:
            raise InvalidInputError("HEAD is detached: name a branch or tag to push")
        revs = [branch if rev == "HEAD" else rev for rev in revs or ["HEAD"]]
    out = []
    for rev in revs:
        names = [rev] if rev.startswith("refs/") else [BRANCHES + rev, TAGS + rev, RUNS + rev]
        found = [(n, oid) for n in names if n.startswith((BRANCHES, TAGS, RUNS)) and is_ref_name(n) and (oid := repo.refs.read(n))]
        if not found:
            raise InvalidInputError(f"no such branch, tag or run: {rev!r}")
        out.append(found[0])
    return out


def _check_update(repo: Repo, r: Remote, name: str, new: Oid, force: bool) -> Oid | None:
    """The remote's value of ``name``; refuses a move that is not a fast-forward (a tag or
    run that differs, a branch whose remote commit is not an ancestor of ``new``)."""
    old = r.read_ref(name)
    if old is None and (clash := r.refs.in_the_way(name)):
        raise RemoteError(f"cannot create {name} on remote {r.name!r}: {clash[0]} exists")
    if old is None or old == new or force:
        return old
    if not name.startswith(BRANCHES):
        raise RemoteError(f"{name} differs on remote {r.name!r} (use --force to replace it)")
    if not repo.store.has_object(old):
        raise RemoteError(f"{name} on remote {r.name!r} has commits this repository lacks: fetch first (or --force)")
    if not is_ancestor(repo, old, new):
        raise RemoteError(f"{name} on remote {r.name!r} is not an ancestor of {new[:12]}: not a fast-forward (use --force)")
    return old


def is_ancestor(repo: Repo, old: str, new: str) -> bool:
    """Whether commit ``old`` is ``new`` or one of its ancestors (in the local store)."""
    queue, seen = deque([new]), {new}
    while queue:
        oid = queue.popleft()
        if oid == old:
            return True
        for parent in repo.read_commit(oid).parents:
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return False


def _push_shards(repo: Repo, r: Remote, datums: dict[str, str]) -> list[int]:
    """Uploads the shards that hold the new pages' datums and that the remote lacks (tar,
    then ``.idx``); returns the bytes of each."""
    where = repo.index.locations.shards_of(datums)
    if lost := next((d for d in datums if d not in where), None):
        raise DataRepoError(f"datum {lost} (key {datums[lost]}) is in no shard here (run fsck)")
    sent = []
    for shard in sorted(set(where.values()) - r.shards):
        index = repo.store.read_index(shard)
        tar = repo.dotdir / Store.shard_name(shard)
        r.upload(tar, Store.shard_name(shard))
        data = index.to_bytes()
        r.write(Store.shard_name(shard, ".idx"), data)
        r.shards.add(shard)
        sent.append(index.size + len(data))
    return sent


def _children_first(edges: dict[str, list[str]]) -> list[str]:
    """The walked objects, each after every walked object it reaches (parents before their
    children's commits, pages before roots, commits before run records)."""
    order: list[str] = []
    done: set[str] = set()
    for start in edges:
        stack = [(start, iter(edges[start]))]
        if start in done:
            continue
        done.add(start)
        while stack:
            oid, children = stack[-1]
            child = next((c for c in children if c in edges and c not in done), None)
            if child is None:
                stack.pop()
                order.append(oid)
            else:
                done.add(child)
                stack.append((child, iter(edges[child])))
    return order


def _set_remote_head(repo: Repo, r: Remote, pushed: list[str]) -> None:
    """Points a remote's missing ``HEAD`` at the pushed branch (the current one if pushed)."""
    branches = [n for n in pushed if n.startswith(BRANCHES)]
    if not branches or r.fs.exists(r.path(HEAD)):
        return
    current = repo.refs.read_symbolic(HEAD)
    r.write(HEAD, f"ref: {current if current in branches else branches[0]}\n".encode())


# --- fetch -----------------------------------------------------------------------------------------
def fetch(repo: Repo, remote: str | None = None) -> FetchResult:
    """Downloads what the local store lacks of the remote's branches, tags and runs, each
    object and shard checked, then sets ``refs/remotes/<remote>/<branch>`` and adds the
    tags and runs this repository does not have."""
    r = _connect(repo, remote)
    with repo.lock, speaking(r.name):
        _remove_stale_downloads(repo)
        repo.sync_locations()  # shards a killed fetch published before it recorded where their datums are
        wanted = _remote_refs(r)
        cache = _Checked(r)
        edges: dict[str, list[str]] = {}
        seen = walk(cache, list(dict.fromkeys(wanted.values())), had=repo.store.has_object, edges=edges)
        if seen.missing or seen.bad_keys:  # (a page whose key the key rule refuses is damage, as fsck says)
            raise RemoteError(f"remote {r.name!r} cannot be fetched: {(seen.missing + seen.bad_keys)[0]}")
        for name, oid in wanted.items():
            _check_kind(repo, cache, name, oid)
        stored = repo.stored(seen.datums)
        needed = {d: k for d, k in seen.datums.items() if d not in stored}
        sizes = _fetch_shards(repo, r, needed)
        size = sum(sizes)
        with batched(repo.store.fs):  # (made durable together before any ref names them)
            for oid in _children_first(edges):
                data = cache.got[oid]
                repo.store.put_object_bytes(data)
                size += len(data)
        with batched(repo.refs.fs):  # (the refs too, after the objects they name)
            updated, kept = _update_local_refs(repo, r.name, wanted)
    return FetchResult(Transfer(r.name, len(edges), len(sizes), size), updated, kept)


class _Checked(Store):
    """The remote's store, keeping the canonical bytes of every object read (each checked
    against its oid as it is read), to be stored here once the walk is done."""

    def __init__(self, r: Remote) -> None:
        super().__init__(r.root, fs=r.fs)
        self.got: dict[str, bytes] = {}

    def canonical_bytes(self, oid: str) -> bytes:
        if (data := self.got.get(oid)) is None:
            data = self.got[oid] = super().canonical_bytes(oid)
        return data


def _remote_refs(r: Remote) -> dict[str, Oid]:
    """The remote's branches, tags and runs (a name that is not a valid ref is no ref).
    A place with neither a ref nor a ``HEAD`` holds no repository: a mistyped path or
    bucket, or an endpoint that answers nothing, is said to be so, not fetched as empty."""
    names = []
    for prefix in (BRANCHES, TAGS, RUNS):
        for name in r.refs.names(prefix):
            with contextlib.suppress(InvalidInputError):  # (a name too long to be a file here is no ref either)
                names.append(prefix + check_name(name[len(prefix) :]))
    named = set(names)
    if clash := next(((a, b) for b in names for a in _folders(b) if a in named), None):
        raise RemoteError(f"remote {r.name!r} has both {clash[0]} and {clash[1]}: a ref cannot be a folder of another")
    found = {name: oid for name in names if (oid := r.refs.read(name)) is not None}
    if not found and not r.fs.exists(r.path(HEAD)):
        raise RemoteError(f"no repository at {r.url} (remote {r.name!r})")
    return found


def _folders(name: str) -> Iterator[str]:
    """The names a ref's folders would have as refs (``refs/heads/a`` for ``refs/heads/a/b``)."""
    parts = name.split("/")
    for i in range(3, len(parts)):
        yield "/".join(parts[:i])



def _check_kind(repo: Repo, store: Store, name: str, oid: Oid) -> None:
    obj = repo.store.get_object(oid) if repo.store.has_object(oid) else store.get_object(oid)
    if name.startswith(RUNS):
        if not (isinstance(obj, Blob) and obj.data.get("type") == "run"):
            raise CorruptObjectError(f"{name} on the remote", f"names {oid}, which is not a run record")
    elif not isinstance(obj, Commit):
        raise CorruptObjectError(f"{name} on the remote", f"names {oid}, which is not a commit")


def _remove_stale_downloads(repo: Repo) -> None:
    """Folders a killed fetch left (whoever holds the writer lock knows none is running)."""
    tmp = repo.temp_dir
    if tmp.is_dir():
        for entry in tmp.iterdir():
            if entry.name.startswith(FETCH_DIR) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


class _ListingOutdated(Exception):
    """A shard the remote's listing named is gone, or a datum is in none of its shards: the
    remote was repacked (and its old shards pruned) since it was listed."""


def _fetch_shards(repo: Repo, r: Remote, needed: dict[str, str]) -> list[int]:
    """Downloads the remote's shards that hold ``needed`` datums, checks each (its tar hashes
    to its name, each datum's members to its id, its ``.idx`` is the one its tar gives),
    then publishes it here and records its datums' locations. A listing of the remote
    that ``repack`` and ``gc`` there made out of date is made again, once."""
    if not needed:
        return []
    sizes: list[int] = []
    try:
        _fetch_listed(repo, r, needed, sizes)
    except _ListingOutdated:
        r.list()
        repo.sync_locations()
        left = needed.keys() - repo.stored(needed)
        try:
            _fetch_listed(repo, r, {d: needed[d] for d in left}, sizes)
        except _ListingOutdated as e:
            raise RemoteError(f"remote {r.name!r} {e}") from None
    repo.sync_locations()
    if lost := next((d for d in needed if d not in repo.stored([d])), None):
        raise RemoteError(f"remote {r.name!r}: datum {lost} (key {needed[lost]}) is not in the shards fetched")
    return sizes


def _fetch_listed(repo: Repo, r: Remote, needed: dict[str, str], sizes: list[int]) -> None:
    """Downloads the shards of the remote's listing that hold ``needed`` datums (adding
    their sizes to ``sizes``)."""
    if not needed:
        return
    holder: dict[str, str] = {}
    for shard in sorted(r.shards):
        if repo.store.has_shard(shard) and repo.store.has_index(shard):  # (a killed fetch's tar alone: again)
            continue
        try:
            datums = r.store.read_index(shard).datums
        except ObjectNotFoundError:
            raise _ListingOutdated(f"lacks shard {shard}") from None
        for d in datums:
            if d.datum in needed:
                holder.setdefault(d.datum, shard)
        if len(holder) == len(needed):
            break
    if lost := next((d for d in needed if d not in holder), None):
        raise _ListingOutdated(f"lacks datum {lost} (key {needed[lost]})")
    repo.temp_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=FETCH_DIR, dir=repo.temp_dir) as tmp, batched(repo.store.fs):
        staging = Store(tmp, fs=LocalFileSystem(durable=False))  # (only read back here, then removed)
        for shard in sorted(set(holder.values())):
            try:
                sizes.append(_fetch_shard(repo, r, staging, Path(tmp), shard))
            except FileNotFoundError:  # (retired there since its index was read)
                raise _ListingOutdated(f"lacks shard {shard}") from None


def _fetch_shard(repo: Repo, r: Remote, staging: Store, tmp: Path, shard: str) -> int:
    tar = tmp / Store.shard_name(shard)
    tar.parent.mkdir(parents=True, exist_ok=True)
    with open(tar, "wb") as out:
        download(r.fs, r.path(Store.shard_name(shard)), out)
    sent = r.fs.cat_file(r.path(Store.shard_name(shard, ".idx")))
    index = staging.rebuild_index(shard)  # raises CorruptObjectError for a tar that is not what it is named
    if index.to_bytes() != sent:
        raise CorruptObjectError(f"{shard}.idx on remote {r.name!r}", "does not match its shard")
    repo.store.put_shard(tar, index)
    return index.size + len(sent)


def _update_local_refs(repo: Repo, remote: str, wanted: dict[str, Oid]) -> tuple[list[RefUpdate], list[str]]:
    """Sets ``refs/remotes/<remote>/<branch>``, replacing those of branches the remote no
    longer has where they are in the way (``a/b`` of a branch ``a``); adds each tag and
    run that neither is here nor has one of its own here in its way."""
    updated, kept = [], []
    mine = f"{REMOTES}{remote}/"
    tracking = {mine + name[len(BRANCHES) :]: oid for name, oid in wanted.items() if name.startswith(BRANCHES)}
    for name, oid in sorted(wanted.items()):
        local = mine + name[len(BRANCHES) :] if name.startswith(BRANCHES) else name
        old = repo.refs.read(local)
        if old == oid:
            continue
        if not name.startswith(BRANCHES):
            if old is not None or repo.refs.in_the_way(local):
                kept.append(name)  # a tag or run of that name (or a folder's) here: never replaced by a fetch
                continue
        else:
            for stale in repo.refs.in_the_way(local):
                if stale.startswith(mine) and stale not in tracking:
                    repo.refs.update(stale, None, message=f"fetch: {stale[len(mine):]} is gone from {remote}")
        repo.refs.update(local, oid, expected=old, message=f"fetch: from {remote}")
        updated.append(RefUpdate(local, old, oid))
    return updated, kept


# --- pull and clone --------------------------------------------------------------------------------
def pull(repo: Repo, remote: str | None = None) -> PullResult:
    """Fetches, then fast-forwards the current branch to its remote-tracking ref and the
    work tree with it. Refuses uncommitted changes and histories that diverged."""
    from datarepo.porcelain.stage import status

    repo.require_worktree()
    branch = repo.current_branch()
    if branch is None:
        raise InvalidInputError("HEAD is detached: check out a branch to pull into")
    # Files never added do not count (as in git): checkout refuses those in the way.
    state, staged = status(repo).total, repo.index.staging.changes()
    if state.modified or state.deleted or staged:
        raise DirtyWorktreeError("the work tree or staging area has uncommitted changes: commit them before pulling")
    fetched = fetch(repo, remote)
    name = fetched.transfer.remote
    target = repo.refs.read(f"{REMOTES}{name}/{branch}")
    if target is None:
        raise RemoteError(f"remote {name!r} has no branch {branch!r}")
    return _fast_forward(repo, fetched, branch, target)


def _fast_forward(repo: Repo, fetched: FetchResult, branch: str, target: Oid) -> PullResult:
    from datarepo.porcelain.checkout import checkout

    old = repo.refs.read(BRANCHES + branch)
    if old == target or (old is not None and is_ancestor(repo, target, old)):
        return PullResult(fetched, branch, old, old, 0, 0)
    if old is not None and not is_ancestor(repo, old, target):
        raise RemoteError(f"branch {branch!r} and {fetched.transfer.remote}/{branch} have diverged: not a fast-forward")
    with repo.lock:
        try:
            done = checkout(repo, target)  # detached at the target, the work tree moved with it
        except DirtyWorktreeError as e:  # (files never added, in the way of the branch's)
            raise DirtyWorktreeError(f"{e} by pull: add or move them, then pull again") from None
        repo.refs.update(BRANCHES + branch, target, expected=old, message=f"pull: fast-forward to {target[:12]}")
        repo.refs.set_symbolic(BRANCHES + branch, message=f"pull: back on {branch}")
    return PullResult(fetched, branch, old, target, done.written, done.removed)


def clone(url: str, dest: Path, options: Mapping[str, str] | None = None) -> CloneResult:
    """A new repository at ``dest`` with ``origin`` (the default remote) at ``url`` and DVC's
    ``options`` of it (``endpointurl``, ``read_timeout``…), its history fetched and the
    remote's default branch checked out.

    It is made in a folder ``.tmp-clone-…`` beside ``dest`` and renamed into place once
    whole: a clone that fails removes it, and one that was killed leaves it to the next
    clone beside it (see :class:`~datarepo.fsutil.FolderMadeWhole`), never a ``dest`` that
    looks like a repository but is half of one."""
    if dest.is_symlink() and not dest.exists() or dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"{dest} exists and is not a folder")
    if dest.exists() and any(dest.iterdir()):
        raise InvalidInputError(f"{dest} exists and is not empty")
    dest = dest.absolute()
    made = _first_missing(dest.parent)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with FolderMadeWhole(dest, CLONE_TAG) as tmp:
            result = _clone_into(url, tmp, options or {})
    except BaseException:
        if made is not None:  # the folders above it that it made
            shutil.rmtree(made, ignore_errors=True)
        raise
    return result._replace(path=dest)


def _clone_into(url: str, dest: Path, options: Mapping[str, str]) -> CloneResult:
    from datarepo.remotes_config import add_remote, modify_remote

    repo = Repo.init(dest)
    try:
        add_remote(repo, "origin", url, default=True)
        for option, value in options.items():
            modify_remote(repo, "origin", option, value)
        fetched = fetch(repo, "origin")
        branch = _remote_default(repo, fetched)
        target = repo.refs.read(f"{REMOTES}origin/{branch}") if branch else None
        if branch is None or target is None:
            return CloneResult(dest, fetched, None, None)
        from datarepo.porcelain.checkout import checkout

        with repo.lock:
            checkout(repo, target)
            repo.refs.update(BRANCHES + branch, target, expected=None, message=f"clone: from {url}")
            repo.refs.set_symbolic(BRANCHES + branch, message=f"clone: on {branch}")
        return CloneResult(dest, fetched, branch, target)
    finally:
        repo.close()


def _first_missing(dest: Path) -> Path | None:
    """The outermost folder of ``dest`` that is not there yet (a clone makes it, and its
    parents), or None."""
    if dest.exists():
        return None
    while not dest.parent.exists():
        dest = dest.parent
    return dest


def _remote_default(repo: Repo, fetched: FetchResult) -> str | None:
    """The branch the remote's HEAD names, else ``main``, else its first branch."""
    from datarepo.remotes_config import open_remote as reopen

    rfs = reopen(repo, "origin")
    with speaking("origin"):
        target = Refs(rfs.root, fs=rfs.fs).read_symbolic(HEAD)
    branches = sorted(u.ref[len(REMOTES) + len("origin/") :] for u in fetched.updated if u.ref.startswith(f"{REMOTES}origin/"))
    if target and target.startswith(BRANCHES) and target[len(BRANCHES) :] in branches:
        return target[len(BRANCHES) :]
    return "main" if "main" in branches else branches[0] if branches else None
