"""What user code raises, told apart from a Ctrl-C of the run.

A pipelines module or a transform may raise anything: ``SystemExit`` (a ``sys.exit()``
left in a script), ``KeyboardInterrupt``, ``GeneratorExit``, any other ``BaseException``.
Each is that module's or that datum's failure, reported like an ``Exception``. Only a real
Ctrl-C of the process stops the run: inside :func:`interrupts`, SIGINT's handler notes that
it came before raising ``KeyboardInterrupt`` as Python's own does, and :func:`stops_run`
tells the two apart. (A worker process ignores SIGINT: there, every ``KeyboardInterrupt``
is user code's.)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

_signalled = [False]


@contextmanager
def interrupts() -> Iterator[None]:
    """Within the block, a Ctrl-C (SIGINT) of this process is noted before it raises
    ``KeyboardInterrupt``. Where SIGINT is not Python's default (ignored in a worker, or
    the block already inside another), nothing changes."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _signalled[0] = False
    old = signal.signal(signal.SIGINT, _note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _note(signum: int, frame: Any) -> None:
    _signalled[0] = True
    raise KeyboardInterrupt


def stops_run(error: BaseException) -> bool:
    """Whether ``error`` must end the run: a Ctrl-C of this process, not something user
    code raised."""
    return isinstance(error, KeyboardInterrupt) and _signalled[0]


def line_in(error: BaseException, filename: str) -> int | None:
    """The line of ``filename`` that the innermost frame of ``error``'s traceback in that
    file was running, if any."""
    line = None
    tb: TracebackType | None = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def message_of(error: BaseException) -> str:
    """The message of an error user code raised, at most 1000 characters (one whose
    ``__str__`` itself raises says so)."""
    try:
        return str(error)[:1000]
    except BaseException as e:  # (a __str__ that raises SystemExit too)
        if stops_run(e):
            raise
        return f"(its message cannot be shown: {type(e).__name__})"


def described(error: BaseException) -> str:
    """``Class: message`` of an error, on one line."""
    text = " ".join(message_of(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
