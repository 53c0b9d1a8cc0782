"""The commands of pipelines (docs/pipelines.md): run, lineage, pipelines, dag, export-dvc."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import click

from datarepo.cli import _json, _quoted, _repo, json_option, main, one_line, only_with
from datarepo.cli_values import Count, NonEmpty, NonEmptyPath, Seconds, Workers


def _pipeline_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option("--pipelines", "folder", default=None, type=click.Path(exists=True, file_okay=False),
                      help="The folder of pipeline files (default: pipelines/ of the work tree).")(fn)
    return fn


@main.command(name="run")
@click.argument("names", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Show what would be processed, and why; change nothing.")
@click.option("--executor", "kind", type=click.Choice(["serial", "process", "ray"]), default="process",
              help="Where transforms run: this process, local processes (default), or Ray.")
@click.option("-j", "--workers", type=Workers(), default=None, metavar="N", help="Worker processes, 1 to 1024 (default: the cores).")
@click.option("--ray-address", type=NonEmpty(), default=None, metavar="ADDRESS", help="The Ray cluster to join (default: start a local one).")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failing datum; commit nothing for that pipeline.")
@click.option("--watch", is_flag=True, help="Run again whenever the branch moves, until interrupted.")
@click.option("--interval", type=Seconds(0.01, closed=True), default=2.0, metavar="S",
              help="Seconds between looks at the branch (--watch; default 2).")
@click.option("--max-runs", type=Count(1), default=None, metavar="N", help="Stop watching after this many runs.")
@json_option
@_pipeline_options
def run_command(names: tuple[str, ...], dry_run: bool, kind: str, workers: int | None, ray_address: str | None,
                fail_fast: bool, watch: bool, interval: float, max_runs: int | None, as_json: bool, folder: str | None) -> None:
    """Run the pipelines (all, or NAMES) in DAG order, computing only what is new or changed."""
    import time

    from datarepo.pipeline.run import Options, run
    from datarepo.pipeline.run import watch as watching

    only_with("--watch", watch, "interval", "max_runs")
    options = Options(kind, workers, ray_address, dry_run, fail_fast)
    if watch:
        def report(result: Any) -> None:  # each run's lines as it ends, also into a pipe (| tee)
            _render_run(result, as_json, dry_run, final=False)
            sys.stdout.flush()

        note = lambda message: click.echo(f"not run: {one_line(message)}", err=True)
        watching(".", names, options, folder, interval, max_runs, report, time.sleep, note)
        return
    _render_run(run(_repo(), names, options, folder), as_json, dry_run)


def _render_run(result: Any, as_json: bool, dry_run: bool, final: bool = True) -> None:
    from datarepo.errors import PipelineError

    if as_json:
        _json({"run": result.run, "pipelines": [p.to_json() for p in result.pipelines]})
    elif not result.pipelines:
        click.echo("no pipelines to run")
    for p in result.pipelines if not as_json else ():
        if dry_run:
            why = ", ".join(f"{n} {w}" for w, n in sorted(p.reasons.items()))
            click.echo(f"{p.name}: would process {p.processed}{f' ({why})' if why else ''}, reuse {p.reused}, delete {p.deleted}")
            continue
        tail = f" -> commit {p.commit[:12]}" if p.commit else " (nothing to commit)"
        extra = f", {p.dropped} dropped" if p.dropped else ""
        extra += f", {p.repaired} outputs restored" if p.repaired else ""
        click.echo(f"{p.name}: {p.processed} processed, {p.reused} reused, {p.failed} failed, {p.deleted} deleted{extra}{tail}")
        for base, kind, message in p.failures:
            click.echo(f"  failed {_quoted(base)}: {kind}: {one_line(message)}", err=True)
    if result.failed and final:
        first = next(p for p in result.pipelines if p.failed)
        base, kind, message = first.failures[0]
        first_failure = f"{first.name} {base}: {kind}: {message}"
        raise PipelineError(f"{result.failed} datum(s) failed, first {first_failure} (retried on the next run)")


@main.command()
@click.argument("spec", metavar="KEY[@REV]")
@click.option("--downstream", is_flag=True, help="Everything derived from the key, instead of what it came from.")
@json_option
def lineage(spec: str, downstream: bool, as_json: bool) -> None:
    """Where a key came from (through every pipeline, back to raw datums), or with
    --downstream what was made from it. Answered from the repository alone: no pipeline's
    code is read."""
    from datarepo.pipeline import query

    repo = _repo()
    if downstream:
        from datarepo.pipeline.cache import LineageCache

        # (the lock keeps writers of the lineage tables apart: a private index has none)
        with contextlib.nullcontext() if repo.index.private else repo.lock:
            node = query.downstream(repo, spec, LineageCache(repo.index, repo.store))
    else:
        node = query.upstream(repo, spec)
    if as_json:
        _json(node.to_json())
        return
    _print_node(node, 0)


def _print_node(node: Any, depth: int) -> None:
    made = f"  [{node.pipeline} {node.fingerprint[:12]}]" if node.pipeline else "  [raw]"
    note = f"  (dropped: {node.dropped or 'filtered out'})" if node.dropped is not None else ""
    click.echo(f"{'  ' * depth}{_quoted(node.key)} {node.datum[:12] or '-'} @ {node.commit[:12]}{made}{note}")
    for child in node.links:
        _print_node(child, depth + 1)


@main.command(name="pipelines")
@json_option
@_pipeline_options
def pipelines_command(as_json: bool, folder: str | None) -> None:
    """List the pipelines, with their fingerprints, inputs and last run."""
    from datarepo.pipeline.info import describe

    rows = describe(_repo(), folder)
    if as_json:
        _json([r.to_json() for r in rows])
        return
    for r in rows:
        last = f"last run {r.run} ({r.units} in, {r.outputs} out, {r.failed} failed)" if r.run else "never run"
        state = "" if r.current else "  (changed since)"
        click.echo(f"{r.name}  {r.fingerprint[:12]}{state}  {r.input} -> {r.output}  {last}")


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "dot"]), default="text", help="text, or Graphviz dot.")
@_pipeline_options
def dag(fmt: str, folder: str | None) -> None:
    """The DAG of pipelines, with counts (--format dot | dot -Tsvg for a picture)."""
    from datarepo.pipeline.info import describe, dot

    rows = describe(_repo(), folder)
    if fmt == "dot":
        click.echo(dot(rows), nl=False)
        return
    for r in rows:
        reads = ", ".join(r.upstream) or r.input
        click.echo(f"{r.name}: {reads} -> {r.output}  ({r.units} in, {r.outputs} out, {r.failed} failed)")


@main.command(name="export-dvc")
@click.option("-o", "--output", default="-", type=NonEmptyPath(dir_okay=False, allow_dash=True),
              help="Where to write (default: stdout).")
@_pipeline_options
def export_dvc(output: str, folder: str | None) -> None:
    """Write dvc.yaml stages that call 'datarepo run', so 'dvc repro' drives the pipelines."""
    from datarepo.pipeline.dvcexport import dvc_yaml

    repo = _repo()
    text = dvc_yaml(repo, folder)
    if output == "-":
        click.echo(text, nl=False)
    else:
        from pathlib import Path

        repo.check_outside(Path(output), "output").write_text(text)
