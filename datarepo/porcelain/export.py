"""export: a revision (or a prefix of it) to a folder, or to a WebDataset shard set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datarepo.errors import InvalidInputError
from datarepo.fsutil import publish
from datarepo.porcelain import Progress, begin, tick
from datarepo.porcelain.checkout import write_datum
from datarepo.porcelain.history import ls
from datarepo.repo import Repo
from datarepo.shards import ShardWriter, member_size
from datarepo.worktree import file_and_dir, member_path


@dataclass(frozen=True)
class ExportResult:
    datums: int
    files: int
    bytes: int


def export(
    repo: Repo,
    rev: str,
    dest: Path,
    prefix: str = "",
    shards: bool = False,
    shard_size: int | None = None,
    progress: Progress = None,
) -> ExportResult:
    """Writes the datums of ``rev`` under ``prefix`` into ``dest`` (which must be empty).

    As a folder, files keep their work-tree names; as shards (``shards=True``),
    ``dest/000000.tar``… hold members named ``<key>.<ext>`` in key order, which
    stock WebDataset reads with ``__key__`` = key.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInputError(f"export destination must be a new or empty directory: {dest}")
    entries = ls(repo, rev, prefix)
    if shards:
        dest.mkdir(parents=True, exist_ok=True)
        begin(progress, None)
        return _to_shards(repo, entries, dest, shard_size or repo.config.shard_size, progress)
    grouping = repo.config.grouping
    found = [(entry.key, repo.locate(entry.datum)) for entry in entries]
    clash, _ = file_and_dir({member_path(key, m.ext, grouping) for key, (_, loc) in found for m in loc.members})
    if clash:  # before anything is written
        raise InvalidInputError(f"cannot export {rev} as files: {clash} would be both a file and a directory")
    dest.mkdir(parents=True, exist_ok=True)
    begin(progress, len(found))
    datums = files = size = 0
    for key, (shard, loc) in found:
        files += len(write_datum(repo, shard, loc, dest, key))
        size += sum(m.size for m in loc.members)
        datums += 1
        tick(progress)
    return ExportResult(datums, files, size)


def _to_shards(repo: Repo, entries, dest: Path, shard_size: int, progress: Progress) -> ExportResult:  # type: ignore[no-untyped-def]
    written = 0
    datums = files = size = 0
    writer: ShardWriter | None = None
    for entry in entries:
        if writer is None:
            writer = ShardWriter(dest)
        members = repo.members(entry.datum)
        writer.add(entry.key, sorted(members.items()))  # type: ignore[arg-type]
        datums, files, size = datums + 1, files + len(members), size + sum(map(member_size, members.values()))
        if writer.size >= shard_size:
            written = _close(writer, dest, written)
            writer = None
        tick(progress)
    if writer is not None:
        _close(writer, dest, written)
    return ExportResult(datums, files, size)


def _close(writer: ShardWriter, dest: Path, n: int) -> int:
    tmp, _ = writer.finish()
    publish(tmp, dest / f"{n:06d}.tar", 0o644)
    return n + 1
