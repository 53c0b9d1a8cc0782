"""DatumDataset's order: one global order per (commit, selection, seed, epoch), the same
whatever the number of DataLoader workers and ranks, each rank getting as many samples;
and resuming mid-epoch, also on other numbers of workers and ranks."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from loader_fixtures import indexed, keys_of, labelled, loader, make_repo  # noqa: E402

from datarepo.errors import InvalidInputError  # noqa: E402
from datarepo.torch import DatumDataset, DeviceLoader  # noqa: E402

N = 203  # not a multiple of any world size or batch size used here


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader")
    make_repo(root, {**labelled(N), **labelled(30, prefix="val/", seed=1)})
    return root


def dataset(repo: Path, **kw: object) -> DatumDataset:
    kw = {"prefix": "train/", "seed": 7, "block": 16, "window": 4, **kw}
    return DatumDataset(repo, decode={"cls": "int"}, **kw)  # type: ignore[arg-type]


def test_global_order_is_a_block_shuffle_across_shards(repo: Path) -> None:
    ds = dataset(repo)
    order = list(ds.keys_in_order())
    assert sorted(order) == [f"train/{i:04d}" for i in range(N)]
    assert len(ds.manifest.shards) > 10
    assert order != sorted(order)
    assert order == list(dataset(repo).keys_in_order())  # a pure function of its inputs
    assert order != list(dataset(repo, seed=8).keys_in_order())
    assert order != list(ds.keys_in_order(epoch=1))
    shard_of = dict(zip(ds.manifest.keys, ds.manifest.shard_index.tolist()))
    assert len({shard_of[k] for k in order[:32]}) > 3  # a batch draws from several shards
    assert list(dataset(repo, shuffle=False).keys_in_order()) == sorted(order)  # key order, wherever the datums lie


@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_batches_arrive_in_the_global_order_whatever_the_workers(repo: Path, workers: int) -> None:
    ds = dataset(repo, batch_size=10)
    got = indexed(loader(ds, workers))
    assert [k for _, k in got] == list(ds.keys_in_order())
    assert [i for i, _ in got] == list(range(N))
    assert len(loader(ds, workers)) == len(ds) == 21


@pytest.mark.parametrize("workers", [0, 2])
def test_samples_arrive_in_order_when_the_chunk_is_the_loaders_batch(repo: Path, workers: int) -> None:
    ds = dataset(repo, chunk_size=16)
    assert keys_of(loader(ds, workers, batch_size=16)) == list(ds.keys_in_order())


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("pad", [True, False])
def test_ranks_share_the_one_order(repo: Path, world: int, pad: bool) -> None:
    order = list(dataset(repo).keys_in_order())
    seen: dict[int, str] = {}
    lengths = set()
    for rank in range(world):
        ds = dataset(repo, batch_size=8, rank=rank, world_size=world, pad=pad)
        got = indexed(loader(ds, workers=2 if rank == 0 else 0))
        lengths.add(len(got))
        for position, key in got:
            assert position % world == rank and position not in seen
            seen[position] = key
    assert len(lengths) == 1  # every rank as many samples: DDP never waits on one
    each = lengths.pop()
    assert each == (-(-N // world) if pad else N // world)
    assert [seen[p] for p in sorted(seen) if p < N] == order[: min(N, each * world)]
    assert all(seen[p] == order[p - N] for p in seen if p >= N)  # padding repeats the order


def test_resume_mid_epoch_with_prefetching_workers(repo: Path) -> None:
    ds = dataset(repo, batch_size=10)
    received = []
    batches = iter(DeviceLoader(loader(ds, workers=2, prefetch_factor=4), device="cpu"))
    for _ in range(5):
        received += next(batches)["__key__"]
    state = ds.state_dict()
    assert len(repr(state)) < 1024
    assert state["position"] == 50  # what the loop received, not what the workers read ahead
    del batches
    again = dataset(repo, batch_size=10)
    again.load_state_dict(state)
    rest = keys_of(loader(again, workers=1))
    assert received + rest == list(ds.keys_in_order())


def test_state_after_the_last_batch_with_a_bare_loader(repo: Path) -> None:
    ds = dataset(repo, batch_size=10)
    batches = iter(loader(ds, workers=2))
    first = [next(batches) for _ in range(3)]
    state = ds.state_dict(after=first[-1])
    shuffled = {**first[-1], "__index__": first[-1]["__index__"][torch.tensor([3, 0, 9, 5, 1, 2, 4, 6, 7, 8])]}
    assert ds.state_dict(after=shuffled) == state  # a batch put in another order counts the same
    again = dataset(repo, batch_size=10)
    again.load_state_dict(state)
    assert keys_of(first) + keys_of(loader(again, workers=0)) == list(ds.keys_in_order())


def test_state_in_the_main_process_and_per_sample(repo: Path) -> None:
    ds = dataset(repo, chunk_size=8)
    batches = iter(loader(ds, workers=0, batch_size=8))
    first = [next(batches) for _ in range(4)]
    state = ds.state_dict()
    assert state["position"] == 32
    again = dataset(repo, chunk_size=8)
    again.load_state_dict(state)
    assert keys_of(first) + keys_of(loader(again, workers=2, batch_size=8)) == list(ds.keys_in_order())


def test_out_of_order_batches_are_refused_not_miscounted(repo: Path) -> None:
    ds = dataset(repo, chunk_size=32)
    batches = iter(DeviceLoader(loader(ds, workers=2, batch_size=10), device="cpu"))
    for _ in range(2):
        next(batches)
    with pytest.raises(InvalidInputError, match="chunk_size"):
        ds.state_dict()


@pytest.mark.parametrize("old, new", [(4, 2), (2, 3), (1, 4)])
def test_elastic_resume_on_another_number_of_ranks(repo: Path, old: int, new: int) -> None:
    seen = Counter()
    states = []
    for rank in range(old):  # every rank takes 3 batches of 6, then stops
        ds = dataset(repo, batch_size=6, rank=rank, world_size=old, epoch=2)
        batches = iter(DeviceLoader(loader(ds, workers=2), device="cpu"))
        seen.update(k for _ in range(3) for k in next(batches)["__key__"])
        states.append(ds.state_dict())
    assert len({repr(s) for s in states}) == 1  # ranks in step agree on the state
    rest = Counter()
    for rank in range(new):
        ds = dataset(repo, batch_size=6, rank=rank, world_size=new, pad=False)
        ds.load_state_dict(states[0])
        assert ds.epoch == 2
        rest.update(keys_of(loader(ds, workers=1)))
    left = N - 18 * old
    assert sum(rest.values()) == left - left % new  # pad=False drops the remainder
    both = seen + rest
    assert max(both.values()) == 1  # no sample twice
    assert len(both) + left % new == N  # none missed but the dropped remainder


def test_set_epoch_keeps_a_loaded_state_for_that_epoch(repo: Path) -> None:
    ds = dataset(repo, batch_size=10)
    ds.set_epoch(3)
    state = {**ds.state_dict(), "position": 100}
    again = dataset(repo, batch_size=10)
    again.load_state_dict(state)
    again.set_epoch(3)
    assert len(keys_of(loader(again, 0))) == N - 100
    again.set_epoch(4)
    assert len(keys_of(loader(again, 0))) == N


def test_a_state_of_another_dataset_is_refused(repo: Path) -> None:
    state = dataset(repo).state_dict()
    with pytest.raises(InvalidInputError, match="another dataset"):
        dataset(repo, seed=1).load_state_dict(state)
    with pytest.raises(InvalidInputError):
        dataset(repo).load_state_dict({"epoch": "x"})


def test_importing_datarepo_does_not_import_torch() -> None:
    code = "import sys, datarepo, datarepo.torch, datarepo.torch.runs, datarepo.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
