"""The kinds of value the command line's options take: one parser each, shared by every
option of that kind, so that a bad value is one line naming the option and the value
(``Error: Invalid value for '--interval': 'nan' is not ...``), whatever the command.

Numbers are ASCII (``٣`` is not 3, as git and ``DATAREPO_WORKERS`` have it), finite and
within what the option can use; a path is never empty (an empty path names nothing, not
the current folder)."""

from __future__ import annotations

import math
import re
from typing import Any

import click

MAX_SECONDS = 365 * 86400.0  # the longest an option waits (a spout to commit, --watch between looks)
MAX_INT = (1 << 63) - 1  # what a count or a size may be at most (a TOML integer, a C long)

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def _number(text: str) -> float | None:
    """``text`` as a finite number, or None (``nan``, ``inf``, ``1e309``, ``٣``, ``0x10``)."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


class Count(click.ParamType):
    """A whole number from ``least`` to ``most`` (``-n``, ``--commit-every``, ``--epoch``)."""

    name = "integer"

    def __init__(self, least: int | None = None, most: int = MAX_INT) -> None:
        self.least, self.most = least, most

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?\d+", text, re.ASCII):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        # (int() refuses a string of over 4,300 digits: one of over 19 is out of range anyway)
        number = int(text) if len(text.lstrip("+-").lstrip("0")) <= len(str(MAX_INT)) else None
        if number is None or (self.least is not None and number < self.least) or number > self.most:
            bounds = f"up to {self.most}" if self.least is None else f"from {self.least} to {self.most}"
            self.fail(f"{value!r} is not a whole number {bounds}", param, ctx)
        return number


class Workers(Count):
    """A number of worker processes: 1 to the most one executor starts (as ``DATAREPO_WORKERS``)."""

    def __init__(self) -> None:
        super().__init__(1)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from datarepo.executor import MAX_WORKERS  # (here: it imports the config, which --help need not)

        self.most = MAX_WORKERS
        return super().convert(value, param, ctx)


class Seconds(click.ParamType):
    """A number of seconds, more than ``least`` (or from ``least``, with ``closed``) and at
    most a year: a sleep of ``nan`` or ``inf`` is an error of the OS, not a wait."""

    name = "seconds"

    def __init__(self, least: float = 0.0, closed: bool = False) -> None:
        self.least, self.closed = least, closed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = value if isinstance(value, float) else _number(str(value))
        low_ok = number is not None and (number >= self.least if self.closed else number > self.least)
        if number is None or not low_ok or number > MAX_SECONDS:
            low = "from" if self.closed else "more than"
            self.fail(f"{value!r} is not a number of seconds {low} {self.least:g}, up to {MAX_SECONDS:.0f} (a year)", param, ctx)
        return number


class Age(click.ParamType):
    """``now``, or an age in seconds with an optional unit: ``90``, ``30m``, ``2h``, ``14d``, ``1w``."""

    name = "age"
    _UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text == "now":
            return 0.0
        scale = self._UNITS.get(text[-1:])
        number = _number(text[:-1] if scale else text)
        age = None if number is None else number * (scale or 1)
        if age is None or not 0 <= age < math.inf:
            self.fail(f"{value!r} is not 'now' or an age such as 90, 30m, 2h, 14d", param, ctx)
        return age


class Size(click.ParamType):
    """A number of bytes, with an optional unit: ``8192``, ``64K``, ``256M``, ``1.5G``."""

    name = "size"
    _UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().removesuffix("ib").removesuffix("b")
        scale = self._UNITS.get(text[-1:])
        number = _number(text[:-1] if scale else text)
        if number is None or (scale is None and not number.is_integer()):
            self.fail(f"{value!r} is not a size such as 8192, 64K, 256M, 1G", param, ctx)
        size = int(number * (scale or 1))
        if not 1 <= size <= MAX_INT:
            self.fail(f"{value!r}: a size is a number of bytes from 1 to {MAX_INT}", param, ctx)
        return size


class NonEmptyPath(click.Path):
    """click's Path, but an empty path is an error: it names nothing (``''`` is not ``.``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "" or value == b"":
            self.fail("an empty path names nothing", param, ctx)
        return super().convert(value, param, ctx)


class NonEmpty(click.ParamType):
    """A text that names something (a Ray address, a URL): empty, it would be taken as not
    given, or as the current folder."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if value == "":
            self.fail("an empty value names nothing (leave the option out for the default)", param, ctx)
        return str(value)
