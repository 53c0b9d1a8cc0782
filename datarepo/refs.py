"""HEAD, branches, tags and run refs, with compare-and-swap updates and a reflog."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NewType

from datarepo.errors import CorruptObjectError, InvalidInputError, RefConflictError
from datarepo.fsutil import FileSystem, LocalFileSystem, WriterLock
from datarepo.hashing import Oid, is_oid
from datarepo.keys import is_utf8

RefName = NewType("RefName", str)

HEAD = RefName("HEAD")
BRANCHES = "refs/heads/"
TAGS = "refs/tags/"
RUNS = "refs/runs/"
REMOTES = "refs/remotes/"  # what fetch last saw of each remote's branches: refs/remotes/<remote>/<branch>
_SYMREF = "ref: "
# git's check-ref-format: no "..", "@{", control character, space, ~ ^ : ? * [ or \; no
# empty component (no leading, trailing or double "/"); no component that starts with "."
# or ends with ".lock"; no trailing ".".
_BAD_REF = re.compile(r"\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|//|^/|/$|\.$|(?:^|/)\.|\.lock(?:/|$)")


def is_valid_ref_format(name: str) -> bool:
    """Whether ``name`` passes git's ``check-ref-format`` (with ``--allow-onelevel``)."""
    return bool(name) and name != "@" and _BAD_REF.search(name) is None and is_utf8(name)


def is_ref_name(name: str) -> bool:
    """Whether ``name`` is a full ref name: ``HEAD``, or ``refs/…`` passing check-ref-format.
    Only such names become paths below the repository's folder."""
    return name == HEAD or (name.startswith("refs/") and is_valid_ref_format(name))


# A name becomes a file's path (below refs/ and logs/): a part of it longer than a file
# system's file name (255 bytes) would be an OS error when it is written.
MAX_PART_BYTES, MAX_NAME_BYTES = 200, 1000
MAX_REF_FILE_BYTES = 4096  # "ref: <name>" or an oid, a newline, and room for blanks


def check_name(name: str, what: str = "branch") -> str:
    """Validates a short branch, tag or run name as git does: check-ref-format, and not
    ``HEAD``, not starting with ``-`` or ``refs/``."""
    if not is_valid_ref_format(name) or name == HEAD or name.startswith(("-", "refs/")):
        raise InvalidInputError(f"invalid {what} name: {name!r}")
    if len(name.encode()) > MAX_NAME_BYTES or max(len(part.encode()) for part in name.split("/")) > MAX_PART_BYTES:
        raise InvalidInputError(
            f"invalid {what} name: {name[:40]!r}…: longer than {MAX_NAME_BYTES} bytes, or a part of it than {MAX_PART_BYTES}"
        )
    return name


class Refs:
    """The refs of one repository: files under its folder (``root``), read and written
    through ``fs`` (the local folder by default). Updates take the writer lock, a local
    concern; every name is checked before it becomes a path (:func:`is_ref_name`)."""

    def __init__(
        self, root: Path | str, lock: WriterLock | None = None, fs: FileSystem | None = None, head_required: bool = False
    ) -> None:
        self.root = root
        # A repository's own HEAD always exists (init writes it first): a missing one is
        # damage, never an unborn branch, on which a commit would start a new history.
        self.head_required = head_required
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.fs: FileSystem = fs if fs is not None else LocalFileSystem(perm=0o644)
        self._base = str(root).rstrip("/")

    def _path(self, name: str) -> str:
        if not is_ref_name(name):
            raise InvalidInputError(f"invalid ref name: {name[:80]!r}")
        return f"{self._base}/{name}"

    def _read_file(self, name: str) -> str | None:
        try:  # (no more than a ref can hold: a huge file there, on a remote too, is not read whole)
            with self.fs.open(self._path(name), "rb") as f:
                raw = f.read(MAX_REF_FILE_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if name == HEAD and self.head_required:
                raise CorruptObjectError(HEAD, f"the file is missing (it names the current branch: write 'ref: {BRANCHES}main' into {self._path(HEAD)})") from None
            return None
        if len(raw) > MAX_REF_FILE_BYTES:
            raise CorruptObjectError(name, f"is longer than a ref ({MAX_REF_FILE_BYTES} bytes)")
        if not raw and self._kind(name) == "directory":  # (an object store's key prefix opens as empty)
            return None
        return raw.decode("utf-8", "replace").strip()

    def read_symbolic(self, name: str = HEAD) -> str | None:
        """The ref ``name`` points to if it is symbolic (``HEAD`` on a branch), else None.
        A target that is not a valid ref under ``refs/`` is a CorruptObjectError naming it."""
        text = self._read_file(name) if is_ref_name(name) else None
        if text is None or not text.startswith(_SYMREF):
            return None
        return _target(name, text)

    def read(self, name: str) -> Oid | None:
        """The commit a ref names, following HEAD's symbolic ref; None if unborn or absent
        (a name that is not a valid ref name names nothing).

        A ref file that names no commit is an error, never an unborn branch: a commit on
        it would start a new history, and ``gc`` would then delete the old one.
        """
        if not is_ref_name(name):
            return None
        for _ in range(5):
            text = self._read_file(name)
            if text is None:
                return None
            if not text.startswith(_SYMREF):
                if not is_oid(text):
                    raise CorruptObjectError(name, f"holds {text[:40]!r}, not a commit id")
                return Oid(text)
            name = _target(name, text)
        raise CorruptObjectError(name, "symbolic refs point at each other")

    def set_symbolic(self, target: str, name: str = HEAD, message: str = "") -> None:
        if not target.startswith("refs/") or not is_ref_name(target):
            raise InvalidInputError(f"invalid ref name: {target[:80]!r}")
        with self.lock:
            old = self.read(name)
            self._write(name, f"{_SYMREF}{target}\n")
            self._log(name, old, self.read(name), message or f"checkout: moving to {target}")

    def update(self, name: str, new: Oid | None, expected: Oid | None | bool = True, message: str = "") -> None:
        """Sets (or deletes, with ``new=None``) a ref under the writer lock.

        ``expected`` is the value the caller saw (None: the ref must not exist);
        ``True`` means "any". A mismatch raises RefConflictError. HEAD on a branch
        updates the branch.
        """
        self._path(name)  # an invalid name is refused before anything is read
        with self.lock:
            target = self.read_symbolic(name) if name == HEAD else None
            path_name = target or name
            try:
                old = self.read(path_name)
            except CorruptObjectError:
                if expected is not True:
                    raise
                old = None  # "any": a ref that names no commit is replaced
            if expected is not True and old != expected:
                raise RefConflictError(path_name, expected or None, old)
            if new is None:
                self._delete(path_name)
            else:
                if old is None:
                    self._check_free(path_name)
                self._write(path_name, f"{new}\n")
                self._log(path_name, old, new, message)
            if target is not None:
                self._log(HEAD, old, new, message)

    def in_the_way(self, name: str) -> list[str]:
        """The refs that keep ``name`` from being made (a ref is a file: none may be a
        folder of another, as in git): one at a folder of it, or below it."""
        parts = name.split("/")
        above = ["/".join(parts[:i]) for i in range(2, len(parts))]
        return [a for a in above if is_ref_name(a) and self._kind(a) == "file"] + list(self.names(name + "/"))

    def _check_free(self, name: str) -> None:
        """git's rule for a new ref: no ref may be a folder of another (``a`` beside
        ``a/b``), as each is a file. A folder left empty at the name is removed."""
        parts = name.split("/")
        for i in range(2, len(parts)):
            above = "/".join(parts[:i])
            if is_ref_name(above) and self._kind(above) == "file":
                raise InvalidInputError(f"cannot create {name}: {above} exists")
        if self._kind(name) == "directory":
            if below := next(self.names(name + "/"), None):
                raise InvalidInputError(f"cannot create {name}: {below} exists")
            try:
                self._remove_folder(self._path(name))
            except OSError:
                raise InvalidInputError(f"cannot create {name}: a folder of that name holds other files") from None
        self._free_log(name)

    def _free_log(self, name: str) -> None:
        """Makes room for a new ref's log where a repository of an earlier version kept the
        logs of deleted refs (``logs/refs/heads/a`` in the way of ``a/b``'s log)."""
        log = self._log_path(name)
        top = f"{self._base}/logs/"
        parts = log[len(top) :].split("/")
        for i in range(2, len(parts)):
            above = top + "/".join(parts[:i])
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                if self.fs.info(above)["type"] == "file":
                    self.fs.rm_file(above)  # the log of a ref that is gone: its folder is needed
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if self.fs.info(log)["type"] == "directory":
                try:
                    self._remove_folder(log)
                except OSError:
                    raise InvalidInputError(f"cannot create {name}: logs/{name} is a folder that holds other files") from None

    def _kind(self, name: str) -> str | None:
        try:
            return str(self.fs.info(self._path(name))["type"])
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _remove_folder(self, path: str) -> None:
        """Removes a folder that holds only empty folders (OSError if anything else)."""
        for entry in self.fs.ls(path, detail=True):
            if entry["type"] == "directory":
                self._remove_folder(entry["name"])
        self.fs.rmdir(path)

    def _delete(self, name: str) -> None:
        """Deletes a ref and its log (as git does: HEAD's log still holds what was
        committed through it), then the folders that leaves empty."""
        for path, top in ((self._path(name), self._base), (self._log_path(name), f"{self._base}/logs")):
            try:
                self.fs.rm_file(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            self._prune(path.rpartition("/")[0], top)

    def _prune(self, folder: str, top: str) -> None:
        """Removes ``folder`` and the folders above it, up to ``refs/<kind>`` below ``top``,
        while they are empty."""
        while folder.startswith(top + "/refs/") and folder.count("/") > top.count("/") + 2:
            try:
                self.fs.rmdir(folder)
            except OSError:
                return
            folder = folder.rpartition("/")[0]

    def detach(self, oid: Oid, message: str = "") -> None:
        """Points HEAD straight at a commit."""
        with self.lock:
            old = self.read(HEAD)
            self._write(HEAD, f"{oid}\n")
            self._log(HEAD, old, oid, message)

    def names(self, prefix: str) -> Iterator[str]:
        """Yields the full name of every ref under ``prefix`` (e.g. ``refs/heads/``); files
        there whose names are not valid ref names (a writer's ``.tmp-…``) are passed over."""
        top = f"{self._base}/{prefix.rstrip('/')}"
        for path in self.fs.find(top):
            name = path[len(self._base) + 1 :]
            if is_ref_name(name):
                yield name

    def list(self, prefix: str) -> Iterator[tuple[str, Oid]]:
        """Yields (short name, oid) for every ref under ``prefix`` (e.g. ``refs/heads/``)."""
        for full in self.names(prefix):
            if (oid := self.read(full)) is not None:
                yield full[len(prefix) :], oid

    def _write(self, name: str, text: str) -> None:
        path = self._path(name)
        try:
            self.fs.pipe_file(path, text.encode())
        except FileNotFoundError:  # an fsspec filesystem that does not make parent folders
            self.fs.makedirs(path.rpartition("/")[0], exist_ok=True)
            self.fs.pipe_file(path, text.encode())

    def _log_path(self, name: str) -> str:
        self._path(name)  # the same names as refs, below logs/
        return f"{self._base}/logs/{name}"

    def _log(self, name: str, old: Oid | None, new: Oid | None, message: str) -> None:
        line = f"{old or '-'} {new or '-'} {time.time():.0f} {message.replace(chr(10), ' ')}\n"
        path = self._log_path(name)
        self.fs.makedirs(path.rpartition("/")[0], exist_ok=True)
        with self.fs.open(path, "ab") as f:
            f.write(line.encode())

    def reflog(self, name: str) -> Iterator[tuple[Oid | None, Oid | None, float, str]]:
        """Yields (old, new, unix time, message) entries of a ref's log, oldest first."""
        try:
            raw = self.fs.cat_file(self._log_path(name))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        for line in raw.decode("utf-8", "replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 3:
                continue
            old, new = (Oid(p) if is_oid(p) else None for p in parts[:2])
            try:
                when = float(parts[2])
            except ValueError:
                continue
            yield old, new, when, parts[3] if len(parts) > 3 else ""

    def iter_reflogs(self) -> Iterator[str]:
        """Yields the names of refs that have a log."""
        top = f"{self._base}/logs"
        for path in self.fs.find(top):
            name = path[len(top) + 1 :]
            if is_ref_name(name):
                yield name


def _target(name: str, text: str) -> str:
    """The target of a symbolic ref's text; one that is not a ref under ``refs/`` would
    resolve to a path elsewhere (``ref: refs/heads/../../x``) and is refused."""
    target = text[len(_SYMREF) :]
    if not target.startswith("refs/") or not is_ref_name(target):
        raise CorruptObjectError(name, f"points at {target[:80]!r}, which is not a valid ref name")
    return target
