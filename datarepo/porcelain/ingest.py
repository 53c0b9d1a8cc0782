"""ingest: take a folder, a tar/WebDataset shard set or JSON lines into the repository
under a prefix, without a copy in the work tree, storing only what is new or changed."""

from __future__ import annotations

import base64
import binascii
import glob
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from datarepo import tree as trees
from datarepo.errors import CorruptObjectError, InvalidInputError
from datarepo.hashing import Oid, datum_id, hash_bytes
from datarepo.index import trusted
from datarepo.objects import TreeEntry
from datarepo.porcelain import Changes, Progress, begin, tick
from datarepo.porcelain.history import changes_of, diff
from datarepo.repo import Repo
from datarepo.shards import LARGE_FILE, FileRange, MemberData, iter_tar, member_hash, member_size, split_member_name
from datarepo.worktree import check_key, group, scan
from datarepo.write import RepoWriter, store_files

TAR_SUFFIXES = (".tar",)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class NewDatum:
    """A datum read from the source: its members, their hashes and its id."""

    key: str
    members: dict[str, MemberData]
    hashes: dict[str, Oid]

    @property
    def datum(self) -> Oid:
        return datum_id(self.hashes)

    @property
    def size(self) -> int:
        return sum(map(member_size, self.members.values()))


@dataclass
class _Run:
    """What one ingest has seen so far."""

    repo: Repo
    sink: RepoWriter
    notes: list[str] = field(default_factory=list)
    reused_files: int = 0
    remembered: dict[str, str] = field(default_factory=dict)

    def stored(self, datum: Oid) -> bool:
        return datum in self.sink.written or bool(self.repo.stored([datum]))


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
    repo: Repo, src: str, prefix: str, message: str | None = None, append: bool = False, progress: Progress = None
) -> IngestResult:
    """Makes ``prefix`` mirror ``src`` (or, with ``append``, adds to it) in one new commit."""
    prefix = _norm_prefix(prefix)
    with repo.lock:
        with repo.writer() as sink:  # every shard is published and adopted before the ref moves
            run = _Run(repo, sink)
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


def _norm_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        raise InvalidInputError("ingest needs a non-empty --prefix (the folder the source appears under)")
    check_key(prefix)
    return prefix + "/"


def _mark_sparse(repo: Repo, prefix: str) -> None:
    """An ingested prefix is not materialised in the work tree, so status ignores it there."""
    if repo.worktree is not None and not (repo.worktree / prefix).exists() and prefix not in repo.config.sparse:
        repo.config = repo.config.with_sparse(prefix)
        repo.config.save(repo.dotdir / "config.toml")


def _tree_changes(
    repo: Repo, parent: Oid | None, prefix: str, entries: dict[str, TreeEntry], append: bool
) -> dict[str, TreeEntry | None]:
    tree = repo.read_commit(parent).tree if parent else None
    old = {e.key: e.datum for e in trees.iter_tree(repo.store, tree, prefix)} if tree else {}
    changes: dict[str, TreeEntry | None] = {k: e for k, e in entries.items() if old.get(k) != e.datum}
    if not append:
        changes.update((k, None) for k in old if k not in entries)
    return changes


def _read_source(run: _Run, src: str, progress: Progress) -> Iterator[TreeEntry]:
    """The datums of ``src``, each stored unless some shard holds it already."""
    path = Path(src)
    if src != "-" and path.is_dir():
        yield from _folder(run, path, progress)
        return
    if src == "-":
        items = _jsonl(sys.stdin.buffer, "<stdin>")
    elif files := sorted(glob.glob(src)) if any(c in src for c in "*?[") else _braces(src):
        items = (item for name in files for item in _remembered_file(run, Path(name)))
    else:
        raise InvalidInputError(f"no such file or directory: {src}")
    begin(progress, None)  # a stream: how many datums it holds is not known beforehand
    for item in items:
        if isinstance(item, NewDatum):
            item = run.sink.put(item.key, item.members, item.hashes)
        tick(progress)
        yield item


def _braces(src: str) -> list[str]:
    if "{" in src:
        import braceexpand

        return [p for p in braceexpand.braceexpand(src) if os.path.exists(p)]
    return [src] if os.path.exists(src) else []


def _folder(run: _Run, root: Path, progress: Progress) -> list[TreeEntry]:
    """Stores a folder's datums as ``add`` does (over two processes, where that pays), with a
    stat cache of its own: files unchanged since the last ingest of this folder are not read."""
    scope = f"ingest:{root.resolve()}"
    found = scan(root)
    found.raise_errors()
    run.notes.extend(found.notes)
    members = group(sorted(found.files), run.repo.config.grouping, run.notes)
    cache = run.repo.index.load_stats(scope)
    keys = sorted(members)
    stored = store_files(run.repo, root, members, keys, found.files, cache, progress)
    run.sink.written.update(stored.written)
    run.reused_files += sum(map(len, members.values())) - stored.hashed
    with run.repo.index.transaction():
        run.repo.index.drop_stats(set(cache) - set(found.files), scope)
        run.repo.index.record_hashes(stored.read, found.started_ns, scope, bulk=not cache)
    return [TreeEntry(k, stored.datums[k], stored.sizes[k]) for k in keys]


def _remembered_file(run: _Run, path: Path) -> Iterator[NewDatum | TreeEntry]:
    """Reads one tar or JSON-lines file, or replays what it held if it has not changed."""
    name = f"ingest:{path.resolve()}"
    st = path.stat()
    seen = time.time_ns()
    memo = run.repo.index.get_meta(name)
    if memo is not None:
        saved = json.loads(memo)
        entries = [TreeEntry(k, Oid(d), s) for k, d, s in saved["entries"]]
        if trusted(tuple(saved["stat"]), (st.st_size, st.st_mtime_ns, st.st_ino)) and all(run.stored(e.datum) for e in entries):
            run.reused_files += 1
            yield from entries
            return
    taken: list[TreeEntry] = []
    for item in _read_file(path, run.notes):
        taken.append(TreeEntry(item.key, item.datum, item.size))
        yield item
    stat = [st.st_size, st.st_mtime_ns, st.st_ino, seen, ""]
    run.remembered[name] = json.dumps({"stat": stat, "entries": [list(e) for e in taken]})


def _read_file(path: Path, notes: list[str]) -> Iterator[NewDatum]:
    if path.name.endswith(JSONL_SUFFIXES):
        with open(path, "rb") as f:
            yield from _jsonl(f, str(path))
    elif path.name.endswith(TAR_SUFFIXES):
        yield from _tar(path, notes)
    else:
        raise InvalidInputError(f"cannot ingest {path}: expected a folder, a .tar shard or a .jsonl file")


def _tar(path: Path, notes: list[str]) -> Iterator[NewDatum]:
    """Groups consecutive tar members with the same key into datums, as WebDataset does.
    Members that are not regular files (links, devices, fifos) are passed over with a note."""
    key: str | None = None
    members: dict[str, MemberData] = {}
    hashes: dict[str, Oid] = {}
    passed_over: list[str] = []
    with open(path, "rb") as f:
        for m in iter_tar(f, str(path), passed_over):
            if not _is_utf8(m.name):
                raise InvalidInputError(f"{path}: member name {m.name!r} is not valid UTF-8")
            k, ext = split_member_name(m.name.removeprefix("./"))
            if not ext or k.endswith("/"):
                continue
            if k != key and members:
                yield NewDatum(key, members, hashes)  # type: ignore[arg-type]
                members, hashes = {}, {}
            key = k
            if ext in members:
                raise InvalidInputError(f"{path}: member {m.name} appears twice in one sample")
            members[ext], hashes[ext] = _member(f, path, m.offset, m.size)
    if members:
        yield NewDatum(key, members, hashes)  # type: ignore[arg-type]
    if passed_over:
        more = f" (and {len(passed_over) - 1} more)" if len(passed_over) > 1 else ""
        notes.append(f"skipped {path}: member {passed_over[0]!r}{more} is not a regular file (a link, device or fifo)")


def _is_utf8(text: str) -> bool:
    """False for a name read from bytes that are not UTF-8 (as surrogate escapes) or from JSON
    with a lone surrogate: keys and extensions are stored as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _member(f: BinaryIO, path: Path, offset: int, size: int) -> tuple[MemberData, Oid]:
    if size > LARGE_FILE:
        span = FileRange(path, offset, size)
        try:
            oid = member_hash(span)
        except CorruptObjectError:
            raise InvalidInputError(f"{path}: truncated member at byte {offset}") from None
        return span._replace(oid=oid), oid
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise InvalidInputError(f"{path}: truncated member at byte {offset}")
    return data, hash_bytes(data)


def _jsonl(stream: BinaryIO, name: str) -> Iterator[NewDatum]:
    """One datum a line: ``{"__key__": k, ext: text | {"base64": …} | {"text": …} | number}``."""
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            key = obj.pop("__key__")
            if not isinstance(key, str) or not isinstance(obj, dict) or not obj:
                raise ValueError("needs a string __key__ and at least one member")
            if not _is_utf8("".join((key, *obj))):
                raise ValueError("a key or member name is not valid UTF-8")
            members = {ext: _member_bytes(v) for ext, v in obj.items() if not ext.startswith("__")}
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
            raise InvalidInputError(f"{name}:{lineno}: bad JSON-lines datum ({e!s:.80})") from None
        yield NewDatum(key, members, {ext: hash_bytes(b) for ext, b in members.items()})  # type: ignore[misc]


def _member_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool) or value is None:
        raise ValueError(f"unsupported member value {value!r}")
    if isinstance(value, (int, float)):
        return str(value).encode()
    if isinstance(value, dict) and set(value) == {"base64"}:
        return base64.b64decode(value["base64"], validate=True)
    if isinstance(value, dict) and set(value) == {"text"} and isinstance(value["text"], str):
        return value["text"].encode("utf-8")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    raise ValueError(f"unsupported member value {value!r:.40}")
