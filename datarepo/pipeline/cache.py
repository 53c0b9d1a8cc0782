"""The lineage tables of ``index.sqlite``: a cache, rebuilt from lineage objects.

* ``lineage_cache``: cache key of a success → the lineage page or journal holding its
  record: the run cache (a unit whose cache key is here is not computed again);
* ``lineage_input``: input datum → the lineage pages with a record that read it: what
  ``lineage --downstream`` starts from;
* ``lineage_indexed``: the pages and journals whose records are in the two above.

Pages and journals are content-addressed and shared between runs, so a run indexes only
the pages it wrote. Deleting ``index.sqlite`` loses nothing: a lookup that finds a page
not indexed indexes it first (:func:`index_pages`).
"""

from __future__ import annotations

from collections.abc import Iterable

from datarepo.index import Index
from datarepo.pipeline.lineage import Record, read_journal, read_page
from datarepo.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage_indexed (object TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage_cache (cache TEXT PRIMARY KEY, object TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage_input (datum TEXT, page TEXT, PRIMARY KEY (datum, page)) WITHOUT ROWID;
"""
_CHUNK = 900


class LineageCache:
    """The lineage tables of one repository's index."""

    def __init__(self, index: Index, store: Store) -> None:
        self.index, self.store = index, store
        index.db.executescript(_SCHEMA)

    def indexed(self, objects: Iterable[str]) -> set[str]:
        return set(self._select("SELECT object FROM lineage_indexed WHERE object IN ({})", list(objects)))

    def index_pages(self, pages: Iterable[str]) -> int:
        """Indexes the lineage pages not indexed yet; returns how many."""
        given = set(pages)
        todo = sorted(given - self.indexed(given))
        if not todo:
            return 0
        with self.index.transaction() as db:
            for page in todo:
                records = read_page(self.store, page)
                self._add(db, page, records)
                db.executemany("INSERT OR IGNORE INTO lineage_input VALUES (?,?)",
                               {(d, page) for r in records for _, d in r.inputs})
        return len(todo)

    def index_journal(self, journal: str, records: list[Record] | None = None) -> None:
        """Indexes a journal (its records, when the caller has them already)."""
        if self.indexed([journal]):
            return
        records = records if records is not None else read_journal(self.store, journal)
        with self.index.transaction() as db:
            self._add(db, journal, records)

    def _add(self, db, obj: str, records: list[Record]) -> None:  # type: ignore[no-untyped-def]
        db.executemany("INSERT OR REPLACE INTO lineage_cache VALUES (?,?)", [(r.cache, obj) for r in records if r.ok])
        db.execute("INSERT OR IGNORE INTO lineage_indexed VALUES (?)", (obj,))

    def lookup(self, caches: Iterable[str]) -> dict[str, str]:
        """Cache key → the page or journal holding its success, for those of ``caches`` known."""
        found: dict[str, str] = {}
        keys = list(caches)
        for i in range(0, len(keys), _CHUNK):
            part = keys[i : i + _CHUNK]
            found.update(self.index.db.execute(
                f"SELECT cache, object FROM lineage_cache WHERE cache IN ({','.join('?' * len(part))})", part))
        return found

    def pages_reading(self, datum: str) -> set[str]:
        """The indexed lineage pages with a record that read ``datum``."""
        return {p for (p,) in self.index.db.execute("SELECT page FROM lineage_input WHERE datum=?", (datum,))}

    def _select(self, sql: str, values: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(values), _CHUNK):
            part = values[i : i + _CHUNK]
            out.extend(v for (v,) in self.index.db.execute(sql.format(",".join("?" * len(part))), part))
        return out


def read_records(store: Store, obj: str) -> list[Record]:
    """The records of a page or a journal, whichever ``obj`` is."""
    from datarepo.errors import CorruptObjectError

    try:
        return read_page(store, obj)
    except CorruptObjectError:
        return read_journal(store, obj)
