"""The commands of remotes (docs/remotes.md): remote add/list/remove/modify, push, fetch,
pull, clone. DVC is imported only when one of them runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from datarepo.cli import _json, _repo, json_option, main
from datarepo.cli_values import NonEmpty, NonEmptyPath

if TYPE_CHECKING:
    from datarepo.porcelain.remote import RefUpdate, Transfer


@main.group()
def remote() -> None:
    """Name remotes (DVC's: .dvc/config) to push to and fetch from."""


@remote.command(name="add")
@click.argument("name")
@click.argument("url")
@click.option("-d", "--default", "default", is_flag=True, help="Make it the default remote.")
@click.option("-f", "--force", is_flag=True, help="Replace a remote of that name.")
def remote_add(name: str, url: str, default: bool, force: bool) -> None:
    """Add remote NAME at URL (a path, s3://, gs://, azure://, ssh://, … as DVC takes)."""
    from datarepo.remotes_config import add_remote

    add_remote(_repo(), name, url, default=default, force=force)


@remote.command(name="list")
@json_option
def remote_list(as_json: bool) -> None:
    """List the remotes: name, URL, and (default) for the default one."""
    from datarepo.remotes_config import list_remotes

    remotes = list_remotes(_repo())
    if as_json:
        _json([r._asdict() for r in remotes])
        return
    for r in remotes:
        click.echo(f"{r.name}\t{r.url}" + ("\t(default)" if r.default else ""))


@remote.command(name="remove")
@click.argument("name")
def remote_remove(name: str) -> None:
    """Remove remote NAME, and its remote-tracking refs (NAME/<branch>)."""
    from datarepo.remotes_config import remove_remote

    remove_remote(_repo(), name)


@remote.command(name="modify")
@click.argument("name")
@click.argument("option")
@click.argument("value", required=False)
@click.option("-u", "--unset", is_flag=True, help="Remove the option.")
@click.option("--local", is_flag=True, help="Write it to .dvc/config.local (for credentials: not to be shared).")
def remote_modify(name: str, option: str, value: str | None, unset: bool, local: bool) -> None:
    """Set one of DVC's options of remote NAME (endpointurl, access_key_id, profile, …)."""
    from datarepo.remotes_config import modify_remote

    if unset == (value is not None):
        raise click.UsageError("give a VALUE, or --unset without one")
    modify_remote(_repo(), name, option, None if unset else value, local=local)


def _transfer(verb: str, t: Transfer) -> None:
    click.echo(f"{verb} {t.objects} objects, {t.shards} shards, {t.bytes} bytes ({t.remote})")


def _updates(updates: list[RefUpdate]) -> None:
    for u in updates:
        old = u.old[:12] if u.old else "(new)"
        click.echo(f"{u.ref}\t{old} -> {u.new[:12]}")


@main.command()
@click.argument("refs", nargs=-1)
@click.option("-r", "--remote", "remote_name", default=None, help="The remote (default: the default remote).")
@click.option("--all", "all_refs", is_flag=True, help="Push every branch, tag and run record.")
@click.option("-f", "--force", is_flag=True, help="Replace remote refs that are not ancestors of what is pushed.")
def push(refs: tuple[str, ...], remote_name: str | None, all_refs: bool, force: bool) -> None:
    """Upload what the remote lacks of REFS (default: the current branch), then move its refs."""
    from datarepo.porcelain.remote import push as run

    if all_refs and refs:
        raise click.UsageError("--all takes no REFS")
    result = run(_repo(), remote_name, refs, all_refs=all_refs, force=force)
    _transfer("uploaded", result.transfer)
    _updates(result.updated)
    if not result.updated:
        click.echo("Everything up to date")


@main.command()
@click.option("-r", "--remote", "remote_name", default=None, help="The remote (default: the default remote).")
def fetch(remote_name: str | None) -> None:
    """Download the remote's branches (as NAME/<branch>), new tags and runs."""
    from datarepo.porcelain.remote import fetch as run

    result = run(_repo(), remote_name)
    _transfer("downloaded", result.transfer)
    _updates(result.updated)
    for tag in result.kept:
        click.echo(f"kept {tag}: it differs from the remote's", err=True)


@main.command()
@click.option("-r", "--remote", "remote_name", default=None, help="The remote (default: the default remote).")
def pull(remote_name: str | None) -> None:
    """Fetch, then fast-forward the current branch and the work tree."""
    from datarepo.porcelain.remote import pull as run

    result = run(_repo(), remote_name)
    _transfer("downloaded", result.fetched.transfer)
    if result.old == result.new:
        click.echo("Already up to date")
    else:
        old = result.old[:12] if result.old else "(none)"
        new = result.new[:12] if result.new else "(none)"
        click.echo(f"Fast-forward {result.branch} {old} -> {new} ({result.written} files written, {result.removed} removed)")


@main.command()
@click.argument("url", type=NonEmpty())
@click.argument("directory", required=False, type=NonEmptyPath())
@click.option("-c", "--config", "options", multiple=True, metavar="OPTION=VALUE",
              help="Set one of DVC's options of remote origin before the first fetch, as remote modify does "
                   "(endpointurl, read_timeout, profile, …); may be given more than once.")
def clone(url: str, directory: str | None, options: tuple[str, ...]) -> None:
    """Make a repository from the one at URL, with it as remote origin."""
    from datarepo.porcelain.remote import clone as run

    settings = {}
    for option in options:
        name, eq, value = option.partition("=")
        if not eq or not name:
            raise click.UsageError(f"-c takes OPTION=VALUE, not {option!r}")
        settings[name] = value
    name = directory or url.rstrip("/").rpartition("/")[2] or "repo"
    if "://" not in url and not Path(url).is_absolute():
        url = str(Path(url).resolve())  # a local path, as typed here (DVC reads it against .dvc/)
    result = run(url, Path(name), settings)
    _transfer("downloaded", result.fetched.transfer)
    if result.branch:
        click.echo(f"Cloned into {name}: branch {result.branch} at {result.commit[:12] if result.commit else ''}")
    else:
        click.echo(f"Cloned into {name}: the remote has no branch yet")
