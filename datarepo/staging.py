"""The staging area (a table of ``index.sqlite``): the changes ``add`` and ``rm`` recorded
for the next commit, and the tree ``add`` built for it (docs/format.md, "index.sqlite")."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, NamedTuple

from datarepo.errors import InvalidInputError
from datarepo.hashing import Oid, is_oid
from datarepo.keys import check_key
from datarepo.locations import sound
from datarepo.sqlrows import DamagedCacheError, insert_rows

if TYPE_CHECKING:
    from datarepo.index import Index

# A staged change: the key, its new datum (None: deleted) and the datum's size.
StagedRow = tuple[str, Oid | None, int]

# The rows SQLite (in C) finds anything odd in: a key the key rule might refuse (not text,
# empty, not printable ASCII, a part that starts with a dot, an empty part, NUL), a datum
# that is not an oid, a size that is not a count. Only these are read in Python, and each
# is judged by the key rule itself (:func:`row_fault`): a sound table costs one scan in C.
_SUSPECT = (
    "typeof(key) != 'text' OR key = '' OR key GLOB '*[^ -~]*' OR key GLOB '.*' OR key GLOB '*/.*'"
    " OR key GLOB '/*' OR key GLOB '*/' OR key GLOB '*//*' OR instr(key, char(0)) > 0"
    " OR (datum IS NOT NULL AND (typeof(datum) != 'text' OR length(datum) != 32 OR datum GLOB '*[^0-9a-f]*'))"
    " OR typeof(size) != 'integer' OR size < 0"
)
_SUSPECT_ROWS = (
    "SELECT typeof(key), CAST(key AS BLOB), typeof(datum), CAST(datum AS BLOB),"
    f" CASE WHEN typeof(size) = 'integer' THEN size END FROM staged WHERE {_SUSPECT}"
)


class StagedDamage(NamedTuple):
    """A staged row that is not what ``add`` or ``rm`` writes: its key's type and bytes
    (to delete it by), and why."""

    kind: str
    raw: bytes
    reason: str


def row_fault(kind: str, raw: bytes, datum_kind: str, datum: bytes | None, size: int | None) -> str | None:
    """Why a staged row (as :data:`_SUSPECT_ROWS` reads it) cannot be trusted, or None."""
    if kind != "text":
        return f"a key that is {kind}, not text"
    try:
        check_key(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return f"a key that is not UTF-8 ({raw!r:.60})"
    except InvalidInputError as e:
        return str(e)
    if datum_kind != "null" and (datum_kind != "text" or not is_oid(bytes(datum or b"").decode("latin-1"))):
        return f"key {raw.decode()!r}: a datum that is not an id"
    if size is None or size < 0:
        return f"key {raw.decode()!r}: a size that is not a count"
    return None


# Where a key, in keys joined by NUL, may break the key rule (see :func:`first_bad_key`): a
# key that starts with "/" or ".", a part that starts with ".", "//", a "/" that ends a key,
# an empty key, anything not ASCII. No match takes in a NUL: each starts within its key.
_ODD_KEY = re.compile("(?<![^\x00])[/.]|/\\.|//|/(?![^\x00])|(?<![^\x00])(?![^\x00])|[^\x00-\x7f]")


def first_bad_key(keys: Sequence[str]) -> str | None:
    """The key rule's complaint (:func:`datarepo.keys.check_key`) about the first of ``keys``
    that breaks it, or None. The keys are joined and searched in C for anything odd; only
    the keys at a find (a part with a leading dot, say) are checked one by one."""
    text = "\x00".join(keys)
    if text.count("\x00") != len(keys) - 1:  # a key holds NUL: check each
        odd: Iterable[str] = keys
    else:
        odd = (_key_at(text, m.start()) for m in _ODD_KEY.finditer(text))
    for key in odd:
        try:
            check_key(key)
        except InvalidInputError as e:
            return str(e)
    return None


def _key_at(text: str, at: int) -> str:
    end = text.find("\x00", at)
    return text[text.rfind("\x00", 0, at) + 1 : len(text) if end < 0 else end]


class Staging:
    """The staged changes, each a :data:`StagedRow`. Rows no ``add`` or ``rm`` wrote (see
    :meth:`damage`) are dropped before any is read: the staging area is only a cache, and
    its changes are staged again by the next ``add``; ``commit`` refuses them (:meth:`check`)."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._sound = False  # checked in this process (and written by it since)

    def damage(self) -> list[StagedDamage]:
        """The staged rows that are not what ``add`` or ``rm`` writes (:func:`row_fault`)."""
        found = []
        for kind, raw, *rest in self.index.db.execute(_SUSPECT_ROWS):
            if (reason := row_fault(kind, bytes(raw or b""), *rest)) is not None:
                found.append(StagedDamage(kind, bytes(raw or b""), reason))
        return found

    def check(self) -> None:
        """Raises DamagedCacheError if any staged row is damaged, once it has dropped them:
        what ``commit`` does before it builds a tree, so that nothing it cannot trust is
        committed, nor anything short of what was staged."""
        self._sound = False  # (looked at again: another process may have written since)
        if damage := self._drop_damage():
            raise DamagedCacheError(
                f"{len(damage)} staged row(s) were damaged ({damage[0].reason}): dropped, nothing committed",
                "check `datarepo status`, add again and commit",
            )

    def _drop_damage(self) -> list[StagedDamage]:
        if self._sound:
            return []
        if damage := self.damage():
            with nullcontext() if self.index.db.in_transaction else self.index.transaction():
                self.index.db.executemany(
                    "DELETE FROM staged WHERE typeof(key) = ? AND CAST(key AS BLOB) = ?", [d[:2] for d in damage]
                )
                self._bump()
                self.withdraw_tree()
        self._sound = True
        return damage

    def rows(self) -> list[StagedRow]:
        """Every staged change, in key order."""
        self._drop_damage()
        return self.index.db.execute("SELECT key, datum, size FROM staged ORDER BY key").fetchall()

    def changes(self) -> dict[str, tuple[Oid | None, int]]:
        """key → (datum or None, size) of every staged change."""
        return {key: (datum, size) for key, datum, size in self.rows()}

    def changes_for(self, keys: Iterable[str]) -> dict[str, tuple[Oid | None, int]]:
        """:meth:`changes`, of ``keys`` only."""
        self._drop_damage()
        found = {}
        batch = list(keys)
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            rows = self.index.db.execute(f"SELECT key, datum, size FROM staged WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((r[0], (r[1], r[2])) for r in rows)
        return found

    def count(self) -> int:
        self._drop_damage()
        return self.index.db.execute("SELECT count(*) FROM staged").fetchone()[0]

    def stage(self, changes: Iterable[StagedRow]) -> None:
        insert_rows(self.index.db, "staged", 3, changes)
        self._bump()

    def unstage(self, keys: Iterable[str] | None = None) -> None:
        """Drops the staged changes of ``keys`` (None: all)."""
        if keys is None:
            self.index.db.execute("DELETE FROM staged")
        else:
            self.index.db.executemany("DELETE FROM staged WHERE key=?", ((k,) for k in keys))
        self._bump()

    def unstored(self) -> list[str]:
        """Staged datums no shard holds, by a row that reads (one join, not one lookup per datum)."""
        self._drop_damage()
        rows = self.index.db.execute(
            f"SELECT s.datum FROM staged s LEFT JOIN location l ON l.datum = s.datum AND {sound('l')}"
            " WHERE s.datum IS NOT NULL AND l.datum IS NULL"
        )
        return [r[0] for r in rows]

    def datums(self) -> Iterator[str]:
        self._drop_damage()
        for (datum,) in self.index.db.execute("SELECT datum FROM staged WHERE datum IS NOT NULL"):
            yield datum

    def tree(self, head: Oid | None) -> Oid | None:
        """The tree ``add`` stored for HEAD with the staging area applied, if HEAD is still
        ``head`` and the staging area has not changed since; else None."""
        raw = self.index.get_meta("staged_tree")
        try:
            base, version, tree = json.loads(raw) if raw is not None else (None, None, None)
        except (ValueError, TypeError):
            return None
        fresh = base == head and version == str(self.index.get_meta("staged_version"))
        return Oid(tree) if fresh and isinstance(tree, str) and is_oid(tree) else None

    def set_tree(self, head: Oid | None, tree: Oid) -> None:
        """Records ``tree`` as HEAD with the staging area, as it is now, applied: written in
        the transaction that stages, after the tree's objects are stored and every datum
        it adds is in a shard. ``commit`` then writes it as it is, without checking."""
        self.index.set_meta("staged_tree", json.dumps([head, str(self.index.get_meta("staged_version")), tree]))

    def withdraw_tree(self) -> None:
        """Forgets the staged tree. Its datums were all stored when it was recorded; once a
        shard leaves the location table that may no longer hold, and ``commit`` goes back
        to checking every staged datum."""
        self.index.db.execute("DELETE FROM meta WHERE name='staged_tree'")

    def _bump(self) -> None:
        # Lets caches built on the staging area (the status snapshot) notice any change to it.
        self.index.db.execute(
            "INSERT INTO meta VALUES ('staged_version', '1') ON CONFLICT(name) DO UPDATE SET value = value + 1"
        )

