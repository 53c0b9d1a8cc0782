"""``Repo``: store + refs + config + index, and revision resolution."""

from __future__ import annotations

import contextlib
import getpass
import os
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from datarepo import args
from datarepo import tree as trees
from datarepo.config import DEFAULT_SHARD_SIZE, TIME_FORMAT, Config, env_seconds, env_time
from datarepo.errors import (
    BadRevisionError,
    CorruptObjectError,
    DataRepoError,
    InvalidInputError,
    NotARepositoryError,
    ObjectNotFoundError,
    RefConflictError,
)
from datarepo.fsutil import WriterLock, atomic_write
from datarepo.hashing import OID_LEN, Oid, is_oid
from datarepo.index import Index, check_path
from datarepo.keys import is_utf8
from datarepo.locations import location_rows
from datarepo.objects import Blob, Commit, TreeEntry
from datarepo.refs import BRANCHES, HEAD, REMOTES, RUNS, TAGS, Refs, is_ref_name
from datarepo.shards import LARGE_FILE, DatumLoc, MemberData
from datarepo.staging import first_bad_key
from datarepo.store import Store, datum_members

if TYPE_CHECKING:
    from datarepo.manifest import Manifest
    from datarepo.torch.dataset import DatumDataset
    from datarepo.write import RepoWriter

DOTDIR = ".datarepo"
TEMP_DIR = "tmp"  # in DOTDIR: files on their way elsewhere in the repository (on its file system)
# Caches opened by a parent process and inherited across a fork: kept, so that the child
# never closes (or frees) a SQLite connection that is the parent's.
_INHERITED: list[Index] = []
_REV_SUFFIX = re.compile(r"(~\d*|\^\d*)$")
T = TypeVar("T")


class Repo:
    """An opened repository."""

    def __init__(self, dotdir: Path, worktree: Path | None) -> None:
        self.dotdir = dotdir
        self.worktree = worktree
        self.config = Config.load(dotdir / "config.toml")
        self.store = Store(dotdir)
        self.lock = WriterLock(dotdir / "lock", timeout=env_seconds("DATAREPO_LOCK_TIMEOUT", 60))
        self.refs = Refs(dotdir, self.lock, head_required=True)
        self._index: Index | None = None
        self._index_pid = 0

    @property
    def temp_dir(self) -> Path:
        """Where commands put files on their way into the repository or the work tree (checkout,
        ingest's unpacked archives, fetch; each makes it when it needs it): the same file
        system as both, so that a file is moved into place by a rename. ``gc`` and the next
        such command remove what a killed one left."""
        return self.dotdir / TEMP_DIR

    # opening -----------------------------------------------------------
    @classmethod
    def init(cls, path: Path | str, bare: bool = False, grouping: str = "wds", shard_size: int | None = None) -> Repo:
        """Creates a repository (``path/.datarepo``, or ``path`` itself when bare).

        Raises:
            InvalidInputError: a bad argument, or a repository there already; nothing is
                written then.
        """
        path = _resolved(args.folder("path", path))
        args.flag("bare", bare)
        args.optional_integer("shard_size", shard_size, 1024)
        dotdir = path if bare else path / DOTDIR
        check_path(dotdir / "index.sqlite")  # (a repository whose index cannot be opened is of no use)
        if (dotdir / "config.toml").exists():
            raise InvalidInputError(f"already a datarepo repository: {dotdir}")
        try:  # (a repository inside another's own folder would take that folder's files for data)
            around = cls.open(path)
        except DataRepoError:
            around = None
        if around is not None and path.is_relative_to(around.dotdir):
            raise InvalidInputError(f"{path} is inside the repository folder {around.dotdir}: a repository cannot be made there")
        if bare and path.exists() and any(path.iterdir()):
            raise InvalidInputError(f"a bare repository needs an empty directory: {path}")
        cfg = Config(bare=bare, grouping=grouping, shard_size=DEFAULT_SHARD_SIZE if shard_size is None else shard_size).validated()
        for sub in ("objects", "shards", "refs/heads", "refs/tags", "refs/runs"):
            (dotdir / sub).mkdir(parents=True, exist_ok=True)
        atomic_write(dotdir / "HEAD", b"ref: refs/heads/main\n", mode=0o644)  # before the config that makes it a repository
        # As a virtual environment does: the folder keeps itself out of a git repository or
        # DVC project around it, so that `git add .` or `dvc add` of the work tree does not
        # take in the shards (nor `dvc checkout` put back old refs).
        for ignore in (".gitignore", ".dvcignore"):
            atomic_write(dotdir / ignore, b"*\n", mode=0o644)
        cfg.save(dotdir / "config.toml")
        return cls(dotdir, None if bare else path)

    @classmethod
    def open(cls, path: Path | str = ".") -> Repo:
        """Opens the repository at or above ``path`` (a work tree or a bare repository)."""
        start = _resolved(args.folder("path", path))
        for candidate in (start, *start.parents):
            if (candidate / DOTDIR / "config.toml").is_file():
                return cls(candidate / DOTDIR, candidate)
            if (candidate / "objects").is_dir() and (candidate / "HEAD").is_file() and _says_bare(candidate / "config.toml"):
                return cls(candidate, None)
        raise NotARepositoryError(str(start))

    @property
    def index(self) -> Index:
        """The location and stat cache (``index.sqlite``), opened on first use, and opened
        again in a process forked after that (a DataLoader worker): a SQLite connection
        must not cross a fork. The parent's is left alone there, neither used nor closed."""
        index = self._index  # (read once: another thread may close it meanwhile)
        if index is None or self._index_pid != os.getpid():
            inherited = index
            if inherited is not None:
                _INHERITED.append(inherited)
            index = Index(self.dotdir / "index.sqlite", inherited.file if inherited and inherited.private else None)
            self._index, self._index_pid = index, os.getpid()
            if index.created:
                self.sync_locations(index)
        return index

    def sync_locations(self, index: Index | None = None) -> int:
        """Indexes shards whose ``.idx`` the location table does not know yet."""
        index = index or self.index
        known, damaged = index.locations.shards(), index.locations.damaged()
        added = 0
        with index.transaction():  # a damaged shard's rows first: a sound copy of a datum wins
            for shard in sorted(self.store.iter_shards(), key=lambda s: s not in damaged):
                if shard not in known:
                    found = self.store.read_index(shard)
                    index.locations.add_shard(found.shard, found.size, location_rows(found))
                    added += 1
        return added

    def forget_missing_shards(self) -> bool:
        """Drops from the location cache the shards whose files are gone, so that their
        datums count as not stored; True if there were any, or if datums are still located
        in shards ``fsck`` found damaged (which do not count as stored either), or ``fsck``
        found some in no shard at all: the next ``add`` then looks at every key, and stores
        those datums again from their files."""
        missing = [shard for shard in self.index.locations.shards() if not self.store.has_shard(shard)]
        if missing:
            with self.index.transaction():
                for shard in missing:
                    self.index.locations.drop_shard(shard)
        if lost := self.index.locations.lost():
            if not (lost := lost - self.stored(lost)):
                with self.index.transaction():
                    self.index.locations.set_lost(lost)  # all stored again
        return bool(missing) or bool(lost) or self.index.locations.relied_on(self.index.locations.damaged())

    def forget_gone_shards(self, shards: Iterable[str]) -> list[str]:
        """Drops from the location cache those of ``shards`` that are no longer in use (a
        ``repack`` or ``gc`` in another process took them out), so that their datums are
        looked up afresh; returns them. A cache this process read before (a private copy of
        another user's repository) or one a reader filled as a shard was being retired
        still places datums there. Where the cache cannot be written, it is left as it is."""
        gone = [shard for shard in shards if not self.store.in_use(shard)]
        if gone:
            with self.index.best_effort(), self.index.transaction():
                for shard in gone:
                    self.index.locations.drop_shard(shard)
        return gone

    def locate_moved(self, shard: str, datums: list[str]) -> dict[str, tuple[str, DatumLoc]]:
        """Where datums that lay in ``shard`` lie now, if it is no longer in use (a ``repack``
        or ``gc`` in another process moved them): those found in another shard. None are
        while it is in use (its datums have not moved: it is damaged). The cache is written
        only the first time a shard is found gone (readers in several processes ask this of
        every batch that lay there: a write each would have them queue for SQLite's lock)."""
        if self.store.in_use(shard):
            return {}
        if shard in self.index.locations.shards():
            self.forget_gone_shards([shard])

        def located() -> dict[str, tuple[str, DatumLoc]]:
            found = {d: self.index.locations.locate(d) for d in datums}
            return {d: where for d, where in found.items() if where is not None and where[0] != shard}

        found = located()
        if len(found) < len(datums) and self.sync_locations():  # (shards the cache does not know yet)
            found = located()
        return found

    def drop_shards(self, shards: list[str]) -> None:
        """Forgets shards in the location cache, then deletes their files."""
        with self.index.transaction():
            for shard in shards:
                self.index.locations.drop_shard(shard)
        for shard in shards:
            self.store.delete_shard(shard)

    def close(self) -> None:
        """Closes the cache (a later use opens it again): this thread's connection at
        once, another thread's as that thread ends (or with the cache, once nothing refers
        to it). What another thread does with the cache as it is closed raises
        :class:`~datarepo.errors.ClosedError`. Closing again does nothing."""
        index, self._index = self._index, None
        if index is not None and self._index_pid == os.getpid():
            index.close()

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def source(self) -> tuple[str, str | None]:
        """What :func:`datarepo.open` takes to open this repository again (in a
        DataLoader worker): its folder, or its URL and cache folder."""
        return str(self.dotdir), None

    def __reduce__(self) -> tuple[Callable[[str, str | None], Repo], tuple[str, str | None]]:
        """Pickled, a repository is what opens it again (:meth:`source`): unpickled, in
        another process or this one, it is opened anew. Its cache's connections, and the
        writer lock if held, stay with this object."""
        return reopen, self.source()

    def require_worktree(self) -> Path:
        if self.worktree is None:
            raise InvalidInputError("this operation needs a work tree; the repository is bare")
        return self.worktree

    # revisions ---------------------------------------------------------
    def head(self) -> Oid | None:
        return self.refs.read(HEAD)

    def current_branch(self) -> str | None:
        target = self.refs.read_symbolic(HEAD)
        return target[len(BRANCHES) :] if target and target.startswith(BRANCHES) else None

    def resolve(self, rev: str) -> Oid:
        """Resolves git's revision forms to a commit oid (``main``, ``HEAD~2``, ``v1^``, an oid prefix)."""
        try:
            return self._resolve(args.instance("rev", rev, str, "a str"))
        except BadRevisionError as e:  # named whole, not the part of it that failed (HEAD~9 of HEAD~9~1)
            if e.rev == rev:
                raise
            raise BadRevisionError(rev, e.reason) from None

    def _resolve(self, rev: str) -> Oid:
        if not rev:
            raise BadRevisionError(rev)
        m = _REV_SUFFIX.search(rev)
        if m and m.start() > 0:
            base = self._resolve(rev[: m.start()])
            op, n = m.group(0)[0], m.group(0)[1:]
            if len(n.lstrip("0")) > 18:  # (int() refuses over 4,300 digits; no history is that long)
                raise BadRevisionError(rev, "no such ancestor" if op == "~" else "no such parent")
            count = int(n) if n else 1
            return self._walk(base, op, count, rev)
        oid = self._resolve_name(rev)
        if oid is None:
            raise BadRevisionError(rev)
        return oid

    def _walk(self, oid: Oid, op: str, count: int, rev: str) -> Oid:
        if op == "^":
            if count == 0:
                return oid
            parents = self.read_commit(oid).parents
            if len(parents) < count:
                raise BadRevisionError(rev, "no such parent")
            return parents[count - 1]
        for _ in range(count):
            parents = self.read_commit(oid).parents
            if not parents:
                raise BadRevisionError(rev, "no such ancestor")
            oid = parents[0]
        return oid

    def _resolve_name(self, rev: str) -> Oid | None:
        if rev in ("HEAD", "@"):
            oid = self.head()
            if oid is None:
                raise BadRevisionError(rev, "no commits yet")
            return oid
        for ref in (rev, BRANCHES + rev, TAGS + rev, REMOTES + rev, RUNS + rev):  # REMOTES: origin/main
            if ref.startswith("refs/") and (oid := self.refs.read(ref)) is not None:
                return self._run_commit(oid) if ref.startswith(RUNS) else oid
        if 4 <= len(rev) <= 32 and all(c in "0123456789abcdef" for c in rev):
            return self._expand_prefix(rev)
        return None

    def _run_commit(self, oid: Oid) -> Oid:
        """The commit a run ref's record read (a run ref names its run object)."""
        obj = self.store.get_object(oid)
        if isinstance(obj, Blob) and obj.data.get("type") == "run" and isinstance(obj.data.get("commit"), str):
            return Oid(obj.data["commit"])
        return oid

    def _expand_prefix(self, prefix: str) -> Oid | None:
        matches = self.store.objects_with_prefix(prefix)  # (a whole oid too: it must name a commit)
        commits = [m for m in matches if isinstance(self.store.get_object(m), Commit)]
        if len(commits) > 1:
            raise BadRevisionError(prefix, "ambiguous oid prefix")
        return Oid(commits[0]) if commits else None

    def read_commit(self, oid: str) -> Commit:
        return self.store.get_typed(oid, Commit)  # type: ignore[return-value]

    # writing -----------------------------------------------------------
    def writer(self) -> RepoWriter:
        """``with repo.writer() as w: w.put(key, {ext: bytes})``: stores datums into new
        shards, adopted on a clean exit; ``w.entries`` are the keys put, for :meth:`commit`.
        Take the writer lock (``with repo.lock``) around the writer and the commit."""
        from datarepo.write import RepoWriter

        return RepoWriter(self)

    def stored(self, datums: Iterable[str]) -> set[str]:
        """Those of ``datums`` that the location cache places in a shard the store has. A
        datum whose shard went missing, or that ``fsck`` found damaged, is not: storing it
        again (``add`` of the same content) is how it is restored.

        Raises:
            InvalidInputError: ``datums`` is not a list (a set, a dict's keys) of str: one
                datum id is not a list of its characters.
        """
        if isinstance(datums, Mapping):  # (its keys)
            datums = list(datums)
        found = self.index.locations.shards_of(args.texts("datums", datums))
        damaged = self.index.locations.damaged()
        sound = {shard for shard in set(found.values()) if shard not in damaged and self.store.has_shard(shard)}
        return {datum for datum, shard in found.items() if shard in sound}

    def commit(
        self,
        changes: Mapping[str, trees.Row | None],
        message: str,
        provenance: dict[str, Any] | None = None,
        parent: Oid | None | bool = True,
        ref: str = HEAD,
    ) -> Oid:
        """Writes a commit of ``parent``'s tree with ``changes`` applied (key → entry
        ``(key, datum, size)``, or None to delete) and moves ``ref`` to it.

        ``parent`` defaults to what ``ref`` names now. Write order: tree pages, the commit,
        then the ref by compare-and-swap from ``parent``: a ref moved meanwhile by another
        writer raises :class:`RefConflictError` and nothing is lost. Every datum the
        changes name must already be stored (see :meth:`writer`).

        Raises:
            InvalidInputError: a bad argument (a change that is not ``None`` nor an entry
                of its key, a datum not stored, a message that is not a str, provenance
                that is not a dict of JSON data, ``parent`` not a commit id, ``ref`` not a
                full ref name); nothing is written then.
            RefConflictError: ``ref`` no longer names ``parent``.
        """
        _check_commit(message, provenance, ref)
        if parent is not True and parent is not False and parent is not None:
            args.oid("parent", parent)
        _check_changes(changes)
        if (bad := first_bad_key(list(changes))) is not None:
            raise InvalidInputError(f"nothing committed: {bad}")
        self._check_stored({row[1]: key for key, row in changes.items() if row is not None})
        if parent is True:
            parent = self.refs.read(ref)
        elif (now := self.refs.read(ref)) != (parent or None):  # (checked again as the ref moves: a race)
            raise RefConflictError(ref, parent or None, now)
        base = self.read_commit(parent).tree if parent else None
        tree = trees.apply_changes(self.store, base, dict(changes))
        return self._write_commit(tree, message, parent or None, provenance, ref)

    def _check_stored(self, datums: Mapping[str, str]) -> None:
        """Raises InvalidInputError unless some shard holds each datum (datum → a key)."""
        if not datums:
            return
        missing = datums.keys() - self.index.locations.with_rows(datums)
        if missing and self.sync_locations():  # (a shard published by another writer just now)
            missing -= self.index.locations.with_rows(missing)
        if missing:
            datum = min(missing)
            raise InvalidInputError(f"changes: datum {datum} (key {datums[datum]}) is not stored: write it first (repo.writer())")

    def commit_tree(
        self, tree: Oid, message: str, parent: Oid | None, provenance: dict[str, Any] | None = None, ref: str = HEAD
    ) -> Oid:
        """Writes a commit of a stored tree and moves ``ref`` from ``parent`` to it."""
        _check_commit(message, provenance, ref)
        return self._write_commit(tree, message, parent, provenance, ref)

    def _write_commit(self, tree: Oid, message: str, parent: Oid | None, provenance: dict[str, Any] | None, ref: str) -> Oid:
        """:meth:`commit_tree`, its arguments checked already."""
        commit = Commit(tree, (parent,) if parent else (), self.author(), self.now(), message, provenance)
        oid = self.store.put_object(commit)
        first = message.splitlines()[0] if message else ""
        self.refs.update(ref, oid, expected=parent, message=f"commit: {first}")
        return oid

    def tree_of(self, rev: str | None) -> Oid | None:
        """The tree oid of a revision; None for an unborn HEAD."""
        if rev is None:
            head = self.head()
            return self.read_commit(head).tree if head else None
        return self.read_commit(self.resolve(rev)).tree

    def split_rev_key(self, spec: str, default: str = "HEAD") -> tuple[Oid, str]:
        """Splits ``REV:key`` (or a bare key) into (commit oid, key). The key is all after the
        first ``:``, so a key that holds one is named with its revision (``HEAD:a:b``)."""
        rev, sep, key = spec.partition(":")
        if not sep:
            rev, key = default, spec
        try:
            return self.resolve(rev or default), key
        except BadRevisionError as e:
            if not sep or e.reason != "unknown revision":
                raise
            why = f"{spec!r} is REV:KEY (a key that holds ':' is named with its revision: {default + ':' + spec!r}); {e.reason}"
            raise BadRevisionError(rev, why) from None

    def check_outside(self, path: Path, what: str) -> Path:
        """``path``, resolved, unless it is (or lies in) this repository's own folder, which
        no command reads as data nor writes data into.

        Raises:
            InvalidInputError: it does.
        """
        resolved = path.resolve()
        if resolved.is_relative_to(self.dotdir.resolve()):
            raise InvalidInputError(f"{what} {str(path)!r} is inside the repository's own folder {self.dotdir.name}/")
        return resolved

    # identity ----------------------------------------------------------
    def author(self) -> str:
        """``DATAREPO_AUTHOR``, else the config's user name and email, else the login name:
        one line of text."""
        env = os.environ.get("DATAREPO_AUTHOR", "").strip()  # (blank: unset, as the other variables)
        if env:
            author, what = env, "DATAREPO_AUTHOR"
        else:
            configured = self.config.user.get("name", "").strip()
            email = self.config.user.get("email")
            name = configured or _login_name()
            author = f"{name} <{email}>" if email else name
            what = ("the author (user.name, user.email)" if configured else  # (else LOGNAME or USER: say so)
                    f"the author (the login name{', user.email' if email else ''}; set DATAREPO_AUTHOR or user.name)")
        if not author.isprintable():
            raise InvalidInputError(f"{what} must be one line of printable text, not {author[:60]!r}")
        return _utf8(author, what)

    @staticmethod
    def now() -> str:
        return env_time() or datetime.now(UTC).strftime(TIME_FORMAT)

    # datums ------------------------------------------------------------
    def locate(self, datum: str) -> tuple[str, DatumLoc]:
        found = self.index.locations.locate(datum)
        if found is None and self.sync_locations():
            found = self.index.locations.locate(datum)
        if found is None and self._reread_holder(datum):
            found = self.index.locations.locate(datum)
        if found is None:
            raise ObjectNotFoundError("datum", datum)
        return found

    def _reread_holder(self, datum: str) -> bool:
        """Looks for ``datum`` in every shard's ``.idx``, when the cache places it nowhere:
        its row may be lost or damaged. The shard that lists it is read into the cache again;
        True if there is one. Only on the way to an error (every caller of :meth:`locate`
        needs the datum), so its cost (parsing every ``.idx``) is that of a damaged cache."""
        for shard in sorted(self.store.iter_shards()):
            with contextlib.suppress(DataRepoError):
                if any(d.datum == datum for d in self.store.read_index(shard).datums):
                    self.index.locations.forget(shard)
                    return self.sync_locations() > 0
        return False

    def members(self, datum: str, large: int | None = None) -> dict[str, MemberData]:
        """A datum's members: bytes, or (over ``large`` bytes, by default ``LARGE_FILE``)
        file ranges to stream."""
        limit = LARGE_FILE if large is None else large
        return self.at_location(datum, lambda shard, loc: datum_members(self.store, shard, loc, limit))

    def at_location(self, datum: str, read: Callable[[str, DatumLoc], T]) -> T:
        """``read(shard, loc)`` at the datum's place; if its shard has gone meanwhile (a
        ``repack`` or ``gc`` replaced it, and updated the location cache), once more at
        its new place; if the bytes there are not the datum's, once more where the shard's
        ``.idx`` places it, unless that is where the cache did (the shard is damaged)."""
        shard, loc = self.locate(datum)
        try:
            return read(shard, loc)
        except ObjectNotFoundError as e:
            if e.kind != "shard":
                raise
            self.forget_gone_shards([shard])
        except CorruptObjectError:
            if self.index.locations.agrees(shard, loc, self.store.read_index(shard)):
                raise
        shard, loc = self.locate(datum)
        return read(shard, loc)

    # the read API (docs/api.md) ------------------------------------------
    def tree(self, rev: str = "HEAD") -> trees.Tree:
        """The tree of a revision, read page by page as it is used (docs/api.md).

        Args:
            rev: git's forms: ``HEAD``, ``main``, ``v1``, ``HEAD~2``, ``v1^``, an oid
                prefix. An unborn HEAD gives the empty tree.

        Raises:
            BadRevisionError: ``rev`` names no commit.
        """
        if rev in ("HEAD", "@") and self.head() is None:
            return trees.Tree(self.store, None)
        commit = self.resolve(rev)
        return trees.Tree(self.store, self.read_commit(commit).tree, commit)

    def read(self, datum: str, verify: bool = False) -> dict[str, bytes]:
        """A datum's members, read whole from where the location cache places it (looked
        up again if its shard has gone meanwhile: :meth:`at_location`).

        Args:
            datum: the datum's id.
            verify: check the members against the datum's id first.

        Returns:
            Extension → bytes.

        Raises:
            ObjectNotFoundError: no shard holds the datum (a str that is no datum id names none).
            InvalidInputError: ``datum`` is not a str, or ``verify`` not True or False.
            CorruptObjectError: (with ``verify``) the bytes do not give the datum's id;
                it names the shard.
        """
        args.instance("datum", datum, str, "a datum id (a str: a tree entry's datum)")
        args.flag("verify", verify)
        return self.at_location(datum, lambda shard, loc: datum_members(self.store, shard, loc, 1 << 62, verify=verify))  # type: ignore[return-value]

    def manifest(self, selection: trees.Selection | trees.Tree) -> Manifest:
        """Where the datums of a selection lie, for readers in other processes.

        Args:
            selection: a :meth:`Tree.select` selection, or a whole tree.

        Returns:
            A :class:`~datarepo.manifest.Manifest`: columnar, grouped by shard.

        Raises:
            ObjectNotFoundError: a selected datum is in no shard.
            InvalidInputError: ``selection`` is neither a selection nor a tree.
        """
        from datarepo.manifest import build_manifest

        args.instance("selection", selection, (trees.Selection, trees.Tree), "a Selection or a Tree (repo.tree().select(...))")
        return build_manifest(self, selection)

    def record_run(self, name: str, dataset: DatumDataset, extra: dict[str, Any] | None = None, force: bool = False) -> Oid:
        """Records what a training run read (docs/loader.md) under ``refs/runs/NAME``: the
        dataset's commit, selection, seed, epochs, world size, decoders and order
        fingerprint, with ``extra`` (JSON data). The ref keeps that data from ``gc``.

        Raises:
            InvalidInputError: a bad name, extras that are not JSON, or a run of that
                name already recorded (unless ``force``).
        """
        from datarepo.torch.runs import record_run

        return record_run(self, name, dataset, extra, force)


def _check_commit(message: Any, provenance: Any, ref: Any) -> None:
    """Checks what a commit records besides its tree, before anything is written."""
    _utf8(args.instance("message", message, str, "a str"), "the commit message")
    if provenance is not None:
        args.instance("provenance", provenance, dict, "a dict of JSON data or None")
        args.json_data("provenance", provenance)
    if not isinstance(ref, str) or not is_ref_name(ref):
        raise InvalidInputError(f"ref must be a full ref name (HEAD, refs/heads/NAME), not {args.shown(ref)}")


_MAX_SIZE = 1 << 63


def _check_changes(changes: Any) -> None:
    """Checks a commit's changes: a mapping of str keys to None (a deletion) or an entry
    ``(key, datum, size)`` of that key, with a datum id and a size from 0 to 2**63 - 1.
    A commit of a staged ``add`` has a million of them: the types and sizes are checked in
    C, over the columns, and only a failed check looks at each change, to name the first
    bad one. (A str datum that is no id is refused as not stored, an entry of another key
    by :func:`~datarepo.tree.apply_changes`, both before anything is written.)"""
    if not isinstance(changes, Mapping):
        raise InvalidInputError(f"changes must be a dict of key to TreeEntry (or None), not {args.shown(changes)}")
    values = list(changes.values())
    rows = [row for row in values if row is not None] if None in values else values
    fine = set(map(type, changes)) <= {str} and set(map(type, rows)) <= {TreeEntry, tuple, list}
    if fine and rows:
        sizes = list(map(itemgetter(2), rows)) if set(map(len, rows)) == {3} else None
        fine = (
            sizes is not None
            and set(map(type, sizes)) == {int}
            and 0 <= min(sizes)
            and max(sizes) < _MAX_SIZE
            and set(map(type, map(itemgetter(1), rows))) == {str}
        )
    if not fine:
        for key, row in changes.items():
            if (why := _bad_change(key, row)) is not None:
                raise InvalidInputError(f"changes: {why}")


def _bad_change(key: Any, row: Any) -> str | None:
    if not isinstance(key, str):
        return f"a key must be a str, not {args.shown(key)}"
    if row is None:
        return None
    where = f"the change of key {key!r:.80}"
    if not isinstance(row, (tuple, list)) or len(row) != 3:
        return f"{where} must be a TreeEntry (key, datum, size) or None, not {args.shown(row)}"
    if row[0] != key:
        return f"{where} gives an entry of key {args.shown(row[0])}"
    if not isinstance(row[1], str) or not is_oid(row[1]):
        return f"{where} has the datum {args.shown(row[1])}, not an id of {OID_LEN} hex digits"
    if type(row[2]) is not int or not 0 <= row[2] < _MAX_SIZE:
        return f"{where} has the size {args.shown(row[2])}, not an int from 0 to 2**63 - 1"
    return None


def reopen(path: str, cache: str | None = None) -> Repo:
    """The repository :meth:`Repo.source` names, opened again (a remote's without asking
    it whether it holds one: its opener did, and its shards may all be cached)."""
    if cache is None:
        return Repo.open(path)
    from datarepo.remote_repo import RemoteRepo

    return RemoteRepo(path, cache, check=False)


def _utf8(text: str, what: str) -> str:
    """``text``, if it encodes as UTF-8 (what a shell passes from bytes that do not decode
    holds lone surrogates)."""
    if not is_utf8(text):
        raise InvalidInputError(f"{what} is not valid UTF-8")
    return text


def _says_bare(config: Path) -> bool:
    """Whether a folder shaped as a bare repository is one: its config says so (a folder of
    data that holds such files, tracked in a work tree, is not)."""
    try:
        return Config.load(config).bare
    except InvalidInputError:
        return False


def _login_name() -> str:
    """The login name (``LOGNAME``, ``USER``, else this user id's entry in the password file).

    Raises:
        InvalidInputError: there is none: a process started under a user id that has no
            entry (a container's ``--user 1234``) and without those variables.
    """
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # (KeyError until Python 3.13)
        raise InvalidInputError(f"no author: user id {os.getuid()} has no login name; set DATAREPO_AUTHOR, "
                                "or name in the [user] table of config.toml") from None


def _resolved(path: Path) -> Path:
    """``path`` made absolute, its links resolved.

    Raises:
        InvalidInputError: it is relative and the current directory was deleted (else a
            FileNotFoundError that names no file).
    """
    try:
        return path.resolve()
    except FileNotFoundError:
        raise InvalidInputError(f"cannot open {str(path)!r}: the current directory no longer exists (it was deleted)") from None
