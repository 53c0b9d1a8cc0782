"""Bad arguments to the Python API (docs/api.md): ``datarepo.open``, ``Repo.init``, a
repository's ``tree``, ``read``, ``manifest``, ``commit`` and ``writer().put``, a tree's
and a selection's methods, a manifest's, ``ShardReader`` and the executors. A wrong type
or value is an ``InvalidInputError`` (a ``ValueError``) whose message starts with the
argument's name, raised as the call is made: never an ``AttributeError`` or ``TypeError``
from deep inside, never a wrong result, and a write given one leaves the repository as
it was."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import datarepo
from datarepo.errors import BadRevisionError, InvalidInputError, ObjectNotFoundError, PipelineError, RefConflictError
from datarepo.executor import ProcessExecutor, open_executor
from datarepo.manifest import ShardReader
from datarepo.repo import Repo
from datarepo.shardreader import DatumRange


def make(root: Path) -> None:
    Repo.init(root, shard_size=8192).close()
    with datarepo.open(root) as repo, repo.lock:
        with repo.writer() as w:
            for i in range(30):
                w.put(f"train/{i:04d}", {"bin": os.urandom(600 + i), "cls": b"%d" % (i % 2)})
        repo.commit(w.entries, "thirty samples")


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A repository of 30 datums in several shards, opened, with its tree and manifest."""
    root = tmp_path_factory.mktemp("api-args")
    make(root)
    with datarepo.open(root) as repo:
        tree = repo.tree()
        manifest = repo.manifest(tree)
        assert len(manifest.shards) >= 3
        entry = tree["train/0001"]
        yield SimpleNamespace(root=root, repo=repo, tree=tree, manifest=manifest, entry=entry, datum=entry.datum)


def files_of(root: Path) -> dict[str, bytes]:
    """Every file of the repository's folder but its cache, with its bytes."""
    out = {}
    for folder, _, names in os.walk(root / ".datarepo"):
        for name in names:
            if not name.startswith("index.sqlite"):
                path = os.path.join(folder, name)
                out[path] = Path(path).read_bytes()
    return out


def refused(argument: str, call: Callable[[], Any]) -> str:
    """The message of the InvalidInputError ``call()`` raises; it starts with the argument."""
    with pytest.raises(InvalidInputError) as e:
        call()
    message = str(e.value)
    assert re.match(rf"{re.escape(argument)}\b", message), message
    assert "\n" not in message
    assert isinstance(e.value, ValueError)
    return message


# --- opening ---------------------------------------------------------------------------------

BAD_OPEN = [
    ("path", lambda c: datarepo.open(5)),
    ("path", lambda c: datarepo.open(None)),
    ("path", lambda c: datarepo.open(os.fsencode(c.root))),
    ("path", lambda c: datarepo.open("")),
    ("cache", lambda c: datarepo.open(c.root, cache=5)),
    ("cache", lambda c: datarepo.open(f"file://{c.root}", cache=5)),
    ("cache", lambda c: datarepo.open(f"file://{c.root}", cache=b"/tmp")),
]


@pytest.mark.parametrize(("argument", "call"), BAD_OPEN)
def test_open_refuses(c: Any, argument: str, call: Callable[[Any], Any]) -> None:
    refused(argument, lambda: call(c))


def test_open_takes_a_path_or_a_str(c: Any) -> None:
    with datarepo.open(c.root) as a, datarepo.open(str(c.root / "train")) as b:
        assert a.dotdir == b.dotdir and a.head() == b.head()


BAD_INIT = [
    ("path", dict(path=5)),
    ("path", dict(path=b"x")),
    ("bare", dict(bare="no")),
    ("bare", dict(bare=1)),
    ("shard_size", dict(shard_size="8K")),
    ("shard_size", dict(shard_size=True)),
    ("shard_size", dict(shard_size=1.5)),
    ("shard_size", dict(shard_size=-1)),
    ("grouping", dict(grouping=5)),
    ("grouping", dict(grouping="x")),
]


@pytest.mark.parametrize(("argument", "kwargs"), BAD_INIT)
def test_init_refuses_and_makes_nothing(tmp_path: Path, argument: str, kwargs: dict[str, Any]) -> None:
    kwargs = {"path": tmp_path / "new", **kwargs}
    refused(argument, lambda: Repo.init(**kwargs))
    assert not (tmp_path / "new").exists()


def test_init_takes_a_str(tmp_path: Path) -> None:
    Repo.init(str(tmp_path)).close()
    with datarepo.open(tmp_path) as repo:
        assert repo.head() is None and len(repo.tree()) == 0


# --- reading ---------------------------------------------------------------------------------

BAD_READS = [
    ("rev", lambda c: c.repo.tree(5)),
    ("rev", lambda c: c.repo.tree(None)),
    ("rev", lambda c: c.repo.tree(b"HEAD")),
    ("datum", lambda c: c.repo.read(123)),
    ("datum", lambda c: c.repo.read(None)),
    ("datum", lambda c: c.repo.read(c.datum.encode())),
    ("datum", lambda c: c.repo.read(c.entry)),  # the entry, not its datum
    ("verify", lambda c: c.repo.read(c.datum, verify="yes")),
    ("verify", lambda c: c.repo.read(c.datum, verify=1)),
    ("selection", lambda c: c.repo.manifest("train/")),
    ("selection", lambda c: c.repo.manifest(None)),
    ("selection", lambda c: c.repo.manifest(c.manifest)),
    ("selection", lambda c: c.repo.manifest(list(c.tree))),
    ("key", lambda c: c.tree[5]),
    ("key", lambda c: c.tree[None]),
    ("key", lambda c: c.tree[b"train/0001"]),
    ("key", lambda c: c.tree.get(5)),
    ("keys", lambda c: c.tree.get_many("train/0001")),  # a str is not a list of one-character keys
    ("keys", lambda c: c.tree.get_many([5])),
    ("keys", lambda c: c.tree.get_many(5)),
    ("keys", lambda c: c.tree.get_many([b"train/0001"])),
    ("prefix", lambda c: c.tree.select(prefix=3)),
    ("prefix", lambda c: c.tree.select(prefix=None)),
    ("prefix", lambda c: c.tree.select(prefix=b"train/")),
    ("glob", lambda c: c.tree.select(glob=5)),
    ("glob", lambda c: c.tree.select(glob=b"**")),
    ("other", lambda c: c.tree.diff(3)),
    ("other", lambda c: c.tree.diff(None)),
    ("other", lambda c: c.tree.diff("HEAD")),
    ("datums", lambda c: c.repo.stored(c.datum)),  # one id is not a list of its characters (was: none stored)
    ("datums", lambda c: c.repo.stored(5)),
    ("datums", lambda c: c.repo.stored([5])),
    ("shard", lambda c: c.repo.store.open_shard(0)),  # a place in the manifest, not the shard's oid
    ("shard", lambda c: c.repo.store.open_shard(None)),
]


@pytest.mark.parametrize(("argument", "call"), BAD_READS)
def test_reads_refuse(c: Any, argument: str, call: Callable[[Any], Any]) -> None:
    refused(argument, lambda: call(c))


def test_reads_that_name_nothing(c: Any) -> None:
    """A str that names no datum, key or revision is not found, as before: not a bad argument."""
    with pytest.raises(ObjectNotFoundError):
        c.repo.read("")
    with pytest.raises(ObjectNotFoundError):
        c.repo.read("0" * 32)
    with pytest.raises(KeyError):
        c.tree["train/9999"]
    assert 5 not in c.tree and b"train/0001" not in c.tree
    assert c.tree.get_many(("train/0001", "train/9999")) == {"train/0001": c.entry}
    assert c.tree.get_many(k for k in ["train/0001", "train/\udcff"]) == {"train/0001": c.entry}
    assert list(c.tree.select(glob="")) == [] == list(c.tree.select("train/\udcff")) == list(c.tree.select(glob="*\udcff"))
    with pytest.raises(BadRevisionError):
        c.repo.tree("HEAD\udcff")
    assert c.repo.stored({c.datum, "0" * 32}) == c.repo.stored(iter([c.datum])) == {c.datum}
    with pytest.raises(ObjectNotFoundError):
        c.repo.store.open_shard("0" * 32)


BAD_MANIFEST_CALLS = [
    ("shard", lambda m: m.ranges(len(m.shards))),
    ("shard", lambda m: m.ranges(-1)),  # (was the empty list: no shard's ranges)
    ("shard", lambda m: m.ranges(True)),
    ("shard", lambda m: m.ranges(1.0)),
    ("shard", lambda m: m.ranges(None)),
    ("shard", lambda m: m.ranges(m.shards[0].encode())),
    ("shard", lambda m: m.rows(99)),
    ("shard", lambda m: m.shard_bytes(-1)),
    ("shards", lambda m: m.subset(5)),
    ("shards", lambda m: m.subset(None)),
    ("shards", lambda m: m.subset(m.shards[0])),  # one oid, not a list of its characters
    ("shard", lambda m: m.subset([99])),
    ("shard", lambda m: m.subset([-1])),  # (was a manifest of no datums in one shard)
    ("shard", lambda m: m.subset([None])),
]


@pytest.mark.parametrize(("argument", "call"), BAD_MANIFEST_CALLS)
def test_manifest_methods_refuse(c: Any, argument: str, call: Callable[[Any], Any]) -> None:
    refused(argument, lambda: call(c.manifest))


def test_manifest_shards_by_oid_or_place(c: Any) -> None:
    m = c.manifest
    last = len(m.shards) - 1
    assert m.ranges(np.int64(last)) == m.ranges(m.shards[last]) == m.ranges(last)
    assert m.subset([m.shards[0], 1]).shards == m.shards[:2]
    with pytest.raises(ObjectNotFoundError):
        m.ranges("0" * 32)


def shard_reader(c: Any, *args: Any, **kwargs: Any) -> list[tuple[str, dict[str, bytes]]]:
    with c.repo.store.open_shard(c.manifest.shards[0]) as f:
        return list(ShardReader(f, *args, **kwargs))


def first(c: Any) -> DatumRange:
    return c.manifest.ranges(0)[0]


BAD_SHARD_READERS = [
    ("fileobj", lambda c: ShardReader(5, c.manifest.ranges(0))),
    ("fileobj", lambda c: ShardReader(str(c.root), c.manifest.ranges(0))),
    ("ranges", lambda c: shard_reader(c, 5)),
    ("ranges", lambda c: shard_reader(c, "ranges")),
    ("ranges", lambda c: shard_reader(c, [5])),
    ("ranges", lambda c: shard_reader(c, [first(c)[:3]])),
    ("ranges", lambda c: shard_reader(c, [first(c)._replace(key=5)])),
    ("ranges", lambda c: shard_reader(c, [first(c)._replace(datum="zz")])),
    ("ranges", lambda c: shard_reader(c, [first(c)._replace(offset=-1)])),
    ("ranges", lambda c: shard_reader(c, [first(c)._replace(length=-5)])),  # (a read of -5 reads all)
    ("ranges", lambda c: shard_reader(c, [first(c)._replace(offset=1.0)])),
    ("ranges", lambda c: shard_reader(c, c.manifest.ranges(0)[::-1])),
    ("ranges", lambda c: shard_reader(c, [first(c), first(c)._replace(offset=first(c).offset + 512)])),
    ("shard", lambda c: shard_reader(c, c.manifest.ranges(0), 5)),
    ("verify", lambda c: shard_reader(c, c.manifest.ranges(0), verify="no")),
]


@pytest.mark.parametrize(("argument", "call"), BAD_SHARD_READERS)
def test_shard_reader_refuses_as_it_is_made(c: Any, argument: str, call: Callable[[Any], Any]) -> None:
    refused(argument, lambda: call(c))


def test_shard_reader_takes_plain_tuples(c: Any) -> None:
    ranges = c.manifest.ranges(0)
    twice = [ranges[0], ranges[0]._replace(key="again"), *ranges[1:]]  # a datum that two keys name
    got = shard_reader(c, [tuple(r) for r in twice], c.manifest.shards[0], True)
    assert [k for k, _ in got] == [r.key for r in twice]
    assert got[0][1] == got[1][1] == c.repo.read(ranges[0].datum)


# --- writing ---------------------------------------------------------------------------------


def entry_of(c: Any, key: str, datum: Any = None, size: Any = 1) -> tuple[Any, ...]:
    return (key, c.datum if datum is None else datum, size)


BAD_COMMITS = [
    ("changes", lambda c: c.repo.commit("train/0001", "m")),
    ("changes", lambda c: c.repo.commit([("train/0001", None)], "m")),
    ("changes", lambda c: c.repo.commit({5: None}, "m")),
    ("changes", lambda c: c.repo.commit({b"train/0001": None}, "m")),
    ("changes", lambda c: c.repo.commit({"new": 5}, "m")),
    ("changes", lambda c: c.repo.commit({"new": c.datum}, "m")),
    ("changes", lambda c: c.repo.commit({"new": entry_of(c, "new")[:2]}, "m")),
    ("changes", lambda c: c.repo.commit({"new": entry_of(c, "other")}, "m")),
    ("changes", lambda c: c.repo.commit({"new": entry_of(c, "new", datum="zz")}, "m")),
    ("changes", lambda c: c.repo.commit({"new": entry_of(c, "new", datum=c.datum.upper())}, "m")),
    ("changes", lambda c: c.repo.commit({"new": entry_of(c, "new", size=-1)}, "m")),  # (was committed: an unreadable tree)
    ("changes", lambda c: c.repo.commit({"new": entry_of(c, "new", size="1")}, "m")),
    ("changes", lambda c: c.repo.commit({"new": entry_of(c, "new", size=True)}, "m")),
    ("changes", lambda c: c.repo.commit({"new": entry_of(c, "new", size=1 << 63)}, "m")),
    ("changes", lambda c: c.repo.commit({"a": None, "new": entry_of(c, "new", size=1.0)}, "m")),
    ("message", lambda c: c.repo.commit({}, 5)),
    ("message", lambda c: c.repo.commit({}, None)),
    ("message", lambda c: c.repo.commit({}, b"m")),
    ("the commit message", lambda c: c.repo.commit({}, "m\udcff")),
    ("provenance", lambda c: c.repo.commit({}, "m", provenance=5)),  # (was committed: an unreadable commit)
    ("provenance", lambda c: c.repo.commit({}, "m", provenance=["by"])),
    ("provenance", lambda c: c.repo.commit({}, "m", provenance={"a": float("nan")})),
    ("provenance", lambda c: c.repo.commit({}, "m", provenance={1: "a"})),
    ("provenance", lambda c: c.repo.commit({}, "m", provenance={"a": object()})),
    ("parent", lambda c: c.repo.commit({}, "m", parent="HEAD")),  # a commit id, not a revision
    ("parent", lambda c: c.repo.commit({}, "m", parent=5)),
    ("parent", lambda c: c.repo.commit({}, "m", parent="zz")),
    ("ref", lambda c: c.repo.commit({}, "m", ref=5)),
    ("ref", lambda c: c.repo.commit({}, "m", ref="main")),
    ("ref", lambda c: c.repo.commit({}, "m", ref="")),
    ("ref", lambda c: c.repo.commit({}, "m", parent=None, ref="refs/heads/../../x")),
    ("ref", lambda c: c.repo.commit({}, "m", parent=c.repo.head(), ref=b"HEAD")),
]


@pytest.mark.parametrize(("argument", "call"), BAD_COMMITS)
def test_commit_refuses_and_writes_nothing(c: Any, argument: str, call: Callable[[Any], Any]) -> None:
    before = files_of(c.root)
    with c.repo.lock:
        refused(argument, lambda: call(c))
    assert files_of(c.root) == before
    assert len(c.repo.tree()) == 30


def test_commit_of_a_stale_parent_writes_nothing(c: Any) -> None:
    """A parent that the ref no longer names is a conflict found before the tree is written."""
    before = files_of(c.root)
    with c.repo.lock, pytest.raises(RefConflictError):
        c.repo.commit({"train/0001": None}, "m", parent=None)
    assert files_of(c.root) == before


def put(c: Any, *args: Any, **kwargs: Any) -> Any:
    with c.repo.lock, c.repo.writer() as w:
        return w.put(*args, **kwargs)


BAD_PUTS = [
    ("key", lambda c: put(c, 5, {"txt": b"a"})),
    ("key", lambda c: put(c, None, {"txt": b"a"})),
    ("key", lambda c: put(c, b"k", {"txt": b"a"})),
    ("members", lambda c: put(c, "k", "x")),
    ("members", lambda c: put(c, "k", {})),  # (was a datum without members, which no reader takes)
    ("members", lambda c: put(c, "k", None)),
    ("members", lambda c: put(c, "k", {"txt": "text"})),
    ("members", lambda c: put(c, "k", {"txt": 5})),
    ("members", lambda c: put(c, "k", {"txt": None})),
    ("members", lambda c: put(c, "k", {5: b"a"})),
    ("members", lambda c: put(c, "k", {b"txt": b"a"})),
    ("hashes", lambda c: put(c, "k", {"txt": b"a"}, hashes=5)),
    ("hashes", lambda c: put(c, "k", {"txt": b"a"}, hashes={})),  # (was a datum whose id is not of its bytes)
    ("hashes", lambda c: put(c, "k", {"txt": b"a"}, hashes={"txt": "zz"})),
    ("hashes", lambda c: put(c, "k", {"txt": b"a"}, hashes={"txt": c.datum, "jpg": c.datum})),
]


@pytest.mark.parametrize(("argument", "call"), BAD_PUTS)
def test_put_refuses_and_writes_nothing(c: Any, argument: str, call: Callable[[Any], Any]) -> None:
    before = files_of(c.root)
    refused(argument, lambda: call(c))
    assert files_of(c.root) == before


def test_put_takes_bytes_like_members(c: Any) -> None:
    with c.repo.lock, c.repo.writer() as w:
        a = w.put("a", {"txt": b"same bytes"})
        b = w.put("b", {"txt": bytearray(b"same bytes")})
        m = w.put("m", {"txt": memoryview(b"same bytes")})
    assert a.datum == b.datum == m.datum and a.size == b.size == m.size
    assert c.repo.read(b.datum) == {"txt": b"same bytes"}


def test_put_on_a_closed_writer_is_refused(c: Any) -> None:
    """A datum put after the writer's block would lie in no shard: refused, not lost."""
    with c.repo.lock:
        with c.repo.writer() as w:
            w.put("x", {"txt": b"in time"})
        with pytest.raises(InvalidInputError, match="closed"):
            w.put("y", {"txt": b"too late"})
    assert set(w.entries) == {"x"}


def test_commit_takes_plain_tuples(tmp_path: Path) -> None:
    make(tmp_path)
    with datarepo.open(tmp_path) as repo, repo.lock:
        entry = repo.tree()["train/0001"]
        oid = repo.commit({"copy": ("copy", entry.datum, entry.size), "train/0002": None}, "m", provenance={"by": ["t", 1]})
        assert repo.tree(oid)["copy"].datum == entry.datum and "train/0002" not in repo.tree(oid)
        assert repo.read_commit(oid).provenance == {"by": ["t", 1]}


# --- executors -------------------------------------------------------------------------------

BAD_EXECUTORS = [
    ("kind", lambda: open_executor("threads")),
    ("kind", lambda: open_executor(5)),
    ("workers", lambda: open_executor("process", 0)),  # (was the default number, silently)
    ("workers", lambda: open_executor("process", -1)),
    ("workers", lambda: open_executor("process", "2")),
    ("workers", lambda: open_executor("process", True)),
    ("lost", lambda: open_executor("process", 2, lost=5)),
    ("workers", lambda: ProcessExecutor(0)),
    ("workers", lambda: ProcessExecutor(2.0)),
    ("lost", lambda: ProcessExecutor(2, lost="skip")),
]


@pytest.mark.parametrize(("argument", "call"), BAD_EXECUTORS)
def test_executors_refuse(argument: str, call: Callable[[], Any]) -> None:
    refused(argument, call)


def test_error_names_a_long_value_by_its_type(c: Any) -> None:
    message = refused("datum", lambda: c.repo.read(io.BytesIO(b"x" * 1000)))
    assert len(message) < 200


# --- the pipeline decorator (docs/pipelines.md) ----------------------------------------------


def transform(datum: dict[str, Any]) -> dict[str, Any]:
    return datum


BAD_DECLARATIONS = [
    ("input", dict(input=42)),
    ("input", dict(input=None)),
    ("input", dict(input=b"raw/**")),
    ("output", dict(output="up")),
    ("output", dict(output=5)),
    ("output", dict(output="../up/")),
    ("name", dict(name="")),
    ("name", dict(name="a b")),
    ("name", dict(name=5)),
    ("version", dict(version=1)),
    ("params", dict(params=[1])),
    ("params", dict(params={"a": object()})),
    ("params", dict(params={"a": float("nan")})),
    ("workers", dict(workers=0)),
    ("workers", dict(workers="2")),
    ("max_failures", dict(max_failures=-1)),
    ("retries", dict(retries=-1)),
    ("retries", dict(retries=True)),
    ("timeout", dict(timeout=0)),
    ("timeout", dict(timeout=float("inf"))),
    ("timeout", dict(timeout="60")),
    ("setup", dict(setup=5)),
    ("depends", dict(depends="numpy")),  # a str is not a list of one-letter names
    ("depends", dict(depends=[""])),
    ("batch_size", dict(batch_size=0)),
]


@pytest.mark.parametrize(("argument", "options"), BAD_DECLARATIONS)
def test_pipeline_decorator_refuses_as_it_decorates(argument: str, options: dict[str, Any]) -> None:
    """A bad option is one error naming it where the function is declared, not later as
    the pipelines are loaded (or never, in a program that only imports the module)."""
    options = {"input": "raw/**", "output": "up/", **options}
    with pytest.raises(PipelineError) as e:
        datarepo.pipeline(**options)(transform)
    assert re.match(rf"pipeline .+?: {argument}: ", str(e.value)), str(e.value)
    assert not hasattr(transform, "__datarepo_pipeline__")


def test_pipeline_decorator_refuses_what_is_not_a_function() -> None:
    with pytest.raises(PipelineError, match="decorates a function"):
        datarepo.pipeline("raw/**", "up/")("transform")


def test_pipeline_decorator_takes_good_options() -> None:
    def thumbs(datum: dict[str, Any], size: int) -> dict[str, Any]:
        return datum

    marked = datarepo.pipeline(datarepo.pipeline.source("raw/**", rev="v1"), "thumbs/", params={"size": 64}, workers=2,
                               retries=1, timeout=5, depends=("numpy",), batch_size=10)(thumbs)
    assert marked is thumbs and thumbs.__datarepo_pipeline__["name"] == "thumbs"


def test_diff_with_a_tree_of_another_repository(c: Any, tmp_path: Path) -> None:
    """Each tree is read from its own repository (the other's pages are not looked for here)."""
    Repo.init(tmp_path).close()
    with datarepo.open(tmp_path) as other, other.lock:
        with other.writer() as w:
            w.put("train/0001", c.repo.read(c.datum))
            w.put("val/0000", {"txt": b"only there"})
        other.commit(w.entries, "m")
        changes = list(c.tree.diff(other.tree()))
        back = list(other.tree().diff(c.tree))
    assert [(k, a is not None, b is not None) for k, a, b in changes] == (
        [(f"train/{i:04d}", True, False) for i in range(30) if i != 1] + [("val/0000", False, True)])
    assert [(k, b, a) for k, a, b in back] == changes


def test_a_folder_whose_name_is_not_utf8_opens(tmp_path: Path) -> None:
    folder = tmp_path / os.fsdecode(b"data\xff")
    Repo.init(folder).close()
    with datarepo.open(folder) as a, datarepo.open(str(folder)) as b:
        assert a.dotdir == b.dotdir == folder / ".datarepo"


@pytest.mark.parametrize(("argument", "kwargs"), [("repo", {"repo": ""}), ("repo", {"repo": b"."}), ("cache", {"cache": b"/tmp"})])
def test_the_loader_checks_its_repository_as_open_does(c: Any, argument: str, kwargs: dict[str, Any]) -> None:
    pytest.importorskip("torch")
    from datarepo.torch import DatumDataset

    refused(argument, lambda: DatumDataset(**{"repo": c.root, **kwargs}))
