"""Durable file writes and the writer lock: the only place that calls ``os.replace``."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from datarepo.errors import LockedError

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
def atomic_file(path: Path, mode: int = READ_ONLY, durable: bool = True) -> Iterator[BinaryIO]:
    """Yields a file that appears at ``path`` whole, or not at all.

    The bytes go to a temporary name beside ``path``; on success they are
    fsync'ed, renamed over ``path`` and the directory is fsync'ed. On any
    exception, KeyboardInterrupt included, the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp(path.parent)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, mode: int = READ_ONLY, durable: bool = True) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, mode, durable) as f:
        f.write(data)


def publish(tmp: Path, path: Path, mode: int = READ_ONLY) -> None:
    """Moves an already fsync'ed temporary file into place, durably."""
    os.chmod(tmp, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def set_aside(path: Path, tag: str) -> None:
    """Renames ``path`` to ``<name>.<tag>`` (replacing an older one), if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path.with_name(f"{path.name}.{tag}"))


def remove(path: Path) -> None:
    """Deletes a file whether or not it is read-only or still there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def prune_dirs(root: Path, path: Path) -> None:
    """Removes ``path`` and then each parent below ``root`` while they are empty directories."""
    while path != root and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


class WriterLock:
    """An exclusive ``flock`` on a file: the kernel releases it when the process dies."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockedError(
                        f"repository is locked by another writer ({self.path}); "
                        f"gave up after {self.timeout:g}s"
                    ) from None
                time.sleep(0.01)
        self._fd = fd
        self._depth = 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
