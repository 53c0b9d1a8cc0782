"""``DataLoader(..., persistent_workers=True)``: workers that live from one epoch to the
next still follow ``set_epoch`` and ``load_state_dict`` made in the training process, under
the fork and the spawn start methods; and a copy or a pickle of the dataset keeps an epoch
and a position of its own."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from loader_fixtures import indexed, labelled, loader, make_repo  # noqa: E402

from datarepo.torch import DatumDataset, DeviceLoader  # noqa: E402

N = 203  # not a multiple of the batch size


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("persistent")
    make_repo(root, labelled(N))
    return root


def with_pid(sample: dict[str, Any]) -> dict[str, Any]:
    """Marks a sample with the process that read it."""
    return {**sample, "pid": os.getpid()}


def dataset(repo: Path, **kw: Any) -> DatumDataset:
    kw = {"prefix": "train/", "seed": 5, "block": 16, "window": 4, "batch_size": 10, "transform": with_pid, **kw}
    return DatumDataset(repo, decode={"cls": "int"}, **kw)


def epoch(batches: Any, pids: set[int]) -> list[tuple[int, str]]:
    """(position, key) of what an epoch yields; the readers' process ids are added to ``pids``."""
    got = []
    for b in batches:
        pids.update(b["pid"].tolist())
        got += indexed([b])
    return got


@pytest.mark.parametrize("workers", [1, 2])
def test_each_epoch_has_its_own_order_on_persistent_workers(repo: Path, workers: int) -> None:
    ds = dataset(repo)
    dl = loader(ds, workers, persistent_workers=True)
    pids: set[int] = set()
    orders = []
    for e in range(3):
        ds.set_epoch(e)
        got = epoch(dl, pids)
        assert [k for _, k in got] == list(ds.keys_in_order(e))
        assert [p for p, _ in got] == list(range(N))
        orders.append([k for _, k in got])
    assert len({tuple(o) for o in orders}) == 3  # three different orders
    assert len(pids) == workers and os.getpid() not in pids  # the same workers, every epoch


@pytest.mark.parametrize("workers", [1, 2])
def test_a_state_loaded_reaches_persistent_workers(repo: Path, workers: int) -> None:
    ds = dataset(repo)
    dl = loader(ds, workers, persistent_workers=True)
    pids: set[int] = set()
    ds.set_epoch(1)
    batches = iter(dl)
    for _ in range(5):
        batch = next(batches)  # a prefetching DataLoader: workers have read further
    state = ds.state_dict(after=batch)
    assert (state["epoch"], state["position"]) == (1, 50)
    ds.load_state_dict(state)
    rest = epoch(dl, pids)
    assert [p for p, _ in rest] == list(range(50, N))
    assert [k for _, k in rest] == list(ds.keys_in_order(1))[50:]

    ds.set_epoch(2)  # the next epoch is whole again
    assert [k for _, k in epoch(dl, pids)] == list(ds.keys_in_order(2))
    ds.load_state_dict(state)  # and a state of an epoch the workers have left is resumed too
    assert [p for p, _ in epoch(dl, pids)] == list(range(50, N))
    assert len(pids) == workers


def test_a_state_taken_through_a_device_loader_reaches_persistent_workers(repo: Path) -> None:
    ds = dataset(repo)
    dl = DeviceLoader(loader(ds, 2, persistent_workers=True), device="cpu")
    ds.set_epoch(3)
    for i, _ in enumerate(dl):
        if i == 6:
            break
    state = ds.state_dict()
    assert (state["epoch"], state["position"]) == (3, 70)
    ds.load_state_dict(state)
    rest = indexed(dl)
    assert [k for _, k in rest] == list(ds.keys_in_order(3))[70:]
    assert ds.state_dict()["position"] == N


def test_spawned_persistent_workers_follow_the_training_process(repo: Path) -> None:
    ds = dataset(repo, batch_size=25)
    dl = loader(ds, 2, persistent_workers=True, multiprocessing_context="spawn")
    pids: set[int] = set()
    for e in (0, 1):
        ds.set_epoch(e)
        assert [k for _, k in epoch(dl, pids)] == list(ds.keys_in_order(e))
    ds.set_epoch(2)
    batches = iter(dl)
    batch = next(batches)
    ds.load_state_dict(ds.state_dict(after=batch))
    assert [p for p, _ in epoch(dl, pids)] == list(range(25, N))
    assert len(pids) == 2


def test_a_copy_or_a_pickle_has_its_own_epoch_and_position(repo: Path) -> None:
    ds = dataset(repo)
    ds.load_state_dict({**ds.state_dict(), "epoch": 4, "position": 120})
    for other in (copy.copy(ds), copy.deepcopy(ds), pickle.loads(pickle.dumps(ds))):
        assert (other.epoch, other.state_dict()["position"]) == (4, 120)
        assert [p for p, _ in indexed(loader(other, 1, persistent_workers=True))] == list(range(120, N))
        other.set_epoch(6)
        assert (ds.epoch, ds.state_dict()["position"]) == (4, 120)  # the original's stay
    assert [p for p, _ in indexed(ds)] == list(range(120, N))  # and in this process, as before


def test_state_after_a_batch_reads_its_positions_as_they_are_now(repo: Path) -> None:
    ds = dataset(repo)
    batches = iter(loader(ds, 1, persistent_workers=True))
    next(batches)
    batch = next(batches)
    assert ds.state_dict(after=batch)["position"] == 20
    batch["__index__"][9] = 15  # the loop changed a position in place
    assert ds.state_dict(after=batch)["position"] == 19
    batch["__index__"] = batch["__index__"][:4]  # or kept the batch's first 4 samples
    assert ds.state_dict(after=batch)["position"] == 14
