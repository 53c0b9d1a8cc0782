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

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from datarepo.errors import Stopped

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
    """Whether ``error`` must end the run: a Ctrl-C of this process, or a SIGTERM (of the
    command, or of a worker its parent stops), not something user code raised."""
    return isinstance(error, Stopped) or (isinstance(error, KeyboardInterrupt) and _signalled[0])


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


# Characters that would break a line or a terminal: control characters (C0, DEL, C1),
# lone surrogates (bytes that were not UTF-8), and the invisible marks that reorder text.
_UNCLEAN = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` as one clean line of at most ``limit`` characters: runs of whitespace
    (newlines too) become one space, other control characters ``\\xNN`` escapes."""
    text = " ".join(text[: limit * 4].split())
    return _UNCLEAN.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", text)[:limit]


def class_of(error: BaseException) -> str:
    """The name of an error's class, as one clean line (a class may be named anything)."""
    return one_line(str(type(error).__name__), 200) or "Exception"


def message_of(error: BaseException) -> str:
    """The message of an error user code raised, as one clean line of at most 1000
    characters (one whose ``__str__`` itself raises says so)."""
    try:
        return one_line(str(error))
    except BaseException as e:  # (a __str__ that raises SystemExit too)
        if stops_run(e):
            raise
        return f"(its message cannot be shown: {class_of(e)})"


def described(error: BaseException) -> str:
    """``Class: message`` of an error, on one line."""
    text = message_of(error)
    return f"{class_of(error)}: {text}" if text else class_of(error)
