"""Reading a directory of files as datums: scan, group into datums, hash incrementally."""

from __future__ import annotations

import functools
import os
import re
import stat as stat_mod
import struct
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from datarepo import executor
from datarepo.errors import InvalidInputError
from datarepo.keys import (  # noqa: F401 (check_key: re-exported)
    GIT,
    IGNORE_FILE,
    MAX_KEY_BYTES,
    MAX_KEY_PARTS,
    RESERVED_DIRS,
    check_key,
    check_path,
    join,
    split,
    split_all,
)
from datarepo.statcols import SIZE, UNSTATED, FileStat, Packed, StatColumns, file_stat

NEVER_ADDED = RESERVED_DIRS | {IGNORE_FILE}
# Below this many files, statting them over worker processes costs more than it saves.
PARALLEL_STAT_MIN = 20_000




@dataclass
class Scan:
    """The regular files of a tree, and what was passed over.

    ``names`` lists the files in scan order and ``stats`` holds their (size,
    mtime_ns, inode) as three int64s each: the packed form a snapshot digests
    and saves. The path → stat dict, :attr:`files`, is built only when asked
    for: a no-op status never needs it.
    """

    names: list[str] = field(default_factory=list)
    stats: array | None = None  # None: listed, not stat'ed (each file is, when it is read)
    # Where each directory's files lie in ``names``: (directory, start, stop). Files from
    # anywhere (those reached through a symlink) lie in a span whose directory is None.
    spans: list[tuple[str | None, int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    started_ns: int = 0

    @cached_property
    def files(self) -> dict[str, FileStat]:
        if self.stats is None:
            return dict.fromkeys(self.names, UNSTATED)
        return StatColumns(self.names, self.stats).files()

    @cached_property
    def packed(self) -> Packed:
        if self.stats is None:  # stat'ed file by file as they were read: packed as they are now
            return StatColumns.of(self.files).packed()
        return StatColumns(self.names, self.stats).packed()

    def fill_stats(self, root: Path, read: Iterable[tuple[list[str], array]] = ()) -> None:
        """Gives a scan ``with_stats=False`` the stats of its files: those a hasher took as it
        read them (``read``: the paths it read and their stats, as columns), the others by
        path. A file gone since the scan leaves the listing. (From the columns, in C: 100,000
        stats put back into ``files`` one by one and packed from there took 80-140 ms.)"""
        if self.stats is not None:
            return
        records: dict[str, bytes] = {}  # path → its stat as 24 bytes, as ``stats`` holds it
        for names, stats in read:
            records.update(zip(names, map(itemgetter(0), _RECORD.iter_unpack(stats))))
        found = list(map(records.get, self.names))
        if not all(found):  # files no hasher read (a record is 24 bytes, never empty)
            prefix, gone = os.path.join(root, ""), False
            for i, rel in enumerate(self.names):
                if found[i] is None:
                    try:
                        found[i] = _RECORD_STAT.pack(*lstat(prefix + rel, rel))
                    except FileNotFoundError:  # gone since the scan: as if it had not been there
                        gone = True
            if gone:
                self.names = [rel for rel, record in zip(self.names, found) if record is not None]
                self.spans = [(None, 0, len(self.names))]
                found = [record for record in found if record is not None]
        self.stats = array("q")
        self.stats.frombytes(b"".join(found))
        for name in ("files", "packed"):  # built from the listing again, if asked for
            self.__dict__.pop(name, None)

    def files_of(self, keys: Iterable[str], grouping: str) -> dict[str, FileStat]:
        """The files of ``keys``, with their stats: the files of each key's directory are
        searched as one string (in C), so the listing is neither sorted nor grouped whole.
        A directory with more than ``FEW_KEYS`` of the keys is grouped instead, in one pass:
        each search reads the directory's names again (9,000 keys in a directory of 20,000
        files took 1.5 s to search, against milliseconds to group)."""
        wanted: dict[str, list[str]] = {}
        for key in keys:
            wanted.setdefault(key[: key.rfind("/") + 1], []).append(key)
        # A file's key is its path ("file"); else its name up to a dot, or all of it (no extension).
        ends = ("\x00",) if grouping == "file" else (".", "\x00")
        found = {}
        for rel_dir, start, stop in self.spans:
            near = wanted.get(rel_dir, []) if rel_dir is not None else [k for ks in wanted.values() for k in ks]
            if not near:
                continue
            if len(near) > FEW_KEYS:
                at_key: dict[str, list[int]] = {}
                for i, (key, _) in enumerate(split_all(self.names[start:stop], grouping), start):
                    at_key.setdefault(key, []).append(i)
                found.update((self.names[i], self._stat(i)) for key in near for i in at_key.get(key, ()))
                continue
            joined = "\x00" + "\x00".join(self.names[start:stop]) + "\x00"
            hits = []
            for key in near:
                for end in ends:
                    needle = "\x00" + key + end
                    at = joined.find(needle)
                    while at >= 0:
                        hits.append((at, key))
                        at = joined.find(needle, at + 1)
            i, counted = start, 0
            for at, key in sorted(hits):  # a file's place: the names before it, counted once along the string
                i += joined.count("\x00", counted, at)
                counted = at
                if split(self.names[i], grouping)[0] == key:  # ("x." begins with "x.", yet is a key of its own)
                    found[self.names[i]] = self._stat(i)
        return found

    def _stat(self, i: int) -> FileStat:
        if self.stats is None:
            return self.files[self.names[i]]
        return self.stats[3 * i], self.stats[3 * i + 1], self.stats[3 * i + 2]

    def raise_errors(self, within: list[str] | None = None) -> None:
        """Refuses, with the full list, the entries under ``within`` (work-tree paths, as
        :attr:`datarepo.pathspec.Pathspec.within` gives them; None: all) whose contents cannot be known (a
        directory or ignore file that cannot be read, a file that cannot be stat'ed), and
        those ``within`` names itself; the other entries that cannot be stored (a fifo, a
        name that is not UTF-8) become notes, as git passes them over. Entries elsewhere are
        no concern of a command given ``within``: one bad entry does not block the others."""
        relevant = [p for p in self.errors if within is None or any(_overlap(p.path, w) for w in within)]
        fatal = [p.message for p in relevant if p.unknown or (within is not None and p.path in within)]
        if fatal:
            raise BadEntriesError(fatal)
        self.notes.extend(f"{p.message} (left out)" for p in relevant)
        self.errors = []


class Problem(NamedTuple):
    """An entry a scan could not take: its path (a directory: its contents), why, and whether
    what lies there is unknown (an unreadable directory) rather than known but not storable."""

    path: str
    message: str
    unknown: bool


class BadEntriesError(InvalidInputError):
    """Entries of the work tree that a command cannot pass over; ``details`` lists them all."""

    def __init__(self, details: list[str]) -> None:
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        super().__init__(details[0] + more)
        self.details = details


def _overlap(path: str, other: str) -> bool:
    """Whether one of two work-tree paths ("": the root) lies in the other."""
    return not path or not other or path == other or other.startswith(path + "/") or path.startswith(other + "/")


# Up to this many keys in one directory, :meth:`Scan.files_of` searches the directory's names
# for each; above it, groups them. A search reads about 1.3 ns a name (three searches a key),
# grouping about 0.4 µs a name: they break even near 100 keys.
FEW_KEYS = 64


_RECORD_STAT = struct.Struct("=qqq")  # a FileStat as the int64s of ``Scan.stats``
_RECORD = struct.Struct("24s")  # the same, as bytes


# The ``.datarepoignore`` files that apply in a directory: (the directory, its spec), outermost first.
Rules = tuple[tuple[str, Any], ...]


def _read_ignore(entry: os.DirEntry, rel: str, result: Scan) -> Any | None:
    """The spec (gitignore syntax) a ``.datarepoignore`` holds; None if it cannot be read."""
    if not entry.is_file(follow_symlinks=False):
        result.notes.append(f"skipped {rel}: not a regular file")
        return None
    try:
        raw = Path(entry.path).read_bytes()
    except OSError as e:
        result.errors.append(Problem(rel.rpartition("/")[0], f"cannot read {rel}: {e.strerror}", True))
        return None
    try:
        return parse_ignore(raw, rel)
    except InvalidInputError as e:
        result.errors.append(Problem(rel.rpartition("/")[0], str(e), True))
        return None


def parse_ignore(raw: bytes, name: str = IGNORE_FILE) -> Any:
    """The spec of an ignore file's bytes (gitignore syntax; bytes that are not UTF-8 are
    replaced); InvalidInputError names a line that is not a pattern."""
    import pathspec

    lines = raw.decode("utf-8", errors="replace").splitlines()
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines, pattern_factory=_ignore_pattern())
    except (ValueError, re.error) as e:  # a line that is no pattern (a lone "!" or "\\", a class "[z-a]")
        bad = next((i for i, line in enumerate(lines, 1) if not _is_pattern(line)), None)
        where = f" line {bad}" if bad else ""
        raise InvalidInputError(f"{name}{where}: not a gitignore pattern ({e!s:.80})") from None


def _is_pattern(line: str) -> bool:
    import pathspec

    try:
        pathspec.GitIgnoreSpec.from_lines([line], pattern_factory=_ignore_pattern())
    except (ValueError, re.error):
        return False
    return True


# At most this many runs of folders a pattern may match (``**``, and the any-depth start of a
# pattern without a slash): each more multiplies the time to match a deep path by its length.
MAX_ANY_DEPTH = 2
_ANY_DEPTH = re.compile(r"\.\+")  # how pathspec writes such a run: (?:.+/)? or (?:/.+)?


@functools.cache
def _ignore_pattern() -> type:
    """pathspec's gitignore pattern, whose regular expression cannot backtrack for ever: a
    run of ``*`` followed by more of the same name finds what follows it leftmost, once
    (``*a*a*a*a*b`` over a long name took minutes), and a pattern with more than
    :data:`MAX_ANY_DEPTH` runs of folders is no pattern."""
    from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

    class Pattern(GitIgnoreSpecPattern):  # type: ignore[misc]
        @classmethod
        def pattern_to_regex(cls, pattern: Any) -> tuple[Any, Any]:
            regex, include = super().pattern_to_regex(pattern)
            if isinstance(regex, str):
                if len(_ANY_DEPTH.findall(regex)) > MAX_ANY_DEPTH:
                    raise ValueError(f"more than {MAX_ANY_DEPTH} runs of folders (**) in one pattern")
                regex = _leftmost_stars(regex)
            return regex, include

    return Pattern


_STAR = "[^/]*"


def _leftmost_stars(regex: str) -> str:
    """``regex`` with each ``[^/]*`` that a fixed-length run and then another ``[^/]*``
    follow made atomic and lazy (``(?>[^/]*?abc)``): the run is found leftmost, as a
    wildcard match may take it, and never tried elsewhere again."""
    regex, out, i = _no_slash_in_negated_classes(regex), [], 0
    while (at := regex.find(_STAR, i)) >= 0:
        end = _fixed_run_end(regex, at + len(_STAR))
        if end > at + len(_STAR) and regex.startswith(_STAR, end):
            out.append(f"{regex[i:at]}(?>[^/]*?{regex[at + len(_STAR):end]})")
        else:
            out.append(regex[i:end])
        i = end
    return "".join(out) + regex[i:]


def _no_slash_in_negated_classes(regex: str) -> str:
    """``regex`` with ``/`` added to each negated class (``[!a]`` matches no ``/`` in git,
    where pathspec writes ``[^a]``)."""
    out, i = [], 0
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            out.append(regex[i : i + 2])
            i += 2
        elif c == "[":
            j = i + 1 + (regex[i + 1 : i + 2] == "^")
            j += regex[j : j + 1] == "]"
            while j < len(regex) and regex[j] != "]":
                j += 2 if regex[j] == "\\" else 1
            body = regex[i : j + 1]
            out.append(body.replace("[^", "[^/", 1) if body.startswith("[^") and "/" not in body else body)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _fixed_run_end(regex: str, i: int) -> int:
    """Where the run of one-character atoms (a literal, an escape, a class) that starts at
    ``i`` ends; each atom must not be quantified, nor match ``/`` (it would reach into the
    next name, where leftmost is not enough)."""
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            end = i + 2
            slash = regex[i + 1 : end] == "/"
        elif c == "[":
            negated = regex[i + 1 : i + 2] == "^"
            j = i + 1 + negated
            j += regex[j : j + 1] == "]"
            while j < len(regex) and regex[j] != "]":
                j += 2 if regex[j] == "\\" else 1
            end = j + 1
            slash = ("/" in regex[i + 1 : j]) != negated  # ([^a] takes it, [^/a] and [ab] do not)
        elif c in ".^$*+?{}()|]":
            return i
        else:
            end, slash = i + 1, c == "/"
        if slash or end > len(regex) or regex[end : end + 1] in ("*", "+", "?", "{"):
            return i
        i = end
    return i


def ignored(rules: Rules, rel: str, is_dir: bool) -> bool:
    """Whether ``rules`` exclude a path: as in git, the deepest file with a matching pattern
    decides, and within a file the last matching pattern."""
    name = rel + "/" if is_dir else rel
    if len(rules) == 1:  # the common case: one file's verdict, by its faster yes/no match
        base, spec = rules[0]
        return spec.match_file(name[len(base) :])
    for base, spec in reversed(rules):
        if (verdict := spec.check_file(name[len(base) :]).include) is not None:
            return verdict
    return False


def left_out(root: Path, rel: str) -> str | None:
    """Why a scan passes over the work-tree path ``rel``, or a folder above it (a name never
    added, or an ignore file's pattern), as words that follow "is"; None if it does not."""
    path = root / rel
    return PassedOver(root).why(rel, path.is_dir() and not path.is_symlink())


class PassedOver:
    """Whether, and why, a scan passes over work-tree paths, each folder's ignore file read
    once for them all: what a scan never sees is the user's, and checkout leaves it alone,
    as git leaves ignored files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # each folder: the ignore rules within it, or why a scan passes over it
        self._folders: dict[str, Rules | str] = {"": self._with_file((), "")}

    def __call__(self, rel: str) -> bool:
        return self.why(rel) is not None

    def why(self, rel: str, is_dir: bool = False) -> str | None:
        """Why a scan passes over ``rel`` (a folder, if ``is_dir``) or a folder above it."""
        rel_dir, _, name = rel.rpartition("/")
        rules = self._folder(rel_dir)
        return rules if isinstance(rules, str) else _own_reason(rules, rel, name, is_dir or not rel_dir, is_dir)

    def _folder(self, rel_dir: str) -> Rules | str:
        if rel_dir not in self._folders:
            parent, _, name = rel_dir.rpartition("/")
            above = self._folder(parent)
            if isinstance(above, str):
                found: Rules | str = above
            elif (self.root / rel_dir).is_symlink():
                found = f"in {rel_dir}/, which is a symbolic link (a scan never goes through one to a folder)"
            elif (why := _own_reason(above, rel_dir, name, True, is_dir=True)) is not None:
                found = f"in {rel_dir}/, which is {why}"
            else:
                found = self._with_file(above, rel_dir + "/")
            self._folders[rel_dir] = found
        return self._folders[rel_dir]

    def rules_above(self, rel_dir: str) -> Rules | None:
        """The ignore rules a scan holds as it reaches the folder ``rel_dir``, before reading
        the folder's own ignore file; None if a scan never reaches it (passed over, a symbolic
        link, or not a folder)."""
        if not rel_dir:
            return ()
        rules = self._folder(rel_dir.rpartition("/")[0])
        path = self.root / rel_dir
        if isinstance(rules, str) or path.is_symlink() or not path.is_dir() or self.why(rel_dir, is_dir=True):
            return None
        return rules

    def _with_file(self, rules: Rules, base: str) -> Rules:
        ignore = self.root / base / IGNORE_FILE
        if ignore.is_file() and not ignore.is_symlink():
            try:
                return (*rules, (base, parse_ignore(ignore.read_bytes(), base + IGNORE_FILE)))
            except (OSError, InvalidInputError):
                pass  # (what the scan then reports)
        return rules


def _own_reason(rules: Rules, rel: str, name: str, reserved_here: bool, is_dir: bool = False) -> str | None:
    """Why a scan passes over ``rel`` itself, in a folder it does not pass over: a name never
    added (``reserved_here``: where the names of :data:`NEVER_ADDED` are never added, any
    folder and the top's files), or a pattern of the ignore ``rules``."""
    if name in (IGNORE_FILE, GIT) or name in NEVER_ADDED and reserved_here:
        return "never added"
    if rules and ignored(rules, rel, is_dir):
        return f"ignored by a {IGNORE_FILE} pattern"
    return None


def scan(root: Path, follow: bool = False, skip_prefixes: Iterable[str] = (), with_stats: bool = True,
         only: Iterable[tuple[str, bool]] | None = None) -> Scan:
    """Lists regular files under ``root`` with their (size, mtime_ns, inode).

    Symlinks are noted and skipped unless ``follow``; fifos, sockets, devices
    and names that are not UTF-8 are errors. Without ``with_stats``, regular
    files are only listed, for a caller that reads them all (a
    :class:`Hasher` stats a file as it opens it: cheaper than a ``stat`` by
    path first) and then calls :meth:`Scan.fill_stats`. With ``only``, it lists
    just those work-tree folders (each with whether their subfolders too), as
    a scan of the whole tree would list them.
    """
    result = Scan(started_ns=time.time_ns())
    skip = tuple(p.rstrip("/") + "/" for p in skip_prefixes if p)
    listed: list[tuple[str, list[str]]] = []  # each directory with regular files, and their names
    followed: list[tuple[str, FileStat]] = []  # files reached through a symlink (``follow``)
    stack: list[tuple[str, Rules, bool]] = [("", (), True)] if only is None else _starts(root, only)
    while stack:
        rel_dir, rules, deep = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir)) as it:
                entries = list(it)
        except OSError as e:
            result.errors.append(Problem(rel_dir.rstrip("/"), f"cannot read directory {rel_dir or '.'}: {e.strerror}", True))
            continue
        if (ignore := next((e for e in entries if e.name == IGNORE_FILE), None)) is not None:
            if (spec := _read_ignore(ignore, rel_dir + IGNORE_FILE, result)) is not None:
                rules = (*rules, (rel_dir, spec))
            entries = [e for e in entries if e is not ignore]  # never added, at any depth
        if not rel_dir:
            entries = [e for e in entries if e.name not in NEVER_ADDED]
        entries = _valid_names(entries, rel_dir, result)
        filtered = bool(rules) or bool(skip)
        regular: list[str] = []
        for entry in entries:  # once per file: kept lean
            if filtered and _filtered_out(rel_dir + entry.name, entry, rules, skip, result):
                continue
            if entry.is_file(follow_symlinks=False):  # no extra syscall to classify
                regular.append(entry.name)
            elif entry.is_dir(follow_symlinks=False):
                # Below the root too, as git never adds a nested repository's .git: a clone or a
                # datarepo repository inside the work tree is not data (its shards stored again).
                if deep and entry.name not in NEVER_ADDED:
                    sub = rel_dir + entry.name + "/"
                    if sub.count("/") >= MAX_KEY_PARTS or len(sub) > MAX_KEY_BYTES // 4 and len(sub.encode()) > MAX_KEY_BYTES:
                        result.errors.append(Problem(sub.rstrip("/"), f"{sub[:80]}...: deeper or longer than a key may be", False))
                        continue
                    stack.append((sub, rules, True))
            elif (stat := _classify_other(entry, rel_dir + entry.name, result, follow)) is not None:
                followed.append((rel_dir + entry.name, stat))
        if GIT in regular:  # a submodule's or a git work tree's pointer to its git folder: git's, not data
            regular.remove(GIT)
        if regular:
            listed.append((rel_dir, regular))
    result.names = [rel_dir + name for rel_dir, names in listed for name in names]
    start = 0
    for rel_dir, names in listed:
        result.spans.append((rel_dir, start, start + len(names)))
        start += len(names)
    if with_stats:
        result.stats = _stat_files(root, listed)
        if min(result.stats[::3], default=0) < 0:
            _restat_failed(root, result)
    if followed:
        result.spans.append((None, len(result.names), len(result.names) + len(followed)))
        result.names.extend(rel for rel, _ in followed)
        if result.stats is not None:
            result.stats.extend(chain.from_iterable(st for _, st in followed))
    return result


def _starts(root: Path, only: Iterable[tuple[str, bool]]) -> list[tuple[str, Rules, bool]]:
    """Where a scan of some folders starts: each folder (as a scan names it, ``sub/``) with
    the ignore rules of the folders above it and whether it goes down into subfolders. A
    folder within another it goes down into is left to that one; one a scan of the whole
    tree would never reach is left out."""
    deep: dict[str, bool] = {}
    for rel_dir, down in only:
        deep[rel_dir] = deep.get(rel_dir, False) or down
    passed, starts = PassedOver(root), []
    for rel_dir, down in deep.items():
        parts = rel_dir.split("/")
        if rel_dir and any(deep.get("/".join(parts[:i]), False) for i in range(len(parts))):
            continue
        if (rules := passed.rules_above(rel_dir)) is not None:
            starts.append((rel_dir + "/" if rel_dir else "", rules, down))
    return starts


def _filtered_out(rel: str, entry: os.DirEntry, rules: Rules, skip: tuple[str, ...], result: Scan) -> bool:
    if rules and ignored(rules, rel, entry.is_dir(follow_symlinks=False)):
        return True
    if skip and (rel + "/").startswith(skip) and entry.is_dir(follow_symlinks=False):
        # (said, since the files a user puts there are never added: rare, as an ingest makes
        # a prefix sparse only where the work tree has no such folder)
        result.notes.append(f"skipped {rel}/: a sparse prefix, whose keys only ingest writes")
        return True
    return False


_FAILED = (-1, 0, 0)  # the stat of a file that could not be stat'ed


def _stat_files(root: Path, listed: list[tuple[str, list[str]]]) -> array:
    """Stats the regular files listed: with many, in runs of about equal length over the
    executor's workers (see :mod:`datarepo.executor`)."""
    count = sum(len(names) for _, names in listed)
    run = executor.for_work(count >= PARALLEL_STAT_MIN)
    if run.workers < 2:
        return _stats(root, listed)
    out = array("q")
    for part in run.map(stat_listed, [(str(root), part) for part in _cut(listed, count, run.workers)]):
        out.extend(part)
    return out


def stat_listed(item: tuple[str, list[tuple[str, list[str]]]]) -> array:
    """:func:`_stats` of one run of the listing (what an executor maps)."""
    return _stats(Path(item[0]), item[1])


def _cut(listed: list[tuple[str, list[str]]], count: int, parts: int) -> list[list[tuple[str, list[str]]]]:
    """The listing cut into ``parts`` runs of about ``count / parts`` files each (a
    directory's files split between runs where need be), in order."""
    size = -(-count // parts)
    runs: list[list[tuple[str, list[str]]]] = [[]]
    room = size
    for rel_dir, names in listed:
        while names:
            if not room:
                runs.append([])
                room = size
            runs[-1].append((rel_dir, names[:room]))
            room -= len(names[:room])
            names = names[len(runs[-1][-1][1]) :]
    return runs


def _stats(root: Path, listed: list[tuple[str, list[str]]]) -> array:
    """(size, mtime_ns, inode) of each file as int64s; :data:`_FAILED` for one that could
    not be stat'ed. Each name is stat'ed relative to its open directory: a shorter walk
    for the kernel than a path from the root, and no ``DirEntry`` kept to cache it."""
    out = array("q")
    lstat = os.lstat
    for rel_dir, names in listed:
        try:
            fd = os.open(os.path.join(root, rel_dir), os.O_RDONLY | os.O_DIRECTORY | (os.O_NOFOLLOW if rel_dir else 0))
        except OSError:
            out.extend(_FAILED * len(names))
            continue
        try:
            for name in names:
                try:
                    st = lstat(name, dir_fd=fd)
                except OSError:
                    out.extend(_FAILED)
                else:
                    out.extend(file_stat(st))
        finally:
            os.close(fd)
    return out


def _restat_failed(root: Path, result: Scan) -> None:
    """Stats again, by path, each file the scan could not stat: an error names why; a file
    that can be stat'ed now keeps that stat."""
    assert result.stats is not None
    names, stats = [], array("q")
    it = iter(result.stats)
    for rel, st in zip(result.names, zip(it, it, it)):
        if st[SIZE] < 0:
            try:
                now = os.lstat(os.path.join(root, rel))
            except OSError as e:
                result.errors.append(Problem(rel, f"cannot stat {rel}: {e.strerror}", True))
                continue
            st = file_stat(now)
        names.append(rel)
        stats.extend(st)
    result.names, result.stats, result.spans = names, stats, [(None, 0, len(names))]


def _valid_names(entries: list[os.DirEntry], rel_dir: str, result: Scan) -> list[os.DirEntry]:
    """Drops (as errors) entries whose names are not UTF-8; checks a directory at once."""
    joined = "".join([e.name for e in entries])
    if joined.isascii():  # O(1) on a str: most directories are done here
        return entries
    try:
        joined.encode("utf-8")
        return entries
    except UnicodeEncodeError:
        pass
    good = []
    for e in entries:
        try:
            e.name.encode("utf-8")
            good.append(e)
        except UnicodeEncodeError:
            rel = rel_dir + e.name
            result.errors.append(Problem(rel, f"{os.fsencode(rel)!r}: file name is not valid UTF-8", False))
    return good


def _classify_other(entry: os.DirEntry, rel: str, result: Scan, follow: bool) -> FileStat | None:
    """Symlinks, fifos, sockets and devices: the stat of a file reached through a symlink
    that ``follow`` lets the scan list; None for anything else (noted, or an error)."""
    if entry.is_symlink() and not follow:
        result.notes.append(f"skipped symlink {rel} (use --follow to store its target)")
        return None
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError as e:
        result.notes.append(f"skipped symlink {rel}: its target cannot be read ({e.strerror})")
        return None
    if stat_mod.S_ISREG(st.st_mode):
        return file_stat(st)
    if stat_mod.S_ISDIR(st.st_mode):
        result.notes.append(f"skipped symlink to a directory {rel}")
    else:
        result.errors.append(Problem(rel, f"not a regular file: {rel}", False))
    return None


# The key rule lives in :mod:`datarepo.keys`; these names stay here for the callers that import them.
split_path = split
split_paths = split_all
member_path = join


def safe_path(root: Path, rel: str) -> Path:
    """``root / rel``, refusing anything that would land outside ``root`` (or in its ``.datarepo``)."""
    check_path(rel)
    return root / rel


def file_and_dir(files: set[str]) -> tuple[str, set[str]]:
    """The first of ``files`` (relative paths) that another of them needs as a directory, or
    "" if none: keys from an ``ingest`` can ask for both (``x`` with ``.jpg``, and ``x.jpg/y``),
    which no file system can hold. Also returns the directories the files need."""
    dirs: set[str] = set()
    for rel in files:
        parent = rel.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    clash = min(dirs.intersection(files), default="")
    return clash, dirs


def group(files: Iterable[str], grouping: str, notes: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Groups relative paths into datums by :func:`datarepo.keys.split`: key → {extension: path}.
    Every path fits a datum (``notes`` is kept for the callers that pass one)."""
    files = files if isinstance(files, list) else list(files)
    if grouping == "wds":
        return _group_wds(files)
    return {key: {ext: rel} for rel, (key, ext) in zip(files, split_all(files, grouping))}


def _group_wds(files: list[str]) -> dict[str, dict[str, str]]:
    """:func:`group` by WebDataset keys, in one loop: a first add groups every file. Each path
    is cut at its first dot (in C); where that dot is not in the file's name, or leaves no
    key or extension, :func:`datarepo.keys.split` decides. Sorted paths bring a key's files
    one after another, so most need no lookup of their key (half the time of looking up every one)."""
    datums: dict[str, dict[str, str]] = {}
    last, datum = None, {}  # the key of the last file, and its members
    for rel, (key, _, ext) in zip(files, map(str.partition, files, repeat("."))):
        if not ext or "/" in ext or not key or key[-1] == "/":
            key, ext = split(rel)
        if key != last:
            if (found := datums.get(key)) is None:
                datums[key] = found = {}
            last, datum = key, found
        datum[ext] = rel
    return datums


def lstat(path: str, rel: str) -> FileStat:
    """(size, mtime_ns, inode) of ``path``; an error other than its absence names ``rel``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise InvalidInputError(f"cannot stat {rel}: {e.strerror}") from None
    return file_stat(st)
