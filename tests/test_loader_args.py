"""Bad arguments to the loader: every argument of ``DatumDataset``, ``DeviceLoader``,
``DatumDataset.from_run`` and ``record_run`` is checked when the call is made. A wrong
type or value is an ``InvalidInputError`` whose message names the argument, never a raw
Python error, an error later in a worker, or a value silently taken for another."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from loader_fixtures import keys_of, labelled, loader, make_repo  # noqa: E402

import datarepo  # noqa: E402
from datarepo.errors import DataRepoError, InvalidInputError  # noqa: E402
from datarepo.torch import DatumDataset, DeviceLoader  # noqa: E402


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("args")
    make_repo(root, labelled(12))
    with datarepo.open(root) as r:
        r.record_run("run", DatumDataset(r, prefix="train/", seed=3, batch_size=4))
    return root


def refused(argument: str, call: Any) -> str:
    """The message of the InvalidInputError ``call()`` raises; it starts with the argument."""
    with pytest.raises(InvalidInputError) as e:
        call()
    message = str(e.value)
    assert re.match(rf"{re.escape(argument)}\b", message), message
    assert "\n" not in message
    return message


BAD_DATASET_ARGS = [
    ("repo", 5),
    ("repo", None),
    ("repo", b"."),
    ("rev", 5),
    ("rev", None),
    ("rev", ""),
    ("prefix", None),
    ("prefix", b"train/"),
    ("prefix", "train/\udcff"),
    ("keys", "train/0000"),  # a str is not a list of one-character keys
    ("keys", b"train/0000"),
    ("keys", {"train/0000": 1}),
    ("keys", 5),
    ("keys", [1, 2]),
    ("keys", ["train/0000", "train/0000"]),
    ("decode", "txt"),
    ("decode", ["cls", "int"]),
    ("decode", {"cls": ["rgb8", 2, 3]}),
    ("decode", {"cls": ["rgb8"]}),
    ("decode", {"cls": ["int", 3]}),
    ("decode", {"cls": ["rgb8", 0]}),
    ("decode", {"cls": ["rgb8", 2.5]}),
    ("decode", {"cls": ["rgb8", True]}),
    ("decode", {"cls": ["rgb8", None]}),
    ("decode", {"cls": {"rgb8": 2}}),
    ("decode", {"cls": 5}),
    ("decode", {"cls": "exec"}),
    ("decode", {5: "int"}),
    ("decode", {"a/b": "int"}),
    ("decode", {"cls": "pickle"}),  # unpickles: only with unsafe=True
    ("transform", 5),
    ("transform", "upper"),
    ("shuffle", 1),
    ("shuffle", "no"),
    ("shuffle", None),
    ("seed", -1),
    ("seed", 1.5),
    ("seed", "0"),
    ("seed", True),
    ("seed", None),
    ("epoch", -1),
    ("epoch", 2**63),
    ("epoch", 1.0),
    ("batch_size", 0),
    ("batch_size", -3),
    ("batch_size", 2.0),
    ("batch_size", True),
    ("batch_size", "8"),
    ("batch_size", 2**63),  # past int64, where the order is computed
    ("chunk_size", 0),
    ("chunk_size", 2**63),
    ("chunk_size", None),
    ("pad", None),
    ("pad", 1),
    ("rank", -1),
    ("rank", 1.0),
    ("rank", 1),  # of a world of 1
    ("world_size", 0),
    ("world_size", -2),
    ("world_size", "2"),
    ("world_size", 2**63),
    ("on_error", "ignore"),
    ("on_error", None),
    ("on_error", True),
    ("verify", "no"),
    ("verify", 0),
    ("block", 0),
    ("block", 1.5),
    ("block", 2**63),
    ("window", 0),
    ("window", None),
    ("window", 2**70),
    ("unsafe", 1),
    ("unsafe", "yes"),
]


@pytest.mark.parametrize(("argument", "value"), BAD_DATASET_ARGS, ids=lambda v: repr(v)[:30])
def test_a_bad_dataset_argument_is_refused_when_the_dataset_is_made(repo: Path, argument: str, value: Any) -> None:
    given = {"repo": repo, "prefix": "train/" if argument != "keys" else "", argument: value}
    refused(argument, lambda: DatumDataset(**given))


def test_arguments_that_are_right_are_taken_as_given(repo: Path) -> None:
    """numpy ints count as ints, any iterable of strs as keys, a tuple as a sized image
    spec; a dataset made of them reads what they say."""
    ds = DatumDataset(repo, keys=("train/0003", "train/0001"), batch_size=np.int64(2), seed=np.uint8(1), decode={"cls": "int"})
    assert ds.batch_size == 2 and type(ds.batch_size) is int and ds.seed == 1 and type(ds.seed) is int
    assert sorted(keys_of(loader(ds, workers=0))) == ["train/0001", "train/0003"]
    assert DatumDataset(repo, keys=iter(["train/0002"])).keys == ["train/0002"]
    assert DatumDataset(repo, decode={"bin": ("rgb8", 8)}).decode_spec == {"bin": ["rgb8", 8]}
    assert DatumDataset(repo, rank=1, world_size=2).share().rank == 1
    big = 2**63 - 1  # the largest sizes taken still read the data (numpy's int64 holds them)
    sizes = {"prefix": "train/", "block": big, "window": big, "batch_size": big, "seed": 2**100}
    assert sorted(keys_of(loader(DatumDataset(repo, **sizes), workers=0))) == sorted(labelled(12))
    assert len(keys_of(loader(DatumDataset(repo, **sizes, world_size=big, rank=big - 1), workers=0))) == 1


def test_both_a_prefix_and_keys_are_refused(repo: Path) -> None:
    refused("keys", lambda: DatumDataset(repo, prefix="train/", keys=["train/0001"]))


@pytest.mark.parametrize(
    ("argument", "loader_arg", "device"),
    [
        ("loader", 5, "cpu"),
        ("loader", None, "cpu"),
        ("loader", "batches", "cpu"),
        ("device", [], "gpu"),
        ("device", [], "cuda:x"),
        ("device", [], 0),
        ("device", [], None),
        ("device", [], "meta"),  # batches would stay where they are, silently
        ("device", [], "cuda:99"),
    ],
)
def test_a_bad_device_loader_argument_is_refused(argument: str, loader_arg: Any, device: Any) -> None:
    refused(argument, lambda: DeviceLoader(loader_arg, device=device))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there")
def test_a_device_loader_for_cuda_without_one_is_refused() -> None:
    assert "no CUDA device" in refused("device", lambda: DeviceLoader([], device="cuda"))


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"name": 5}, "name"),
        ({"name": None}, "name"),
        ({"seed": 1}, "seed"),  # what the run fixes is not an option
        ({"rev": "main"}, "rev"),
        ({"prefix": "train/00"}, "prefix"),
        ({"keys": ["train/0001"]}, "keys"),
        ({"shuffle": False}, "shuffle"),
        ({"block": 2}, "block"),
        ({"window": 2}, "window"),
        ({"bogus": 1}, "bogus"),
        ({"batch_size": 0}, "batch_size"),
        ({"transform": 5}, "transform"),
        ({"world_size": 0}, "world_size"),
        ({"decode": "int"}, "decode"),
    ],
)
def test_a_bad_from_run_option_is_refused(repo: Path, options: dict[str, Any], argument: str) -> None:
    name = options.pop("name", "run")
    refused(argument, lambda: DatumDataset.from_run(repo, name, **options))


def test_from_run_options_that_change_how_not_what_are_taken(repo: Path) -> None:
    ds = DatumDataset.from_run(repo, "run", batch_size=3, decode={"cls": "int"}, rank=1, world_size=2, epoch=2)
    assert (ds.batch_size, ds.rank, ds.epoch, ds.seed) == (3, 1, 2, 3)
    assert all(b["cls"].dtype == torch.int64 for b in loader(ds, workers=0))


def cycle() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["me"] = d
    return d


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        (5, None, "name must be a str"),
        ("a b", None, "invalid run name"),
        ("r", {"x": float("nan")}, r"extra must be JSON data \(extra\['x'\] is nan"),
        ("r", {"x": math.inf}, r"extra must be JSON data \(extra\['x'\] is inf"),
        ("r", {"x": {"y": [1, -math.inf]}}, r"extra must be JSON data \(extra\['x'\]\['y'\]\[1\] is -inf"),
        ("r", {"x": np.float64("nan")}, "extra must be JSON data"),
        ("r", {1: "a"}, "extra must be JSON data .*the key 1"),
        ("r", {"x": object()}, "extra must be JSON data"),
        ("r", {"x": b"bytes"}, "extra must be JSON data"),
        ("r", {"x": "\udcff"}, "extra must be JSON data .*UTF-8"),
        ("r", cycle(), "extra must be JSON data .*nested"),
        ("r", [1, 2], "extra must be JSON data"),
        ("r", "git 4f2c", "extra must be JSON data"),
    ],
)
def test_a_bad_run_name_or_extra_is_refused_and_nothing_is_recorded(repo: Path, name: Any, extra: Any, message: str) -> None:
    with datarepo.open(repo) as r:
        ds = DatumDataset(r, prefix="train/")
        with pytest.raises(InvalidInputError, match=message):
            r.record_run(name, ds, extra=extra)
        assert [ref for ref, _ in r.refs.list("refs/runs/")] == ["run"]


def test_record_run_takes_a_dataset_and_a_true_or_false_force(repo: Path) -> None:
    with datarepo.open(repo) as r:
        refused("dataset", lambda: r.record_run("r", "train/"))
        refused("dataset", lambda: r.record_run("r", DatumDataset))
        refused("force", lambda: r.record_run("r", DatumDataset(r), force="yes"))
        assert [ref for ref, _ in r.refs.list("refs/runs/")] == ["run"]


def test_bad_arguments_of_a_made_dataset_s_methods_are_refused(repo: Path) -> None:
    ds = DatumDataset(repo, prefix="train/", batch_size=4)
    for bad in (-1, 1.5, "2", 2**63):
        refused("epoch", lambda: ds.set_epoch(bad))
        refused("epoch", lambda: list(ds.keys_in_order(bad)))
    refused("epoch", lambda: ds.set_epoch(None))
    refused("after", lambda: ds.state_dict(after=[0, 1, 2]))  # not a batch: never read as "nothing received"
    refused("after", lambda: ds.state_dict(after={"cls": [1]}))
    refused("state", lambda: ds.load_state_dict([("epoch", 0)]))
    first = next(iter(loader(ds, workers=0)))
    assert ds.state_dict(after=first)["position"] == 4
    with datarepo.open(repo) as r:
        from datarepo.torch.runs import run_keys

        refused("epoch", lambda: run_keys(r, "run", -1))  # when called, not once iterated
        assert list(run_keys(r, "run", 1)) == list(DatumDataset.from_run(r, "run").keys_in_order(1))
    refused("repo", lambda: DatumDataset.from_run(5, "run"))


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=2**70),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=4),
    st.lists(st.one_of(st.text(max_size=10), st.integers()), max_size=3),
    st.tuples(st.sampled_from(["rgb8", "int", "x"]), st.one_of(st.integers(-1, 300), st.floats(), st.none())),
    st.dictionaries(
        st.sampled_from(["cls", "bin", "", "a/b"]),
        st.one_of(st.sampled_from(["int", "rgb", "pth", "?"]), st.lists(st.integers(), max_size=3)),
        max_size=2,
    ),
    st.just(dict),  # a transform (what one raises while iterating is its own error)
)
ARGUMENTS = [
    "rev", "prefix", "keys", "decode", "transform", "shuffle", "seed", "epoch", "batch_size",
    "chunk_size", "pad", "rank", "world_size", "on_error", "verify", "block", "window", "unsafe",
]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(given_args=st.dictionaries(st.sampled_from(ARGUMENTS), ANY_VALUE, min_size=1, max_size=3))
def test_any_arguments_make_a_dataset_or_raise_the_project_s_error(repo: Path, given_args: dict[str, Any]) -> None:
    """Whatever is given, the dataset is made (and its first batch read), or one of the
    project's errors says why, never a Python error. (Reading may fail too: the fixture's
    random bytes read as an int are a SampleError, the project's.)"""
    try:
        ds = DatumDataset(repo, **given_args)
        first = next(iter(ds), None)
    except DataRepoError as e:
        assert "\n" not in str(e)
        return
    assert first is None or "__key__" in first
