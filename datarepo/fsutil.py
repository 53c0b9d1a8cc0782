"""Files: the filesystem interface the store reads and writes through, its local
implementation (durable, atomic writes: the only place that calls ``os.replace``), the
writer lock, and the work-tree paths that are safe to write or delete."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from datarepo.errors import LockedError, ReadOnlyError, UnsafePathError
from datarepo.keys import check_key

READ_ONLY = 0o444
TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Makes a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_writeback(fd: int) -> None:
    """Has the kernel start writing ``fd``'s dirty pages to disk, without waiting for them.

    A large file written and then fsync'ed waits at the end for all of it at
    once; started as it is written, that disk work overlaps the writing and the
    fsync waits only for the rest. Linux only (``sync_file_range``); elsewhere,
    or if the call fails, the fsync simply does it all.
    """
    if (call := _sync_file_range()) is not None:
        call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def umask() -> int:
    """The process's umask, read once (reading it took 15 µs, a fifth of writing a small
    file), without setting it (``os.umask`` sets it, which another thread's new file would
    see for that moment); where ``/proc`` is not, it is set back at once. A program that
    changes its umask while it writes through datarepo gets the first one."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def make_temp(folder: Path, suffix: str = "") -> tuple[int, Path]:
    """Creates a file under a new temporary name in ``folder``, readable and writable by its
    owner only, and opens it: ``tempfile.mkstemp``, without the 5 ms of importing ``tempfile``
    (and ``shutil``) in every command that writes a file."""
    while True:
        tmp = folder / f"{TMP_PREFIX}{os.urandom(8).hex()}{suffix}"
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), tmp
        except FileExistsError:  # (1 in 2**64)
            continue


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Holds Ctrl-C (SIGINT) and SIGTERM back until the block ends, for a step that must not
    be cut in two: making a temporary file and taking charge of it (a signal between the
    two would raise where nothing knows the file, to remove it)."""
    import signal

    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


class FolderMadeWhole:
    """A folder made under a temporary name beside ``dest`` and renamed to ``dest`` once the
    ``with`` block that makes it ends; removed instead if the block raises. Used as
    ``with FolderMadeWhole(dest, tag) as tmp: ...``: nothing is ever at ``dest`` that looks
    whole but is half made (an export, a clone). Creating it claims the temporary folder
    (:func:`claim_temp_dir`), removing those that killed writers left beside it, and raises
    OSError where that cannot be done, before any work starts."""

    def __init__(self, dest: Path, tag: str) -> None:
        self.dest = dest
        self._held, self.tmp = claim_temp_dir(dest.parent, tag)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        import shutil

        renamed = False
        try:
            if kind is None:
                os.replace(self.tmp, self.dest)  # a new name, or over the empty folder there
                renamed = True
                fsync_dir(self.dest.parent)
        finally:
            if not renamed:
                shutil.rmtree(self.tmp, ignore_errors=True)
            os.close(self._held)


def claim_temp_dir(parent: Path, tag: str) -> tuple[int, Path]:
    """Makes a new folder ``<parent>/.tmp-<tag>-<random>`` and holds an ``flock`` on it while
    the descriptor returned stays open: a process that dies lets it go, so that such a
    folder left unlocked is one its writer left behind when it was killed. Those are removed
    first. The sweep, the new folder and its lock are one step under an ``flock`` on
    ``parent``, so that no sweep finds a folder made but not yet locked. On a file system
    without ``flock`` nothing is swept (no folder can be told to be a dead writer's)."""
    import shutil

    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _flock(parent_fd, fcntl.LOCK_EX):
            for dead in _dead_temp_dirs(parent, tag):
                shutil.rmtree(dead, ignore_errors=True)
        tmp = parent / f"{TMP_PREFIX}{tag}-{os.urandom(6).hex()}"
        tmp.mkdir()
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, tmp
    finally:
        os.close(parent_fd)  # (the lock on the parent with it)


def _flock(fd: int, how: int) -> bool:
    """``flock``; False where the file system has no such locks (BlockingIOError is raised)."""
    try:
        fcntl.flock(fd, how)
    except BlockingIOError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    return True


def _dead_temp_dirs(parent: Path, tag: str) -> Iterator[Path]:
    """The folders of :func:`claim_temp_dir` in ``parent`` whose writer is gone (their lock
    is free: taken here, it is let go when the folder is removed)."""
    with os.scandir(parent) as entries:
        found = [Path(e.path) for e in entries if e.name.startswith(f"{TMP_PREFIX}{tag}-") and e.is_dir(follow_symlinks=False)]
    for path in sorted(found):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                yield path
        except BlockingIOError:  # a live writer's
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(
    path: Path, mode: int = READ_ONLY, durable: bool = True, tmp_dir: Path | None = None
) -> Iterator[BinaryIO]:
    """Yields a file that appears at ``path`` whole, or not at all, with ``mode`` less the
    umask's bits (as a file that ``open`` makes: under umask 077, no one else may read it).

    The bytes go to a temporary name beside ``path`` (or in ``tmp_dir``, which
    must be on the same file system); on success they are fsync'ed, renamed
    over ``path`` and the directory is fsync'ed. On any exception,
    KeyboardInterrupt included, the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with signals_deferred():  # (a Ctrl-C comes once ``tmp`` is known, to be removed)
            fd, tmp = make_temp(tmp_dir or path.parent)
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode & ~umask())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            remove(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, mode: int = READ_ONLY, durable: bool = True) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, mode, durable) as f:
        f.write(data)


def publish(tmp: Path, path: Path, mode: int = READ_ONLY) -> None:
    """Moves an already fsync'ed temporary file into place, durably."""
    os.chmod(tmp, mode & ~umask())
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class DurableBatch:
    """Many files written atomically and durably together, at a fraction of the cost of one
    :func:`atomic_file` each (a fetch of a long history writes thousands of small objects;
    one fsync of each file and one of its folder took 80-90% of a clone's time).

    Each file is written under a temporary name beside its path, unsynced. At the end of
    the block, and whenever :data:`MAX_FILES` files or :data:`MAX_BYTES` bytes are
    pending, every pending file is fsync'ed at once (from threads: the file system commits
    concurrent fsyncs together), then each is renamed to its path in the order it was
    written, then their folders are fsync'ed. Every file is whole on disk before any takes
    its name, and the file system's journal keeps the renames in order, as git's "batch"
    fsync mode assumes: an object written after its children never stands without them.

    If the block raises an error, the files already written whole still take their paths
    (so that the next run has less to do, as when each was written alone); a file cut short
    is removed. Ctrl-C or a stop removes the pending files at once instead.
    """

    MAX_FILES = 1000
    MAX_BYTES = 256 << 20
    THREADS = 16

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path, int]] = []  # (temporary file, path, mode)
        self.size = 0
        self.folders: set[Path] = set()  # of files moved meanwhile (see :meth:`moved`)

    @contextlib.contextmanager
    def file(self, path: Path, mode: int = READ_ONLY) -> Iterator[BinaryIO]:
        """A file that takes ``path`` once written whole and the batch is made durable."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = None
        try:
            with signals_deferred():
                fd, tmp = make_temp(path.parent)
            with os.fdopen(fd, "wb", buffering=1 << 20) as f:
                yield f
                size = f.tell()
        except BaseException:
            if tmp is not None:
                remove(tmp)
            raise
        self._add(tmp, path, mode, size)

    def publish(self, tmp: Path, path: Path, mode: int = READ_ONLY) -> None:
        """A file already written (on the same file system) that takes ``path`` likewise."""
        self._add(tmp, path, mode, os.path.getsize(tmp))

    def moved(self, path: Path) -> None:
        """A file already renamed to ``path``: its folder is fsync'ed with the batch's."""
        self.folders.add(path.parent)

    def _add(self, tmp: Path, path: Path, mode: int, size: int) -> None:
        self.pending.append((tmp, path, mode))
        self.size += size
        if len(self.pending) >= self.MAX_FILES or self.size >= self.MAX_BYTES:
            self.commit()

    def commit(self) -> None:
        """Makes the pending files durable and gives them their paths."""
        pending, self.pending, self.size = self.pending, [], 0
        folders, self.folders = self.folders, set()
        done = 0
        try:
            _each_in_threads(_fsync_file, [tmp for tmp, _, _ in pending], self.THREADS)
            mask = umask()
            for tmp, path, mode in pending:
                os.chmod(tmp, mode & ~mask)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
                done += 1
        finally:
            for tmp, _, _ in pending[done:]:
                remove(tmp)
        _each_in_threads(fsync_dir, sorted(folders | {path.parent for _, path, _ in pending}), self.THREADS)

    def discard(self) -> None:
        for tmp, _, _ in self.pending:
            remove(tmp)
        self.pending, self.size = [], 0

    def __enter__(self) -> DurableBatch:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.commit()
        elif not issubclass(kind, Exception):  # (Ctrl-C, a stop: at once)
            self.discard()
        else:
            with contextlib.suppress(Exception):  # (the error being raised says more)
                self.commit()


def batched(fs: Any) -> contextlib.AbstractContextManager[None]:
    """``fs.batched()`` for a local filesystem (see :class:`DurableBatch`); elsewhere (an
    object store, whose every PUT is whole and durable by itself) nothing."""
    return fs.batched() if isinstance(fs, LocalFileSystem) else contextlib.nullcontext()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _each_in_threads(fn: Callable[[Any], None], items: list[Any], threads: int) -> None:
    """``fn`` of every item, from up to ``threads`` threads (for calls that wait on the disk)."""
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        for _ in pool.map(fn, items):
            pass


def set_aside(path: Path, tag: str) -> None:
    """Renames ``path`` to ``<name>.<tag>`` (replacing an older one), if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path.with_name(f"{path.name}.{tag}"))


def remove(path: Path) -> None:
    """Deletes a file whether or not it is read-only or still there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def prune_dirs(root: Path, path: Path) -> None:
    """Removes ``path`` and then each parent below ``root`` while they are empty directories
    (a symbolic link to a directory is not one: neither it nor what it points to is touched).
    The current directory is kept, as git keeps it: a shell started in it (the user's, one
    that runs the command) would be left in a folder that is gone."""
    try:
        here = os.stat(".")
    except FileNotFoundError:
        here = None
    while path != root and not path.is_symlink() and path.is_dir() and not any(path.iterdir()):
        if here is not None and os.path.samestat(here, path.stat()):
            return
        path.rmdir()
        path = path.parent


# Work-tree paths ----------------------------------------------------------------------------


class WorktreePaths:
    """The paths below a work tree that may be written or deleted: never one that lies
    beyond a symbolic link (git's "beyond a symbolic link"), so a symlinked folder's
    target outside the work tree is never written through nor deleted through.

    Each folder on the way is ``lstat``ed once, however many files lie in it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._linked: dict[str, str | None] = {"": None}  # folder → the symlink (or file) on its way, if any

    def check(self, rel: str) -> Path:
        """``root / rel``, or UnsafePathError if a folder on its way is a symbolic link
        (InvalidInputError if ``rel`` is not a path a key may name: :func:`keys.check_key`)."""
        check_key(rel)
        if (linked := self.linked_folder(rel.rpartition("/")[0])) is not None:
            raise UnsafePathError(rel, linked)
        return self.root / rel

    def linked_folder(self, folder: str) -> str | None:
        """The first of ``folder`` and the folders above it that is a symbolic link; None
        if none is (each is a folder, or not there yet, or a file: writing below a file
        fails by itself, and removing below one finds nothing)."""
        if folder in self._linked:
            return self._linked[folder]
        parent = folder.rpartition("/")[0]
        found = self.linked_folder(parent)
        if found is None:
            try:
                st = os.lstat(self.root / folder)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                found = folder
        self._linked[folder] = found
        return found


# The store's filesystem ----------------------------------------------------------------------


class FileSystem(Protocol):
    """The part of fsspec's ``AbstractFileSystem`` the store uses, with fsspec's names and
    meanings (paths are ``/``-separated strings; a missing path raises FileNotFoundError),
    so a real ``fsspec`` filesystem (the one DVC remotes use, through dvc-objects) serves
    as well as :class:`LocalFileSystem`, which does not import fsspec.

    An implementation may offer ``publish(local_tmp, path)`` (move a finished local file
    into place); without it, the store uploads with ``put_file`` and deletes the file.
    """

    def open(self, path: str, mode: str = "rb") -> Any: ...

    def cat_file(self, path: str, start: int | None = None, end: int | None = None) -> bytes: ...

    def pipe_file(self, path: str, value: bytes) -> Any: ...

    def put_file(self, lpath: str, rpath: str) -> Any: ...

    def exists(self, path: str) -> bool: ...

    def ls(self, path: str, detail: bool = True) -> list[Any]: ...

    def find(self, path: str) -> list[str]: ...

    def info(self, path: str) -> dict[str, Any]: ...

    def rm_file(self, path: str) -> Any: ...

    def mv(self, path1: str, path2: str) -> Any: ...

    def makedirs(self, path: str, exist_ok: bool = False) -> Any: ...

    def rmdir(self, path: str) -> Any: ...


class LocalFileSystem:
    """Local paths behind :class:`FileSystem`'s methods, without importing fsspec (which
    costs a command 90-130 ms). Every write is atomic and durable: ``pipe_file`` writes a
    temporary file, fsyncs it, renames it into place and fsyncs the folder (files get
    ``perm``: read-only for the store's objects and shards, 0644 for refs); ``publish``
    moves an already fsync'ed temporary file into place likewise. Missing parent folders
    are made."""

    def __init__(self, perm: int = READ_ONLY, durable: bool = True) -> None:
        self.perm = perm
        self.durable = durable
        self._batch: DurableBatch | None = None

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Within the block, the files that ``pipe_file``, ``put_file`` and ``publish`` write
        reach their paths when it ends, all made durable together (see :class:`DurableBatch`);
        a file written there cannot be read by its path before then. A file ``mv`` moves
        takes its new path at once; its folder is fsync'ed with theirs."""
        if self._batch is not None or not self.durable:
            yield
            return
        self._batch = DurableBatch()
        try:
            with self._batch:
                yield
        finally:
            self._batch = None

    def open(self, path: str, mode: str = "rb") -> BinaryIO:
        """A file to read (a regular file: see :func:`open_regular`), or to append to
        (``ab``: a symbolic link there is not followed, but replaced by a file, as every
        other write replaces one)."""
        if mode == "rb":
            return os.fdopen(open_regular(path), "rb")
        if mode != "ab":
            return open(path, mode)  # type: ignore[return-value]
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            os.unlink(path)
            fd = os.open(path, flags | os.O_EXCL, 0o644)
        return os.fdopen(fd, "ab")

    def cat_file(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        with self.open(path) as f:
            if start is None and end is None:
                return f.read()
            start = start or 0
            if end is None:
                end = os.fstat(f.fileno()).st_size
            return os.pread(f.fileno(), max(0, end - start), start)

    def pipe_file(self, path: str, value: bytes) -> None:
        if self._batch is not None:
            with self._batch.file(Path(path), self.perm) as f:
                f.write(value)
        else:
            atomic_write(Path(path), value, self.perm, self.durable)

    def publish(self, lpath: str | Path, rpath: str) -> None:
        if self._batch is not None:
            self._batch.publish(Path(lpath), Path(rpath), self.perm)
        else:
            publish(Path(lpath), Path(rpath), self.perm)

    def put_file(self, lpath: str, rpath: str) -> None:
        with open(lpath, "rb") as src, (
            self._batch.file(Path(rpath), self.perm) if self._batch is not None else atomic_file(Path(rpath), self.perm, self.durable)
        ) as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def ls(self, path: str, detail: bool = True) -> list[Any]:
        names = [os.path.join(path, n) for n in sorted(os.listdir(path))]
        return [self.info(n) for n in names] if detail else names

    def find(self, path: str) -> list[str]:
        found = []
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            found += (os.path.join(folder, f) for f in files)
        return sorted(found)

    def info(self, path: str) -> dict[str, Any]:
        st = os.stat(path)
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
        return {"name": path, "size": st.st_size, "type": kind, "mtime": st.st_mtime}

    def rm_file(self, path: str) -> None:
        os.unlink(path)

    def mv(self, path1: str, path2: str) -> None:
        os.makedirs(os.path.dirname(path2), exist_ok=True)
        os.replace(path1, path2)
        if self._batch is not None:
            self._batch.moved(Path(path2))
        elif self.durable:
            fsync_dir(Path(path2).parent)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        """Removes an empty folder (OSError if it is not empty)."""
        os.rmdir(path)


class NotAFileError(OSError):
    """What the store reads is not a regular file (a FIFO, a device, a socket put there)."""


def open_regular(path: str | Path) -> int:
    """Opens a regular file to read (a file descriptor). Anything else in its place is a
    NotAFileError, at once: opening a FIFO would wait for a writer forever (a folder is
    IsADirectoryError, as ``open`` says it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        os.set_blocking(fd, True)
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    raise NotAFileError(errno.EINVAL, "not a regular file", str(path))


def same_device(a: Path, b: Path) -> bool:
    """Whether two existing paths lie on one file system (a rename between them works)."""
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise


def temporary_folder(prefix: str) -> Path:
    """A new folder in the temporary folder, removed with what it holds when this process
    ends (not when a child forked from it does: a DataLoader worker shares it)."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
    return folder


class WriterLock:
    """An exclusive ``flock`` on a file: the kernel releases it when the process dies.

    Held by a thread: taken again by the thread that holds it, it is held once more (and
    released as often); another thread of the process waits for it as another process
    does (a ``flock`` is the process's, so the threads take turns first)."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0
        self._owner: int | None = None  # the thread that holds it
        self._turn = threading.Lock()  # (held by that thread)

    def acquire(self) -> None:
        if self._depth and self._owner == threading.get_ident():
            self._depth += 1
            return
        deadline = time.monotonic() + self.timeout
        if not self._turn.acquire(timeout=max(self.timeout, 0)):
            raise self._locked()
        try:
            self._fd = self._flock(deadline)
        except BaseException:
            self._turn.release()
            raise
        self._depth, self._owner = 1, threading.get_ident()

    def _flock(self, deadline: float) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            from datarepo.sqlrows import cannot_write

            if not cannot_write(e):
                raise
            raise ReadOnlyError(f"{self.path.parent} may be read here, not written ({e.strerror}: {self.path})") from None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise self._locked() from None
                time.sleep(0.01)

    def _locked(self) -> LockedError:
        return LockedError(f"repository is locked by another writer ({self.path}); gave up after {self.timeout:g}s")

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd, self._owner = None, None
            self._turn.release()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
