"""The ``datarepo`` command: parse arguments, call the porcelain, render the result.

Imports stay lazy so ``datarepo --help`` starts fast; every DataRepoError
becomes one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import atexit
import gc as collector  # the name gc is the command below
import io
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from datarepo.cli_values import Age, Count, NonEmptyPath, Seconds, Size

# The option of every command that can print what it prints as JSON instead.
json_option = click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")

SIGPIPE_EXIT = 141  # what a shell reports for a command that a closed pipe ended (128 + SIGPIPE)
SIGTERM_EXIT = 143  # (128 + SIGTERM)


class Group(click.Group):
    """Turns the project's errors into one line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from datarepo.errors import DataRepoError, Stopped

        try:
            return super().invoke(ctx)
        except DataRepoError as e:
            for detail in getattr(e, "details", [])[1:]:  # the full list, then the one-line summary
                click.echo(f"error: {one_line(str(detail))}", err=True)
            raise click.ClickException(one_line(str(e))) from None
        except click.MissingParameter:  # (the usage above says what is missing)
            raise
        except click.BadParameter as e:  # a bad value: one line that names it (no usage above it), exit 2
            raise click.UsageError(one_line(e.format_message())) from None
        except click.ClickException as e:
            e.message = one_line(e.message)
            raise
        except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as git does
            _quiet_stdout()
            sys.exit(SIGPIPE_EXIT)
        except OSError as e:
            raise click.ClickException(one_line(_os_error(e))) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Stopped:
            click.echo("terminated", err=True)
            sys.exit(SIGTERM_EXIT)
        except MemoryError:
            raise click.ClickException("out of memory") from None
        except ImportError as e:  # (commands import lazily: a library that memory cannot map, say)
            raise click.ClickException(one_line(f"cannot load {e.name or 'a module'}: {e}")) from None
        except Exception as e:  # sqlite3 is imported lazily, so its errors are matched by module
            if type(e).__module__ == "sqlite3":
                raise click.ClickException(one_line(f"index.sqlite: {e}{_sqlite_room(e)}")) from None
            raise


def _sqlite_room(e: Exception) -> str:
    """What a failed write of the index may mean, where SQLite's words do not say it: its
    "disk I/O error" is also what a file size limit (``ulimit -f``, EFBIG) gives."""
    from datarepo.sqlrows import no_room

    return " (the disk may be full, or a file size or quota limit reached)" if no_room(e) else ""  # type: ignore[arg-type]


def _os_error(e: OSError) -> str:
    """An OSError as one line: its reason and file, without Python's ``[Errno N]``; a write
    that found no room (a write has no file name to give) says what that means."""
    from datarepo.sqlrows import no_room

    if e.filename:
        return f"{e.strerror or e}: {e.filename}"
    if no_room(e):
        return f"{e.strerror}: a write failed (the disk is full, or a file size or quota limit was reached)"
    return e.strerror or str(e)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "directories", multiple=True, metavar="DIRECTORY",
              help="Run as if started in this directory (several: each from the one before, as git's).")
@click.version_option(package_name="datarepo")
def main(directories: tuple[str, ...]) -> None:
    """A versioned repository of datums stored in WebDataset shards."""
    # A command is a short-lived process that builds large containers (a file
    # list, a tree, a staging area). The cyclic collector would walk them again
    # every time they grow, to find cycles these commands do not make: a first
    # add of 100,000 files spent a fifth of its time there. Reference counting
    # still frees everything; the Python API leaves the collector as it is.
    collector.disable()
    for directory in directories:
        if directory:  # (as git's -C "": no change)
            os.chdir(directory)
    try:
        os.getcwd()
    except FileNotFoundError:  # (else the first path resolved fails, naming no file)
        raise click.ClickException("the current directory no longer exists (it was deleted)") from None


def _stop_on_sigterm() -> None:
    """SIGTERM (a job scheduler ending the job, ``kill``) stops the command as Ctrl-C does:
    what it was writing is removed and it exits with 143, where the signal's default would
    end it at once. Left ignored where it was ignored (``nohup``)."""
    from datarepo.errors import raise_stopped

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, raise_stopped)


def one_line(message: str) -> str:
    """An error message as one line: a value it names that holds a newline or another
    control character (a key, a path, a branch name as typed) shows it escaped."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def only_with(needed: str, given: bool, *names: str) -> None:
    """Refuses an option typed that does nothing without ``needed`` (``--shard-size``
    without ``--shards``): ignored, the command would do other than what was asked."""
    from click.core import ParameterSource

    if given:
        return
    ctx = click.get_current_context()
    for param in ctx.command.params:
        if param.name in names and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{param.opts[-1]} does nothing without {needed}")


def _repo():  # type: ignore[no-untyped-def]
    from datarepo.repo import Repo

    return Repo.open(".")


def _quoted(key: str) -> str:
    """A key as a line of a listing shows it: in double quotes with escapes, as git quotes a
    path, where it holds a control character (a newline would split it over two lines) or
    begins with a double quote (else the key ``"a\\tb"`` would read as the quoted ``a<TAB>b``)."""
    if _plain(key):
        return key
    return json.dumps(key, ensure_ascii=False).replace("\x7f", "\\u007f")  # (JSON leaves DEL as it is)


def _plain(key: str) -> bool:
    """Whether a listing shows ``key`` as it is (see :func:`_quoted`)."""
    return key.isprintable() and not key.startswith('"')


def _json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


class _Bar:
    """Draws the porcelain's progress on stderr: a bar when the total is known, else a count."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.done = 0

    def start(self, total: int | None) -> None:
        if total is not None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True)
            self.bar.__enter__()

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.done % 256 < n:
            click.echo(f"\r{self.label}: {self.done}", file=sys.stderr, nl=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        elif self.done:
            click.echo(f"\r{self.label}: {self.done}", file=sys.stderr)


@contextmanager
def _progress(label: str) -> Iterator[_Bar | None]:
    """Progress on a terminal; nothing when stderr is piped."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = _Bar(label)
    try:
        yield bar
    finally:
        bar.close()


@main.command()
@click.argument("path", default=".", type=NonEmptyPath(file_okay=False))
@click.option("--bare", is_flag=True, help="A repository without a work tree (for servers and ingest).")
@click.option("--grouping", type=click.Choice(["wds", "file"]), default="wds", help="How files form datums.")
@click.option("--shard-size", type=Size(), default=None, help="Target shard size, e.g. 64M (at least 1K; default 256M).")
def init(path: str, bare: bool, grouping: str, shard_size: int | None) -> None:
    """Create an empty repository."""
    from pathlib import Path

    from datarepo.repo import Repo

    repo = Repo.init(Path(path), bare=bare, grouping=grouping, shard_size=shard_size)
    click.echo(f"Initialized empty datarepo repository in {repo.dotdir}")


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print {added, modified, deleted} keys against HEAD.")
@click.option("--follow", is_flag=True, help="Read symlinks as the files they point to.")
def status(paths: tuple[str, ...], as_json: bool, follow: bool) -> None:
    """Show datums changed in the work tree and the staging area (under PATHS, if given)."""
    from datarepo.porcelain.stage import status as run

    repo = _repo()
    st = run(repo, follow=follow, paths=list(paths))
    for note in st.notes:
        click.echo(f"note: {one_line(note)}", err=True)
    if as_json:
        _json(st.total.to_json())
        return
    branch = repo.current_branch()
    click.echo(f"On branch {branch}" if branch else f"HEAD detached at {(repo.head() or '')[:12]}")
    for title, changes in (("Changes to be committed:", st.staged), ("Changes not staged for commit:", st.unstaged)):
        if changes:
            click.echo(title)
            _print_changes(changes)
    if not st.total and not st.staged:  # never "clean" while files are left out
        clean = "no change under the paths given" if paths else "work tree clean"
        left = f"but {len(st.notes)} left out (see the notes)" if st.notes else clean
        click.echo(f"nothing to commit, {left}")


def _print_changes(changes: Any) -> None:
    for label, keys in (("added", changes.added), ("modified", changes.modified), ("deleted", changes.deleted)):
        for key in keys:
            click.echo(f"  {label + ':':<10}{_quoted(key)}")


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--follow", is_flag=True, help="Store symlinks as the files they point to.")
@click.option("-A", "--all", "_all", is_flag=True, help="Additions, changes and deletions of all PATHS (as git's -A; always so).")
def add(paths: tuple[str, ...], follow: bool, _all: bool) -> None:
    """Store new and changed datums under PATHS and stage them (deletions too)."""
    from datarepo.porcelain.stage import add as run

    repo = _repo()
    with _progress("adding") as bar:
        result = run(repo, list(paths) or ["."], follow=follow, progress=bar)
    for note in result.notes:
        click.echo(f"note: {one_line(note)}", err=True)
    c = result.changes
    click.echo(
        f"staged {len(c.added)} added, {len(c.modified)} modified, {len(c.deleted)} deleted; "
        f"hashed {result.hashed} files, stored {result.stored} new datums ({result.stored_bytes} bytes)"
    )


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--cached", is_flag=True, help="Only unstage; keep the files.")
@click.option("-f", "--force", is_flag=True, help="Delete files whose changes are not committed.")
@click.option("-r", "_recursive", is_flag=True, help="Folders too (as git's -r; always so).")
def rm(paths: tuple[str, ...], cached: bool, force: bool, _recursive: bool) -> None:
    """Stage the removal of datums (and delete their files)."""
    from datarepo.porcelain.stage import rm as run

    for key in run(_repo(), list(paths), cached=cached, force=force):
        click.echo(f"rm {_quoted(key)}")


MESSAGE_HELP = "The commit message (given more than once: its paragraphs, as in git)."


def _paragraphs(messages: tuple[str, ...]) -> str:
    """The message of ``-m A -m B``: git's, each a paragraph of its own."""
    return "\n\n".join(messages)


@main.command()
@click.option("-m", "--message", "messages", multiple=True, required=True, help=MESSAGE_HELP)
@click.option("--allow-empty", is_flag=True, help="Commit even if nothing is staged.")
def commit(messages: tuple[str, ...], allow_empty: bool) -> None:
    """Record the staged changes as a new commit."""
    from datarepo.porcelain.history import commit as run

    message = _paragraphs(messages)
    result = run(_repo(), message, allow_empty=allow_empty)
    click.echo(f"[{result.branch or 'detached HEAD'} {result.oid[:12]}] {message.splitlines()[0]} ({result.changes} keys changed)")


@main.command()
@click.argument("rev", default="HEAD")
@click.option("-n", "--max-count", type=Count(), default=None, metavar="N", help="Show at most N commits (a negative N: no limit, as in git).")
@click.option("--oneline", is_flag=True, help="One line a commit.")
@json_option
def log(rev: str, max_count: int | None, oneline: bool, as_json: bool) -> None:
    """Show the commit history of REV, or (A..B) the commits B has and A has not."""
    from datarepo.porcelain.history import log as run

    exclude = None
    if (ends := _two_dots(rev, "log")) is not None:
        exclude, rev = ends
    commits = list(run(_repo(), rev, max_count if max_count is None or max_count >= 0 else None, exclude))
    if as_json:
        _json([{"commit": oid, **c.to_json()} for oid, c in commits])
        return
    for oid, c in commits:
        if oneline:
            click.echo(f"{oid[:12]} {c.message.splitlines()[0] if c.message else ''}")
            continue
        click.echo(f"commit {oid}\nAuthor: {c.author}\nDate:   {c.time}\n\n{_indented(c.message)}")


def _two_dots(rev: str, command: str) -> tuple[str, str] | None:
    """git's ``A..B`` as (A, B), an end left out being HEAD; None for one revision (no ref
    name holds ".."). ``A...B`` (from where the two part) is refused."""
    if "..." in rev:
        from datarepo.errors import InvalidInputError

        raise InvalidInputError(f"{rev!r}: {command} takes REV or A..B (A...B is not supported)")
    if ".." not in rev:
        return None
    a, _, b = rev.partition("..")
    return a or "HEAD", b or "HEAD"


def _indented(message: str) -> str:
    """A commit message as git's log and show print it: each line indented by four spaces."""
    return "".join(f"    {line}\n" for line in message.splitlines())


def _show_run(run_id: str, as_json: bool) -> None:
    from datarepo.pipeline.run import commits_of_run

    found = commits_of_run(_repo(), run_id)
    if as_json:
        _json([{"commit": oid, **c.to_json()} for oid, c in found])
        return
    for oid, c in found:
        click.echo(f"{oid} {c.message}")


@main.command()
@click.argument("rev", default="HEAD")
@json_option
def show(rev: str, as_json: bool) -> None:
    """Show a commit and the keys it changed, or (a RUN-ID) the commits a pipeline run made."""
    if rev.startswith("run-"):
        from datarepo.pipeline.run import is_run_id

        if is_run_id(rev):
            _show_run(rev, as_json)
            return
    from datarepo.porcelain.history import show as run

    oid, c, changes = run(_repo(), rev)
    if as_json:
        _json({"commit": oid, **c.to_json(), "changes": changes.to_json()})
        return
    click.echo(f"commit {oid}\ntree   {c.tree}")
    for p in c.parents:
        click.echo(f"parent {p}")
    click.echo(f"Author: {c.author}\nDate:   {c.time}\n\n{_indented(c.message)}")
    _print_changes(changes)


class _PathsAfterDashes(click.Command):
    """A command that takes revisions, then paths: what follows ``--`` is kept apart as
    paths (``diff A B -- PATHS``), where click would take it as more of the arguments."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta["paths"] = args[at + 1 :]
            args = args[:at]
        return super().parse_args(ctx, args)


@main.command(cls=_PathsAfterDashes)
@click.argument("args", nargs=-1, metavar="[A [B]] [[--] PATHS]...")
@click.option("--json", "as_json", is_flag=True, help="Print {added, modified, deleted} keys.")
@click.option("--stat", is_flag=True, help="Only the counts.")
@click.pass_context
def diff(ctx: click.Context, args: tuple[str, ...], as_json: bool, stat: bool) -> None:
    """Show keys that differ: A B (or A..B), A and the work tree, or HEAD and the work tree;
    only those under PATHS, if given."""
    from datarepo.porcelain.stage import diff as run

    repo = _repo()
    revs, paths = _revs_then_paths(repo, list(args), ctx.meta.get("paths"))
    changes = run(repo, *revs, paths)
    if as_json:
        _json(changes.to_json())
    elif stat:
        click.echo(f"{len(changes.added)} added, {len(changes.modified)} modified, {len(changes.deleted)} deleted")
    else:
        for sign, keys in (("A", changes.added), ("M", changes.modified), ("D", changes.deleted)):
            for key in keys:
                click.echo(f"{sign}\t{_quoted(key)}")


def _revs_then_paths(repo: Any, args: list[str], after_dashes: list[str] | None,
                     most: int = 2) -> tuple[tuple[str | None, str | None], list[str]]:
    """git's reading of ``[REVS] [PATHS]``: the leading arguments that are revisions (at most
    ``most``; A..B is two) are, and the rest are paths; before ``--``, each of those must be
    in the work tree or be a glob, else the argument is refused as neither (a mistyped
    revision), with what is wrong with it as a revision. Without ``--``, an argument that
    is both a revision and a path is refused as ambiguous, as git refuses it."""
    from datarepo.errors import DataRepoError, InvalidInputError
    from datarepo.pathspec import GLOB_CHARS

    command = click.get_current_context().info_name or ""
    revs: list[str] = []
    paths: list[str] = []
    for arg in args:
        why = f"'{arg}' is not in the work tree"
        if not paths:
            try:
                found = _as_revs(repo, arg, command)
            except DataRepoError as e:
                why = f"{one_line(str(e))}, nor a path in the work tree"
            else:
                if after_dashes is None and arg and os.path.lexists(arg):
                    raise InvalidInputError(f"'{arg}' is both a revision and a path: put -- after the revisions "
                                            f"({command} {arg} --) or before the paths ({command} -- {arg})")
                if len(revs) + len(found) <= most:
                    revs += found
                    continue
                why = f"'{arg}': {command} takes {'one revision' if most == 1 else 'at most two revisions'}"
        if not (arg and os.path.lexists(arg) or any(c in arg for c in GLOB_CHARS)):
            raise InvalidInputError(f"{why} (name a path that is not there after --)")
        paths.append(arg)
    a, b = (*revs, None, None)[:2]
    return (a, b), paths + (after_dashes or [])


def _as_revs(repo: Any, arg: str, command: str) -> list[str]:
    """The revisions an argument names (A..B: two).

    Raises:
        DataRepoError: it names none (an existing path that holds ``...`` is no refused A...B).
    """
    from datarepo.errors import InvalidInputError

    if arg == "HEAD":  # (also before the first commit: HEAD against the work tree)
        return [arg]
    if os.path.lexists(arg) and "..." in arg:
        raise InvalidInputError(f"'{arg}' is a path")
    revs = list(_two_dots(arg, command) or (arg,))
    for rev in revs:
        repo.resolve(rev)
    return revs


@main.command()
@click.argument("rev", required=False)
@click.option("-b", "new_branch", default=None, metavar="NAME", help="Create this branch at REV (default HEAD) and switch to it.")
@click.option("-f", "--force", is_flag=True, help="Throw away uncommitted changes (files never added are kept).")
def checkout(rev: str | None, new_branch: str | None, force: bool) -> None:
    """Make the work tree match REV (a branch, tag or commit)."""
    from datarepo.errors import BadRevisionError, DirtyWorktreeError, InvalidInputError
    from datarepo.porcelain.checkout import checkout as run

    if rev is None and new_branch is None:
        raise click.UsageError("name a revision to check out (or -b NAME for a new branch at HEAD)")
    rev = "HEAD" if rev is None else rev
    with _progress("checking out") as bar:
        try:
            result = run(_repo(), rev, force=force, new_branch=new_branch, progress=bar)
        except DirtyWorktreeError as e:
            raise DirtyWorktreeError(f"{e} (use --force)") from None
        except BadRevisionError:
            if os.path.lexists(rev):  # (git's checkout also restores paths; this one does not)
                raise InvalidInputError(f"'{rev}' is a path, not a revision: checkout takes a revision (it does not restore paths)") from None
            raise
    where = f"branch {result.branch}" if result.branch else f"detached HEAD at {result.oid[:12]}"
    click.echo(f"Switched to {where} ({result.written} files written, {result.removed} removed)")


def _refs(prefix: str, what: str, name: str | None, rev: str, delete: bool, force: bool, as_json: bool,
          delete_force: bool = False) -> None:
    from datarepo.porcelain import history

    only_with(f"a {what} NAME", name is not None, "force")
    repo = _repo()
    delete, force = delete or delete_force, force or delete_force
    if delete:
        if name is None:
            raise click.UsageError(f"-d needs a {what} name")
        oid = history.delete_ref(repo, prefix, name, force=force)
        click.echo(f"Deleted {what} {name} (was {oid[:12]})")
    elif name is not None:  # ('' is a name, and not a valid one: not the listing)
        oid = history.create_ref(repo, prefix, name, rev, force=force)
        click.echo(f"{what} {name} -> {oid[:12]}")
    else:
        refs = history.list_refs(repo, prefix)
        current = repo.current_branch() if what == "branch" else None
        if as_json:
            _json([{"name": n, "commit": o, "current": n == current} for n, o in refs])
            return
        for n, o in refs:
            click.echo(f"{'*' if n == current else ' '} {n} {o[:12]}")


def _ref_options(what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        for option in reversed((
            click.argument("name", required=False),
            click.argument("rev", default="HEAD"),
            click.option("-d", "--delete", is_flag=True, help=f"Delete the {what}."),
            click.option("-f", "--force", is_flag=True, help=f"Move an existing {what}" + (
                "; with -d, delete a branch no other ref reaches." if what == "branch" else ".")),
            json_option,
        )):
            fn = option(fn)
        return fn

    return decorate


@main.command()
@_ref_options("branch")
@click.option("-D", "delete_force", is_flag=True, help="Delete the branch even if no other ref reaches it (-d -f).")
def branch(**kwargs: Any) -> None:
    """List branches, create one (NAME [REV]) or delete one (-d NAME)."""
    _refs("refs/heads/", "branch", **kwargs)


@main.command()
@_ref_options("tag")
def tag(**kwargs: Any) -> None:
    """List tags, create one (NAME [REV]) or delete one (-d NAME)."""
    _refs("refs/tags/", "tag", **kwargs)


@main.command(name="ls", cls=_PathsAfterDashes)
@click.argument("args", nargs=-1, metavar="[REV] [[--] PATHS]...")
@click.option("--prefix", default="", help="Only keys starting with this.")
@click.option("--glob", default=None, help="Only keys matching this glob (* ? [..] within a name, ** across names).")
@click.option("-l", "--long", is_flag=True, help="Also the datum id and size.")
@json_option
@click.pass_context
def ls_command(ctx: click.Context, args: tuple[str, ...], prefix: str, glob: str | None, long: bool, as_json: bool) -> None:
    """List the keys of a revision (default HEAD; only those under PATHS, if given)."""
    from datarepo.porcelain.history import ls

    repo = _repo()
    (rev, _), paths = _revs_then_paths(repo, list(args), ctx.meta.get("paths"), most=1)
    # A page of the tree at a time, as one write: a listing of a million keys is not a
    # million calls to echo.
    pages = ls(repo, rev or "HEAD", prefix, glob, paths).columns()
    if as_json:
        _json_entries(pages)
        return
    for keys, datums, sizes in pages:
        if not all(map(_plain, keys)):
            keys = list(map(_quoted, keys))
        lines = [f"{d[:12]} {s:>10} {k}" for k, d, s in zip(keys, datums, sizes)] if long else keys
        click.echo("\n".join(lines))


def _json_entries(pages: Iterator[tuple[Any, Any, Any]]) -> None:
    """Writes the entries as :func:`_json` writes a list of {key, datum, size}, a page at a time."""
    from datarepo.objects import json_string

    sep = "["
    for keys, datums, sizes in pages:
        rows = ",\n".join(
            [f'  {{\n    "key": {json_string(k)},\n    "datum": "{d}",\n    "size": {s}\n  }}' for k, d, s in zip(keys, datums, sizes)]
        )
        click.echo(f"{sep}\n{rows}", nl=False)
        sep = ","
    click.echo("[]" if sep == "[" else "\n]")


@main.command()
@click.argument("spec")
def cat(spec: str) -> None:
    """Write one member's bytes to stdout: REV:key.ext (or REV:key for a one-member datum)."""
    from datarepo.porcelain.history import cat as run

    try:
        run(_repo(), spec, sys.stdout.buffer)
    finally:
        sys.stdout.buffer.flush()


@main.command()
@click.argument("src")
@click.option("--prefix", required=True, help="Where the source's keys appear, e.g. extra/.")
@click.option("-m", "--message", "messages", multiple=True, help=MESSAGE_HELP + " Default: 'ingest SRC into PREFIX' ('spout: N datums into PREFIX').")
@click.option("--append", is_flag=True, help="Keep keys under PREFIX that the source no longer has.")
@json_option
@click.option("--commit-every", "every", type=Count(1), default=None, metavar="N",
              help="With SRC -: a spout, committing every N datums (and at the end of input).")
@click.option("--commit-seconds", "seconds", type=Seconds(), default=None, metavar="T",
              help="With SRC -: a spout, committing T seconds after the first uncommitted datum.")
@click.option("--follow", is_flag=True, help="A folder's symlinks: store the files they point to.")
def ingest(src: str, prefix: str, messages: tuple[str, ...], append: bool, as_json: bool, every: int | None,
           seconds: float | None, follow: bool) -> None:
    """Commit a folder, tar/WebDataset shards (a.tar, 'x-{000..009}.tar', '*.tar'), or JSON lines (- for stdin) under PREFIX.

    With --commit-every or --commit-seconds, stdin is a spout: a long-lived producer whose
    datums are committed as they come, a line printed a commit."""
    from datarepo.porcelain.ingest import ingest as run
    from datarepo.porcelain.ingest import spout

    message = _paragraphs(messages) if messages else None
    if every is not None or seconds is not None:
        if src != "-":
            raise click.UsageError("--commit-every and --commit-seconds read a stream: give - as SRC")
        from datarepo.sources import stdin

        for r in spout(_repo(), stdin(), prefix, every, seconds, message):
            _print_ingested(r, as_json)
            sys.stdout.flush()
        return
    with _progress("ingesting") as bar:
        r = run(_repo(), src, prefix, message, append, progress=bar, follow=follow)
    for note in r.notes:
        click.echo(f"note: {one_line(note)}", err=True)
    _print_ingested(r, as_json)


def _print_ingested(r: Any, as_json: bool) -> None:
    if as_json:
        _json({"commit": r.commit, **r.changes.to_json(), "datums": r.datums, "stored": r.stored,
               "stored_bytes": r.stored_bytes, "reused_files": r.reused_files})
        return
    c = r.changes
    head = f"[{r.commit[:12]}]" if r.commit else "no change;"
    click.echo(
        f"{head} {len(c.added)} added, {len(c.modified)} modified, {len(c.deleted)} deleted; "
        f"{r.datums} datums, {r.stored} newly stored ({r.stored_bytes} bytes), {r.reused_files} source files unchanged"
    )


@main.command()
@click.option("--rebuild-index", is_flag=True,
              help="Write a missing or mismatched shard .idx anew from its tar, and rebuild index.sqlite's locations.")
@json_option
def fsck(rebuild_index: bool, as_json: bool) -> None:
    """Re-hash every object and shard and check that every ref reaches whole data."""
    from datarepo.porcelain.maintenance import fsck as run

    with _progress("checking") as bar:
        r = run(_repo(), rebuild_index=rebuild_index, progress=bar)
    if as_json:
        _json(r.__dict__)
    else:
        for p in r.problems:
            click.echo(f"error: {one_line(p)}")
        for g in r.garbage:
            click.echo(f"garbage: {one_line(g)} (gc removes it)")
        for s in r.rebuilt:
            click.echo(f"rebuilt: the index of shard {s}")
        retired = f"; {r.retired} retired shards (gc prunes them)" if r.retired else ""
        click.echo(f"checked {r.objects} objects, {r.shards} shards, {r.datums} reachable datums; "
                   f"{len(r.problems)} problems, {r.unreachable_objects} unreachable objects"
                   + retired + ("; index rebuilt" if r.reindexed else ""))
    if r.problems:
        sys.exit(1)


@main.command()
@click.option("-n", "--dry-run", is_flag=True, help="Only say what would be deleted.")
@click.option("--prune", type=Age(), default=None, metavar="AGE",
              help="Delete retired shards once they are this old: 'now', or e.g. 30m, 2h, 14d (default 1h).")
@json_option
def gc(dry_run: bool, prune: float | None, as_json: bool) -> None:
    """Delete objects that no branch, tag, run or recent reflog entry reaches.

    Shards without a reachable datum (and those repack replaced) are retired first:
    kept aside for readers that still use them, and deleted once --prune's age is over.
    """
    from datarepo.porcelain.maintenance import PRUNE_AFTER
    from datarepo.porcelain.maintenance import gc as run

    prune_after = PRUNE_AFTER if prune is None else prune
    r = run(_repo(), dry_run=dry_run, prune_after=prune_after)
    if as_json:
        _json(r.__dict__)
        return
    verb = "would delete" if dry_run else "deleted"
    retire = "would retire" if dry_run else "retired"
    click.echo(f"{verb} {r.objects} objects, {r.pruned} retired shards, {r.garbage} leftover files "
               f"({r.bytes_freed} bytes); {retire} {r.shards} shards")


@main.command()
@click.option("--all", "all_shards", is_flag=True, help="Rewrite every shard, not only small or sparse ones.")
@json_option
def repack(all_shards: bool, as_json: bool) -> None:
    """Merge small or sparse shards into new full ones."""
    from datarepo.porcelain.maintenance import repack as run

    with _progress("repacking") as bar:
        r = run(_repo(), all_shards=all_shards, progress=bar)
    if as_json:
        _json(r.__dict__)
        return
    click.echo(f"repacked {r.shards_in} shards into {r.shards_out} ({r.datums} datums, {r.bytes_before} -> {r.bytes_after} bytes)")
    if r.unreadable:
        shards = ", ".join(r.kept[:3]) + (f" and {len(r.kept) - 3} more" if len(r.kept) > 3 else "")
        click.echo(f"error: {r.unreadable} reachable datums did not read whole: kept shard {shards} "
                   "(fsck names them; add their files to store them again)", err=True)
        sys.exit(1)


@main.command()
@click.argument("rev")
@click.argument("dest", type=NonEmptyPath(file_okay=False))
@click.option("--prefix", default="", help="Only keys starting with this.")
@click.option("--shards", is_flag=True, help="Write a WebDataset shard set (000000.tar, …) instead of files.")
@click.option("--shard-size", type=Size(), default=None, help="Target shard size with --shards, e.g. 1G (default: the repository's).")
def export(rev: str, dest: str, prefix: str, shards: bool, shard_size: int | None) -> None:
    """Write the datums of REV to a folder, or to WebDataset shards."""
    from pathlib import Path

    from datarepo.porcelain.export import export as run

    only_with("--shards", shards, "shard_size")
    with _progress("exporting") as bar:
        r = run(_repo(), rev, Path(dest), prefix, shards, shard_size, bar)
    click.echo(f"exported {r.datums} datums ({r.files} files, {r.bytes} bytes) to {dest}")


def _quiet_stdout() -> None:
    """Points stdout at /dev/null, so that what is still buffered for a closed pipe goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _in_utf8_mode() -> None:
    """Runs the command again in Python's UTF-8 mode where the locale's encoding is another
    (``LC_ALL=C`` with ``PYTHONUTF8=0``, a Latin-1 locale): Python would decode the arguments
    and the file names with it, so a key typed, or a file named, in UTF-8 (as keys are) would
    not be that key. In UTF-8 mode they are read byte for byte, as git reads them."""
    if sys.flags.utf8_mode or sys.getfilesystemencoding() == "utf-8" or not sys.orig_argv:
        return
    os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]])


def _buffered_stdout() -> None:
    """Gives stdout a buffer (PYTHONUNBUFFERED leaves it a raw file: a raw write may write
    only part of what it is given, a pipe whose reader went away after 64 KiB, and say so
    only in its return value, which a text stream ignores: the rest would be lost and the
    command end with status 0; a buffer writes all or raises, as a pipe closed early must,
    status 141), over a :class:`_Stdout`."""

    out = sys.stdout
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_Stdout(fd)), encoding=out.encoding, errors=out.errors,
                                  line_buffering=out.line_buffering)


class _Stdout(io.RawIOBase):
    """Standard output's descriptor as a raw file whose writes wait where it is non-blocking
    (a parent set O_NONBLOCK on a pipe or terminal it shares with this process: a write
    would fail with EAGAIN and the rest of the output be lost), as git's do, and whose
    errors name standard output (``No space left on device: standard output``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, data: Any) -> int:
        import select

        while True:
            try:
                return os.write(self.fd, data)
            except BlockingIOError:
                select.select([], [self.fd], [])
            except OSError as e:
                raise type(e)(e.errno, e.strerror, "standard output") from None


def run() -> None:
    """The console script: runs one command, then ends the process without freeing, one
    by one, the objects the command built (a status of 100,000 files spent 20-30 ms on
    that). Commands finish their writes, and reap any process they start, before they
    return; output is flushed here."""
    from datarepo.porcelain import retain_until_exit

    _in_utf8_mode()
    retain_until_exit()
    # A parent that ignored SIGCHLD passes that on through exec: the kernel would then reap
    # this command's children itself, and each wait for a worker or a pipeline's program
    # would fail (ECHILD) or read status 0, a program that failed taken as one that did not.
    # So does a mask of blocked signals: Ctrl-C (SIGINT) and timeout(1)'s SIGTERM would do
    # nothing, and a stop of the workers would wait for the kill that follows.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    _stop_on_sigterm()
    # Started with a descriptor closed (>&-, 2>&-), Python has no stream for it: errors then
    # go nowhere, but the command's output has nowhere to go.
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open until the process ends)
    if sys.stdout is None:
        print("Error: standard output is closed (redirect it to /dev/null to discard what is printed)", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)
    _buffered_stdout()
    try:
        main()
        code = 0
    except SystemExit as e:  # how click ends every command
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except OSError as e:  # writing --help or --version, before any command runs (stdout is /dev/full)
        print(f"Error: {one_line(_os_error(e))}", file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or SIGPIPE_EXIT
    except OSError as e:  # stdout is /dev/full, a full disk, a terminal gone (EIO)
        if not code:  # (else the command's own error line told of it when a write failed)
            print(f"Error: {one_line(_os_error(e))}", file=sys.stderr)
            code = 1
    sys.stderr.flush()
    atexit._run_exitfuncs()  # (what removes temporary files: a private index, a remote's cache)
    os._exit(code)


# The commands of pipelines and of training runs live in modules of their own; importing
# them adds them to ``main``.
from datarepo import cli_pipelines, cli_runs  # noqa: F401

if __name__ == "__main__":  # python -m datarepo.cli: the module as imported, with every command
    from datarepo.cli import run as run_imported

    run_imported()

# The commands of remotes (remote, push, fetch, pull, clone) live in a module of their own.
from datarepo import cli_remote  # noqa: E402, F401
