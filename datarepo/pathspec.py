"""Path arguments (git's pathspecs): how every command that takes work-tree paths reads them.

One rule for ``add``, ``rm``, ``status``, ``diff`` and ``ls`` (``docs/quickstart.md``,
"Naming paths"): an argument is taken from the current folder (the folder itself, as the system
gives it, where it was reached through a symbolic link: git's rule), and written out
plainly (``./x``, ``x/``, ``sub/../x``, an absolute path). Then

- an argument that names an existing file or folder is that path (``a[1].txt`` too);
- else, one that holds ``*``, ``?`` or ``[`` is a glob (:class:`datarepo.tree.KeyGlob`: ``*``
  within a name, ``**`` across names), matched against the work tree's files, the tracked
  keys and the paths of their members, and the folders above them;
- else it names a tracked key (by its own name or a member's path), the key of files in
  the work tree (``add x`` of x.jpg and x.cls), or a folder of tracked keys.

Every argument must match something (git's "pathspec did not match any files").
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from datarepo.errors import InvalidInputError
from datarepo.keys import join, split
from datarepo.repo import DOTDIR, Repo
from datarepo.tree import KeyGlob, glob_literal_prefix

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Pathspec:
    """One path argument: as typed, and as a work-tree path from the top ("" for the top
    itself) or, for a glob, the glob from the top."""

    arg: str
    path: str
    kind: str  # "file" or "dir" (it exists), "glob", or "missing"

    @property
    def within(self) -> str:
        """The work-tree folder (or file) every path it selects lies in ("" for any)."""
        if self.kind != "glob":
            return self.path.rstrip("/")
        return glob_literal_prefix(self.path).rpartition("/")[0]


def parse(root: Path, args: Iterable[str]) -> list[Pathspec] | None:
    """Path arguments as :class:`Pathspec`; None for none, or where one is the whole tree.

    Raises:
        InvalidInputError: one is empty, outside the work tree, or in the repository's folder.
    """
    specs = [_parse(root, arg) for arg in args]
    return None if not specs or any(s.path == "" for s in specs) else specs


def _parse(root: Path, arg: str) -> Pathspec:
    if not arg:
        raise InvalidInputError("an empty path names nothing (use . for the whole work tree)")
    full = Path(os.path.abspath(arg))
    if not full.is_relative_to(root):  # named through a symbolic link to the work tree (or a folder above it)?
        full = Path(os.path.realpath(full.parent)) / full.name
    if not full.is_relative_to(root):
        raise InvalidInputError(f"'{arg}' is outside the work tree {root}")
    rel = full.relative_to(root).as_posix()
    rel = "" if rel == "." else rel
    if rel == DOTDIR or rel.startswith(DOTDIR + "/"):
        raise InvalidInputError(f"'{arg}' is in {DOTDIR}/, the repository's own folder, which holds no work-tree path")
    folder = arg.replace(os.sep, "/").rpartition("/")[2] in ("", ".", "..")  # ``x/``, ``x/.``: a folder, not a file
    if full.is_dir() and not full.is_symlink():
        return Pathspec(arg, rel, "dir")
    if os.path.lexists(full) and not folder:
        return Pathspec(arg, rel, "file")
    if any(c in rel for c in GLOB_CHARS):
        return Pathspec(arg, rel, "glob")
    return Pathspec(arg, rel + "/" if folder else rel, "missing")


@dataclass(frozen=True)
class Selection:
    """The keys that path arguments select: those named, and those under a folder.
    Looked up in sets, so ``add`` of thousands of files (a shell glob) does not test every
    key against every argument: 3,000 arguments over 10,000 keys took 3.4 s that way."""

    keys: frozenset[str]
    dirs: frozenset[str]  # each ends in "/"

    def __contains__(self, key: str) -> bool:
        if key in self.keys:
            return True
        at = key.find("/")
        while at >= 0:
            if key[: at + 1] in self.dirs:
                return True
            at = key.find("/", at + 1)
        return False


def select(repo: Repo, specs: list[Pathspec] | None, files: Iterable[str] | None,
           tracked: Callable[[], dict[str, str]]) -> Selection | None:
    """The keys that ``specs`` select (None: every key), the one rule of every command that
    takes paths. ``files`` are the work-tree files the command looks at (None: it looks only
    at tracked keys, as ``rm``); ``tracked()`` gives the tracked keys and their datums, asked
    only where an argument is not in the work tree (or ``files`` is None).

    Raises:
        InvalidInputError: an argument matches nothing.
    """
    if specs is None:
        return None
    looked_up = _Universe(repo, files, tracked)
    keys: set[str] = set()
    dirs: set[str] = set()
    for spec in specs:
        named_keys, named_dirs = looked_up.named(spec)
        keys |= named_keys
        dirs |= named_dirs
    return Selection(frozenset(keys), frozenset(dirs))


class _Universe:
    """What path arguments are matched against: the work tree's files (None: not looked
    at), and the tracked keys, their datums and member paths, read when first needed."""

    def __init__(self, repo: Repo, files: Iterable[str] | None, tracked: Callable[[], dict[str, str]]) -> None:
        self.repo, self.grouping = repo, repo.config.grouping
        self.files = list(files) if files is not None else None
        self._tracked = tracked

    @cached_property
    def datums(self) -> dict[str, str]:
        """The tracked keys and their datums."""
        return self._tracked()

    @cached_property
    def sorted_keys(self) -> list[str]:
        return sorted(self.datums)

    @cached_property
    def file_keys(self) -> set[str]:
        """The keys of the work tree's files."""
        return {split(f, self.grouping)[0] for f in self.files or ()}

    def named(self, spec: Pathspec) -> tuple[set[str], set[str]]:
        """The keys and folders (each ending in "/") one argument selects.

        Raises:
            InvalidInputError: it matches nothing.
        """
        if spec.kind == "dir":
            named: tuple[set[str], set[str]] = (set(), {spec.path + "/"})
        elif spec.kind == "file":
            named = (_keys_of(spec.path, self.grouping), set())
        elif spec.kind == "glob":
            named = self._globbed(spec.path)
        else:
            named = self._missing(spec.path)
        if spec.kind in ("file", "dir"):  # (it exists: a command that looks at files needs no more)
            matched = self.files is not None or self._tracks(*named)
        elif spec.kind == "glob":  # (all it selects, it matched)
            matched = bool(named[0] or named[1])
        else:  # (the keys it names are tracked or have files; a folder must hold a tracked key)
            matched = bool(named[0]) or self._tracks(set(), named[1])
        if not matched:
            where = "file or tracked datum" if self.files is not None else "tracked datum"
            raise InvalidInputError(f"no {where} matches '{spec.arg}'")
        return named

    def _tracks(self, keys: set[str], dirs: set[str]) -> bool:
        """Whether a tracked key is one of ``keys`` or lies in one of ``dirs``."""
        if not keys.isdisjoint(self.datums):
            return True
        for d in dirs:
            at = bisect.bisect_left(self.sorted_keys, d)
            if at < len(self.sorted_keys) and self.sorted_keys[at].startswith(d):
                return True
        return False

    def _missing(self, path: str) -> tuple[set[str], set[str]]:
        """What a path not in the work tree names: a tracked key by its own name or by the
        path of one of its members, the key of work-tree files (``add x`` of x.jpg), or a
        folder of tracked keys (``x/``: only a folder)."""
        if path.endswith("/"):
            return set(), {path}
        candidates = {k: d for k in _keys_of(path, self.grouping) if (d := self.datums.get(k)) is not None}
        exts = self.repo.index.locations.extensions(set(candidates.values())) if self.grouping == "wds" else {}
        keys = {k for k, d in candidates.items() if k == path or any(join(k, e) == path for e in exts.get(d, ()))}
        if not keys and path in self.file_keys:
            keys.add(path)
        return keys, {path + "/"}

    def _globbed(self, pattern: str) -> tuple[set[str], set[str]]:
        """The keys and folders a glob selects: the keys of the files, tracked keys and
        tracked members' paths it matches, and the folders it matches above any of those. As
        in git, a glob also matches the path it spells (the key ``br[1]``)."""
        glob = KeyGlob(pattern)

        def hit(path: str) -> bool:
            return path == pattern or bool(glob.fullmatch(path))

        files = self.files or []
        keys = {k for path in files if hit(path) for k in _keys_of(path, self.grouping)}
        keys.update(key for key, path in self.tracked_paths if hit(path))
        folders: set[str] = set()
        for path in (*files, *self.datums):
            at = path.rfind("/")
            while at > 0 and path[:at] not in folders:
                folders.add(path[:at])
                at = path.rfind("/", 0, at)
        return keys, {f + "/" for f in folders if hit(f)}

    @cached_property
    def tracked_paths(self) -> list[tuple[str, str]]:
        """Each tracked key with its own name, and with the path of each of its members (a
        member whose file was deleted has none in the work tree)."""
        found = [(k, k) for k in self.datums]
        if self.grouping == "wds":  # (with grouping file, the path of a key's one member is the key)
            exts = self.repo.index.locations.extensions(set(self.datums.values()))
            found += [(key, join(key, ext)) for key, datum in self.datums.items() for ext in exts.get(datum, ()) if ext]
        return found


def _keys_of(path: str, grouping: str) -> set[str]:
    """The keys a file's path can name: the path itself (a key named as it is) and its file's
    key; with grouping "wds", also the path up to any other dot of its name (a key a tar or
    JSON lines gave: ``a/b.x`` of ``a/b.x.png``), never a dot of a folder's name."""
    if grouping == "file":
        return {path}
    name = path.rfind("/") + 1
    return {path, split(path)[0], *(path[:i] for i in range(name + 1, len(path)) if path[i] == ".")}
