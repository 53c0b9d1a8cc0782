"""Incremental datum pipelines (docs/pipelines.md).

``from datarepo import pipeline`` gives this module, which is also the decorator that
declares a Python transform in a module under ``pipelines/``::

    from datarepo import pipeline

    @pipeline(input="raw/**", output="thumbs/", version="1", params={"size": 64})
    def thumbnail(datum, size):
        return {"jpg": shrink(datum["jpg"], size), "cls": datum["cls"]}

The rest of the package: :mod:`~datarepo.pipeline.spec` (declarations, loading),
:mod:`~datarepo.pipeline.dag`, :mod:`~datarepo.pipeline.plan` (what a run must do),
:mod:`~datarepo.pipeline.worker` (the batches any executor runs),
:mod:`~datarepo.pipeline.lineage` (lineage objects),
:mod:`~datarepo.pipeline.run` (the driver), :mod:`~datarepo.pipeline.pin` (what a run
holds while it computes) and :mod:`~datarepo.pipeline.rebase` (committing on a branch
that moved meanwhile).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["Drop", "Source", "cross", "group", "join", "pipeline", "source", "union"]


def __getattr__(name: str) -> Any:
    """The declarations of :mod:`~datarepo.pipeline.spec`, imported when first asked for: a
    command that only reads lineage (``datarepo lineage``) never imports them."""
    if name in __all__:
        from datarepo.pipeline import spec

        return getattr(spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pipeline(
    input: Any,
    output: str,
    *,
    name: str | None = None,
    version: str = "",
    params: dict[str, Any] | None = None,
    workers: int | None = None,
    max_failures: int | None = None,
    retries: int = 0,
    timeout: float = 600.0,
    setup: Callable[[], dict[str, Any]] | None = None,
    depends: list[str] | tuple[str, ...] = (),
    batch_size: int | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declares the decorated function a pipeline's transform.

    Args:
        input: a key glob (``"raw/**"``), a :func:`source` at a revision, or a
            combination (:func:`cross`, :func:`join`, :func:`union`, :func:`group`).
        output: the prefix every output key lies under (ends with ``/``).
        name: the pipeline's name (default: the function's).
        version: bump it to recompute everything when something the fingerprint
            cannot see changed.
        params: keyword arguments given to the transform; part of the fingerprint.
        workers: processes to run it on (default: the ``--workers`` of the run).
        max_failures: stop, committing nothing, when more datums than this fail.
        retries: times a failing datum is tried again in the same run.
        timeout: seconds one datum may take.
        setup: called once per worker process; the mapping it returns is given to
            the transform as more keyword arguments (a model loaded once).
        depends: files (relative to the module) and installed packages whose
            contents or versions are part of the fingerprint.
        batch_size: datums a batch holds (default: a share of the work).

    The transform takes the datum (``{ext: bytes, "__key__": key}``; a list of them for
    ``cross``, ``join`` and ``group``) and the params, and returns a datum (``{ext:
    bytes or str}``), a list of ``(suffix, datum)`` (outputs at ``<key>/<suffix>``),
    ``None`` or :class:`Drop` (filtered out).

    Raises:
        PipelineError: (as the function is decorated) an option of the wrong type or
            value, or what is decorated is not a function: ``"pipeline 'NAME': FIELD: why"``.
    """

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        from datarepo.errors import PipelineError
        from datarepo.pipeline.spec import check_declaration

        if not callable(fn) or not hasattr(fn, "__name__"):
            raise PipelineError(f"@pipeline(...) decorates a function, not {fn!r:.80}")
        options = {
            "input": input, "output": output, "name": fn.__name__ if name is None else name, "version": version,
            "params": {} if params is None else params, "workers": workers, "max_failures": max_failures,
            "retries": retries, "timeout": timeout, "setup": setup, "depends": depends,
            "batch_size": batch_size,
        }
        check_declaration(options)
        fn.__datarepo_pipeline__ = options  # type: ignore[attr-defined]
        return fn

    return mark


class _CallableModule(types.ModuleType):
    """``from datarepo import pipeline`` imports this package: calling it declares a pipeline."""

    def __call__(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return pipeline(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
