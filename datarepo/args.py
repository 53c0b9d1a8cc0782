"""Checks of what a caller hands the Python API (docs/api.md: ``datarepo.open``, a
``Repo``'s, a tree's, a manifest's and a writer's methods, ``ShardReader``; docs/loader.md:
``DatumDataset``, ``DeviceLoader``, ``from_run``, ``record_run``): a wrong type or value is
an :class:`InvalidInputError` whose message starts with the argument's name, raised as
the call is made, before anything is written, never later in a worker or from deep
inside, and never silently reinterpreted (a ``str`` taken as a list of keys,
``batch_size=0`` as no batch size). Each check costs one call, not one a datum: a column
of many values is checked in C (joined, or mapped). Neither torch nor numpy is needed
here: run records are checked by the ``runs`` command too."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from itertools import repeat
from numbers import Integral
from pathlib import Path
from typing import Any

from datarepo.errors import InvalidInputError
from datarepo.hashing import OID_LEN, is_hex, is_oid
from datarepo.keys import is_utf8

MAX_NESTING = 100  # JSON data nested deeper is refused (json's own parsers stop near 1,000)


def integer(name: str, value: Any, low: int = 0, high: int | None = None) -> int:
    """An int (numpy's too, never a bool) with ``low <= value`` and ``value < high``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidInputError(f"{name} must be an int, not {shown(value)}")
    value = int(value)
    if value < low or (high is not None and value >= high):
        bound = f"from {low} to {high - 1}" if high is not None else f"of {low} or more"
        raise InvalidInputError(f"{name} must be an int {bound}, not {value}")
    return value


def optional_integer(name: str, value: Any, low: int = 0, high: int | None = None) -> int | None:
    return None if value is None else integer(name, value, low, high)


def flag(name: str, value: Any) -> bool:
    """True or False, nothing else (``0``, ``"no"`` and ``None`` are not taken for one)."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True or False, not {shown(value)}")
    return value


def text(name: str, value: Any, empty: bool = True) -> str:
    """A str that UTF-8 can encode (what a run record stores must be)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a str, not {shown(value)}")
    if not empty and not value:
        raise InvalidInputError(f"{name} must not be empty")
    _utf8(name, value)
    return str(value)


def folder(name: str, value: Any, what: str = "a str or a Path") -> Path:
    """A path given as a ``str`` or an ``os.PathLike`` (a ``Path``), not empty and not
    ``bytes``. (A name that is not UTF-8 is a path all the same: ``os.fsdecode`` gives it
    as a str.)"""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be {what}, not {shown(value)}")
    if not value:
        raise InvalidInputError(f"{name} must not be empty ('.' is the current folder)")
    return Path(value)


def oid(name: str, value: Any) -> str:
    """An object id: a str of 32 lower-case hex digits (a datum's, a commit's, a shard's)."""
    if not isinstance(value, str) or not is_oid(value):
        raise InvalidInputError(f"{name} must be an id of {OID_LEN} hex digits (a str), not {shown(value)}")
    return value


def instance(name: str, value: Any, kinds: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is one of ``kinds`` (named ``what`` in the message)."""
    if not isinstance(value, kinds):
        raise InvalidInputError(f"{name} must be {what}, not {shown(value)}")
    return value


def texts(name: str, value: Any, utf8: bool = False) -> list[str]:
    """A list (or any iterable but a str, bytes or a mapping) of strs (that UTF-8 can
    encode, with ``utf8``: what a run record stores must), as a list; checked in C (a
    million keys are many)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidInputError(f"{name} must be a list of str, not {shown(value)}")
    values = list(value)
    try:
        joined = "\0".join(values)
    except TypeError:
        bad = next(v for v in values if not isinstance(v, str))
        raise InvalidInputError(f"{name} must be a list of str, and {shown(bad)} is not one") from None
    if utf8:
        _utf8(name, joined)
    return values


def oids(name: str, values: list[Any]) -> None:
    """Checks that each of ``values`` is an object id (:func:`oid`), in C: joined."""
    if not (all(map(isinstance, values, repeat(str))) and set(map(len, values)) <= {OID_LEN} and is_hex("".join(values))):
        oid(name, next(v for v in values if not (isinstance(v, str) and is_oid(v))))


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(f"{name} must be {' or '.join(map(repr, choices))}, not {shown(value)}")
    return value


def function(name: str, value: Any) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise InvalidInputError(f"{name} must be a function or None, not {shown(value)}")
    return value


def key_list(value: Any) -> list[str] | None:
    """The keys to read, sorted: a list (or any iterable but a str) of distinct strs."""
    if value is None:
        return None
    keys = texts("keys", value, utf8=True)
    out = sorted(set(keys))
    if len(out) != len(keys):
        twice = next(k for k, n in zip(sorted(keys), sorted(keys)[1:]) if k == n)
        raise InvalidInputError(f"keys names {twice!r} more than once")
    return out


STATE_FIELDS = ("format", "epoch", "position", "plan", "world_size")


def state(value: Any, format_: int, count: int, epochs: int) -> tuple[int, int, str]:
    """The epoch, position and plan of a ``DatumDataset`` state, one that ``state_dict``
    could have made (of a selection of ``count`` datums): its five fields exactly, each of
    its type (ints may be numpy's, never a bool, a float, text or a tensor: a state
    changed on its way is refused, not read as another position)."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"state must be a DatumDataset state (a dict), not {shown(value)}")
    if set(value) != set(STATE_FIELDS):
        missing, extra = sorted(set(STATE_FIELDS) - set(value)), sorted(set(value) - set(STATE_FIELDS), key=repr)
        why = f"lacks {', '.join(missing)}" if missing else f"has {', '.join(map(repr, extra))[:80]}"
        raise InvalidInputError(f"not a DatumDataset state: a state has the fields {', '.join(STATE_FIELDS)}; this one {why}")
    try:
        if integer("format", value["format"]) != format_:
            raise InvalidInputError(f"format {value['format']} is not {format_}")
        epoch = integer("epoch", value["epoch"], 0, epochs)
        position = integer("position", value["position"], 0, count + 1)
        integer("world_size", value["world_size"], 1, 1 << 63)
        plan = text("plan", value["plan"])
    except InvalidInputError as e:
        raise InvalidInputError(f"not a DatumDataset state: {e}") from None
    return epoch, position, plan


def json_data(name: str, value: Any) -> None:
    """Checks that ``value`` is strict JSON data: dicts with str keys, lists (or tuples),
    strs UTF-8 can encode, ints of up to 128 bits, finite floats, bools and None, without cycles. Python's
    ``json`` would write ``NaN`` or ``Infinity`` (which no other JSON reader takes), turn
    keys into strs, and loop on a cycle.

    Raises:
        InvalidInputError: ``"{name} must be JSON data (why)"``.
    """
    why = not_json(value, name)
    if why is not None:
        raise InvalidInputError(f"{name} must be JSON data ({why})")


def not_json(value: Any, where: str, depth: int = 0) -> str | None:
    """Why ``value`` is not JSON data (naming where in it), or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):  # (JSON readers lose the digits of large ints; Python's own stop at 4,300)
        return None if -(1 << 128) < value < 1 << 128 else f"{where} is an int of more than 128 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}, which JSON has no number for"
    if isinstance(value, str):
        return None if is_utf8(value) else f"{where} is not valid UTF-8"
    if depth >= MAX_NESTING and isinstance(value, (dict, list, tuple)):
        return f"{where} is nested more than {MAX_NESTING} deep (or holds itself)"
    if isinstance(value, (list, tuple)):
        return next((w for i, v in enumerate(value) if (w := not_json(v, f"{where}[{i}]", depth + 1))), None)
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or not is_utf8(k):
                return f"{where} has the key {k!r}: a JSON object's keys are UTF-8 strings"
            if (w := not_json(v, f"{where}[{k!r}]", depth + 1)) is not None:
                return w
        return None
    return f"{where} is a {type(value).__name__}"


def _utf8(name: str, value: str) -> None:
    if not is_utf8(value):
        raise InvalidInputError(f"{name} is not valid UTF-8: {value[:80]!r}")


def shown(value: Any) -> str:
    """A value as an error names it: its repr where short, else its type."""
    shown = repr(value)
    return shown if len(shown) <= 60 else f"a {type(value).__name__}"
