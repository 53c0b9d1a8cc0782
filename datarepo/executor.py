"""Executors: how parallel work is run (docs/format.md, "Writing safely").

Every parallel step of datarepo (statting a large tree, reading, hashing and
storing the datums of an ``add`` or ``ingest``) is a list of plain, picklable
items mapped by a module-level function. An executor runs that map:

* :class:`SerialExecutor` runs it in this process, lazily, one item at a time;
* :class:`ProcessExecutor` runs it on a pool of local worker processes.

A Ray executor slots in the same way: the stages never learn which one runs
them. Every process trick lives in this module, and none is a contract: a
worker receives its item and the function by pickling and returns its result
by pickling, so nothing it does may depend on memory inherited from the
parent. (On Linux the workers are forked, which starts them in milliseconds
instead of the hundred a fresh interpreter needs to import datarepo, but
they are handed everything they use.)
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Protocol, TypeVar

from datarepo.errors import InvalidInputError

T = TypeVar("T")
R = TypeVar("R")

WORKERS_ENV = "DATAREPO_WORKERS"


class Executor(Protocol):
    """Maps a function over plain items, perhaps in other processes."""

    workers: int

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Yields ``fn(item)`` for each item, in the items' order. The work may start at
        once and run concurrently with the caller; results come as they are iterated.
        ``fn`` must be a module-level function and the items and results picklable."""
        ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs every item in this process, when its result is asked for."""

    workers = 1

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return map(fn, items)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """Runs items on a pool of ``workers`` local processes, started when first needed.

    A worker that dies (killed, out of memory) does not fail the map: the items it
    held, and those not yet started, are run in this process. The stages make every
    item safe to run twice (a batch publishes content-addressed shards, and a shard
    published twice is the same file).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        futures = [self._submit(fn, item) for item in items]
        return self._results(fn, items, futures)

    def _submit(self, fn: Callable[[T], R], item: T) -> Future[R] | None:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._start().submit(fn, item)
        except BrokenProcessPool:
            self._pool = None
            return None

    def _results(self, fn: Callable[[T], R], items: list[T], futures: list[Future[R] | None]) -> Iterator[R]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            for item, future in zip(items, futures):
                if future is None:
                    yield fn(item)
                    continue
                try:
                    yield future.result()
                except BrokenProcessPool:
                    self._pool = None
                    yield fn(item)
        finally:
            for future in futures:
                if future is not None:
                    future.cancel()

    def _start(self):  # type: ignore[no-untyped-def]
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            method = "fork" if sys.platform.startswith("linux") else None
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context(method), initializer=_worker_init, initargs=(os.getpid(),)
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _worker_init(parent: int) -> None:
    """A worker ignores the terminal's Ctrl-C (its parent handles it) and dies with its
    parent: a killed ``add`` leaves no worker behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def worker_count() -> int:
    """The processes parallel work may use: ``DATAREPO_WORKERS``, else the cores this
    process may run on."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise InvalidInputError(f"{WORKERS_ENV} must be a whole number of at least 1, not {raw!r}")
        return int(raw)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_shared: ProcessExecutor | None = None


def for_work(parallel: bool) -> Executor:
    """The executor for a step: this process's pool of workers when the step has enough
    work to be worth spreading (``parallel``) and more than one worker may run, else a
    :class:`SerialExecutor`. The pool is made once a process and shared by its steps."""
    global _shared
    workers = worker_count()
    if not parallel or workers < 2:
        return SerialExecutor()
    if _shared is None or _shared.workers != workers:
        _shared = ProcessExecutor(workers)
    return _shared
