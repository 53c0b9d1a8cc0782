"""Executors: how parallel work is run (docs/format.md, "Writing safely").

Every parallel step of datarepo (statting a large tree, reading, hashing and
storing the datums of an ``add`` or ``ingest``) is a list of plain, picklable
items mapped by a module-level function. An executor runs that map:

* :class:`SerialExecutor` runs it in this process, lazily, one item at a time;
* :class:`ProcessExecutor` runs it on a pool of local worker processes.

A Ray executor slots in the same way: the stages never learn which one runs
them. Every process trick lives in this module, and none is a contract: a
worker receives the function by its name and the item as plain data, and
returns plain data (read back by :func:`_decode`, which builds nothing but
values and datarepo's own records), so nothing it does may depend on memory
inherited from the parent. (On Linux the workers are forked, which starts them in milliseconds
instead of the hundred a fresh interpreter needs to import datarepo, but
they are handed everything they use.)
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from datarepo import args
from datarepo.config import env_count
from datarepo.errors import InvalidInputError, raise_stopped
from datarepo.fsutil import signals_deferred

T = TypeVar("T")
R = TypeVar("R")

WORKERS_ENV = "DATAREPO_WORKERS"
MAX_WORKERS = 1024  # processes one executor may start


class Executor(Protocol):
    """Maps a function over plain items, perhaps in other processes."""

    workers: int

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Yields ``fn(item)`` for each item, in the items' order. The work may start at
        once and run concurrently with the caller; results come as they are iterated.
        ``fn`` must be a module-level function and the items and results plain data
        (builtin values, arrays, datarepo's dataclasses, named tuples and errors)."""
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
    """Runs items on ``workers`` local processes, forked when first needed and kept for the
    next map. Each worker takes the next item whenever it is free, so all end within an
    item of each other. Items and results cross a pipe as plain data (:func:`_decode`).

    A worker that dies (killed, out of memory) does not fail the map: its item, and any
    that no worker is left to take, run in this process; or, given ``lost``, the dead
    worker's item gives ``lost(item)`` as its result instead (a pipeline's batch that
    killed its worker must not run in the driver: it records the batch as failed). The
    stages make every item safe to run twice (a batch publishes content-addressed
    shards, and a shard published twice is the same file). An error raised by an item
    reaches the caller as itself; the workers still busy then are stopped, as they are when
    the caller stops iterating early or is interrupted (Ctrl-C): each unwinds what it was
    doing, so a shard it was writing is removed, and is killed if it holds on.

    Not ``concurrent.futures``: importing it and ``multiprocessing`` took 40-70 ms here,
    and starting two of its workers 22 ms more, while a ``status`` of 40,000 files takes
    0.3 s in all; a fork takes about a millisecond.
    """

    def __init__(self, workers: int, lost: Callable[[Any], Any] | None = None) -> None:
        self.workers = args.integer("workers", workers, 1, MAX_WORKERS + 1)
        self.lost = args.function("lost", lost)
        self._owner = os.getpid()
        self._idle: list[_Worker] = []

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        todo = list(enumerate(items))
        todo.reverse()  # popped from the end: in order
        busy: dict[int, tuple[_Worker, int, T]] = {}  # a worker's answer fd → it, and its item
        name = function_name(fn)
        self._hand_out(name, todo, busy)  # the work starts now, not when the caller iterates
        return self._collect(fn, name, todo, busy)

    def _hand_out(self, name: str, todo: list[tuple[int, T]], busy: dict) -> None:  # type: ignore[type-arg]
        while todo and len(busy) < self.workers:
            order = _encode((name, todo[-1][1]))  # (before a worker is taken: it may fail)
            worker = self._idle.pop() if self._idle else _Worker.start(self._owner)
            if worker is None:  # no fork to be had: what is left runs here
                return
            # A worker handed an order is known busy at once: a Ctrl-C in between would leave
            # it working, stopped by no one but its parent's death (SIGKILL), mid-shard.
            with signals_deferred():
                i, item = todo.pop()
                if worker.send(order):
                    busy[worker.answers] = (worker, i, item)
                    continue
            worker.reap()  # it died while idle
            todo.append((i, item))

    def _collect(self, fn: Callable[[T], R], name: str, todo: list[tuple[int, T]], busy: dict) -> Iterator[R]:  # type: ignore[type-arg]
        done: dict[int, R] = {}
        total, at = len(todo) + len(busy), 0
        try:
            while at < total:
                if at in done:
                    yield done.pop(at)
                    at += 1
                    continue
                if not busy:  # no worker could be had, or all died: the rest runs here
                    i, item = todo.pop()
                    done[i] = fn(item)
                    continue
                for fd in _ready(busy):
                    worker, i, item = busy.pop(fd)
                    raw = _read_message(worker.answers)
                    if raw is None:  # it died: its item runs here, or becomes what ``lost`` makes of it
                        worker.reap()
                        done[i] = self.lost(item) if self.lost is not None else fn(item)
                    else:
                        self._idle.append(worker)
                        done[i] = result(raw)
                    self._hand_out(name, todo, busy)
        finally:
            _stop([worker for worker, _, _ in busy.values()])  # stopped early: what they do is not wanted

    def close(self) -> None:
        """Ends the idle workers. Not by closing their orders pipes alone: a process forked
        here since (a DataLoader worker) holds those pipes open too, and they would wait for
        orders as long as it lives."""
        _stop(self._idle)
        self._idle.clear()


def _stop(workers: list[_Worker]) -> None:
    """Stops workers: on SIGTERM each unwinds what it was doing (a shard being written is
    removed) and exits, an idle one at once; those that have not within ``STOP_GRACE``
    seconds (user code that holds on) are killed."""
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for worker in workers:
        while os.waitpid(worker.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() >= deadline:
                os.kill(worker.pid, signal.SIGKILL)
                os.waitpid(worker.pid, 0)
                break
            time.sleep(0.002)
        os.close(worker.orders)
        os.close(worker.answers)


def _ready(fds: Iterable[int]) -> list[int]:
    """Those of ``fds`` with something to read (or closed), waiting for one. ``poll``, not
    ``select``, which refuses descriptors numbered 1024 or more."""
    import select

    poll = select.poll()
    for fd in fds:
        poll.register(fd, select.POLLIN)
    return [fd for fd, _ in poll.poll()]


class _Worker:
    """One forked worker: it reads (fn, item) from one pipe and answers on another."""

    def __init__(self, pid: int, orders: int, answers: int) -> None:
        self.pid, self.orders, self.answers = pid, orders, answers

    @classmethod
    def start(cls, owner: int) -> _Worker | None:
        if not hasattr(os, "fork") or os.getpid() != owner:  # (no pool in a worker of a pool)
            return None
        orders_r, orders_w = os.pipe()
        answers_r, answers_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (orders_r, orders_w, answers_r, answers_w):
                os.close(fd)
            return None
        if pid == 0:  # the worker: never returns into the caller's stack
            code = 1
            try:
                _become_worker(owner, keep=(orders_r, answers_w))
                _serve(orders_r, answers_w)
                code = 0
            finally:
                os._exit(code)
        os.close(orders_r)
        os.close(answers_w)
        return cls(pid, orders_w, answers_r)

    def send(self, order: bytes) -> bool:
        """Hands an order over; False if the worker is gone."""
        try:
            _write_message(self.orders, order)
        except BrokenPipeError:
            return False
        return True

    def reap(self) -> None:
        os.close(self.orders)
        os.close(self.answers)
        os.waitpid(self.pid, 0)


def _become_worker(owner: int, keep: tuple[int, int]) -> None:
    """A worker ignores the terminal's Ctrl-C (its parent handles it), dies with its parent
    (a killed ``add`` leaves no worker behind) and keeps no file its parent had open (the
    writer lock, SQLite's files): it is handed all it uses."""
    global _in_worker
    _in_worker = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, raise_stopped)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != owner:  # the parent died before the line above
        os._exit(1)
    low, high = sorted(keep)
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 1 << 16)


_PR_SET_PDEATHSIG = 1
STOP_GRACE = 5.0  # seconds a stopped worker has to unwind before it is killed


def _serve(orders: int, answers: int) -> None:
    while (raw := _read_message(orders)) is not None:
        _write_message(answers, answer(*_decode(raw)))


def answer(name: str, item: object) -> bytes:
    """Runs the function called ``name`` on ``item`` in a worker and encodes its outcome for
    :func:`result`: its value, or the error it raised (as itself where that is plain data)."""
    try:
        return _encode((True, _function(name)(item)))
    except Exception as e:  # the item's error, for the caller to raise as itself if it is plain
        encoded = _encode((False, e))
        try:
            _decode(encoded)
        except Exception:
            encoded = _encode((False, RuntimeError(f"{type(e).__name__}: {e}")))
        return encoded


def result(encoded: bytes) -> Any:
    """The value a worker's :func:`answer` holds; the error it holds is raised."""
    ok, value = _decode(encoded)
    if not ok:
        raise value
    return value


# Items and results cross the pipes pickled, and are read back by an unpickler that builds
# only plain data: builtin values, arrays, and datarepo's dataclasses, named tuples and
# errors. It never calls a function or builds any other object, so what crosses is data,
# not code; the function itself crosses as its name ("module:qualname") and is imported.
_PLAIN_BUILTINS = frozenset({"bytearray", "set", "frozenset", "complex", "slice", "range"})


def _encode(message: object) -> bytes:
    import pickle

    return pickle.dumps(message, protocol=5)


def _decode(raw: bytes) -> Any:
    import io

    return _plain_unpickler()(io.BytesIO(raw)).load()


@functools.cache
def _plain_unpickler() -> type[Any]:
    """The unpickler of plain data, made once (pickle is imported only where a map runs): a
    class made for each message is a reference cycle, which a CLI command, run with the
    cyclic collector off, would keep for each batch of a long run or ``run --watch``."""
    import pickle

    class PlainData(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "array" and name in ("array", "_array_reconstructor"):
                return super().find_class(module, name)
            if module == "builtins" or module.split(".")[0] == "datarepo":
                found = super().find_class(module, name)
                if _plain_type(found, builtin=module == "builtins", name=name):
                    return found
            raise pickle.UnpicklingError(f"{module}.{name} is not plain data")

    return PlainData


def _plain_type(found: object, builtin: bool, name: str) -> bool:
    import dataclasses

    if not isinstance(found, type):
        return False
    if issubclass(found, BaseException):
        return True
    if builtin:
        return name in _PLAIN_BUILTINS
    return dataclasses.is_dataclass(found) or issubclass(found, tuple)


def function_name(fn: Callable[..., object]) -> str:
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in name:  # a lambda, or a function defined inside another: no name reaches it
        raise TypeError(f"an executor maps module-level functions, not {name}")
    return name


def _function(name: str) -> Callable[[Any], Any]:
    import importlib

    module, _, qualname = name.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _write_message(fd: int, payload: bytes) -> None:
    view = memoryview(len(payload).to_bytes(8, "little") + payload)
    while view:
        view = view[os.write(fd, view) :]


def _read_message(fd: int) -> bytes | None:
    """One length-prefixed message, or None at the end of the pipe (its writer is gone)."""
    head = _read_exact(fd, 8)
    if head is None:
        return None
    return _read_exact(fd, int.from_bytes(head, "little"))


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@contextmanager
def no_fork() -> Iterator[None]:
    """Runs user code that may ``os.fork()`` (a pipeline's transform): a child process that
    comes out of the block (it would go on as a second copy of the run or of the worker:
    two writers of one shard, two answers for one batch) ends there at once, quietly. The
    parent goes on."""
    pid = os.getpid()
    try:
        yield
    finally:
        if os.getpid() != pid:
            os._exit(0)


def worker_count() -> int:
    """The processes parallel work may use: ``DATAREPO_WORKERS``, else the cores this
    process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return env_count(WORKERS_ENV, cores, least=1, most=MAX_WORKERS)


_shared: ProcessExecutor | None = None
_in_worker = False  # set in a worker process: its own steps run serially


def for_work(parallel: bool) -> Executor:
    """The executor for a step: this process's pool of workers when the step has enough
    work to be worth spreading (``parallel``) and more than one worker may run, else a
    :class:`SerialExecutor`. The pool is made once a process and shared by its steps."""
    global _shared
    workers = worker_count()
    if not parallel or workers < 2 or _in_worker:
        return SerialExecutor()
    if _shared is None or _shared.workers != workers or _shared._owner != os.getpid():
        if _shared is not None and _shared._owner == os.getpid():  # (another worker count: its idle workers end)
            _shared.close()
        _shared = ProcessExecutor(workers)
    return _shared


KINDS = ("serial", "process", "ray")


def open_executor(
    kind: str = "process", workers: int | None = None, address: str | None = None, lost: Callable[[Any], Any] | None = None
) -> Executor:
    """A new executor of a ``kind`` (:data:`KINDS`) with ``workers`` (default
    :func:`worker_count`); ``address`` is the Ray cluster to join (``None``: start or join a
    local one); ``lost`` what an item whose worker died gives instead (default: the item
    runs in this process). The caller closes it."""
    count = worker_count() if workers is None else args.integer("workers", workers, 1, MAX_WORKERS + 1)
    args.function("lost", lost)
    if kind == "serial":
        return SerialExecutor()
    if kind == "process":
        return ProcessExecutor(count, lost)
    if kind == "ray":
        from datarepo.rayexec import RayExecutor

        return RayExecutor(count, address, lost)
    raise InvalidInputError(f"kind must be one of {', '.join(KINDS)}, not {args.shown(kind)}")
