"""The commands of training runs (docs/loader.md): runs, runs show. No torch is loaded."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from datarepo.cli import _json, _quoted, _repo, json_option, main, one_line, only_with
from datarepo.cli_values import Count

if TYPE_CHECKING:
    from datarepo.torch.runs import RunInfo


@main.group(invoke_without_command=True)
@json_option
@click.pass_context
def runs(ctx: click.Context, as_json: bool) -> None:
    """List recorded training runs: which commit, prefix and seed each read."""
    if ctx.invoked_subcommand is not None:
        if as_json:  # (it lists; ignored, the subcommand would print text where JSON was asked)
            raise click.UsageError(f"--json of runs lists the runs: give it after the subcommand (runs {ctx.invoked_subcommand} … --json)")
        return
    from datarepo.torch.runs import NotARunError, list_runs

    problems: list[NotARunError] = []
    found = list_runs(_repo(), problems)
    if as_json:
        _json([r._asdict() for r in found])
    else:
        _list(found)
    for problem in problems:  # as git does for a broken ref: the others listed, each named, a failure
        click.echo(f"error: {one_line(str(problem))}", err=True)
    if problems:
        sys.exit(1)


def _list(found: list[RunInfo]) -> None:
    for r in found:
        prefix = _quoted(r.prefix) or "(all)"
        place = f"seed {r.seed}\tepochs {r.epochs}\tworld {r.world_size}"
        click.echo(f"{_quoted(r.name)}\t{r.commit[:12]}\t{prefix}\t{place}\t{_quoted(r.time)}")


_RUN_FIELDS = (
    "name", "commit", "rev", "prefix", "count", "seed", "shuffle", "block", "window",
    "epochs", "world_size", "batch_size", "pad", "decode", "fingerprint", "time", "author", "extra",
)  # fmt: skip


@runs.command(name="show")
@click.argument("name")
@click.option("--keys", "keys", is_flag=True, help="Print the keys of an epoch in the order the run read them.")
@click.option("--epoch", default=0, type=Count(0), metavar="N", show_default=True, help="The epoch whose order --keys prints.")
@json_option
def runs_show(name: str, keys: bool, epoch: int, as_json: bool) -> None:
    """Show a run's record, or (--keys) the exact order of one of its epochs."""
    from datarepo.torch.runs import read_run, run_keys

    only_with("--keys", keys, "epoch")
    repo = _repo()
    if keys:
        ordered = run_keys(repo, name, epoch)
        if as_json:
            _json(list(ordered))
            return
        for key in ordered:
            click.echo(_quoted(key))
        return
    run = read_run(repo, name)
    if as_json:
        _json(run)
        return
    for field in _RUN_FIELDS:
        value = run.get(field)
        click.echo(f"{field}: {_quoted(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")


@runs.command(name="rm")
@click.argument("name")
def runs_rm(name: str) -> None:
    """Delete a run's record (its ref): the data only it kept is then gc's to delete."""
    from datarepo.torch.runs import delete_run

    old = delete_run(_repo(), name)
    click.echo(f"Deleted run {name} (was {old[:12] if old else 'no object id'})")
