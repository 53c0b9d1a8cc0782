"""Splitting per-file work over two processes, where the work is too small for a pool.

Python runs one thread at a time, and the per-file work of a scan or a first
``add`` (a ``stat``, an ``open``/``read``, a hash, a tar header) is Python
work. :func:`both` forks one helper process that runs one half while this
process runs the other; the helper's result comes back as bytes, in a file
in memory.
A fork shares everything already in memory (the file list, the plan), so
there is nothing to start up and nothing to pickle. If the helper fails in
any way, the caller does its half itself: the helper is an optimisation,
never the only way to an answer.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def helper_available() -> bool:
    """True where forking a helper can help: Linux with a second core. ``DATAREPO_WORKERS``
    set to 1 turns helpers off; set to 2, it turns them on even on one core."""
    workers = os.environ.get("DATAREPO_WORKERS", "")
    if workers == "1" or not sys.platform.startswith("linux"):
        return False
    return workers == "2" or len(os.sched_getaffinity(0)) > 1


def both(here: Callable[[], T], there: Callable[[], bytes]) -> tuple[T, bytes | None]:
    """Runs ``there`` in a forked helper while ``here`` runs in this process.

    Returns ``here()`` and the bytes ``there()`` returned, or None if the
    helper failed (an exception, a signal, a short write). An exception in
    ``here`` kills the helper and propagates.

    The helper leaves its answer in a file in memory, not in a pipe, and says
    it is whole by closing a pipe: it need not wait for this process to read
    it. A first add's 8 MB answer took 20-40 ms to cross a pipe, once this
    process came to read it; read from memory, 8-10 ms.
    """
    import ctypes  # before the fork: the helper should not have to import anything

    libc = ctypes.CDLL(None)
    answer = os.memfd_create("datarepo-helper", os.MFD_CLOEXEC)
    done_r, done_w = os.pipe()  # closed by the helper when its answer is whole, or by its death
    parent = os.getpid()
    try:
        try:
            pid = os.fork()
        except OSError:
            os.close(done_w)
            raise
        if pid == 0:  # the helper: never returns into the caller's stack
            code = 1
            try:
                os.close(done_r)
                _die_with(parent, libc)
                payload = there()
                with os.fdopen(answer, "wb") as out:
                    out.write(len(payload).to_bytes(8, "little"))
                    out.write(payload)
                os.close(done_w)
                code = 0
            finally:
                os._exit(code)
        os.close(done_w)
        try:
            mine = here()
            os.read(done_r, 1)  # (nothing comes: it returns once the helper closed its end)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        raw = os.pread(answer, os.fstat(answer).st_size, 0)
        os.waitpid(pid, 0)
    finally:
        os.close(answer)
        os.close(done_r)
    if len(raw) < 8 or int.from_bytes(raw[:8], "little") != len(raw) - 8:
        return mine, None
    return mine, raw[8:]


def _die_with(parent: int, libc: Any) -> None:
    """Makes the kernel kill this helper when its parent dies (a killed ``add`` leaves no worker)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


_PR_SET_PDEATHSIG = 1
