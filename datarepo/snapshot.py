"""The status snapshot: what the last ``status`` saw, so the next one only redoes changed keys.

A snapshot holds the work tree's (size, mtime_ns, inode) per file and the
status computed from it, under a token of everything else status depends on:
HEAD, the staging area's version, grouping, sparse prefixes, the ignore file
and ``--follow``. Files whose mtime was "racy" when seen are listed with a
stat no file has, so they are always looked at again. Like ``index.sqlite``
it is only a cache: without it, status does the full work.

The listing (megabytes for a large tree) is a plain file beside
``index.sqlite``, replaced by rename and never fsync'ed: writing it into
SQLite cost several times as much. The snapshot row names the listing's
hash, so a listing torn by a crash or replaced by a concurrent status is
noticed and not used.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from datarepo.changes import Changes
from datarepo.fsutil import atomic_write
from datarepo.hashing import hash_bytes
from datarepo.repo import Repo
from datarepo.statcache import RACY_NS
from datarepo.statcols import MTIME, FileStat, Packed, StatColumns, listing_bytes, listing_parts
from datarepo.worktree import IGNORE_FILE, Scan, split_path

META_NAME = "status-snapshot"
# The status's parts, each a ``meta`` row of its own beside the snapshot's head (``META_NAME``):
# a ``commit`` carries the snapshot over by rewriting the head and two parts, without reading
# and parsing the staged part, which after a first add lists every key (14 ms for 50,000).
PARTS = ("staged", "unstaged", "total", "group_notes", "recheck")
LISTING_FILE = "index.listing"
UNTRUSTED = (-1, -1, -1)


@dataclass
class Snapshot:
    """A saved status. Its file list is parsed only when some file changed."""

    repo: Repo
    digest: str
    status: dict[str, Any]
    listing: str  # the hash of the listing file it was saved with

    @cached_property
    def packed(self) -> Packed | None:
        """The saved listing as (names, stats), the form of :attr:`Scan.packed`."""
        try:
            raw = (self.repo.dotdir / LISTING_FILE).read_bytes()
        except OSError:
            return None
        return listing_parts(raw) if hash_bytes(raw) == self.listing else None

    @cached_property
    def files(self) -> dict[str, FileStat]:
        columns = StatColumns.unpacked(self.packed) if self.packed is not None else None
        return columns.files() if columns is not None else {}


def digest(found: Scan) -> str:
    """One hash of a scan's (path, stat) listing in scan order. The order of an unchanged
    tree's listing is stable; if it moves, the digests differ and status takes the slower path."""
    return hash_bytes(listing_bytes(found.packed))


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


def _part(name: str) -> str:
    return f"{META_NAME} {name}"


def _head(rows: dict[str, Any], tok: str) -> dict[str, Any] | None:
    """The snapshot's head among ``rows`` (``meta`` rows by name), if it was saved under ``tok``."""
    try:
        head = json.loads(rows[META_NAME])
        return head if head["token"] == tok and isinstance(head["parts"], dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def _parts(rows: dict[str, Any], head: dict[str, Any], names: Iterable[str]) -> dict[str, Any] | None:
    """The parts ``names`` among ``rows``, parsed; None if any is missing or is not the text
    the head names by its hash: a part that does not read as it was written is damage, and
    a snapshot with a damaged part is no snapshot (the next status does the full work)."""
    try:
        texts = {n: rows[_part(n)] for n in names}
        if any(hash_bytes(t.encode()) != head["parts"][n] for n, t in texts.items()):
            return None
        return {n: json.loads(t) for n, t in texts.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def load(repo: Repo, tok: str) -> Snapshot | None:
    rows = repo.index.get_metas([META_NAME, *map(_part, PARTS)])
    if (head := _head(rows, tok)) is None or (status := _parts(rows, head, PARTS)) is None:
        return None
    try:
        return Snapshot(repo, head["digest"], status, head["listing"])
    except (KeyError, TypeError):
        return None


def drop(repo: Repo) -> None:
    """Forgets the snapshot: the next status or add looks at every key."""
    with repo.index.transaction():
        repo.index.db.execute("DELETE FROM meta WHERE name=?", (META_NAME,))


def _store(repo: Repo, head: dict[str, Any], parts: dict[str, str]) -> None:
    """Writes a snapshot's head and its parts (as JSON text), in one transaction. The head
    names each part by its hash (the parts not given keep theirs)."""
    head = {**head, "parts": {**head.get("parts", {}), **{n: hash_bytes(t.encode()) for n, t in parts.items()}}}
    with repo.index.transaction():
        repo.index.set_meta(META_NAME, json.dumps(head))
        for name, text in parts.items():
            repo.index.set_meta(_part(name), text)


def save(repo: Repo, tok: str, found: Scan, status: dict[str, Any], seen: str | None = None) -> None:
    """Saves a status with the files it saw (``seen``: their digest, if already known)."""
    status = {"recheck": [], **status}
    horizon = found.started_ns - RACY_NS
    # A file too recent to trust is listed with a stat no file has: it always
    # counts as changed while it exists, and its deletion is still noticed.
    # No scan can match the digest of such a listing, so none is stored for it.
    names, stats = found.packed
    if seen is None:
        seen = digest(found)
    mtimes = array("q", stats)[MTIME::3]
    if mtimes and max(mtimes) >= horizon:
        names, stats = StatColumns.of({p: st if st[MTIME] < horizon else UNTRUSTED for p, st in found.files.items()}).packed()
        seen = ""
    listing = listing_bytes((names, stats))
    with repo.index.best_effort():  # (a listing without its head is no snapshot: its hash is not named)
        atomic_write(repo.dotdir / LISTING_FILE, listing, mode=0o644, durable=False)
        head = {"token": tok, "digest": seen, "listing": hash_bytes(listing)}
        _store(repo, head, {n: json.dumps(status[n]) for n in PARTS})


def changed_keys(snap: Snapshot, found: Scan, grouping: str) -> set[str] | None:
    """Keys whose files differ from the snapshot's; None if a path cannot be grouped."""
    paths = _changed_in_place(snap.packed, found)
    if paths is None:  # files came or went: compare by path
        old, files = snap.files, found.files
        paths = [p for p, _ in files.items() - old.items()]  # set operations: done in C
        paths.extend(old.keys() - files.keys())
    keys = set()
    for p in paths:
        split = split_path(p, grouping)
        if split is None:
            return None
        keys.add(split[0])
    return keys


_STAT_BYTES = 24  # three int64s


def _changed_in_place(old: tuple[bytes, bytes] | None, found: Scan, block: int = 64 * _STAT_BYTES) -> list[str] | None:
    """The paths whose stat changed, if the scan listed the same paths in the same order
    as the snapshot (None if not): the stats are compared a block of 64 files at a time."""
    names, stats = found.packed
    if old is None or old[0] != names or len(old[1]) != len(stats):
        return None
    old_stats, paths, changed = old[1], found.names, []
    for start in range(0, len(stats), block):
        if stats[start : start + block] != old_stats[start : start + block]:
            for i in range(start, min(start + block, len(stats)), _STAT_BYTES):
                if stats[i : i + _STAT_BYTES] != old_stats[i : i + _STAT_BYTES]:
                    changed.append(paths[i // _STAT_BYTES])
    return changed


def changes_from_json(obj: dict[str, list[str]]) -> Changes:
    return Changes(list(obj["added"]), list(obj["modified"]), list(obj["deleted"]))


def merge(old: Changes, keys: set[str], new: Changes) -> Changes:
    """``old`` with every key in ``keys`` reclassified as in ``new``."""
    out = Changes()
    for name in ("added", "modified", "deleted"):
        kept = [k for k in getattr(old, name) if k not in keys]
        getattr(out, name).extend(sorted(kept + getattr(new, name)))
    return out


def carry(repo: Repo, old_token: str, commit: bool = False, moved: Iterable[str] = (), follow: bool = False) -> None:
    """Carries a snapshot over a change of HEAD that rewrote the files of every key it moved.

    Every other key keeps its verdict. The ``moved`` keys are looked at again by the next
    status whatever its scan finds (a file the change wrote and the user then deleted
    leaves no trace in the scan, nor in the listing saved before the change). After a
    ``commit`` of the whole staging area the new HEAD is the old index: nothing is staged
    any more, and the work tree differs from HEAD exactly as it differed from the index.
    """
    rows = repo.index.get_metas([META_NAME, _part("unstaged"), _part("recheck")])
    if (head := _head(rows, old_token)) is None or (old := _parts(rows, head, ("unstaged", "recheck"))) is None:
        return
    parts = {"staged": json.dumps(Changes().to_json()), "total": rows[_part("unstaged")]} if commit else {}
    recheck = set(moved)
    if recheck:
        recheck.update(old["recheck"])
        parts["recheck"] = json.dumps(sorted(recheck))
    _store(repo, {**head, "token": token(repo, follow)}, parts)
