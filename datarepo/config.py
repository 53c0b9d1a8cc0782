"""``config.toml``: read with tomllib, written by a small writer for flat tables."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from datarepo.errors import InvalidInputError
from datarepo.fsutil import atomic_write
from datarepo.keys import GROUPINGS, check_key

DEFAULT_SHARD_SIZE = 256 << 20
FORMAT = 1  # the repository format this code reads and writes (docs/format.md)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # a commit's time (UTC)


@dataclass(frozen=True)
class Config:
    """Repository settings."""

    bare: bool = False
    grouping: str = "wds"
    shard_size: int = DEFAULT_SHARD_SIZE
    pipelines_dir: str = "pipelines"
    sparse: tuple[str, ...] = ()
    reflog_expire_days: int = 30
    user: dict[str, str] = field(default_factory=dict)

    def is_sparse(self, key: str) -> bool:
        """True for keys under an ingested prefix that the work tree does not hold."""
        return any(key.startswith(p) for p in self.sparse)

    def with_sparse(self, prefix: str) -> Config:
        return replace(self, sparse=tuple(sorted({*self.sparse, prefix})))

    def to_toml(self) -> str:
        core = {
            "format": FORMAT,
            "bare": self.bare,
            "grouping": self.grouping,
            "shard_size": self.shard_size,
            "pipelines_dir": self.pipelines_dir,
            "sparse": list(self.sparse),
        }
        tables = {"core": core, "gc": {"reflog_expire_days": self.reflog_expire_days}}
        if self.user:
            tables["user"] = dict(self.user)
        return "".join(f"[{name}]\n" + "".join(f"{k} = {_value(v)}\n" for k, v in t.items()) + "\n" for name, t in tables.items())

    def save(self, path: Path) -> None:
        atomic_write(path, self.to_toml().encode(), mode=0o644)

    @classmethod
    def load(cls, path: Path) -> Config:
        """Reads ``config.toml``; InvalidInputError names the file and what is wrong in it."""
        try:
            data = tomllib.loads(path.read_bytes().decode("utf-8"))
        except OSError as e:
            raise InvalidInputError(f"cannot read {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise InvalidInputError(f"bad config {path}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as e:
            raise InvalidInputError(f"bad config {path}: {e}") from None
        read = _Reader(path, data)
        if (version := read("core", "format", int, FORMAT)) != FORMAT:
            raise InvalidInputError(f"bad config {path}: repository format {version} is not supported (this datarepo reads format {FORMAT})")
        return cls(
            bare=read("core", "bare", bool, False),
            grouping=read("core", "grouping", str, "wds"),
            shard_size=read("core", "shard_size", int, DEFAULT_SHARD_SIZE),
            pipelines_dir=read("core", "pipelines_dir", str, "pipelines"),
            sparse=tuple(read("core", "sparse", list, [], of=str)),
            reflog_expire_days=read("gc", "reflog_expire_days", int, 30),
            user=dict(read("user", None, dict, {}, of=str)),
        ).validated(path)

    def validated(self, path: Path | None = None) -> Config:
        where = f"bad config {path}: " if path else ""
        if self.grouping not in GROUPINGS:
            raise InvalidInputError(f"{where}grouping must be one of {', '.join(GROUPINGS)}, not {self.grouping!r}")
        if self.shard_size < 1024:
            raise InvalidInputError(f"{where}shard_size must be at least 1024 bytes, not {self.shard_size}")
        if self.reflog_expire_days < 0:
            raise InvalidInputError(f"{where}reflog_expire_days must not be negative, not {self.reflog_expire_days}")
        folder = self.pipelines_dir.replace("\\", "/")
        if not folder or folder.startswith("/") or ".." in folder.split("/") or ":" in folder:
            raise InvalidInputError(
                f"{where}pipelines_dir must be a folder inside the work tree, not {self.pipelines_dir!r} (use --pipelines DIR for another)"
            )
        for prefix in self.sparse:
            if not prefix.endswith("/"):
                raise InvalidInputError(f"{where}a sparse prefix ends with '/', not {prefix!r}")
            try:
                check_key(prefix[:-1])
            except InvalidInputError as e:
                raise InvalidInputError(f"{where}sparse prefix {prefix!r}: {e}") from None
        return self


class _Reader:
    """Takes settings out of a parsed config.toml, each of the type it must have."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    def __call__(self, table: str, name: str | None, kind: type, default: Any, of: type | None = None) -> Any:
        where = f"{table}.{name}" if name else f"[{table}]"
        section = self.data.get(table, {})
        if not isinstance(section, dict):
            raise InvalidInputError(f"bad config {self.path}: [{table}] must be a table")
        value = section if name is None else section.get(name, default)
        # (bool is an int in Python; a setting that takes a number does not take true)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidInputError(f"bad config {self.path}: {where} must be {_KINDS[kind]}, not {value!r:.40}")
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        if of is not None and not all(isinstance(v, of) for v in items):
            raise InvalidInputError(f"bad config {self.path}: {where} must hold only {_KINDS[of].removeprefix('a ')}s")
        return value


_KINDS = {bool: "true or false", str: "a string", int: "a whole number", list: "a list", dict: "a table"}


def env_seconds(name: str, default: float) -> float:
    """A number of seconds from the environment variable ``name`` (unset or empty: ``default``)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text) if text.isascii() else -1.0  # (float takes '٣' and '１': a count in ASCII, as the options)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:
        raise InvalidInputError(f"{name} must be a number of seconds (0 or more), not {text[:40]!r}")
    return value


def env_count(name: str, default: int, least: int = 0, most: int = 1 << 62) -> int:
    """A whole number from ``least`` to ``most`` from the environment variable ``name``
    (unset or empty: ``default``)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    # (int() refuses a string of over 4,300 digits: one longer than ``most`` is out of range anyway)
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > len(str(most)) or not least <= int(text) <= most:
        raise InvalidInputError(f"{name} must be a whole number from {least} to {most}, not {text[:40]!r}")
    return int(text)


def env_time(name: str = "DATAREPO_TIME") -> str | None:
    """A commit time from the environment (``2024-01-02T03:04:05Z``, UTC), or None if unset."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        datetime.strptime(text, TIME_FORMAT)
    except ValueError:
        raise InvalidInputError(f"{name} must be a UTC time like 2024-01-02T03:04:05Z, not {text[:40]!r}") from None
    return text


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    # A TOML basic string: a quote and a backslash escaped, and every control character
    # (a key may hold a newline: a sparse prefix of one must not break the file).
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c) for c in str(v)) + '"'


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
