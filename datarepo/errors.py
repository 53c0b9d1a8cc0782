"""The exceptions datarepo raises. Every one derives from :class:`DataRepoError`."""

from __future__ import annotations


class DataRepoError(Exception):
    """Base of every error datarepo raises on purpose; the CLI prints it as one line."""


class NotARepositoryError(DataRepoError):
    """No ``.datarepo`` directory was found at or above the given path."""

    def __init__(self, path: str) -> None:
        super().__init__(f"not a datarepo repository (or any parent up to /): {path}")
        self.path = path


class ObjectNotFoundError(DataRepoError, KeyError):
    """An object, shard or datum is missing from the store."""

    def __init__(self, kind: str, oid: str) -> None:
        super().__init__(f"{kind} not found: {oid}")
        self.kind = kind
        self.oid = oid

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class CorruptObjectError(DataRepoError):
    """Stored bytes do not decode, or do not hash to the name they are stored under."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"corrupt object {name}: {reason}")
        self.name = name
        self.reason = reason


class BadRevisionError(DataRepoError, ValueError):
    """A revision string names no commit."""

    def __init__(self, rev: str, reason: str = "unknown revision") -> None:
        super().__init__(f"{reason}: {rev!r}")
        self.rev = rev
        self.reason = reason


class RefConflictError(DataRepoError):
    """A compare-and-swap ref update found another value than the expected one."""

    def __init__(self, ref: str, expected: str | None, actual: str | None) -> None:
        super().__init__(
            f"ref {ref} moved: expected {expected or '(none)'}, found {actual or '(none)'}"
        )
        self.ref = ref
        self.expected = expected
        self.actual = actual


class LockedError(DataRepoError):
    """Another process holds the repository's writer lock."""


class ReadOnlyError(DataRepoError):
    """The repository may be read here, not written: another user's, a read-only mount."""


class ClosedError(DataRepoError):
    """A repository's cache was used after ``close()`` (of the ``Repo``, or of its ``with``
    block), from another thread while it closed, or by what held on to it."""


class InvalidInputError(DataRepoError, ValueError):
    """The user's input (a path, a name, a file) cannot be taken."""


class DirtyWorktreeError(DataRepoError):
    """An operation would overwrite uncommitted changes."""


class UnsafePathError(InvalidInputError):
    """A work-tree path lies beyond a symbolic link: writing or deleting it would reach
    outside the work tree (git: "beyond a symbolic link")."""

    def __init__(self, path: str, linked: str) -> None:
        super().__init__(f"refusing to touch {path}: it is beyond the symbolic link {linked}")
        self.path = path
        self.linked = linked


class ExecutorUnavailableError(DataRepoError):
    """The executor asked for cannot run here: Ray is not installed, or its cluster cannot
    be reached."""


class PipelineError(DataRepoError):
    """A pipeline cannot be loaded or run as declared (docs/pipelines.md)."""


class TransformError(DataRepoError):
    """What a transform did with one datum cannot be taken: a wrong return value, a bad
    member name, an output key outside the prefix, a command that failed or wrote nothing."""


class DatumTimeout(TransformError):
    """A transform took longer than its pipeline's per-datum ``timeout``."""


class Stopped(BaseException):
    """Raised in a process asked to stop (SIGTERM: a worker its parent stops, a command a
    job scheduler ends): not an error of the work, so that the code running it unwinds
    (``finally``, ``with``: a shard being written is removed) and the process exits."""


def raise_stopped(signum: int, frame: object) -> None:
    """The SIGTERM handler of a process that unwinds when asked to stop."""
    raise Stopped
