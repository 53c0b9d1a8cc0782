"""The staging area (a table of ``index.sqlite``): the changes ``add`` and ``rm`` recorded
for the next commit, and the tree ``add`` built for it (docs/format.md, "index.sqlite")."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple

from datarepo.errors import InvalidInputError
from datarepo.hashing import Oid, is_oid
from datarepo.keys import MAX_PART_BYTES, check_key
from datarepo.locations import sound
from datarepo.sqlrows import DamagedCacheError, insert_rows

if TYPE_CHECKING:
    from datarepo.index import Index

# A staged change: the key, its new datum (None: deleted) and the datum's size.
StagedRow = tuple[str, Oid | None, int]

# A staged row as bytes and types, for :func:`row_fault`: read so only where the rows as
# text are not what ``add`` and ``rm`` write (or cannot be read as text at all).
_RAW_ROWS = (
    "SELECT typeof(key), CAST(key AS BLOB), typeof(datum), CAST(datum AS BLOB),"
    " CASE WHEN typeof(size) = 'integer' THEN size END FROM staged"
)
_HEX = b"0123456789abcdef"
_KEY, _DATUM, _SIZE = itemgetter(0), itemgetter(1), itemgetter(2)


class StagedDamage(NamedTuple):
    """A staged row that is not what ``add`` or ``rm`` writes: its key's type and bytes
    (to delete it by), and why."""

    kind: str
    raw: bytes
    reason: str


def row_fault(kind: str, raw: bytes, datum_kind: str, datum: bytes | None, size: int | None) -> str | None:
    """Why a staged row (as :data:`_RAW_ROWS` reads it) cannot be trusted, or None."""
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
    elif not _maybe_odd(f"\x00{text}\x00"):
        odd = ()
    else:
        odd = (_key_at(text, m.start()) for m in _ODD_KEY.finditer(text))
    # A key short enough (at most 4 bytes a character) is within the key rule's bounds of
    # length and depth; a longer one is checked whole.
    longest = max(map(len, keys), default=0)  # (in C: nearly every page has no long key)
    for key in chain(odd, (k for k in keys if len(k) > _SURELY_SHORT) if longest > _SURELY_SHORT else ()):
        try:
            check_key(key)
        except InvalidInputError as e:
            return str(e)
    return None


_SURELY_SHORT = MAX_PART_BYTES // 4


def _maybe_odd(framed: str) -> bool:
    """Whether keys joined by NUL, with a NUL before and after, may hold an odd key: by
    substring searches (each a pass in C, several times quicker than the expression)."""
    return not framed.isascii() or any(part in framed for part in _ODD_PARTS)


# "/." also finds a part that starts with a dot; "\x00." a key that does.
_ODD_PARTS = ("/.", "//", "\x00.", "\x00/", "/\x00", "\x00\x00")


def _key_at(text: str, at: int) -> str:
    end = text.find("\x00", at)
    return text[text.rfind("\x00", 0, at) + 1 : len(text) if end < 0 else end]


def _plausible(rows: list[tuple]) -> bool:
    """Whether staged rows, as read, are all what ``add`` and ``rm`` write: a column at a
    time, in C (types by ``map``, the ids joined and stripped of hex digits, the keys by
    :func:`first_bad_key`), for no Python a row."""
    if not rows:
        return True
    keys, sizes = list(map(_KEY, rows)), list(map(_SIZE, rows))
    ids = [d for d in map(_DATUM, rows) if d is not None]
    joined = "".join(ids) if set(map(type, ids)) <= {str} else None
    return (
        set(map(type, keys)) == {str}
        and set(map(type, sizes)) == {int}
        and min(sizes) >= 0
        and joined is not None
        and set(map(len, ids)) <= {32}
        and joined.isascii()
        and not joined.encode().translate(None, _HEX)
        and first_bad_key(keys) is None
    )


class Staging:
    """The staged changes, each a :data:`StagedRow`. Rows no ``add`` or ``rm`` wrote (see
    :meth:`damage`) are dropped as they are read: the staging area is only a cache, and
    its changes are staged again by the next ``add``; ``commit`` refuses them (:meth:`check`)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def damage(self) -> list[StagedDamage]:
        """The staged rows that are not what ``add`` or ``rm`` writes (:func:`row_fault`)."""
        return self._read("", ())[1]

    def check(self) -> None:
        """Raises DamagedCacheError if any staged row is damaged, once it has dropped them:
        what ``commit`` does before it builds a tree, so that nothing it cannot trust is
        committed, nor anything short of what was staged."""
        if damage := self.damage():
            self._drop(damage)
            raise DamagedCacheError(
                f"{len(damage)} staged row(s) were damaged ({damage[0].reason}): dropped, nothing committed",
                "check `datarepo status`, add again and commit",
            )

    def _read(self, where: str, params: Sequence[str]) -> tuple[list[StagedRow], list[StagedDamage]]:
        """The rows ``where`` selects, in key order, if all are sound; else the damaged ones
        among them (found a row at a time, as bytes: only where some row is damaged)."""
        try:
            rows = self.index.db.execute(f"SELECT key, datum, size FROM staged{where} ORDER BY key", params).fetchall()
            if _plausible(rows):
                return rows, []
        except sqlite3.OperationalError:  # text that is not UTF-8
            pass
        damage = []
        for kind, raw, *rest in self.index.db.execute(_RAW_ROWS + where, params):
            if (reason := row_fault(kind, bytes(raw or b""), *rest)) is not None:
                damage.append(StagedDamage(kind, bytes(raw or b""), reason))
        return [], damage

    def _sound_rows(self, where: str = "", params: Sequence[str] = ()) -> list[StagedRow]:
        """:meth:`_read`, with any damaged row dropped first."""
        rows, damage = self._read(where, params)
        if damage:
            self._drop(damage)
            rows, _ = self._read(where, params)
        return rows

    def _drop(self, damage: list[StagedDamage]) -> None:
        with nullcontext() if self.index.db.in_transaction else self.index.transaction():
            rows = [d[:2] for d in damage]
            self.index.db.executemany("DELETE FROM staged WHERE typeof(key) = ? AND CAST(key AS BLOB) = ?", rows)
            self._bump()
            self.withdraw_tree()

    def rows(self) -> list[StagedRow]:
        """Every staged change, in key order."""
        return self._sound_rows()

    def changes(self) -> dict[str, tuple[Oid | None, int]]:
        """key → (datum or None, size) of every staged change."""
        return {key: (datum, size) for key, datum, size in self.rows()}

    def changes_for(self, keys: Iterable[str]) -> dict[str, tuple[Oid | None, int]]:
        """:meth:`changes`, of ``keys`` only."""
        found = {}
        batch = list(keys)
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            rows = self._sound_rows(f" WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((r[0], (r[1], r[2])) for r in rows)
        return found

    def count(self) -> int:
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
        rows = self.index.db.execute(
            f"SELECT s.datum FROM staged s LEFT JOIN location l ON l.datum = s.datum AND {sound('l')}"
            " WHERE s.datum IS NOT NULL AND l.datum IS NULL"
        )
        return [r[0] for r in rows]

    def datums(self) -> Iterator[str]:
        return (datum for _, datum, _ in self.rows() if datum is not None)

    def tree(self, head: Oid | None) -> Oid | None:
        """The tree ``add`` stored for HEAD with the staging area applied, if HEAD is still
        ``head`` and the staging area has not changed since; else None."""
        found = self._recorded_tree()
        return found[1] if found is not None and found[0] == head else None

    def tree_of_any_head(self) -> Oid | None:
        """:meth:`tree`, whatever HEAD was when it was stored: a commit of it whose clearing
        of the staging area failed (a full disk) leaves it the tree of the HEAD it made."""
        found = self._recorded_tree()
        return found[1] if found is not None else None

    def _recorded_tree(self) -> tuple[Oid | None, Oid] | None:
        raw = self.index.get_meta("staged_tree")
        try:
            base, version, tree = json.loads(raw) if raw is not None else (None, None, None)
        except (ValueError, TypeError):
            return None
        fresh = version == str(self.index.get_meta("staged_version"))
        return (base, Oid(tree)) if fresh and isinstance(tree, str) and is_oid(tree) else None

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

