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


def open(path: str | Path = ".") -> Repo:
    """Opens the repository at or above a folder (docs/api.md).

    Args:
        path: a work tree (or a folder in it), or a bare repository.

    Returns:
        A :class:`~datarepo.repo.Repo`: a context manager (``with datarepo.open(p) as
        repo:`` closes its cache), which may be used again in a forked child process.

    Raises:
        NotARepositoryError: no repository at or above ``path``.
    """
    from datarepo.repo import Repo

    return Repo.open(path)


def __getattr__(name: str) -> object:
    """``datarepo.pipeline`` (the decorator, docs/pipelines.md), imported when first used."""
    if name == "pipeline":
        import importlib

        return importlib.import_module("datarepo.pipeline")
    raise AttributeError(f"module 'datarepo' has no attribute {name!r}")
