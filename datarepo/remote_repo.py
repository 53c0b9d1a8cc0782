"""A repository read straight from a remote's URL, without cloning it (docs/remotes.md).

A remote holds ``objects/``, ``shards/`` and ``refs/`` in the layout of ``.datarepo/``
(see :mod:`datarepo.porcelain.remote`), so the read API works over it as it is: revisions
resolve through the remote's refs, trees and commits are read (and checked against their
oids) from its objects, and a reader range-reads its shards. What a local repository keeps
in ``index.sqlite`` (where each datum lies) is built here from the shards' ``.idx`` files,
in a local cache folder: the one given (kept, so a later open reads only the shards pushed
since), or a temporary one removed when the process ends.

With a cache folder, a shard a reader opens is first downloaded whole into it (under a
temporary name, then renamed) and read from there, mapped, like a local one: a second epoch,
or a second run, reads no byte from the remote. Without one, each run of nearby datums is
one ranged read.

It is read-only: writing (``writer``, ``commit``, ``record_run``, a ref) raises.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from datarepo.config import Config
from datarepo.errors import InvalidInputError, ObjectNotFoundError
from datarepo.fsutil import atomic_write, make_temp, publish
from datarepo.index import Index
from datarepo.refs import Refs
from datarepo.remotes_config import RemoteError, RemoteFS, open_url, speaking
from datarepo.repo import Repo
from datarepo.store import Store


class ReadOnlyFS:
    """The reading half of a filesystem (:class:`~datarepo.fsutil.FileSystem`): every
    method that would write raises, so nothing reached through it (an object, a shard, a
    ref) can change the remote."""

    def __init__(self, fs: Any, url: str) -> None:
        self.fs, self.url = fs, url

    def open(self, path: str, mode: str = "rb", **options: Any) -> Any:
        if mode != "rb":
            self.refuse()
        return self.fs.open(path, mode, **options)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        return self.fs.cat_file(path, start, end)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def ls(self, path: str, detail: bool = True) -> list[Any]:
        return self.fs.ls(path, detail=detail)

    def find(self, path: str) -> list[str]:
        return self.fs.find(path)

    def info(self, path: str) -> dict[str, Any]:
        return self.fs.info(path)

    def refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise InvalidInputError(f"{self.url} is opened read-only, from its URL: clone it to write")

    pipe_file = put_file = rm_file = mv = makedirs = rmdir = refuse


class ReadOnlyLock:
    """The writer lock of a repository read from its URL: taking it raises (a remote has no
    lock: changing it is ``push``'s work, from a clone)."""

    def __init__(self, fs: ReadOnlyFS) -> None:
        self.refuse = fs.refuse

    def acquire(self) -> NoReturn:
        self.refuse()

    __enter__ = acquire

    def release(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


class RemoteStore(Store):
    """A store on a remote filesystem whose shards are opened through a local cache folder
    (when there is one): downloaded whole once, then read as local files."""

    def __init__(self, rfs: RemoteFS, cache: Path | None) -> None:
        super().__init__(rfs.root, fs=ReadOnlyFS(rfs.fs, rfs.url))
        self.url = rfs.url
        self.cache = cache

    def open_shard(self, oid: str) -> BinaryIO:
        """A shard as a file: the cached copy (downloaded first if it is not there yet), or
        without a cache the remote object itself, each read one ranged request (the reader
        reads nearby datums at once: no read-ahead of a block it may not want)."""
        if self.cache is None:
            with speaking(self.url):
                return self._remote(oid)
        local = self.cache / "shards" / oid[:2] / f"{oid[2:]}.tar"
        if not local.is_file():  # (two workers may both download it: the second rename wins)
            local.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = make_temp(local.parent)
            try:
                with os.fdopen(fd, "wb") as out, speaking(self.url), self._remote(oid) as src:
                    shutil.copyfileobj(src, out, 8 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                publish(tmp, local)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return open(local, "rb")

    def _remote(self, oid: str) -> BinaryIO:
        try:
            return self.fs.open(self._tar(oid), "rb", cache_type="none")
        except FileNotFoundError:
            raise ObjectNotFoundError("shard", oid) from None


class RemoteRepo(Repo):
    """A remote's repository, opened read-only from its URL (see the module's docstring)."""

    def __init__(self, url: str, cache: str | os.PathLike[str] | None = None) -> None:
        rfs = open_url(url)
        self.url = url
        self.cache = Path(cache).resolve() if cache is not None else None
        self.dotdir = self.cache  # (the location cache's folder: made when first needed)
        self.worktree = None
        self.config = Config(bare=True)
        self.store = RemoteStore(rfs, self.cache)
        self.lock = ReadOnlyLock(self.store.fs)  # type: ignore[assignment,arg-type]
        self.refs = Refs(rfs.root, self.lock, fs=self.store.fs)  # type: ignore[arg-type]
        self._index: Index | None = None
        self._index_pid = 0
        with speaking(url):
            there = rfs.fs.exists(f"{rfs.root}/objects") or rfs.fs.exists(f"{rfs.root}/HEAD")
        if not there:
            raise RemoteError(f"no repository at {url}")
        if self.cache is not None:
            _claim(self.cache, url)

    @property
    def index(self) -> Index:
        """The location cache, in the cache folder; a kept one learns, when this process
        first opens it, the shards pushed since (one listing; their ``.idx`` read)."""
        if self.dotdir is None:
            self.dotdir = Path(tempfile.mkdtemp(prefix="datarepo-remote-"))
            atexit.register(shutil.rmtree, self.dotdir, ignore_errors=True)
        opening = self._index is None or self._index_pid != os.getpid()
        if opening:
            self.dotdir.mkdir(parents=True, exist_ok=True)
        with speaking(self.url):
            index = super().index  # (a new one has read every .idx)
            if opening and not index.created:
                self.sync_locations(index)
        return index

    def source(self) -> tuple[str, str | None]:
        return self.url, str(self.cache) if self.cache is not None else None

    def writer(self) -> NoReturn:  # type: ignore[override]
        self.store.fs.refuse()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"RemoteRepo({self.url!r})"


def _claim(cache: Path, url: str) -> None:
    """Marks ``cache`` as ``url``'s, or refuses a cache folder another remote's data is in
    (its datums would be looked for in shards this remote may not have)."""
    marker = cache / "url"
    try:
        held = marker.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, url.encode(), mode=0o644)
        return
    except OSError as e:
        raise InvalidInputError(f"cache {str(cache)!r} cannot be used: {e.strerror}") from None
    if held != url:
        raise InvalidInputError(f"cache {str(cache)!r} keeps the data of {held[:200]!r}, not of {url!r}")
