"""ingest: take a folder, a tar/WebDataset shard set or JSON lines into the repository
under a prefix, without a copy in the work tree, storing only what is new or changed."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from datarepo import sources
from datarepo import tree as trees
from datarepo.errors import InvalidInputError
from datarepo.hashing import Oid, is_oid
from datarepo.keys import check_prefix
from datarepo.objects import TreeEntry
from datarepo.porcelain import Changes, Progress, begin, tick
from datarepo.porcelain.history import changes_of, diff
from datarepo.repo import Repo
from datarepo.sources import NewDatum
from datarepo.statcache import trusted
from datarepo.statcols import file_stat
from datarepo.worktree import check_key, group, scan
from datarepo.write import RepoWriter, store_files


@dataclass
class _Run:
    """What one ingest has seen so far."""

    repo: Repo
    sink: RepoWriter
    notes: list[str] = field(default_factory=list)
    reused_files: int = 0
    remembered: dict[str, str] = field(default_factory=dict)
    follow: bool = False  # a folder's symlinks: read as the files they point to

    def all_stored(self, datums: list[Oid]) -> bool:
        """Whether some shard holds each of ``datums``: asked of the index at once (one by one,
        the replay of an unchanged tar of 30,000 datums took 6 s, twice its first ingest)."""
        missing = set(datums).difference(self.sink.written)
        return not missing or len(self.repo.stored(missing)) == len(missing)


def _check_message(message: str | None) -> None:
    """A message given is a message: a blank one is refused, as ``commit`` refuses it (None
    is the default message)."""
    if message is not None and not message.strip():
        raise InvalidInputError("empty commit message (leave out -m for the default one)")


@dataclass(frozen=True)
class IngestResult:
    commit: Oid | None
    changes: Changes
    datums: int
    stored: int
    stored_bytes: int
    reused_files: int
    notes: list[str]


def ingest(
    repo: Repo, src: str, prefix: str, message: str | None = None, append: bool = False, progress: Progress = None,
    follow: bool = False,
) -> IngestResult:
    """Makes ``prefix`` mirror ``src`` (or, with ``append``, adds to it) in one new commit;
    ``follow``: a folder's symlinks are read as the files they point to."""
    _check_message(message)
    prefix = _norm_prefix(prefix)
    with repo.lock:
        with repo.writer() as sink:  # every shard is published and adopted before the ref moves
            run = _Run(repo, sink, follow=follow)
            entries: dict[str, TreeEntry] = {}
            for item in _read_source(run, src, progress):
                full = prefix + check_key(item.key)
                entries[full] = TreeEntry(full, item.datum, item.size)
        parent = repo.head()
        changes = _tree_changes(repo, parent, prefix, entries, append)
        oid = repo.commit(changes, message or f"ingest {src} into {prefix}", parent=parent) if changes else None
        with repo.index.transaction():
            for name, value in run.remembered.items():
                repo.index.set_meta(name, value)
        _mark_sparse(repo, prefix)
    summary = changes_of(diff(repo, parent, oid)) if oid else Changes()
    return IngestResult(oid, summary, len(entries), len(sink.written), sum(sink.written.values()), run.reused_files, run.notes)


def spout(
    repo: Repo, stream: BinaryIO, prefix: str, every: int | None = None, seconds: float | None = None, message: str | None = None
) -> Iterator[IngestResult]:
    """Commits the JSON-lines datums of a long-lived ``stream`` under ``prefix`` as they come
    (a spout, as Pachyderm's): a commit every ``every`` datums, or ``seconds`` after the first
    datum not yet committed, and one at the end of the stream; one result a commit. A spout
    is a log: keys under ``prefix`` are kept, and a key sent again names its newest datum.

    The writer lock is held only while a commit is written (what is not committed yet is
    held in memory, so ``every`` bounds that), so pipelines and other writers commit on the
    same branch between the spout's commits."""
    if every is None and seconds is None:
        raise InvalidInputError("a spout commits every N datums or T seconds: give --commit-every or --commit-seconds")
    if every is not None and every < 1 or seconds is not None and seconds <= 0:
        raise InvalidInputError("--commit-every and --commit-seconds must be positive")
    _check_message(message)
    prefix = _norm_prefix(prefix)
    pending: dict[str, NewDatum] = {}
    count, since, lineno = 0, 0.0, 0
    for line in sources.lines_or_idle(stream, seconds):
        if line is not None:
            lineno += 1
            if not line.strip():
                continue
            item = sources.jsonl_datum(line, f"<stdin>:{lineno}")
            pending[prefix + check_key(item.key)] = item
            count, since = count + 1, since or time.monotonic()
        if count and (every and count >= every or seconds and time.monotonic() - since >= seconds):
            yield _commit_pending(repo, prefix, pending, count, message)
            pending, count, since = {}, 0, 0.0
    if count:
        yield _commit_pending(repo, prefix, pending, count, message)


def _commit_pending(repo: Repo, prefix: str, pending: dict[str, NewDatum], count: int, message: str | None) -> IngestResult:
    with repo.lock:
        with repo.writer() as sink:
            for key, item in pending.items():
                sink.put(key, item.members, item.hashes)
        parent = repo.head()
        changes = _tree_changes(repo, parent, prefix, sink.entries, append=True)
        oid = repo.commit(changes, message or f"spout: {count} datums into {prefix}", parent=parent) if changes else None
        _mark_sparse(repo, prefix)
    summary = changes_of(diff(repo, parent, oid)) if oid else Changes()
    return IngestResult(oid, summary, len(pending), len(sink.written), sum(sink.written.values()), 0, [])


def _norm_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        raise InvalidInputError("ingest needs a non-empty --prefix (the folder the source appears under)")
    check_prefix(prefix)
    return prefix + "/"


def _mark_sparse(repo: Repo, prefix: str) -> None:
    """An ingested prefix is not materialised in the work tree, so status ignores it there."""
    if repo.worktree is not None and not (repo.worktree / prefix).exists() and prefix not in repo.config.sparse:
        repo.config = repo.config.with_sparse(prefix)
        repo.config.save(repo.dotdir / "config.toml")


def _tree_changes(
    repo: Repo, parent: Oid | None, prefix: str, entries: dict[str, TreeEntry], append: bool
) -> dict[str, TreeEntry | None]:
    """What makes ``prefix`` hold ``entries`` (with ``append``, as well as what it holds).
    Only the keys of ``entries`` are looked up in an append, so a spout's commit costs what
    it adds, not what the prefix holds after months of commits."""
    tree = repo.read_commit(parent).tree if parent else None
    if tree is None:
        return dict(entries)
    if append:
        old = trees.lookup_many(repo.store, tree, entries)
        return {k: e for k, e in entries.items() if k not in old or old[k].datum != e.datum}
    changes: dict[str, TreeEntry | None] = dict(entries)
    for e in trees.iter_tree(repo.store, tree, prefix):
        if e.key not in entries:
            changes[e.key] = None
        elif entries[e.key].datum == e.datum:
            del changes[e.key]
    return changes


def _read_source(run: _Run, src: str, progress: Progress) -> Iterator[TreeEntry]:
    """The datums of ``src``, each stored unless some shard holds it already. A key that
    comes twice is refused, naming both places (a source is a set of datums, not a log)."""
    path = Path(src)
    if src != "-" and path.is_dir():
        run.repo.check_outside(path, "ingest source")
        yield from _folder(run, path, progress)
        return
    if src == "-":
        items: Iterator[NewDatum | tuple[TreeEntry, str]] = sources.read_jsonl(sources.stdin(), "<stdin>")
    elif files := sources.expand(src):
        for name in files:
            run.repo.check_outside(Path(name), "ingest source")
            _regular(name)
        items = (item for name in files for item in _remembered_file(run, Path(name)))
    else:
        raise InvalidInputError(f"no such file or directory: {src}")
    begin(progress, None)  # a stream: how many datums it holds is not known beforehand
    seen: dict[str, str] = {}  # key → where it was read
    for item in items:
        if isinstance(item, NewDatum):
            origin = item.origin
            item = run.sink.put(item.key, item.members, item.hashes)
        else:
            item, origin = item
        if (before := seen.get(item.key)) is not None:
            raise InvalidInputError(f"key {item.key!r} comes twice: {before} and {origin}")
        seen[item.key] = origin
        tick(progress)
        yield item


def _regular(name: str) -> None:
    """Refuses a named source that is not a regular file: opening a FIFO waits for a writer
    that may never come, and its stat (size 0) says nothing of what it holds."""
    try:
        mode = os.stat(name).st_mode
    except OSError as e:
        raise InvalidInputError(f"cannot ingest {name}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise InvalidInputError(f"cannot ingest {name}: not a regular file (a stream is read from stdin: -)")


def _folder(run: _Run, root: Path, progress: Progress) -> list[TreeEntry]:
    """Stores a folder's datums as ``add`` does (over two processes, where that pays), with a
    stat cache of its own: files unchanged since the last ingest of this folder are not read."""
    scope = f"ingest:{root.resolve()}"
    found = scan(root, follow=run.follow)
    found.raise_errors()
    run.notes.extend(found.notes)
    members = group(sorted(found.files), run.repo.config.grouping, run.notes)
    cache = run.repo.index.stats.load(scope)
    keys = sorted(members)
    stored = store_files(run.repo, root, members, keys, found.files, cache, progress)
    run.sink.written.update(stored.written)
    run.reused_files += sum(map(len, members.values())) - stored.hashed
    with run.repo.index.transaction():
        run.repo.index.stats.drop(set(cache) - set(found.files), scope)
        run.repo.index.stats.record(stored.read, found.started_ns, scope, bulk=not cache)
    return [TreeEntry(k, stored.datums[k], stored.sizes[k]) for k in keys]


def _memo(text: str | None) -> tuple[tuple[object, ...], list[TreeEntry]] | None:
    """What an earlier ingest remembered of a file (its stat, its entries); None if nothing,
    or if the cache's value does not read as written (a damaged cache: the file is read)."""
    if text is None:
        return None
    try:
        saved = json.loads(text)
        entries = [TreeEntry(check_key(k), Oid(d), s) for k, d, s in saved["entries"] if is_oid(d) and type(s) is int]
        stat = saved["stat"]
        if len(entries) != len(saved["entries"]) or len(stat) != 5 or not all(type(x) is int for x in stat[:4]):
            return None
        return tuple(stat), entries
    except (ValueError, TypeError, KeyError, InvalidInputError):
        return None


def _remembered_file(run: _Run, path: Path) -> Iterator[NewDatum | tuple[TreeEntry, str]]:
    """Reads one tar or JSON-lines file, or replays what it held (with where) if it has not changed."""
    name = f"ingest:{path.resolve()}"
    st = path.stat()
    seen = time.time_ns()
    memo = _memo(run.repo.index.get_meta(name))
    if memo is not None:
        saved_stat, entries = memo
        if trusted(saved_stat, file_stat(st)) and run.all_stored([e.datum for e in entries]):
            run.reused_files += 1
            where = str(path)
            yield from ((e, where) for e in entries)
            return
    taken: list[TreeEntry] = []
    for item in sources.read_file(path, run.notes, run.repo.temp_dir):
        taken.append(TreeEntry(item.key, item.datum, item.size))
        yield item
    stat = [*file_stat(st), seen, ""]
    run.remembered[name] = json.dumps({"stat": stat, "entries": [list(e) for e in taken]})
