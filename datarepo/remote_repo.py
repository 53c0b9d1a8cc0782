"""A repository read straight from a remote's URL, without cloning it (docs/remotes.md).

A remote holds ``objects/``, ``shards/`` and ``refs/`` in the layout of ``.datarepo/``
(see :mod:`datarepo.porcelain.remote`), so the read API works over it as it is: revisions
resolve through the remote's refs, trees and commits are read (and checked against their
oids) from its objects, and its shards are read as below. What a local repository keeps
in ``index.sqlite`` (where each datum lies) is built here from the shards' ``.idx`` files,
in a local cache folder: the one given (kept, so a later open reads only the ``.idx`` of
shards pushed since), or a temporary one, removed when the process that made it ends.

A shard on a local or mounted filesystem (``file://``) is read in place. One over the
network is downloaded whole into the cache folder when a reader first needs it (under a
temporary name, then renamed) and read from there, mapped, like a local shard: the loader's
shuffle reads a few datums here and there in each shard, which as ranged requests would
cost a round trip each. The DataLoader workers share the folder, so a shard is downloaded
once; with a kept folder a second run reads no shard from the remote again.

It is read-only: writing (``writer``, ``commit``, ``record_run``, a ref) raises.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from datarepo.config import Config
from datarepo.errors import InvalidInputError, ObjectNotFoundError
from datarepo.fsutil import LocalFileSystem, atomic_write, make_temp, open_regular, publish, temporary_folder
from datarepo.index import Index
from datarepo.refs import Refs
from datarepo.remotes_config import LOCAL, RemoteError, download, speaking, url_filesystem
from datarepo.repo import Repo
from datarepo.store import Store, hashed_whole


class ReadOnlyFS:
    """The reading half of a filesystem (:class:`~datarepo.fsutil.FileSystem`): every
    method that would write raises, so nothing reached through it (an object, a shard, a
    ref) can change the remote."""

    def __init__(self, connect: Callable[[], Any], url: str) -> None:
        self._connect, self.url = connect, url

    @cached_property
    def fs(self) -> Any:
        """The filesystem, made when first used (a DataLoader worker that reads only
        cached shards never connects)."""
        with speaking(self.url):
            return self._connect()

    def open(self, path: str, mode: str = "rb", **options: Any) -> Any:
        if mode != "rb":
            self.refuse()
        with self._asking():
            f = self.fs.open(path, mode, **options)
        return f if isinstance(self.fs, LocalFileSystem) else _SpeakingFile(f, self._asking)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        with self._asking():
            return self.fs.cat_file(path, start=start, end=end)  # (s3fs takes a version id second)

    def exists(self, path: str) -> bool:
        with self._asking():
            return self.fs.exists(path)

    def ls(self, path: str, detail: bool = True) -> list[Any]:
        with self._asking():
            return self.fs.ls(path, detail=detail)

    def find(self, path: str) -> list[str]:
        with self._asking():
            return self.fs.find(path)

    def info(self, path: str) -> dict[str, Any]:
        with self._asking():
            return self.fs.info(path)

    def _asking(self) -> contextlib.AbstractContextManager[None]:
        """The remote's errors (a network that failed, a server's error answer) as one
        RemoteError naming the URL; a file that is not there is the caller's to handle, and
        a folder on this machine's filesystem speaks for itself (its files are mapped)."""
        if isinstance(self.fs, LocalFileSystem):
            return contextlib.nullcontext()
        return speaking(self.url, passing=(FileNotFoundError, NotADirectoryError, IsADirectoryError))

    def refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise InvalidInputError(f"{self.url} is opened read-only, from its URL: clone it to write")

    pipe_file = put_file = rm_file = mv = makedirs = rmdir = refuse


class _SpeakingFile:
    """A remote file whose reads (each a request) raise the remote's errors as RemoteError."""

    def __init__(self, f: Any, asking: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        self._f, self._asking = f, asking

    def read(self, size: int = -1) -> bytes:
        with self._asking():
            return self._f.read(size)

    def __getattr__(self, name: str) -> Any:  # seek, tell, close, …
        return getattr(self._f, name)

    def __enter__(self) -> _SpeakingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


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
    """A store on a remote filesystem; shards over the network are read from copies
    downloaded into a local folder."""

    def __init__(self, fs: ReadOnlyFS, root: str, cache: Path | None) -> None:
        super().__init__(root, fs=fs)
        self.url = fs.url
        self.cache = cache  # (None: shards are read in place)

    def open_shard(self, oid: str) -> BinaryIO:
        """A shard as a file: the remote's own on a local filesystem, else the local copy
        (downloaded first if it is not there yet)."""
        if self.cache is None:
            return super().open_shard(oid)
        local = self.cache / oid[:2] / f"{oid[2:]}.tar"
        if not local.is_file():  # (two workers may both download it: the second rename wins)
            local.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = make_temp(local.parent)
            try:
                with os.fdopen(fd, "w+b") as out:
                    with speaking(self.url):
                        self._download(oid, out)
                    out.seek(0)
                    hashed_whole(out, oid, f"{oid}.tar on {self.url}")  # (never a copy the network altered)
                    os.fsync(out.fileno())
                publish(tmp, local)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return open(local, "rb")

    def in_use(self, oid: str) -> bool:
        """Taken as in use: asking the remote would cost a request a shard each time a
        manifest is made (a shard gone from it is named as its datums are read)."""
        return True

    def _download(self, oid: str, out: BinaryIO) -> None:
        try:
            download(self.fs.fs, self._tar(oid), out, block_size=8 << 20)  # (its errors as they are: some are tried again)
        except FileNotFoundError:
            raise ObjectNotFoundError("shard", oid) from None


class RemoteRepo(Repo):
    """A remote's repository, opened read-only from its URL (see the module's docstring)."""

    def __init__(self, url: str, cache: str | os.PathLike[str] | None = None, check: bool = True) -> None:
        """``check``: that the URL holds a repository (a ``HEAD`` or refs), else RemoteError,
        before the cache folder is made or claimed (a mistyped URL must not claim it); a
        DataLoader worker that opens it again does not ask."""
        connect, root, protocol = url_filesystem(url)
        self.url = url
        fs = ReadOnlyFS(connect, url)
        if check:
            with speaking(url):
                there = fs.exists(f"{root}/HEAD") or fs.exists(f"{root}/refs")
            if not there:
                raise RemoteError(f"no repository at {url}")
        self.cache = _claim(Path(cache).resolve() if cache is not None else temporary_folder("datarepo-remote-"), url)
        self.store = RemoteStore(fs, root, None if protocol in LOCAL else self.cache / "shards")
        self.dotdir = self.cache  # (the location cache, index.sqlite, is kept there)
        self.worktree = None
        self.config = Config(bare=True)
        self.lock = ReadOnlyLock(fs)  # type: ignore[assignment]
        self.refs = Refs(root, self.lock, fs=fs)  # type: ignore[arg-type]
        self._index: Index | None = None
        self._index_pid = 0

    @property
    def index(self) -> Index:
        """The location cache; a kept one learns, when this process first opens it, the
        shards pushed since (one listing; their ``.idx`` read)."""
        opening = self._index is None or self._index_pid != os.getpid()
        with speaking(self.url):
            index = super().index  # (a new one has read every .idx)
            if opening and not index.created:
                self.sync_locations(index)
        return index

    def read(self, datum: str, verify: bool = True) -> dict[str, bytes]:
        """A datum's members, always checked against its id (everything from a remote is:
        bytes the network altered are a CorruptObjectError, never returned as the datum's)."""
        return super().read(datum, verify=True)

    def source(self) -> tuple[str, str | None]:
        return self.url, str(self.cache)  # (a temporary cache too: the workers share it)

    def writer(self) -> NoReturn:  # type: ignore[override]
        self.store.fs.refuse()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"RemoteRepo({self.url!r})"


def _claim(cache: Path, url: str) -> Path:
    """``cache``, marked as ``url``'s; a cache folder another remote's data is in is refused
    (its datums would be looked for in shards this remote may not have)."""
    marker = cache / "url"
    try:
        try:
            with os.fdopen(open_regular(marker), "rb") as f:  # (a FIFO there is refused, not waited on)
                held = f.read(64 << 10).decode("utf-8", "replace")
        except FileNotFoundError:
            cache.mkdir(parents=True, exist_ok=True)
            atomic_write(marker, url.encode(), mode=0o644)
            return cache
    except OSError as e:  # a file in the way, a folder that cannot be made or written
        raise InvalidInputError(f"cache {str(cache)!r} cannot be used: {e.strerror}") from None
    if held != url:
        raise InvalidInputError(f"cache {str(cache)!r} keeps the data of {held[:200]!r}, not of {url!r}")
    return cache


