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

Rows are trusted no more than the file: a row that does not read as written (a wrong type,
an id that is not an oid), or that names an object that is gone or does not hold what the
row says, is damage. The tables are then emptied and the pages met so far indexed again
(:meth:`LineageCache.repair`): a damaged row costs work done again, never a wrong output or
a wrong answer. A table whose columns are not these is made anew when the cache is opened.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from datarepo.errors import DataRepoError
from datarepo.hashing import is_oid
from datarepo.index import Index
from datarepo.pipeline.lineage import Record, read_journal, read_page
from datarepo.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage_indexed (object TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage_cache (cache TEXT PRIMARY KEY, object TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage_input (datum TEXT, page TEXT, PRIMARY KEY (datum, page)) WITHOUT ROWID;
"""
_COLUMNS = {"lineage_indexed": ["object"], "lineage_cache": ["cache", "object"], "lineage_input": ["datum", "page"]}
_CHUNK = 900
_JOURNALS = "lineage-journals:"


def _oid(value: object) -> bool:
    return type(value) is str and is_oid(value)


class LineageCache:
    """The lineage tables of one repository's index."""

    def __init__(self, index: Index, store: Store) -> None:
        self.index, self.store = index, store
        self.asked: set[str] = set()  # the pages indexed (or found indexed) through this object
        index.db.executescript(_SCHEMA)
        self._check_schema()

    def _check_schema(self) -> None:
        """Makes the tables anew (empty, all three) when one is not as created here."""
        kinds = dict(self.index.db.execute(
            f"SELECT name, type FROM sqlite_master WHERE name IN ({','.join('?' * len(_COLUMNS))})", list(_COLUMNS)))
        columns = {t: [r[1] for r in self.index.db.execute(f"PRAGMA table_info({t})")] for t in _COLUMNS}
        if all(kinds.get(t) == "table" and columns[t] == c for t, c in _COLUMNS.items()):
            return
        with self.index.transaction() as db:
            for table in _COLUMNS:
                db.execute(f"DROP {'VIEW' if kinds.get(table) == 'view' else 'TABLE'} IF EXISTS {table}")
        self.index.db.executescript(_SCHEMA)

    def indexed(self, objects: Iterable[str]) -> set[str]:
        return set(self._select("SELECT object FROM lineage_indexed WHERE object IN ({})", list(objects)))

    def index_pages(self, pages: Iterable[str]) -> int:
        """Indexes the lineage pages not indexed yet, each record of them; returns how many."""
        given = set(pages)
        self.asked |= given
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

    def repair(self) -> None:
        """A damaged row was met: forgets everything, then indexes again the pages met so
        far (those of the roots a run or a query is working from)."""
        self.clear()
        self.index_pages(set(self.asked))

    def damage(self) -> list[str]:
        """The damaged rows of the tables (for ``fsck``), each kind once; when there are
        any, the tables are emptied (and filled again by the runs and queries to come)."""
        checks = {
            "lineage_cache": "typeof(cache) != 'text' OR typeof(object) != 'text' OR length(object) != 32",
            "lineage_input": "typeof(datum) != 'text' OR typeof(page) != 'text' OR length(page) != 32",
            "lineage_indexed": "typeof(object) != 'text' OR length(object) != 32",
        }
        problems = []
        for table, where in checks.items():
            (bad,) = self.index.db.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()
            if bad:
                problems.append(f"index.sqlite: {bad} damaged {table} rows, dropped (the table is rebuilt as runs meet its pages)")
        if problems:
            self.clear()
        return problems

    # Journals: the records of a run's finished batches, before its commit -------------------
    def add_journal(self, pipeline: str, journal: str) -> None:
        """Notes a journal of a run of ``pipeline`` not committed yet."""
        self.index.set_meta(_JOURNALS + pipeline, "\n".join([*self.journals(pipeline), journal]))

    def journals(self, pipeline: str) -> list[str]:
        """The journals noted for ``pipeline`` (those that are not oids are damage, and left out)."""
        value = self.index.get_meta(_JOURNALS + pipeline)
        return [j for j in str(value).split("\n") if is_oid(j)] if value else []

    def clear_journals(self, pipeline: str) -> None:
        """Forgets the journals of ``pipeline``: its commit holds their records now."""
        self.index.db.execute("DELETE FROM meta WHERE name=?", (_JOURNALS + pipeline,))

    def lookup(self, caches: Iterable[str]) -> dict[str, str]:
        """Cache key → the page holding its success, for those of ``caches`` known (rows
        that are not oids left out: see :meth:`successes`)."""
        found: dict[str, str] = {}
        keys = list(caches)
        for i in range(0, len(keys), _CHUNK):
            part = keys[i : i + _CHUNK]
            found.update(self.index.db.execute(
                f"SELECT cache, object FROM lineage_cache WHERE cache IN ({','.join('?' * len(part))})", part))
        return {c: o for c, o in found.items() if _oid(o)}

    def successes(self, caches: Iterable[str]) -> dict[str, Record]:
        """Cache key → its recorded success, for those of ``caches`` the table knows, read
        from the pages the rows name. A row that is damaged (not an oid, a page that is gone
        or does not hold that success) makes the tables be rebuilt (:meth:`repair`), once."""
        wanted = list(caches)
        for attempt in range(2):
            found, damaged = self._read_successes(wanted)
            if not damaged or attempt:
                return found
            self.repair()
        return found

    def _read_successes(self, wanted: list[str]) -> tuple[dict[str, Record], bool]:
        rows: dict[str, str] = {}
        for i in range(0, len(wanted), _CHUNK):
            part = wanted[i : i + _CHUNK]
            rows.update(self.index.db.execute(
                f"SELECT cache, object FROM lineage_cache WHERE cache IN ({','.join('?' * len(part))})", part))
        damaged = not all(_oid(o) for o in rows.values())
        found: dict[str, Record] = {}
        for obj in {o for o in rows.values() if _oid(o)}:
            try:
                found.update((r.cache, r) for r in read_page(self.store, obj) if r.ok)
            except DataRepoError:  # gone (a gc empties the tables), damaged, not a page
                damaged = True
        damaged = damaged or any(c not in found for c, o in rows.items() if _oid(o))
        return {c: found[c] for c in wanted if c in found}, damaged

    def pages_reading(self, datum: str) -> set[str]:
        """The indexed lineage pages with a record that read ``datum``. A row that is
        damaged (not an oid, a page that is gone) makes the tables be rebuilt, once."""
        for attempt in range(2):
            pages = [p for (p,) in self.index.db.execute("SELECT page FROM lineage_input WHERE datum=?", (datum,))]
            if attempt or all(_oid(p) and self.store.has_object(p) for p in pages):
                break
            self.repair()
        return {p for p in pages if _oid(p)}

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
