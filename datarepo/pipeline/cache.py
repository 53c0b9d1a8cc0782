"""The lineage tables of ``index.sqlite``: a cache, rebuilt from lineage objects.

* ``lineage_cache``: cache key of a success → the lineage page or journal holding its
  record: the run cache (a unit whose cache key is here is not computed again);
* ``lineage_input``: input datum → the lineage pages with a record that read it: what
  ``lineage --downstream`` starts from;
* ``lineage_indexed``: the pages whose records are in the two above (each record at the
  page of the run that wrote it: see :meth:`LineageCache.index_written`);
* the meta value ``lineage-journals:<pipeline>``: the journals (one a finished batch) of a
  run of the pipeline not committed yet (interrupted, or stopped by ``--fail-fast``),
  whose records the next run reuses.

A run indexes only the records it wrote. Deleting ``index.sqlite`` (and ``gc``, which
empties these tables when it deletes objects) loses speed, not data: the runs and queries
to come index the pages of the pipelines' roots as they meet them (an interrupted run's
journals are then not found, and its work is done again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from datarepo.index import Index
from datarepo.pipeline.lineage import Record, read_journal, read_page
from datarepo.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage_indexed (object TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage_cache (cache TEXT PRIMARY KEY, object TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage_input (datum TEXT, page TEXT, PRIMARY KEY (datum, page)) WITHOUT ROWID;
"""
_CHUNK = 900
_JOURNALS = "lineage-journals:"


class LineageCache:
    """The lineage tables of one repository's index."""

    def __init__(self, index: Index, store: Store) -> None:
        self.index, self.store = index, store
        index.db.executescript(_SCHEMA)

    def indexed(self, objects: Iterable[str]) -> set[str]:
        return set(self._select("SELECT object FROM lineage_indexed WHERE object IN ({})", list(objects)))

    def index_pages(self, pages: Iterable[str]) -> int:
        """Indexes the lineage pages not indexed yet, each record of them; returns how many."""
        given = set(pages)
        todo = sorted(given - self.indexed(given))
        if todo:
            with self.index.transaction() as db:
                for page in todo:
                    self._add(db, [(page, r) for r in read_page(self.store, page)])
                db.executemany("INSERT OR IGNORE INTO lineage_indexed VALUES (?)", [(p,) for p in todo])
        return len(todo)

    def index_written(self, placed: Mapping[str, str], records: Mapping[str, Record | None]) -> None:
        """Indexes the records a run wrote (base → the page it put each in). The other
        records of those pages were written by earlier runs and are indexed at the pages
        those runs wrote, which are immutable: a run that changes a few units of a page it
        rewrites indexes those few, not the page."""
        with self.index.transaction() as db:
            self._add(db, [(page, r) for base, page in placed.items() if (r := records[base]) is not None])
            db.executemany("INSERT OR IGNORE INTO lineage_indexed VALUES (?)", [(p,) for p in set(placed.values())])

    @staticmethod
    def _add(db, found: list[tuple[str, Record]]) -> None:  # type: ignore[no-untyped-def]
        db.executemany("INSERT OR REPLACE INTO lineage_cache VALUES (?,?)", [(r.cache, page) for page, r in found if r.ok])
        db.executemany("INSERT OR IGNORE INTO lineage_input VALUES (?,?)", {(d, page) for page, r in found for _, d in r.inputs})

    def clear(self) -> None:
        """Forgets everything (``gc`` deleted objects that rows may name)."""
        with self.index.transaction() as db:
            for table in ("lineage_indexed", "lineage_cache", "lineage_input"):
                db.execute(f"DELETE FROM {table}")

    # Journals: the records of a run's finished batches, before its commit -------------------
    def add_journal(self, pipeline: str, journal: str) -> None:
        """Notes a journal of a run of ``pipeline`` not committed yet."""
        self.index.set_meta(_JOURNALS + pipeline, "\n".join([*self.journals(pipeline), journal]))

    def journals(self, pipeline: str) -> list[str]:
        value = self.index.get_meta(_JOURNALS + pipeline)
        return str(value).split("\n") if value else []

    def clear_journals(self, pipeline: str) -> None:
        """Forgets the journals of ``pipeline``: its commit holds their records now."""
        self.index.db.execute("DELETE FROM meta WHERE name=?", (_JOURNALS + pipeline,))

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
    kind = store.get_object(obj).to_json().get("type")
    return read_journal(store, obj) if kind == "lineage-journal" else read_page(store, obj)
