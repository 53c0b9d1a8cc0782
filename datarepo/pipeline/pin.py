"""What a run holds while it computes: the run lock and the pin (docs/pipelines.md, "Guarantees").

A run computes without the writer lock (it takes that lock only to commit), so two things
keep it safe from the other processes of the repository:

* the **run lock** (an ``flock`` on ``run.lock`` in the repository's folder): one run at
  a time. Another ``datarepo run`` waits for it up to ``DATAREPO_LOCK_TIMEOUT`` seconds,
  then stops with one line. The kernel releases it when the run's process dies;
* the **pin** (``run.pin``, JSON, written whole by rename before the run writes
  anything): the time the run began and the commits it reads. While the run lock is
  held, ``gc`` and ``repack`` treat the pinned commits as roots and leave alone every
  object, shard and temporary file written since the run began: the shards and journals
  the run's batches publish before its commit names them. A pin whose run lock nobody
  holds is a dead run's, and counts for nothing.

``gc`` lists the files it may delete *before* it reads the pin: a run whose pin it did
not find writes only files written after that listing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from datarepo.config import env_seconds
from datarepo.errors import CorruptObjectError, LockedError, PipelineError
from datarepo.fsutil import WriterLock, atomic_write, remove
from datarepo.hashing import is_oid

LOCK, PIN = "run.lock", "run.pin"
# File times come from a coarse clock that may lag time.time() by a tick: a pin begins
# this much earlier than its run, so that nothing the run writes is older than it.
SLACK = 1.0


class RunInProgressError(PipelineError):
    """Another run of the repository's pipelines holds the run lock."""


@dataclass(frozen=True)
class Pinned:
    """A live run's pin: files written since ``since`` are its, ``commits`` are roots."""

    since: float
    commits: tuple[str, ...] = ()

    def spares(self, mtime: float) -> bool:
        return mtime >= self.since


class RunPin:
    """``with RunPin(dotdir, run_id) as pin:`` the run lock and the pin of one run."""

    def __init__(self, dotdir: Path, run_id: str) -> None:
        self.dotdir, self.run_id = dotdir, run_id
        self.lock = WriterLock(dotdir / LOCK, timeout=env_seconds("DATAREPO_LOCK_TIMEOUT", 60))
        self.since = 0.0
        self.commits: list[str] = []

    def __enter__(self) -> Self:
        try:
            self.lock.acquire()
        except LockedError:
            raise RunInProgressError(
                f"another run of this repository's pipelines is in progress; gave up waiting after "
                f"{self.lock.timeout:g}s (DATAREPO_LOCK_TIMEOUT): run again when it has ended") from None
        self.since = time.time() - SLACK
        return self

    def __exit__(self, *exc: object) -> None:
        try:  # (its own, or one a killed run left)
            remove(self.dotdir / PIN)
        finally:
            self.lock.release()

    def add(self, commits: Iterable[str | None]) -> None:
        """Pins commits the run reads, and so everything written since the run began: the
        pin is written before the run writes anything (a run with nothing to compute
        writes neither)."""
        new = [c for c in commits if c is not None and c not in self.commits]
        if new:
            self.commits.extend(new)
            self._write()

    def _write(self) -> None:
        data = {"run": self.run_id, "since": self.since, "commits": self.commits}
        # Not fsync'ed: a pin counts only while its run's process lives.
        atomic_write(self.dotdir / PIN, json.dumps(data).encode(), mode=0o644, durable=False)


def live_pin(dotdir: Path) -> Pinned | None:
    """The pin of the run in progress, if one is (its run lock held; a pin left by a killed
    run counts for nothing, and the next run replaces it). For ``gc`` and ``repack``."""
    probe = WriterLock(dotdir / LOCK, timeout=0)
    try:
        probe.acquire()
    except LockedError:
        return _read(dotdir / PIN)
    probe.release()
    return None


def _read(path: Path) -> Pinned | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:  # the run has the lock and has not written its pin yet: it writes nothing before
        return None
    except ValueError:
        data = None
    since, commits = (data.get("since"), data.get("commits")) if isinstance(data, dict) else (None, None)
    good = isinstance(since, (int, float)) and isinstance(commits, list)
    if not good or not all(isinstance(c, str) and is_oid(c) for c in commits):
        raise CorruptObjectError(path.name, "not a run pin (delete it once no datarepo run is in progress)")
    return Pinned(float(since), tuple(commits))
