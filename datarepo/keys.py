"""The key rule: how a file's path names a datum's key and member, and back.

Written once here and used by scanning, grouping, ingest, checkout, export and
the shards (see ``docs/format.md``, "Keys and grouping").

With ``grouping = "wds"`` the key of a file ends at the first dot of its
basename, as in a WebDataset tar, and the rest of the basename names the
member (``a/b/x.seg.png`` → ``a/b/x``, ``seg.png``). A file that has no such
dot is a datum member too, under the empty extension: ``README`` →
(``README``, ``""``). Leading dots belong to the key (``.env`` → (``.env``,
``""``), ``.config.json`` → (``.config``, ``json``)), and so does a dot that
ends the name (``x.`` → (``x.``, ``""``)), so that :func:`join` gives every
path back exactly. In a shard a member is stored as ``<datum id>.<ext>``
(``<datum id>.`` for the empty extension), which stock WebDataset reads as the
sample's ``""`` entry.

With ``grouping = "file"`` the key is the whole path and the member is named
by the last extension (``bin`` if none); the path is the key, so the
extension plays no part in where the file comes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import repeat

from datarepo.errors import InvalidInputError

GROUPINGS = ("wds", "file")
# The member of a file with no extension (grouping "wds"): the empty extension.
NO_EXT = ""
# The member name of a file with no extension under grouping "file".
FILE_NO_EXT = "bin"
# Names a work tree never holds as data: what ``add`` passes over, so no key may write there.
RESERVED_DIRS = frozenset({".git", ".dvc", ".datarepo"})
IGNORE_FILE = ".datarepoignore"
GIT = ".git"


def split(path: str, grouping: str = "wds") -> tuple[str, str]:
    """(key, member extension) of the file at ``path`` (relative, ``/``-separated)."""
    if grouping == "file":
        base = path[path.rfind("/") + 1 :]
        dot = base.rfind(".")
        return path, (base[dot + 1 :] if 0 < dot < len(base) - 1 else FILE_NO_EXT)
    start = path.rfind("/") + 1
    while path.startswith(".", start):  # leading dots belong to the key
        start += 1
    dot = path.find(".", start)
    if dot < 0 or dot == len(path) - 1:  # no extension (or only the dot that ends the name)
        return path, NO_EXT
    return path[:dot], path[dot + 1 :]


def split_all(paths: Iterable[str], grouping: str = "wds") -> Iterator[tuple[str, str]]:
    """:func:`split` of each path."""
    return map(split, paths, repeat(grouping))


def join(key: str, ext: str, grouping: str = "wds") -> str:
    """The path of a datum's member: the inverse of :func:`split`."""
    if grouping == "file":
        return key
    return f"{key}.{ext}" if ext else key


def member_of(name: str, stem: str) -> str | None:
    """The extension under which the file ``name`` is a member of the key whose last part is
    ``stem`` (grouping "wds"), or None if it is not one: ``name`` is ``join(stem, ext)``."""
    if name == stem:
        return NO_EXT
    if name.startswith(stem) and name.startswith(".", len(stem)) and len(name) > len(stem) + 1:
        return name[len(stem) + 1 :]
    return None


def member_name(key: str, ext: str) -> str:
    """A member's name in a WebDataset tar: ``<key>.<ext>``, with the dot even for no
    extension, so that stock WebDataset reads every member."""
    return f"{key}.{ext}"


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member of a WebDataset tar, the inverse of :func:`member_name`:
    WebDataset's own rule, the basename cut at its first dot. A name it passes over (no dot,
    or a leading one) is read as a file of that name would be (:func:`split`)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot > slash:
        return name[:dot], name[dot + 1 :]
    return split(name)


def is_utf8(text: str) -> bool:
    """False for text read from bytes that are not UTF-8 (surrogate escapes) or from JSON
    with a lone surrogate: keys and extensions are stored as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_key(key: str) -> str:
    """Returns ``key`` if a datum may be stored under it, else raises InvalidInputError: a
    relative ``/``-separated path without empty, ``.`` or ``..`` parts, no NUL, valid UTF-8,
    and no folder a work tree keeps to itself (``.datarepo``, ``.git``, ``.dvc``, which
    ``add`` never looks into)."""
    if (reason := _bad_key(key)) is not None:
        raise InvalidInputError(f"invalid key {_shown(key)}: {reason}")
    return key


def check_prefix(prefix: str) -> str:
    """Returns ``prefix`` (a folder of keys, without its trailing ``/``) if keys may be stored
    below it: :func:`check_key`, with every part a folder."""
    check_key(prefix)
    if (name := prefix[prefix.rfind("/") + 1 :]) in _OWN_DIRS:
        raise InvalidInputError(f"invalid prefix {prefix!r}: {name} is the repository's own folder")
    return prefix


def check_path(path: str) -> str:
    """Returns ``path`` if a member's file may be written there in a work tree (or read from
    one), else raises InvalidInputError: :func:`check_key`, and not a file the repository
    keeps to itself (``.datarepo``, ``.git``, ``.dvc`` at the top, ``.datarepoignore``), nor
    a ``.git`` file below it: git takes a folder holding one for a repository whose git
    folder it names, so git never writes one from its data either."""
    reason = _bad_key(path)
    name = path[path.rfind("/") + 1 :]
    if reason is None and (name == IGNORE_FILE or name == GIT or (name == path and name in RESERVED_DIRS)):
        reason = f"{name} is the repository's own name" if name != GIT else "a .git file is git's, not data"
    if reason is not None:
        raise InvalidInputError(f"invalid path {path!r}: {reason}")
    return path


def check_member(key: str, ext: str, grouping: str = "wds") -> str:
    """Checks a member taken from outside (ingest, a pipeline's output, the writer): its key,
    its extension, and the path it comes back to (:func:`join`), which must give the same key
    and member again (:func:`split`): else a checkout then an ``add`` would move the datum to
    another key. Returns the path."""
    check_key(key)
    check_ext(ext, key)
    path = check_path(join(key, ext, grouping))
    if grouping == "wds" and (back := split(path)) != (key, ext):
        raise InvalidInputError(
            f"invalid key {_shown(key)}: its member {ext!r} would come back as the file {path!r}, whose key is"
            f" {back[0]!r} (a key ends at the first '.' of its last part, as in WebDataset)"
        )
    return path


def check_ext(ext: str, key: str = "") -> str:
    """Returns ``ext`` if it may name a member, else raises InvalidInputError: no ``/`` (it
    would make a directory of the key), no NUL, valid UTF-8. The empty extension names the
    member of a file without one."""
    where = f" of {key!r}" if key else ""
    if "/" in ext or "\x00" in ext:
        raise InvalidInputError(f"invalid member name {ext!r}{where}: a member name cannot hold '/' or NUL")
    if not is_utf8(ext):
        raise InvalidInputError(f"member name {ext!r}{where} is not valid UTF-8")
    return ext


def _bad_key(key: str) -> str | None:
    if not is_utf8(key):
        return "not valid UTF-8"
    parts = key.split("/")
    if not key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
        return "keys are relative '/'-separated paths without '.' or '..'"
    if not _OWN_DIRS.isdisjoint(parts[:-1]):
        return f"{', '.join(sorted(_OWN_DIRS))} are the repository's own folders"
    if len(parts) > MAX_KEY_PARTS or len(key) > MAX_KEY_BYTES or max(map(len, parts)) > MAX_PART_BYTES // 4:
        if len(parts) > MAX_KEY_PARTS:
            return f"deeper than {MAX_KEY_PARTS} folders"
        if len(key.encode()) > MAX_KEY_BYTES or max(len(p.encode()) for p in parts) > MAX_PART_BYTES:
            return f"longer than a file system takes (a key of {MAX_KEY_BYTES} bytes, a part of {MAX_PART_BYTES})"
    return None


# What a file system takes of a path (Linux: PATH_MAX 4096 bytes, NAME_MAX 255), and a
# depth of folders no real data set has.
MAX_KEY_BYTES, MAX_PART_BYTES, MAX_KEY_PARTS = 4095, 255, 256


_OWN_DIRS = RESERVED_DIRS | {IGNORE_FILE}


def _shown(key: str) -> str:
    """A key as a message names it: whole, or its start and length if long."""
    return repr(key) if len(key) <= 120 else f"{key[:100]!r}... ({len(key)} characters)"
