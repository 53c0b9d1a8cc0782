"""``config.toml``: read with tomllib, written by a small writer for flat tables."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from datarepo.errors import InvalidInputError
from datarepo.fsutil import atomic_write

DEFAULT_SHARD_SIZE = 256 << 20
GROUPINGS = ("wds", "file")


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
            "format": 1,
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
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            core, gc = data.get("core", {}), data.get("gc", {})
            cfg = cls(
                bare=bool(core.get("bare", False)),
                grouping=str(core.get("grouping", "wds")),
                shard_size=int(core.get("shard_size", DEFAULT_SHARD_SIZE)),
                pipelines_dir=str(core.get("pipelines_dir", "pipelines")),
                sparse=tuple(str(p) for p in core.get("sparse", ())),
                reflog_expire_days=int(gc.get("reflog_expire_days", 30)),
                user={str(k): str(v) for k, v in data.get("user", {}).items()},
            )
        except (OSError, tomllib.TOMLDecodeError, ValueError, TypeError, AttributeError) as e:
            raise InvalidInputError(f"bad config {path}: {e}") from None
        return cfg.validated()

    def validated(self) -> Config:
        if self.grouping not in GROUPINGS:
            raise InvalidInputError(f"grouping must be one of {', '.join(GROUPINGS)}, not {self.grouping!r}")
        if self.shard_size < 1024:
            raise InvalidInputError(f"shard_size must be at least 1024 bytes, not {self.shard_size}")
        return self


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
