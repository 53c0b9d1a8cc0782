"""Each pipeline's last commit as of a commit: what lineage queries, ``datarepo pipelines``
and every run start from.

A pipeline's commits are found on the first-parent history: the first commit back from
``C`` whose provenance names pipeline ``P`` is P's **head** as of C. Found by a walk, that
costs one commit read (about 50 µs) a commit back to the oldest head, and a spout that
commits every few datums between runs makes the walk long. Commits never change, so
neither do their heads: the table ``pipeline_heads`` of ``index.sqlite`` keeps them for
each commit a walk met, and a walk stops at the first commit it knows. A query after
10,000 commits walks them once; the next one walks only what came since.

The table is a cache as the rest of ``index.sqlite`` is: deleting it loses speed only,
and ``gc`` leaves it alone (the row of a deleted commit only takes room: emptying it would
make the next query walk the whole history again).
A row that does not read as written is walked past and written again; a row naming a
head whose provenance is not that pipeline's is found when the head is read
(:func:`heads` checks each), and then the walk is made again without the table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from datarepo.hashing import Oid, is_oid
from datarepo.repo import Repo

_SCHEMA = "CREATE TABLE IF NOT EXISTS pipeline_heads (head_of TEXT PRIMARY KEY, heads TEXT) WITHOUT ROWID"


@dataclass(frozen=True)
class State:
    """A pipeline as of a commit: its last commit there and that commit's provenance."""

    name: str
    commit: Oid
    provenance: dict[str, Any]

    @property
    def output(self) -> str:
        return str(self.provenance.get("output", ""))


def pipeline_of(provenance: dict[str, Any] | None) -> str | None:
    """The pipeline a commit's provenance says made it (None: not a pipeline's commit)."""
    if provenance and isinstance(name := provenance.get("pipeline"), str) and isinstance(provenance.get("lineage"), str):
        return name
    return None


def heads(repo: Repo, commit: Oid | None) -> Iterator[State]:
    """Each pipeline's last commit on the first-parent history of ``commit``, newest first."""
    if commit is None:
        return
    for trusted in (True, False):
        found = [(name, oid, repo.read_commit(oid).provenance) for name, oid in _heads(repo, commit, trusted)]
        if all(pipeline_of(prov) == name for name, _, prov in found):
            break  # (else a row named a commit of another pipeline, or of none: walk again)
    for name, oid, prov in found:
        yield State(name, oid, prov)  # type: ignore[arg-type]


def _heads(repo: Repo, commit: Oid, trusted: bool) -> list[tuple[str, Oid]]:
    """(name, head) of each pipeline as of ``commit``, newest first: the known heads of the
    nearest commit the table holds, and those of the commits walked since."""
    db = repo.index.db
    try:
        db.execute(_SCHEMA)
    except sqlite3.OperationalError:  # (read-only, or a full disk: the heads are found by walking, as for a new table)
        trusted = False
    walked: list[tuple[Oid, str | None]] = []  # (commit, the pipeline it is a commit of), newest first
    known: list[tuple[str, Oid]] = []
    oid: Oid | None = commit
    while oid is not None:
        if trusted and (row := db.execute("SELECT heads FROM pipeline_heads WHERE head_of=?", (oid,)).fetchone()):
            if (read := _decoded(row[0])) is not None:
                known = read
                break
        c = repo.read_commit(oid)
        walked.append((oid, pipeline_of(c.provenance)))
        oid = c.parents[0] if c.parents else None
    rows = []
    for oid, name in reversed(walked):
        if name is not None:
            known = [(name, oid), *(h for h in known if h[0] != name)]
        rows.append((oid, json.dumps(known)))
    if rows:
        try:
            with repo.index.transaction() as db:
                db.executemany("INSERT OR REPLACE INTO pipeline_heads VALUES (?,?)", rows)
        except sqlite3.OperationalError:  # (a repository this user may read, not write, a full disk: the answer stands)
            pass
    return known


def _decoded(text: object) -> list[tuple[str, Oid]] | None:
    """A row's heads, or None where the row does not read as written."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    good = isinstance(value, list) and all(
        isinstance(h, list) and len(h) == 2 and isinstance(h[0], str) and isinstance(h[1], str) and is_oid(h[1]) for h in value
    )
    return [(name, Oid(oid)) for name, oid in value] if good else None  # type: ignore[union-attr]
