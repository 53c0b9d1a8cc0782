"""HEAD, branches, tags and run refs, with compare-and-swap updates and a reflog."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NewType

from datarepo.errors import CorruptObjectError, InvalidInputError, RefConflictError
from datarepo.fsutil import WriterLock, atomic_write
from datarepo.hashing import Oid, is_oid

RefName = NewType("RefName", str)

HEAD = RefName("HEAD")
BRANCHES = "refs/heads/"
TAGS = "refs/tags/"
RUNS = "refs/runs/"
_SYMREF = "ref: "
_BAD_COMPONENT = re.compile(r"^\.|\.lock$|^$|\.\.|[\x00-\x20\x7f~^:?*\[\\]|@\{")


def check_name(name: str, what: str = "branch") -> str:
    """Validates a short branch, tag or run name as git's check-ref-format would."""
    if name.startswith("-") or name.endswith("/") or name == "@" or any(
        _BAD_COMPONENT.search(part) for part in name.split("/")
    ):
        raise InvalidInputError(f"invalid {what} name: {name!r}")
    return name


class Refs:
    """The refs of one repository, stored as files under ``.datarepo/``."""

    def __init__(self, root: Path, lock: WriterLock) -> None:
        self.root = root
        self.lock = lock

    def _path(self, name: str) -> Path:
        return self.root / name

    def read_symbolic(self, name: str = HEAD) -> str | None:
        """The ref ``name`` points to if it is symbolic (``HEAD`` on a branch), else None."""
        try:
            text = self._path(name).read_text().strip()
        except FileNotFoundError:
            return None
        return text[len(_SYMREF) :] if text.startswith(_SYMREF) else None

    def read(self, name: str) -> Oid | None:
        """The commit a ref names, following HEAD's symbolic ref; None if unborn or absent.

        A ref file that names no commit is an error, never an unborn branch: a commit on
        it would start a new history, and ``gc`` would then delete the old one.
        """
        for _ in range(5):
            try:
                raw = self._path(name).read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            text = raw.decode("utf-8", "replace").strip()
            if not text.startswith(_SYMREF):
                if not is_oid(text):
                    raise CorruptObjectError(name, f"holds {text[:40]!r}, not a commit id")
                return Oid(text)
            name = text[len(_SYMREF) :]
        raise CorruptObjectError(name, "symbolic refs point at each other")

    def set_symbolic(self, target: str, name: str = HEAD, message: str = "") -> None:
        with self.lock:
            old = self.read(name)
            atomic_write(self._path(name), f"{_SYMREF}{target}\n".encode(), mode=0o644)
            self._log(name, old, self.read(name), message or f"checkout: moving to {target}")

    def update(self, name: str, new: Oid | None, expected: Oid | None | bool = True, message: str = "") -> None:
        """Sets (or deletes, with ``new=None``) a ref under the writer lock.

        ``expected`` is the value the caller saw (None: the ref must not exist);
        ``True`` means "any". A mismatch raises RefConflictError. HEAD on a branch
        updates the branch.
        """
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
                self._path(path_name).unlink(missing_ok=True)
            else:
                atomic_write(self._path(path_name), f"{new}\n".encode(), mode=0o644)
            self._log(path_name, old, new, message)
            if target is not None:
                self._log(HEAD, old, new, message)

    def detach(self, oid: Oid, message: str = "") -> None:
        """Points HEAD straight at a commit."""
        with self.lock:
            old = self.read(HEAD)
            atomic_write(self._path(HEAD), f"{oid}\n".encode(), mode=0o644)
            self._log(HEAD, old, oid, message)

    def names(self, prefix: str) -> Iterator[str]:
        """Yields the full name of every ref under ``prefix`` (e.g. ``refs/heads/``)."""
        top = self._path(prefix)
        if not top.is_dir():
            return
        for dirpath, _, files in sorted(os.walk(top)):
            for f in sorted(files):
                if not f.startswith("."):
                    yield os.path.relpath(os.path.join(dirpath, f), self.root)

    def list(self, prefix: str) -> Iterator[tuple[str, Oid]]:
        """Yields (short name, oid) for every ref under ``prefix`` (e.g. ``refs/heads/``)."""
        for full in self.names(prefix):
            if (oid := self.read(full)) is not None:
                yield full[len(prefix) :], oid

    def _log(self, name: str, old: Oid | None, new: Oid | None, message: str) -> None:
        path = self.root / "logs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{old or '-'} {new or '-'} {time.time():.0f} {message.replace(chr(10), ' ')}\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)

    def reflog(self, name: str) -> Iterator[tuple[Oid | None, Oid | None, float, str]]:
        """Yields (old, new, unix time, message) entries of a ref's log, oldest first."""
        path = self.root / "logs" / name
        if not path.exists():
            return
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
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
        top = self.root / "logs"
        for dirpath, _, files in os.walk(top):
            for f in files:
                yield os.path.relpath(os.path.join(dirpath, f), top)
