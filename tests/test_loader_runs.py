"""Run records: ``record_run`` pins what a training run read against ``gc``, ``datarepo
runs`` lists the runs and prints the exact order of any epoch, and ``from_run`` rebuilds
the same dataset."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import Cli  # noqa: E402
from loader_fixtures import keys_of, labelled, loader, make_repo  # noqa: E402

import datarepo  # noqa: E402
from datarepo.config import Config  # noqa: E402
from datarepo.errors import BadRevisionError, InvalidInputError, ObjectNotFoundError  # noqa: E402
from datarepo.objects import Blob  # noqa: E402
from datarepo.torch import DatumDataset  # noqa: E402
from datarepo.torch.runs import NotARunError  # noqa: E402


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_repo(tmp_path, {**labelled(40), **labelled(10, "val/", seed=2)})
    return tmp_path


def test_a_recorded_run_lists_and_replays_its_order(repo: Path) -> None:
    ds = DatumDataset(repo, rev="main", prefix="train/", decode={"cls": "int"}, seed=4, batch_size=8, block=4, window=2)
    ds.set_epoch(1)
    with datarepo.open(repo) as r:
        oid = r.record_run("exp-1", ds, extra={"git": "abc", "md5": "0" * 32})
        head = r.head()
    cli = Cli(repo)
    assert cli("runs").output.split("\t")[:2] == ["exp-1", head[:12]]
    (listed,) = json.loads(cli("runs", "--json").output)
    assert listed["name"] == "exp-1" and listed["oid"] == oid and listed["epochs"] == 2 and listed["seed"] == 4
    shown = json.loads(cli("runs", "show", "exp-1", "--json").output)
    assert shown["commit"] == head and shown["prefix"] == "train/" and shown["world_size"] == 1
    assert shown["decode"] == {"cls": "int"} and shown["extra"] == {"git": "abc", "md5": "0" * 32}
    assert "fingerprint: " + ds.fingerprint() in cli("runs", "show", "exp-1").output
    for epoch in (0, 1):
        printed = cli("runs", "show", "exp-1", "--keys", "--epoch", str(epoch)).output.splitlines()
        assert printed == list(ds.keys_in_order(epoch))
        assert keys_of(loader(DatumDataset.from_run(repo, "exp-1", epoch=epoch), workers=1)) == printed
    assert head in cli("log", "exp-1").output  # a run's name is a revision: the commit it read


def test_the_order_and_a_recorded_run_outlive_a_repack(repo: Path) -> None:
    """An epoch's order is a function of the commit's keys, not of the shards that hold
    them: a repack that moves every datum into other shards changes no order, a run
    recorded before it replays, and a state taken before it resumes after it."""
    kw = {"prefix": "train/", "decode": {"cls": "int"}, "seed": 4, "block": 4, "window": 2, "batch_size": 5}
    ds = DatumDataset(repo, **kw)
    orders = [list(ds.keys_in_order(epoch)) for epoch in (0, 1)]
    assert len(ds.manifest.shards) > 3
    batches = iter(loader(ds, workers=1))
    first = [next(batches) for _ in range(3)]
    state = ds.state_dict(after=first[-1])
    del batches
    with datarepo.open(repo) as r:
        r.record_run("before-repack", ds)
    shards = set(ds.manifest.shards)
    path = repo / ".datarepo" / "config.toml"
    replace(Config.load(path), shard_size=3000).save(path)  # shards cut otherwise
    Cli(repo)("repack", "--all")
    again = DatumDataset(repo, **kw)
    assert not shards & set(again.manifest.shards)  # every datum lies elsewhere now
    assert [list(again.keys_in_order(epoch)) for epoch in (0, 1)] == orders
    assert list(DatumDataset.from_run(repo, "before-repack").keys_in_order()) == orders[0]
    again.load_state_dict(state)
    assert keys_of(first) + keys_of(loader(again, workers=2)) == orders[0]
    assert list(DatumDataset(repo, prefix="train/", shuffle=False).keys_in_order()) == sorted(orders[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataset_reads_on_after_repack_and_gc_deleted_the_shards_it_planned(repo: Path, workers: int) -> None:
    """A long run planned before a ``repack`` and a ``gc --prune now`` that deleted every
    shard it planned to read still reads every sample, in its order, from where the datums
    lie now."""
    ds = DatumDataset(repo, prefix="train/", decode={"cls": "int"}, seed=4, block=4, window=2, batch_size=5)
    batches = iter(loader(ds, workers))
    first = next(batches)  # (the workers have shards open: they read on from those)
    planned = [repo / ".datarepo" / "shards" / s[:2] / f"{s[2:]}.tar" for s in ds.manifest.shards]
    assert all(p.exists() for p in planned)
    path = repo / ".datarepo" / "config.toml"
    replace(Config.load(path), shard_size=3000).save(path)
    cli = Cli(repo)
    cli("repack", "--all")
    cli("gc", "--prune", "now")
    assert not any(p.exists() for p in planned)
    rest = list(batches)
    assert keys_of([first, *rest]) == list(ds.keys_in_order())
    assert keys_of(loader(ds, workers)) == list(ds.keys_in_order())  # (a new epoch: every shard opened afresh)
    labels = {k: int(c) for b in loader(ds, workers) for k, c in zip(b["__key__"], b["cls"].tolist())}
    assert labels == {f"train/{i:04d}": i % 5 for i in range(40)}


def test_readers_of_a_gone_shard_write_the_location_cache_once_a_shard(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch that falls in a gone shard asks where its datums went; the cache is
    written (the shard forgotten) only the first time: a write each batch had DataLoader
    workers queue for SQLite's lock, an epoch 20-50 times slower than before the repack."""
    from datarepo.repo import Repo

    ds = DatumDataset(repo, prefix="train/", seed=4, block=4, window=2, batch_size=2)
    gone = len(ds.manifest.shards)
    path = repo / ".datarepo" / "config.toml"
    replace(Config.load(path), shard_size=3000).save(path)
    Cli(repo)("repack", "--all")
    Cli(repo)("gc", "--prune", "now")
    asked, written = [], []
    real_locate, real_forget = Repo.locate_moved, Repo.forget_gone_shards
    monkeypatch.setattr(Repo, "locate_moved", lambda self, *a: asked.append(a[0]) or real_locate(self, *a))
    monkeypatch.setattr(Repo, "forget_gone_shards", lambda self, shards: written.append(list(shards)) or real_forget(self, shards))
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        assert len(keys_of(loader(ds, workers=0))) == 40
    assert len(asked) > 2 * gone  # (batches of 2 over shards of about 4 datums, two epochs)
    forgotten = [s for shards in written for s in shards]  # (none where gc's process already did)
    assert len(forgotten) == len(set(forgotten)) and set(forgotten) <= set(ds.manifest.shards)


def test_run_names_and_missing_runs(repo: Path) -> None:
    ds = DatumDataset(repo, prefix="val/")
    with datarepo.open(repo) as r:
        r.record_run("a", ds)
        with pytest.raises(InvalidInputError, match="already recorded"):
            r.record_run("a", ds)
        r.record_run("a", DatumDataset(repo, prefix="train/"), force=True)
        for bad in ("", "../x", "a b", "-x"):
            with pytest.raises(InvalidInputError):
                r.record_run(bad, ds)
        with pytest.raises(InvalidInputError, match="JSON"):
            r.record_run("b", ds, extra={"x": object()})
        with pytest.raises(ObjectNotFoundError):
            DatumDataset.from_run(r, "nope")
    result = Cli(repo)("runs", "show", "nope", ok=False)
    assert result.exit_code == 1 and result.output.strip() == "Error: run not found: nope"
    assert json.loads(Cli(repo)("runs", "show", "a", "--json").output)["prefix"] == "train/"


def test_gc_keeps_the_data_a_recorded_run_read(repo: Path) -> None:
    only_here = labelled(30, "exp/", seed=9)
    with datarepo.open(repo) as r, r.lock:
        r.commit({}, "a branch", parent=None, ref="refs/heads/exp")
    add_commit_on(repo, only_here, "refs/heads/exp")
    path = repo / ".datarepo" / "config.toml"
    replace(Config.load(path), reflog_expire_days=0).save(path)  # reflogs keep nothing here
    with datarepo.open(repo) as r:
        ds = DatumDataset(r, rev="exp", prefix="exp/", batch_size=7)
        r.record_run("kept", ds)
        r.record_run("dropped", DatumDataset(r, rev="exp", prefix="exp/", seed=1))
        r.refs.update("refs/heads/exp", None)
        r.refs.update("refs/runs/dropped", None)
    cli = Cli(repo)
    cli("gc", "--prune=now")
    assert " 0 problems" in cli("fsck").output
    again = DatumDataset.from_run(repo, "kept", decode={"bin": "bytes"})
    got = {k: b for batch in loader(again, workers=0) for k, b in zip(batch["__key__"], batch["bin"])}
    assert got == {k: m["bin"] for k, m in only_here.items()}
    with datarepo.open(repo) as r:
        r.refs.update("refs/runs/kept", None)
    time.sleep(1.1)  # reflog entries are stamped to the second: let the last ones expire
    cli("gc", "--prune=now")
    with pytest.raises(BadRevisionError):  # without the run, its commit and data went
        DatumDataset(repo, rev=ds.commit, prefix="exp/")


def add_commit_on(root: Path, samples: dict[str, dict[str, bytes]], ref: str) -> None:
    with datarepo.open(root) as r, r.lock:
        with r.writer() as w:
            for key, members in samples.items():
                w.put(key, members)
        r.commit(w.entries, "exp data", ref=ref)


def test_a_run_record_that_names_an_unpickling_decoder_needs_the_caller_s_opt_in(tmp_path: Path) -> None:
    """A run record is data a clone may bring from anyone: rebuilding its dataset never
    grants the unpickling decoders on the record's word."""
    import pickle

    make_repo(tmp_path, {"a": {"pickle": pickle.dumps([1, 2])}})
    with datarepo.open(tmp_path) as r:
        r.record_run("unsafe-run", DatumDataset(r, decode={"pickle": "pickle"}, unsafe=True))
    with pytest.raises(InvalidInputError, match="unpickles data: pass unsafe=True"):
        DatumDataset.from_run(tmp_path, "unsafe-run")
    (got,) = DatumDataset.from_run(tmp_path, "unsafe-run", unsafe=True)
    assert got["pickle"] == [1, 2]


def test_a_run_ref_that_names_no_run_record_is_named_and_the_other_runs_still_listed(worktree: Path, cli: Cli) -> None:
    make_repo(worktree, labelled(20))
    with datarepo.open(worktree) as r:
        r.record_run("a", DatumDataset(r, prefix="train/", seed=1))
        r.record_run("c", DatumDataset(r, prefix="train/", seed=2))
        head, tree = r.head(), r.tree("HEAD").oid
        partial = r.store.put_object(Blob({"format": 1, "type": "run", "name": "h", "seed": 0}))  # a hand-made record
    runs = worktree / ".datarepo" / "refs" / "runs"
    (runs / "b").write_text(head + "\n")  # a commit written where a run's record should be
    (runs / "t").write_text(tree + "\n")
    nowhere = "0" * len(head)
    (runs / "z").write_text(nowhere + "\n")  # an object that is nowhere
    (runs / "g").write_text("garbage\n")
    (runs / "h").write_text(partial + "\n")
    listed = cli("runs", ok=False)
    assert listed.exit_code == 1
    rows = [line.split("\t")[:4] for line in listed.stdout.splitlines()]
    assert rows == [["a", head[:12], "train/", "seed 1"], ["c", head[:12], "train/", "seed 2"]]
    assert listed.stderr.splitlines() == [
        f"error: refs/runs/b does not name a run record: {head} is a commit",
        "error: refs/runs/g does not name a run record: it holds no object id",
        f"error: refs/runs/h does not name a run record: {partial} is a run object without a valid 'time'",
        f"error: refs/runs/t does not name a run record: {tree} is a tree",
        f"error: refs/runs/z does not name a run record: {nowhere} is missing from the store",
    ]
    as_json = cli("runs", "--json", ok=False)
    assert as_json.exit_code == 1 and [run["seed"] for run in json.loads(as_json.stdout)] == [1, 2]
    for args in (("runs", "show", "b"), ("runs", "show", "b", "--json"), ("runs", "show", "b", "--keys")):
        shown = cli(*args, ok=False)
        assert shown.exit_code == 1 and shown.stdout == ""
        assert shown.stderr == f"Error: refs/runs/b does not name a run record: {head} is a commit\n"
    with pytest.raises(NotARunError, match="refs/runs/t does not name a run record"):
        DatumDataset.from_run(worktree, "t")
    assert "refs/runs/b" in cli("fsck", ok=False).output
    assert cli("gc", ok=False).exit_code == 1  # what the bad refs were meant to keep is unknown
    assert cli("runs", "rm", "b").output == f"Deleted run b (was {head[:12]})\n"
    assert cli("runs", "rm", "g").output == "Deleted run g (was no object id)\n"
    for bad in "htz":
        cli("runs", "rm", bad)
    assert cli("runs", "rm", "b", ok=False).output == "Error: run not found: b\n"
    assert [line.split("\t")[0] for line in cli("runs").output.splitlines()] == ["a", "c"]
    assert " 0 problems" in cli("fsck").output
    cli("gc")


def test_a_run_record_holds_only_strict_json(worktree: Path, cli: Cli) -> None:
    """NaN and Infinity are refused as any other value JSON has not; a record that is
    taken reads back, through the command, as JSON any reader parses."""
    make_repo(worktree, labelled(10))
    with datarepo.open(worktree) as r:
        ds = DatumDataset(r, prefix="train/", decode={"cls": "int", "bin": ["rgb8", 8]})
        for bad in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(InvalidInputError, match="extra must be JSON data"):
                r.record_run("nan", ds, extra={"loss": bad})
        r.record_run("ok", ds, extra={"loss": 0.25, "lr": [1e-3, 1e-4], "note": "caf\u00e9", "tags": {"a": None}})
    assert cli("runs", "show", "nan", ok=False).output == "Error: run not found: nan\n"
    text = cli("runs", "show", "ok", "--json").output
    shown = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert shown["extra"] == {"loss": 0.25, "lr": [1e-3, 1e-4], "note": "caf\u00e9", "tags": {"a": None}}
    assert shown["decode"] == {"cls": "int", "bin": ["rgb8", 8]}
