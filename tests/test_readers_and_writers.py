"""Readers at work while writers and maintenance change the same repository: a team
trains from it (``repo.read``, manifests, a DataLoader with workers) while a data
engineer adds to it, repacks it, collects garbage and rebuilds its index.

Each reader gives exactly the bytes of the revision it was given, or one clear error for
data deleted on purpose. The interleavings are fixed: a reader in another process is held
between what it planned and what it reads (it waits for a file the test writes), the
writers run to completion in between. The tests count events, never time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import holds_open, without_file_override
from loader_fixtures import add_commit, labelled, loader, make_repo

import datarepo
from datarepo.torch import DatumDataset

WAIT = 120.0  # seconds a reader may take to reach its gate before the test gives up (never asserted)
ENV = {**os.environ, "DATAREPO_AUTHOR": "Test <test@example.com>", "PYTHONPATH": str(Path(__file__).parent.parent)}

# A reader: opens the repository, reads every datum of v1 once, says so, and waits for the
# test's word; then reads v1 again through repo.read, a manifest and a DataLoader with two
# workers (from the Repo it holds, and from the path), and prints what each gave.
READER = textwrap.dedent('''
    import gc, json, os, sys, time
    import datarepo
    from datarepo.errors import DataRepoError
    from datarepo.torch import DatumDataset
    from torch.utils.data import DataLoader

    root, ready, go = sys.argv[1:4]
    repo = datarepo.open(root)
    repo.read(next(iter(repo.tree("v1"))).datum)
    open(ready, "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.005)

    def loaded(source):
        got = {}
        ds = DatumDataset(source, rev="v1", batch_size=8, decode={"cls": "int"})
        for batch in DataLoader(ds, batch_size=None, num_workers=2):
            for key, data, cls in zip(batch["__key__"], batch["bin"], batch["cls"].tolist()):
                got[key] = [data.hex(), cls]
        return got

    out = {"private": repo.index.private}
    for name, read in (
        ("read", lambda: {e.key: repo.read(e.datum, verify=True)["bin"].hex() for e in repo.tree("v1")}),
        ("manifest", lambda: len(repo.manifest(repo.tree("v1")))),
        ("loader", lambda: loaded(repo)),
        ("loader_by_path", lambda: loaded(root)),
    ):
        try:
            out[name] = read()
        except DataRepoError as e:
            out[name] = "error: " + str(e).splitlines()[0]
        gc.collect()  # (a DataLoader left by an error is shut down here, not in the next one's workers)
    print(json.dumps(out))
''')


def datarepo_cli(root: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=root, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def held_reader(root: Path, gate: Path, read_only: bool) -> subprocess.Popen[str]:
    """Starts the reader and waits until it has opened the repository and read once. With
    ``read_only``, it cannot write ``index.sqlite`` as it opens it (another user's
    repository): it works from a private copy made then."""
    index = root / ".datarepo" / "index.sqlite"
    if read_only:
        index.chmod(0o444)
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(root), str(gate / "ready"), str(gate / "go")],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=without_file_override if read_only else None,
    )
    deadline = time.monotonic() + WAIT
    while not (gate / "ready").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the reader never got ready"
        time.sleep(0.005)
    index.chmod(0o644)
    return proc


def bigger_shards(root: Path) -> None:
    """Makes repack merge the shards into new ones (none written again as it was)."""
    config = root / ".datarepo" / "config.toml"
    config.write_text(config.read_text().replace("shard_size = 4096", "shard_size = 1048576"))


def released(proc: subprocess.Popen[str], gate: Path) -> dict:
    (gate / "go").touch()
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return json.loads(out)


@pytest.mark.parametrize("read_only", [False, True], ids=["owner", "another-user"])
def test_a_reader_holding_the_repository_reads_a_revision_whole_after_repack_and_gc_prune_now(
    tmp_path: Path, read_only: bool
) -> None:
    """The reader looked datums up before; repack moves every one of them to new shards
    and gc --prune now deletes the old ones. What the reader plans and reads afterwards
    is found in the new shards: every sample, byte for byte, never "shard not found"."""
    root, gate = tmp_path / "repo", tmp_path / "gate"
    gate.mkdir()
    samples = labelled(60)
    make_repo(root, samples, shard_size=4096)
    datarepo_cli(root, "tag", "v1")
    proc = held_reader(root, gate, read_only)
    add_commit(root, labelled(10, prefix="more/", seed=1), "more")
    bigger_shards(root)
    assert json.loads(datarepo_cli(root, "repack", "--all", "--json"))["shards_in"] >= 2
    assert json.loads(datarepo_cli(root, "gc", "--prune", "now", "--json"))["pruned"] >= 2
    got = released(proc, gate)
    assert got["private"] is read_only
    expected = {key: m["bin"].hex() for key, m in samples.items()}
    assert got["read"] == expected
    assert got["manifest"] == len(samples)
    whole = {key: [m["bin"].hex(), int(m["cls"])] for key, m in samples.items()}
    assert got["loader"] == whole and got["loader_by_path"] == whole


def test_a_dataset_planned_before_maintenance_reads_every_sample_until_gc_prunes(tmp_path: Path) -> None:
    """A DatumDataset planned, then commits, repack, gc (within the grace period), fsck
    --rebuild-index and a branch deleted in other processes; its epoch through a
    DataLoader with two workers gives every sample with its bytes; and once gc --prune now
    deleted the shards it planned, still does, from where the datums lie now."""
    root = tmp_path / "repo"
    samples = labelled(48)
    make_repo(root, samples, shard_size=4096)
    datarepo_cli(root, "branch", "keep")
    ds = DatumDataset(root, rev="keep", batch_size=4, shuffle=True, seed=3)
    planned = set(ds.manifest.shards)
    add_commit(root, labelled(6, prefix="other/", seed=2), "other")
    bigger_shards(root)
    datarepo_cli(root, "repack", "--all")
    datarepo_cli(root, "gc")
    datarepo_cli(root, "fsck", "--rebuild-index")
    datarepo_cli(root, "branch", "gone")
    datarepo_cli(root, "branch", "-D", "gone")
    with datarepo.open(root) as repo:
        assert planned.isdisjoint(repo.store.iter_shards())  # every shard it planned is retired

    def epoch() -> dict[str, bytes]:
        return {key: data for batch in loader(ds, workers=2) for key, data in zip(batch["__key__"], batch["bin"])}

    assert epoch() == {key: m["bin"] for key, m in samples.items()}
    datarepo_cli(root, "gc", "--prune", "now")
    ds.set_epoch(1)
    assert epoch() == {key: m["bin"] for key, m in samples.items()}


def test_gc_while_a_run_is_recorded_leaves_the_record_whole(tmp_path: Path) -> None:
    """A training run is recorded on a commit only the dataset still names (its branch was
    deleted, the reflog keeps nothing); gc --prune now in another process comes just as the
    run object is stored, before its ref. The record keeps its commit and object: gc
    waits for it (here, gives up at the lock), nothing is left naming what gc deleted."""
    root = tmp_path / "repo"
    make_repo(root, labelled(8), shard_size=4096)
    config = root / ".datarepo" / "config.toml"
    config.write_text(config.read_text().replace("reflog_expire_days = 30", "reflog_expire_days = 0"))
    datarepo_cli(root, "branch", "exp")
    add_commit_on(root, "exp")
    ds = DatumDataset(root, rev="exp", batch_size=4)
    datarepo_cli(root, "branch", "-D", "exp")
    time.sleep(1.1)  # (the reflog's lines, stamped in whole seconds, are then older than the window)
    tried = []
    with datarepo.open(root) as repo:
        store = repo.store.put_object

        def then_gc(obj: object) -> str:
            oid = store(obj)
            done = subprocess.run([sys.executable, "-m", "datarepo.cli", "gc", "--prune", "now"], cwd=root,
                                  env={**ENV, "DATAREPO_LOCK_TIMEOUT": "1"}, capture_output=True, text=True)
            tried.append((done.returncode, done.stderr))
            return oid

        repo.store.put_object = then_gc  # type: ignore[method-assign]
        repo.record_run("r1", ds)
    assert len(tried) == 1 and tried[0][0] == 1 and "locked by another writer" in tried[0][1]
    assert "r1\t" in datarepo_cli(root, "runs")
    assert "0 problems" in datarepo_cli(root, "fsck")
    assert json.loads(datarepo_cli(root, "gc", "--prune", "now", "--json"))["objects"] == 0  # the run keeps its commit
    assert len(list(loader(DatumDataset(root, rev="r1", batch_size=4), workers=2))) == 3


def add_commit_on(root: Path, branch: str) -> None:
    """A commit of new samples on ``branch`` (HEAD stays where it is)."""
    with datarepo.open(root) as repo, repo.lock:
        with repo.writer() as w:
            for key, members in labelled(4, prefix="exp/", seed=5).items():
                w.put(key, members)
        repo.commit(w.entries, "exp", ref=f"refs/heads/{branch}")


def write_and_commit(up: Path, numbers: range, message: str) -> None:
    for i in numbers:
        (up / f"k{i:02d}.txt").write_text(f"datum {i} " * 20)
    datarepo_cli(up, "add", ".")
    datarepo_cli(up, "commit", "-m", message)


def pushed(up: Path, remote: Path, n: int) -> None:
    """``up``: a repository of ``n`` small texts in small shards, committed and pushed to
    ``remote``, a bare repository beside it."""
    up.mkdir()
    datarepo_cli(up, "init", "--shard-size", "4K")
    write_and_commit(up, range(n), "one")
    datarepo_cli(remote.parent, "init", "--bare", str(remote))
    datarepo_cli(up, "remote", "add", "origin", str(remote))
    datarepo_cli(up, "push")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the pull wait")
@pytest.mark.parametrize("prune", [False, True], ids=["repack", "repack-and-gc-prune-now"])
def test_a_pull_whose_remote_is_repacked_after_it_listed_it_fetches_everything(tmp_path: Path, prune: bool) -> None:
    """A pull lists the folder remote, then waits for this repository's writer lock (held
    here); meanwhile the remote's keeper repacks it (and gc --prune now deletes the old
    shards). The pull lists the remote again and fetches the new shard: nothing is lost."""
    up, remote, down = tmp_path / "up", tmp_path / "remote.git", tmp_path / "down"
    pushed(up, remote, 40)
    datarepo_cli(tmp_path, "clone", str(remote), "down")
    write_and_commit(up, range(40, 80), "two")
    datarepo_cli(up, "push")
    config = remote / "config.toml"
    config.write_text(config.read_text().replace("shard_size = 268435456", "shard_size = 1048576"))
    with datarepo.open(down) as repo, repo.lock:
        pull = subprocess.Popen([sys.executable, "-m", "datarepo.cli", "pull"], cwd=down, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + WAIT
        while not holds_open(pull.pid, repo.dotdir / "lock"):
            assert pull.poll() is None, pull.communicate()
            assert time.monotonic() < deadline, "the pull never reached the lock"
            time.sleep(0.005)
        assert json.loads(datarepo_cli(remote, "repack", "--all", "--json"))["shards_in"] >= 2
        if prune:
            assert json.loads(datarepo_cli(remote, "gc", "--prune", "now", "--json"))["pruned"] >= 2
    out, err = pull.communicate(timeout=WAIT)
    assert pull.returncode == 0, err
    assert "Fast-forward" in out
    assert {p.name: p.read_text() for p in down.glob("k*.txt")} == {f"k{i:02d}.txt": f"datum {i} " * 20 for i in range(80)}
    assert "0 problems" in datarepo_cli(down, "fsck")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the push wait")
def test_gc_of_a_folder_remote_while_a_push_uploads_loses_nothing(tmp_path: Path) -> None:
    """The remote is a repository its keeper collects garbage in (gc --prune now, under
    its lock) while a push to it runs. The push waits for that lock before it lists the
    remote and uploads: gc finds nothing of it to delete, and the branch it moves names
    a whole commit that a clone reads."""
    from datarepo.porcelain.maintenance import gc

    up, remote = tmp_path / "up", tmp_path / "remote.git"
    pushed(up, remote, 10)
    write_and_commit(up, range(10, 20), "two")
    swept = []
    with datarepo.open(remote) as keeper, keeper.lock:
        push = subprocess.Popen([sys.executable, "-m", "datarepo.cli", "push"], cwd=up, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + WAIT
        while not holds_open(push.pid, remote / "lock"):
            assert push.poll() is None, push.communicate()
            assert time.monotonic() < deadline, "the push never reached the remote's lock"
            time.sleep(0.005)
        swept.append(gc(keeper, prune_after=0))  # (the keeper's gc, under the lock it holds)
    out, err = push.communicate(timeout=WAIT)
    assert push.returncode == 0, err
    assert len(swept) == 1 and swept[0].objects == 0
    assert "0 problems" in datarepo_cli(remote, "fsck")
    datarepo_cli(tmp_path, "clone", str(remote), "down")
    got = {p.name: p.read_text() for p in (tmp_path / "down").glob("k*.txt")}
    assert got == {f"k{i:02d}.txt": f"datum {i} " * 20 for i in range(20)}


def test_a_reader_that_met_a_shard_between_the_two_moves_of_its_retiring_finds_its_index(tmp_path: Path) -> None:
    """Retiring moves a shard's tar, then its ``.idx`` (docs/format.md): a reader that opens
    the shard between the two moves, then reads its index, finds the retired ``.idx``."""
    root = tmp_path / "repo"
    make_repo(root, labelled(12), shard_size=4096)
    with datarepo.open(root) as writer, datarepo.open(root) as reader:
        shard = sorted(writer.store.iter_shards())[0]
        expected = writer.store.read_index(shard)
        retired = writer.dotdir / "shards" / "retired"
        retired.mkdir()
        in_use = writer.dotdir / "shards" / shard[:2] / shard[2:]
        os.rename(f"{in_use}.tar", retired / f"1000-{shard}.tar")
        reader.store.open_shard(shard).close()
        os.rename(f"{in_use}.idx", retired / f"1000-{shard}.idx")
        assert reader.store.read_index(shard) == expected
