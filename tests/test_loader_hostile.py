"""A hostile user's loader: shards damaged under a running DataLoader, sample bytes made to
hurt a decoder, tampered states, damaged run records and odd batches. Each is one
``DataRepoError`` (a ``SampleError`` naming key and shard for a sample), or with
``on_error="skip"`` a sample skipped, counted and reported with the others in their order;
never a crash, a hang, a wrong count or another datum's bytes."""

from __future__ import annotations

import collections
import io
import json
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import Cli, shard_file  # noqa: E402
from loader_fixtures import indexed, labelled, loader, make_repo  # noqa: E402

import datarepo  # noqa: E402
from datarepo.errors import DataRepoError, InvalidInputError  # noqa: E402
from datarepo.objects import Blob  # noqa: E402
from datarepo.torch import DatumDataset, DeviceLoader, SampleError  # noqa: E402
from datarepo.torch.runs import NotARunError  # noqa: E402

SAMPLES = labelled(48)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_repo(tmp_path, SAMPLES, shard_size=16384)  # a dozen datums a shard, 4 shards
    return tmp_path


def shards_of(repo: Path) -> list[Path]:
    with datarepo.open(repo) as r:
        return [shard_file(r, s) for s in r.manifest(r.tree()).shards]


def damage(path: Path, how: str) -> None:
    """Damages a shard file in place (as another process, or the disk, would)."""
    if how == "folder" or how == "fifo":
        path.unlink()
        path.mkdir() if how == "folder" else os.mkfifo(path)
        return
    os.chmod(path, 0o644)  # (shards are read-only)
    with open(path, "r+b") as f:
        if how == "truncated":
            f.truncate(700)  # inside the first datum
        else:  # overwritten with other bytes, the size kept
            f.write(os.urandom(path.stat().st_size))


def expect_good_or_skipped(got: list[tuple[int, str]], skipped: list[str], full: list[tuple[int, str]]) -> None:
    """What a skipping loader delivered: every sample in its place or reported, none
    twice, each read sample's key at its position of the undamaged order."""
    assert len(got) + len(skipped) == len(full)
    assert got == [pk for pk in full if pk in set(got)]  # the others in their order


# data damaged under a running loader -------------------------------------------------


@pytest.mark.parametrize("how", ["truncated", "overwritten", "fifo", "folder"])
def test_a_shard_damaged_before_or_while_reading_raises_naming_key_and_shard(repo: Path, how: str) -> None:
    """num_workers=0: shards open (and mapped) in this process are damaged between two
    batches; a truncated mapping used to kill the process with SIGBUS, a FIFO in a
    shard's place to hang it."""
    ds = DatumDataset(repo, batch_size=4, shuffle=False)
    batches = iter(ds)
    first = next(batches)  # the first shard is mapped now
    victims = shards_of(repo)
    for path in victims:
        damage(path, how)
    with pytest.raises(SampleError) as raised:
        list(batches)
    message = str(raised.value)
    assert "\n" not in message and raised.value.key in message and raised.value.shard in message
    assert raised.value.key not in first["__key__"] and raised.value.shard in {p.parent.name + p.stem for p in victims}


@pytest.mark.parametrize(("context", "how"), [("fork", "truncated"), ("fork", "overwritten"), ("spawn", "truncated")])
def test_persistent_workers_that_mapped_a_shard_report_it_cut_short_and_skip_it(repo: Path, how: str, context: str) -> None:
    """Two persistent workers read a whole epoch (every shard mapped), the shards are
    damaged while they wait, and the next epoch is read: skipped, counted, reported, the
    others in their order (a worker used to die of SIGBUS: "DataLoader worker exited
    unexpectedly ... insufficient shared memory")."""
    ds = DatumDataset(repo, batch_size=4, seed=3, on_error="skip")
    batches = DeviceLoader(loader(ds, workers=2, persistent_workers=True, multiprocessing_context=context), device="cpu")
    assert len(indexed(batches)) == 48
    ds.set_epoch(1)
    full = indexed(loader(DatumDataset(repo, batch_size=4, seed=3, epoch=1), workers=0))
    damage(shards_of(repo)[1], how)
    got = indexed(batches)
    expect_good_or_skipped(got, ds.skipped, full)
    assert 0 < len(ds.skipped) <= 12 and all(shards_of(repo)[1].stem in m for m in ds.skipped)
    assert ds.state_dict()["position"] == 48


def test_shards_retired_and_pruned_by_another_process_are_read_where_their_datums_went(repo: Path) -> None:
    """repack (the shards merged) and gc --prune now in another process while a dataset
    is planned: the shards it planned are gone, and every sample is read where its datum
    lies now. A shard deleted with the only copy of its datums: each of them is a
    SampleError naming it (or skipped)."""
    cli = Cli(repo)
    ds = DatumDataset(repo, batch_size=4, shuffle=False, on_error="skip")
    config = repo / ".datarepo" / "config.toml"
    config.write_text(config.read_text().replace("shard_size = 16384", "shard_size = 1048576"))
    cli("repack", "--all")
    cli("gc", "--prune", "now")
    got = indexed(DeviceLoader(loader(ds, workers=2), device="cpu"))
    assert [k for _, k in got] == list(ds.keys_in_order()) and len(got) == 48 and not ds.skipped
    again = DatumDataset(repo, batch_size=4, shuffle=False, on_error="skip")
    (shard,) = again.manifest.shards
    with datarepo.open(repo) as r:
        path = shard_file(r, shard)
    path.unlink()
    path.with_suffix(".idx").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert indexed(DeviceLoader(loader(again, workers=2), device="cpu")) == []
    assert len(again.skipped) == 48 and all(f"in shard {shard}.tar: the shard is gone" in m for m in again.skipped)


def test_a_tar_header_with_a_bogus_size_is_a_sample_error(repo: Path) -> None:
    with datarepo.open(repo) as r:
        manifest = r.manifest(r.tree())
        victim = manifest.ranges(0)[2]
        path = shard_file(r, manifest.shards[0])
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(victim.offset + 124)
        f.write(b"77777777777\0")  # 8 GiB: far past the datum's end
    with pytest.raises(SampleError, match=f"{victim.key} in shard {manifest.shards[0]}"):
        list(DatumDataset(repo, batch_size=4))
    ds = DatumDataset(repo, batch_size=4, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = indexed(ds)
    assert len(got) == 47 and victim.key not in dict(got).values() and len(ds.skipped) == 1


# untrusted sample bytes ----------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    """A real grayscale PNG of zeros: a few hundred kilobytes that decode to width x height bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    rows = b"".join(z.compress(bytes(width + 1)) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    """A .npy file's header alone: its array's bytes are not there."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


HOSTILE = {  # ext, decoder, the bytes (made when the test runs), what the error says
    "png-bomb": ("png", "l8", lambda: png(10_000, 9_000), "MAX_IMAGE_PIXELS"),  # 90 Mpx, under what Pillow refuses
    "png-bomb-sized": ("png", ["rgb", 16], lambda: png(10_000, 9_000), "MAX_IMAGE_PIXELS"),
    "npy-huge-shape": ("npy", "npy", lambda: npy_header((100_000, 100_000)), "declares"),
    "npy-cut-short": ("npy", "npy", lambda: npy(np.arange(10))[:-8], "declares"),
    "json-nan": ("json", "json", lambda: b'{"loss": NaN}', "NaN is not JSON"),
    "json-overflow": ("json", "json", lambda: b"[1e999]", "out of a double"),
    "int-overflow": ("cls", "int", lambda: b"99999999999999999999", "64 bits"),
    "int-underscore": ("cls", "int", lambda: b"1_000", "64 bits"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_sample_bytes_are_a_decode_error_or_skipped(tmp_path: Path, case: str) -> None:
    ext, spec, make, why = HOSTILE[case]
    data = make()
    good = {"png": (png(8, 8), png(9, 8)), "npy": (npy(np.arange(3.0)), npy(np.arange(4))), "json": (b"[1.5]", b"{}"),
            "cls": (b"-7\n", b" 3")}[ext]  # fmt: skip
    make_repo(tmp_path, {"s/0": {ext: good[0]}, "s/1": {ext: data}, "s/2": {ext: good[1]}}, shard_size=1 << 20)
    with pytest.raises(SampleError, match=why) as raised:
        list(DatumDataset(tmp_path, decode={ext: spec}, batch_size=3, shuffle=False))
    assert "s/1" in str(raised.value)
    ds = DatumDataset(tmp_path, decode={ext: spec}, batch_size=3, shuffle=False, on_error="skip")
    (batch,) = DeviceLoader(loader(ds, workers=1), device="cpu")
    assert batch["__key__"] == ["s/0", "s/2"] and batch["__index__"].tolist() == [0, 2]
    assert len(ds.skipped) == 1 and why in ds.skipped[0]


def test_npy_in_big_endian_order_is_read() -> None:
    """(torch takes no other byte order than the machine's: the array is turned.)"""
    from datarepo.torch.decode import decoder

    decode = decoder({"npy": "npy"})
    assert decode is not None
    assert decode({"npy": npy(np.arange(3, dtype=">f4"))})["npy"].tolist() == [0.0, 1.0, 2.0]


def test_members_named_as_the_dataset_s_own_fields_do_not_take_their_place(tmp_path: Path) -> None:
    """A datum with members ``__key__``, ``__index__`` (a file ``x.__index__``) used to
    replace the sample's keys and positions with its bytes, and so the state's count."""
    make_repo(tmp_path, {f"t/{i}": {"cls": b"1", "__index__": b"999", "__key__": b"evil"} for i in range(8)})
    with pytest.raises(SampleError, match="a field the dataset sets"):
        list(DatumDataset(tmp_path, batch_size=4))
    ds = DatumDataset(tmp_path, batch_size=4, shuffle=False, decode={"__index__": None, "__key__": None})
    batches = list(DeviceLoader(loader(ds, workers=0), device="cpu"))
    assert indexed(batches) == [(i, f"t/{i}") for i in range(8)] and ds.state_dict()["position"] == 8

    def relabel(sample: dict[str, Any]) -> dict[str, Any]:
        return {**sample, "__index__": -1, "__key__": "mine"}  # a transform cannot move a sample either

    ds = DatumDataset(tmp_path, shuffle=False, transform=relabel, decode={"__index__": None, "__key__": None})
    assert [(s["__index__"], s["__key__"]) for s in ds] == [(i, f"t/{i}") for i in range(8)]


def test_skipped_samples_reach_ds_skipped_when_samples_go_through_a_device_loader(tmp_path: Path) -> None:
    make_repo(tmp_path, {f"t/{i}": {"cls": b"x" if i == 2 else b"1"} for i in range(6)})
    ds = DatumDataset(tmp_path, shuffle=False, decode={"cls": "int"}, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = [k for b in DeviceLoader(loader(ds, workers=0, batch_size=2), device="cpu") for k in b["__key__"]]
    assert got == ["t/0", "t/1", "t/3", "t/4", "t/5"] and len(ds.skipped) == 1 and "t/2" in ds.skipped[0]


# states and ranks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"position": b"4"},
        {"epoch": "1"},
        {"position": 4.0},
        {"epoch": True},
        {"format": True},
        {"position": torch.tensor(4)},
        {"world_size": 0},
        {"world_size": "4"},
        {"plan": 5},
        {"extra": 1},
        {"position": 49},
        {"position": -1},
    ],
    ids=repr,
)
def test_a_tampered_state_is_refused_not_read_as_another_position(repo: Path, change: dict[str, Any]) -> None:
    ds = DatumDataset(repo, batch_size=4)
    state = {**ds.state_dict(), **change}
    with pytest.raises(InvalidInputError, match="not a DatumDataset state"):
        ds.load_state_dict(state)
    missing = ds.state_dict()
    del missing["world_size"]
    with pytest.raises(InvalidInputError, match="lacks world_size"):
        ds.load_state_dict(missing)
    assert ds.state_dict()["position"] == 0


def test_a_state_of_numpy_ints_at_epoch_end_loaded_twice_resumes_with_nothing(repo: Path) -> None:
    ds = DatumDataset(repo, batch_size=4)
    list(ds)
    state = {k: np.int64(v) if type(v) is int else v for k, v in ds.state_dict().items()}
    again = DatumDataset(repo, batch_size=4)
    again.load_state_dict(state)
    again.load_state_dict(state)
    assert list(again) == [] and again.state_dict()["position"] == 48


def test_a_rank_of_several_made_before_torch_distributed_is_refused(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's WORLD_SIZE without init_process_group: taken as rank 0 of 1, every rank
    would have read the whole epoch."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InvalidInputError, match="WORLD_SIZE is '4' but torch.distributed is not initialized"):
        DatumDataset(repo)
    assert DatumDataset(repo, rank=2, world_size=4).share().length == 12


def test_a_batch_the_dataset_did_not_make_makes_the_state_say_so(repo: Path) -> None:
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"__index__": [s["__index__"] for s in samples], "__skipped__": 5}

    ds = DatumDataset(repo)
    batches = list(DeviceLoader(loader(ds, workers=0, batch_size=4, collate_fn=collate), device="cpu"))
    assert len(batches) == 12
    with pytest.raises(InvalidInputError, match="did not make"):
        ds.state_dict()


def test_a_batch_of_another_rank_is_named_by_the_state(repo: Path) -> None:
    mine = DatumDataset(repo, batch_size=4, rank=0, world_size=2)
    theirs = next(iter(DatumDataset(repo, batch_size=4, rank=1, world_size=2)))
    with pytest.raises(InvalidInputError, match="is not of rank 0 of 2's share"):
        mine.state_dict(after=theirs)


# run records -----------------------------------------------------------------------------


def test_a_run_of_another_repository_is_not_recorded(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Its ref would keep nothing here, and make gc refuse to run (a missing commit)."""
    other = tmp_path_factory.mktemp("other")
    make_repo(other, labelled(4, seed=9))
    with datarepo.open(repo) as r, pytest.raises(InvalidInputError, match="which is not in this repository"):
        r.record_run("elsewhere", DatumDataset(other))
    Cli(repo)("gc")


def forged(repo: Path, name: str, **change: Any) -> None:
    """A run record under refs/runs/NAME: a good one with some fields changed."""
    with datarepo.open(repo) as r:
        good = r.store.get_object(r.refs.read("refs/runs/good")).data  # type: ignore[union-attr]
        data = {**good, **change}
        oid = r.store.put_object(Blob(data))
    (repo / ".datarepo" / "refs" / "runs" / name).write_text(oid + "\n")


FORGED = {
    "block-zero": {"block": 0},
    "seed-negative": {"seed": -1},
    "commit-a-branch": {"commit": "HEAD"},
    "keys-of-ints": {"keys": [1, 2], "prefix": ""},
    "count-negative": {"count": -5},
    "world-zero": {"world_size": 0},
    "unknown-decoder": {"decode": {"cls": "zzz"}},
    "fingerprint-short": {"fingerprint": "x"},
    "unknown-field": {"zzz": 1},
}


def test_a_forged_run_record_is_one_error_line_everywhere(worktree: Path, cli: Cli) -> None:
    make_repo(worktree, labelled(20))
    with datarepo.open(worktree) as r:
        r.record_run("good", DatumDataset(r, prefix="train/", seed=1))
    for name, change in FORGED.items():
        forged(worktree, name, **change)
    forged(worktree, "other-prefix", prefix="val/")  # a good-looking record the data does not give
    listed = cli("runs", ok=False)
    assert listed.exit_code == 1 and [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["good", "other-prefix"]
    assert sorted(line.split()[1] for line in listed.stderr.splitlines()) == sorted(f"refs/runs/{n}" for n in FORGED)
    fsck = cli("fsck", ok=False)  # (fsck reads each record as runs does)
    assert fsck.exit_code == 1 and sorted(n for n in FORGED if f"refs/runs/{n} " in fsck.output) == sorted(FORGED)
    for name in FORGED:
        for args in (("runs", "show", name), ("runs", "show", name, "--json"), ("runs", "show", name, "--keys")):
            shown = cli(*args, ok=False)
            assert shown.exit_code == 1 and shown.stdout == ""
            assert shown.stderr.startswith(f"Error: refs/runs/{name} does not name a run record")
            assert shown.stderr.count("\n") == 1
        with pytest.raises(NotARunError):
            DatumDataset.from_run(worktree, name)
    keys = cli("runs", "show", "other-prefix", "--keys", ok=False)
    assert keys.exit_code == 1 and keys.stdout == "" and "no longer gives the recorded order" in keys.stderr
    assert cli("runs", "show", "good", "--keys", "--epoch", str(2**63), ok=False).exit_code == 2  # (a bad option value)
    forged(worktree, "two-lines", author="a\nfingerprint: forged")  # shown on one line, quoted
    shown = cli("runs", "show", "two-lines").output.splitlines()
    assert 'author: "a\\nfingerprint: forged"' in shown and [line for line in shown if line.startswith("fingerprint")] == [
        "fingerprint: " + json.loads(cli("runs", "show", "good", "--json").output)["fingerprint"]
    ]
    for name in [*FORGED, "other-prefix", "two-lines"]:
        cli("runs", "rm", name)
    assert "0 problems" in cli("fsck").output
    cli("gc", "--prune", "now")
    assert len(cli("runs", "show", "good", "--keys").output.splitlines()) == 20  # gc kept the good run's data


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("x" * 201, None, "longer than"),
        ("/".join(["y" * 150] * 8), None, "longer than"),
        ("big", {"blob": "x" * (1 << 20)}, "more than 1048576"),
        ("huge-int", {"n": 10**5000}, "more than 128 bits"),
    ],
    ids=["long-name", "long-path", "huge-extra", "huge-int"],
)
def test_record_run_refuses_what_it_could_not_store(repo: Path, name: str, extra: Any, message: str) -> None:
    with datarepo.open(repo) as r:
        with pytest.raises(InvalidInputError, match=message):
            r.record_run(name, DatumDataset(r), extra=extra)
        assert list(r.refs.names("refs/runs/")) == []
    assert Cli(repo)("branch", "x" * 201, ok=False).output.startswith("Error: invalid branch name")


# DeviceLoader ----------------------------------------------------------------------------


Pair = collections.namedtuple("Pair", "image label")


def test_device_loader_passes_odd_batches_and_survives_errors_and_breaks() -> None:
    t = torch.arange(12).reshape(3, 4).t()  # not contiguous
    batches = [{"a": {"b": [t, (t, None)]}, "s": "text"}, [t, "x", None], Pair(t, 1), t, None, "plain", 5]
    assert all(a is b for a, b in zip(DeviceLoader(batches, device="cpu"), batches))

    class Failing:
        def __iter__(self) -> Any:
            yield {"x": t}
            raise DataRepoError("the loader failed")

    with pytest.raises(DataRepoError, match="the loader failed"):
        list(DeviceLoader(Failing(), device="cpu"))


def test_device_loader_counts_across_a_break_and_another_pass(repo: Path) -> None:
    ds = DatumDataset(repo, batch_size=4, shuffle=False)
    batches = DeviceLoader(loader(ds, workers=2), device="cpu")
    for i, _ in enumerate(batches):
        if i == 2:
            break
    assert ds.state_dict()["position"] == 12
    assert len(indexed(batches)) == 48 and ds.state_dict()["position"] == 48


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_loader_moves_tensors_at_any_depth_to_cuda() -> None:
    t = torch.arange(12).reshape(3, 4).t()
    (moved,) = DeviceLoader([[{"a": [t]}, Pair(t, (t,))]], device="cuda")
    assert moved[0]["a"][0].is_cuda and isinstance(moved[1], Pair) and moved[1].image.is_cuda and moved[1].label[0].is_cuda


def test_json_of_a_state_and_a_record_round_trips(repo: Path) -> None:
    """(What a checkpoint holds of the data: a state in JSON loads back as it was.)"""
    ds = DatumDataset(repo, batch_size=4)
    next(iter(ds))
    state = json.loads(json.dumps(ds.state_dict()))
    again = DatumDataset(repo, batch_size=4)
    again.load_state_dict(state)
    assert again.state_dict() == ds.state_dict()
