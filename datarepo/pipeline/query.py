"""Lineage queries: ``datarepo lineage KEY[@REV]`` and ``--downstream``; the pipelines' states.

Upstream: the pipeline commit that wrote a key is the first on the first-parent history
whose ``provenance["output"]`` holds the key; its lineage root finds the key's record in
one page (the root is an index by output key, as a tree root is by key), and the record
names the input keys and datums, at the input commit, from which the walk goes on. A key
that no pipeline's prefix holds (as the nearest pipeline commit's provenance lists them)
is raw data, known as soon as that commit is read. No pipeline's code is read: a pipeline renamed or removed since still
answers for what it wrote.

Downstream: the run cache's ``lineage_input`` table (:mod:`~datarepo.pipeline.cache`)
gives the lineage pages with a record that read a datum; of those, the pages of each
pipeline's current root are opened, and the walk goes on from their outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from datarepo.errors import BadRevisionError, DataRepoError, ObjectNotFoundError
from datarepo.hashing import Oid
from datarepo.pipeline.cache import LineageCache
from datarepo.pipeline.heads import State, heads
from datarepo.pipeline.lineage import Reader, Record, page_rows, read_root
from datarepo.repo import Repo
from datarepo.tree import compile_glob

MAX_DEPTH = 64


@dataclass
class Node:
    """A key in a lineage walk: raw (``pipeline`` empty) or made by a pipeline from ``inputs``
    (upstream), or used to make ``outputs`` (downstream)."""

    key: str
    datum: str
    commit: str
    pipeline: str = ""
    fingerprint: str = ""
    dropped: str | None = None
    links: list[Node] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "datum": self.datum, "commit": self.commit}
        if self.pipeline:
            out.update(pipeline=self.pipeline, fingerprint=self.fingerprint)
        if self.dropped is not None:
            out["dropped"] = self.dropped
        out["links"] = [n.to_json() for n in self.links]
        return out


def states(repo: Repo, commit: Oid | None, names: set[str] | None = None) -> Iterator[State]:
    """Each pipeline's last commit on the first-parent history of ``commit``, newest first
    (of ``names`` only, if given): see :mod:`~datarepo.pipeline.heads`."""
    return (s for s in heads(repo, commit) if names is None or s.name in names)


def output_prefixes(repo: Repo, commit: Oid | None) -> tuple[str, ...]:
    """The output prefixes of every pipeline as of ``commit``, from the repository alone:
    the nearest pipeline commit names them all (``provenance["outputs"]``: the prefixes of
    its run's whole DAG, and of every pipeline before it), else (history written before
    that field) each pipeline's last commit names its own."""
    found: set[str] = set()
    for state in states(repo, commit):
        outputs = state.provenance.get("outputs")
        if isinstance(outputs, list) and all(isinstance(o, str) for o in outputs):
            return tuple(sorted(found.union(outputs)))
        if isinstance(state.provenance.get("output"), str):
            found.add(state.provenance["output"])
    return tuple(sorted(found))


def upstream(repo: Repo, spec: str) -> Node:
    """The lineage of ``KEY[@REV]`` back to raw datums, from the repository alone (no
    pipeline's code is read): see :func:`producer`."""
    key, commit = _key_at(repo, spec)
    return _up(repo, key, commit, 0)


def producer(repo: Repo, key: str, commit: Oid) -> State | None:
    """The last commit, as of ``commit``, of the pipeline whose output prefix holds ``key``
    (None: a raw key). One walk of the first-parent history: the nearest pipeline commit
    names every output prefix (``provenance["outputs"]``), so a key under none of them is
    raw at once; else the walk goes on to the pipeline that writes there."""
    for i, state in enumerate(states(repo, commit)):
        if state.output and key.startswith(state.output):
            return state
        outputs = state.provenance.get("outputs") if i == 0 else None
        if isinstance(outputs, list) and not any(isinstance(o, str) and key.startswith(o) for o in outputs):
            return None
    return None


def _key_at(repo: Repo, spec: str) -> tuple[str, Oid]:
    """(key, commit) of ``KEY[@REV]``: the revision follows the last ``@``, so a key that
    holds one is named with its revision (``a@b@HEAD``)."""
    key, sep, rev = spec.rpartition("@")
    if not sep:
        return spec, repo.resolve("HEAD")
    try:
        return key, repo.resolve(rev)
    except BadRevisionError as e:
        if e.reason != "unknown revision":
            raise
        why = f"{spec!r} is KEY@REV (a key that holds '@' is named with its revision: {spec + '@HEAD'!r}); unknown revision"
        raise BadRevisionError(rev, why) from None


def _up(repo: Repo, key: str, commit: Oid, depth: int) -> Node:
    entry = repo.tree(commit).get(key)
    if entry is None:
        raise ObjectNotFoundError("key", f"{key!r} at {commit[:12]}")
    node = Node(key, entry.datum, commit)
    state = producer(repo, key, commit) if depth < MAX_DEPTH else None
    if state is None:
        return node  # raw: under no pipeline's output prefix
    root = read_root(repo.store, state.provenance["lineage"])
    record = Reader(repo.store, root).producer(key)
    if record is None:
        return node
    node.pipeline, node.fingerprint, node.commit = state.name, root.fingerprint, state.commit
    for in_key, _ in record.inputs:
        node.links.append(_up(repo, in_key, _input_commit(root.inputs, in_key), depth + 1))
    return node


def _input_commit(inputs: dict[str, str], key: str) -> Oid:
    for label, commit in inputs.items():  # ``GLOB`` or ``GLOB@REV``, and a glob may hold '@'
        globs = {label, label.rpartition("@")[0] or label}
        if any(compile_glob(glob).fullmatch(key) for glob in globs):
            return Oid(commit)
    return Oid(next(iter(inputs.values())))


def downstream(repo: Repo, spec: str, cache: LineageCache) -> Node:
    """Everything derived from ``KEY[@REV]``, as of that revision."""
    key, commit = _key_at(repo, spec)
    entry = repo.tree(commit).get(key)
    if entry is None:
        raise ObjectNotFoundError("key", f"{key!r} at {commit[:12]}")
    readers = []
    for state in states(repo, commit):
        root = read_root(repo.store, state.provenance["lineage"])
        cache.index_pages(p[2] for p in root.pages)
        readers.append((state, Reader(repo.store, root)))
    node = Node(key, entry.datum, commit)
    _down(node, readers, cache, 0)
    return node


def _down(node: Node, readers: list[tuple[State, Reader]], cache: LineageCache, depth: int) -> None:
    """Links to ``node`` the units that read it, as each pipeline's root has them now: the
    index names pages (of any run) with a record that read the datum; the record's base is
    then looked up in the root of the pipeline that writes there."""
    if depth >= MAX_DEPTH:
        return
    wanted = [node.key, node.datum]
    bases = set()
    for page in sorted(cache.pages_reading(node.datum)):
        try:
            rows = page_rows(cache.store, page)
        except DataRepoError:  # deleted by gc since: the index is rebuilt after a gc
            continue
        bases.update(r[0] for r in rows if wanted in r[2])
    for base in sorted(bases):
        for state, reader in readers:
            if base.startswith(reader.root.output) and (record := reader.get(base)) is not None:
                if (node.key, node.datum) in record.inputs:
                    _link(node, state, reader, record, readers, cache, depth)


def _link(
    node: Node, state: State, reader: Reader, record: Record, readers: list[tuple[State, Reader]], cache: LineageCache, depth: int
) -> None:
    if not record.outputs:
        node.links.append(Node(record.base, "", state.commit, state.name, reader.root.fingerprint,
                               record.dropped if record.ok else f"failed: {record.error[0]}"))  # type: ignore[index]
        return
    for out_key, datum, _ in record.keys():
        child = Node(out_key, datum, state.commit, state.name, reader.root.fingerprint)
        node.links.append(child)
        _down(child, readers, cache, depth + 1)

