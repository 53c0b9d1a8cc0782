"""The Ray executor: the :class:`~datarepo.executor.Executor` interface over a Ray cluster.

The stages that run on local processes run on Ray unchanged: each item becomes one Ray
task that imports the function by its name (``module:qualname``, as a local worker does),
runs it, and returns the outcome encoded by :func:`datarepo.executor.answer`, which the
driver reads back with the same plain-data unpickler as a local worker's answer. So an
error reaches the caller as itself, and nothing but plain data comes back, whichever
executor ran the item.

``ray`` is imported only here, when a Ray executor is made. Without an address, Ray's own
rule applies (``RAY_ADDRESS``, else a new local instance with ``workers`` CPUs and no
dashboard, shut down again by :meth:`RayExecutor.close`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from datarepo import args
from datarepo.errors import ExecutorUnavailableError
from datarepo.executor import MAX_WORKERS, answer, function_name, result

T = TypeVar("T")
R = TypeVar("R")

RETRIES = 1  # times Ray runs an item again whose worker died, before it runs here


class RayExecutor:
    """Maps items as Ray tasks, at most ``2 * workers`` in flight, results in order.

    A task whose worker dies (killed, out of memory) is retried by Ray; when it still
    cannot finish, its item runs in this process, or gives ``lost(item)`` where ``lost`` is
    given, as with :class:`~datarepo.executor.ProcessExecutor`."""

    def __init__(self, workers: int, address: str | None = None, lost: Callable[[Any], Any] | None = None) -> None:
        self.workers = args.integer("workers", workers, 1, MAX_WORKERS + 1)
        self.lost = args.function("lost", lost)
        if address is not None:
            args.text("address", address, empty=False)
        self._ray = _import_ray()
        address = address or os.environ.get("RAY_ADDRESS")
        if address is not None:
            _reachable(address)
        self._started = not self._ray.is_initialized()  # (else this process has joined a cluster already)
        if self._started:
            _connect(self._ray, workers, address)
        self._task = self._ray.remote(num_cpus=1, max_retries=RETRIES)(_run)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        name = function_name(fn)
        todo = iter(items)
        flight: deque[tuple[T, Any]] = deque()
        self._submit(name, todo, flight)  # the work starts now, not when the caller iterates
        return self._collect(fn, name, todo, flight)

    def _submit(self, name: str, todo: Iterator[T], flight: deque[tuple[T, Any]]) -> None:
        while len(flight) < 2 * self.workers and (item := next(todo, _END)) is not _END:
            flight.append((item, self._task.remote(name, item)))

    def _collect(self, fn: Callable[[T], R], name: str, todo: Iterator[T], flight: deque[tuple[T, Any]]) -> Iterator[R]:
        exceptions = self._ray.exceptions
        try:
            while flight:
                item, ref = flight.popleft()
                try:
                    encoded = self._ray.get(ref)
                except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.OutOfMemoryError):
                    yield self.lost(item) if self.lost is not None else fn(item)  # (its worker died RETRIES + 1 times)
                else:
                    yield result(encoded)
                self._submit(name, todo, flight)
        finally:
            for _, ref in flight:  # stopped early: what is still running is not wanted
                self._ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


_END: Any = object()


def _run(name: str, item: object) -> bytes:
    return answer(name, item)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ExecutorUnavailableError(
            f"the Ray executor needs Ray, which is not installed here ({e}): pip install 'datarepo[ray]'"
        ) from None
    return ray


def _connect(ray: Any, workers: int, address: str | None) -> None:
    options: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False, "configure_logging": True}
    if address is None:
        options |= {"num_cpus": workers, "include_dashboard": False}
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExecutorUnavailableError(f"cannot start or reach Ray at {address or 'a new local instance'}: {first}") from None


def _reachable(address: str) -> None:
    """Fails fast where nothing listens at a ``host:port`` (or ``ray://host:port``) address:
    Ray itself would retry for a minute or more before it gave up."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" and such: Ray's own rules
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ExecutorUnavailableError(f"cannot reach Ray at {address}: {e.strerror or e}") from None
