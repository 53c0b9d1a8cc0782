"""datarepo: a versioned repository of datums stored in WebDataset shards.

``datarepo.open(path)`` opens a repository; see docs/api.md. Nothing is imported here
until it is used, so that the ``datarepo`` command starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from datarepo.repo import Repo

__version__ = "0.1.0"


def open(path: str | Path = ".", cache: str | Path | None = None) -> Repo:
    """Opens the repository at or above a folder, or a remote's by its URL (docs/api.md).

    Args:
        path: a work tree (or a folder in it), a bare repository, or the URL of a
            remote (``s3://bucket/cats``, ``file:///mnt/cats``: docs/remotes.md), opened
            read-only without cloning it.
        cache: for a URL, a local folder that keeps where each datum lies and the
            shards read, for the next open (default: a temporary one, removed when
            this process ends).

    Returns:
        A :class:`~datarepo.repo.Repo`: a context manager (``with datarepo.open(p) as
        repo:`` closes its cache), which may be used again in a forked child process.

    Raises:
        NotARepositoryError: no repository at or above ``path``.
        RemoteError: a URL that cannot be reached, or holds no repository.
        InvalidInputError: ``path`` or ``cache`` is not a ``str`` or a ``Path`` (or is
            empty), or ``cache`` is given with a folder.
    """
    from datarepo import args

    if cache is not None:
        cache = str(args.folder("cache", cache))
    if isinstance(path, str) and "://" in path:
        from datarepo.remote_repo import RemoteRepo

        return RemoteRepo(path, cache)
    from datarepo.repo import Repo

    path = args.folder("path", path)
    if cache is not None:
        from datarepo.errors import InvalidInputError

        raise InvalidInputError("cache is for a repository opened by its URL")
    return Repo.open(path)


def __getattr__(name: str) -> object:
    """``datarepo.pipeline`` (the decorator, docs/pipelines.md), imported when first used."""
    if name == "pipeline":
        import importlib

        return importlib.import_module("datarepo.pipeline")
    raise AttributeError(f"module 'datarepo' has no attribute {name!r}")
