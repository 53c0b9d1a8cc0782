"""The status snapshot: what the last ``status`` saw, so the next one only redoes changed keys.

A snapshot holds the work tree's (size, mtime_ns, inode) per file and the
status computed from it, under a token of everything else status depends on:
HEAD, the staging area's version, grouping, sparse prefixes, the ignore file
and ``--follow``. Files whose mtime was "racy" when seen are listed with a
stat no file has, so they are always looked at again. Like the rest of
``index.sqlite`` it is only a cache: without it, status does the full work.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from datarepo.hashing import hash_bytes
from datarepo.index import RACY_NS
from datarepo.porcelain import Changes
from datarepo.repo import Repo
from datarepo.worktree import IGNORE_FILE, MTIME, FileStat, Scan, pack_files, split_path

META_NAME = "status-snapshot"
FILES_NAME = "status-snapshot-files"
UNTRUSTED = (-1, -1, -1)


@dataclass
class Snapshot:
    """A saved status. Its file list is parsed only when some file changed."""

    repo: Repo
    digest: str
    status: dict[str, Any]

    @cached_property
    def files(self) -> dict[str, tuple[int, int, int]]:
        return unpack_files(self.repo.index.get_meta(FILES_NAME))


def digest(found: Scan) -> str:
    """One hash of a scan's (path, stat) listing in scan order. The order of an unchanged
    tree's listing is stable; if it moves, the digests differ and status takes the slower path."""
    names, stats = found.packed
    return hash_bytes(len(found.files).to_bytes(8, "little") + names + stats)


def unpack_files(raw: bytes | str | None) -> dict[str, FileStat]:
    """The inverse of the stored form ``len(names) | names | stats``; {} for anything malformed."""
    if not isinstance(raw, bytes) or len(raw) < 8:
        return {}
    cut = 8 + int.from_bytes(raw[:8], "little")
    stats = array("q")
    try:
        names = raw[8:cut].decode("utf-8", "surrogateescape").split("\x00") if cut > 8 else []
        stats.frombytes(raw[cut:])
    except (UnicodeDecodeError, ValueError):
        return {}
    if len(stats) != 3 * len(names):
        return {}
    it = iter(stats)
    return dict(zip(names, zip(it, it, it)))


def token(repo: Repo, follow: bool) -> str:
    ignore = repo.require_worktree() / IGNORE_FILE
    return json.dumps([
        repo.head(),
        repo.index.get_meta("staged_version"),
        repo.config.grouping,
        list(repo.config.sparse),
        follow,
        hash_bytes(ignore.read_bytes()) if ignore.is_file() else None,
    ])


def load(repo: Repo, tok: str) -> Snapshot | None:
    raw = repo.index.get_meta(META_NAME)
    if raw is None:
        return None
    try:
        obj = json.loads(raw)
        return Snapshot(repo, obj["digest"], obj["status"]) if obj["token"] == tok else None
    except (ValueError, KeyError, TypeError):
        return None


def save(repo: Repo, tok: str, found: Scan, status: dict[str, Any], seen: str | None = None) -> None:
    """Saves a status with the files it saw (``seen``: their digest, if already known)."""
    horizon = found.started_ns - RACY_NS
    # A file too recent to trust is listed with a stat no file has: it always
    # counts as changed while it exists, and its deletion is still noticed.
    # No scan can match the digest of such a listing, so none is stored for it.
    names, stats = found.packed
    if seen is None:
        seen = digest(found)
    mtimes = array("q", stats)[MTIME::3]
    if mtimes and max(mtimes) >= horizon:
        names, stats = pack_files({p: st if st[MTIME] < horizon else UNTRUSTED for p, st in found.files.items()})
        seen = ""
    head = {"token": tok, "digest": seen, "status": status}
    with repo.index.transaction():
        repo.index.set_meta(META_NAME, json.dumps(head))
        repo.index.set_meta(FILES_NAME, len(names).to_bytes(8, "little") + names + stats)


def changed_keys(snap: Snapshot, files: dict[str, FileStat], grouping: str) -> set[str] | None:
    """Keys whose files differ from the snapshot's; None if a path cannot be grouped."""
    old = snap.files
    paths = [p for p, _ in files.items() - old.items()]  # set operations: done in C
    paths.extend(old.keys() - files.keys())
    keys = set()
    for p in paths:
        split = split_path(p, grouping)
        if split is None:
            return None
        keys.add(split[0])
    return keys


def changes_from_json(obj: dict[str, list[str]]) -> Changes:
    return Changes(list(obj["added"]), list(obj["modified"]), list(obj["deleted"]))


def merge(old: Changes, keys: set[str], new: Changes) -> Changes:
    """``old`` with every key in ``keys`` reclassified as in ``new``."""
    out = Changes()
    for name in ("added", "modified", "deleted"):
        kept = [k for k in getattr(old, name) if k not in keys]
        getattr(out, name).extend(sorted(kept + getattr(new, name)))
    return out


def carry(repo: Repo, old_token: str, commit: bool = False) -> None:
    """Carries a snapshot over a change of HEAD that rewrote the files of every key it moved.

    Moved keys' files have new stats, so the next status looks at them again;
    every other key keeps its verdict. After a ``commit`` of the whole staging
    area the new HEAD is the old index: nothing is staged any more, and the
    work tree differs from HEAD exactly as it differed from the index.
    """
    snap = load(repo, old_token)
    if snap is None:
        return
    status = snap.status
    if commit:
        status = {**status, "staged": Changes().to_json(), "total": status["unstaged"]}
    head = {"token": token(repo, follow=False), "digest": snap.digest, "status": status}
    with repo.index.transaction():
        repo.index.set_meta(META_NAME, json.dumps(head))
