"""What DatumDataset makes of the bytes: decoders, corrupt shards, the device loader on
the CPU, and the shards as stock WebDataset reads them."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import shard_file  # noqa: E402
from loader_fixtures import indexed, jpeg, json_bytes, keys_of, labelled, loader, make_repo  # noqa: E402

import datarepo  # noqa: E402
from datarepo.errors import InvalidInputError  # noqa: E402
from datarepo.torch import DatumDataset, DeviceLoader, SampleError, SkippedSampleWarning  # noqa: E402


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    samples = {
        f"img/{i:02d}": {
            "jpg": jpeg((64 + 8 * i, 48), (10 * i, 100, 200)),
            "png": jpeg((20, 30), (i, 2 * i, 3 * i), "PNG"),
            "txt": f"caption {i}".encode(),
            "json": json_bytes({"i": i, "tags": ["a", "b"]}),
            "cls": b"%d\n" % (i % 3),
            "npy": npy(np.arange(6, dtype=np.float32).reshape(2, 3) + i),
            "pth": b"not looked at",
        }
        for i in range(12)
    }
    make_repo(root, samples, shard_size=32768)
    return root


def test_decoders(mixed: Path) -> None:
    decode = {"jpg": ["rgb8", 32], "png": "rgb8", "txt": "txt", "json": "json", "cls": "int", "npy": "npy", "pth": None}
    ds = DatumDataset(mixed, prefix="img/", decode=decode, batch_size=12, shuffle=False)
    (batch,) = loader(ds, workers=1)
    assert batch["jpg"].shape == (12, 3, 32, 32) and batch["jpg"].dtype == torch.uint8  # reduced, resized, cropped
    assert batch["png"].shape == (12, 3, 30, 20)
    i = int(batch["__key__"][0][-2:])
    assert batch["png"][0, :, 0, 0].tolist() == [i, 2 * i, 3 * i]
    assert batch["txt"][0] == f"caption {i}"
    assert batch["json"][0] == {"i": i, "tags": ["a", "b"]}
    assert batch["cls"].tolist() == [int(k[-2:]) % 3 for k in batch["__key__"]]
    assert torch.equal(batch["npy"][0], torch.arange(6, dtype=torch.float32).reshape(2, 3) + i)
    assert "pth" not in batch


def test_images_decode_at_a_reduced_scale_when_smaller_is_asked(mixed: Path) -> None:
    from datarepo.torch.decode import decode_image

    big = jpeg((800, 600), (200, 30, 30))
    from PIL import Image

    img = Image.open(io.BytesIO(big))
    img.draft("RGB", (150, 150))
    assert img.size == (200, 150)  # what draft mode reads: a quarter scale, not 800 x 600
    small = decode_image(big, "rgb", 150)
    assert small.shape == (3, 150, 150) and small.dtype == torch.float32
    assert abs(float(small[0].mean()) - 200 / 255) < 0.02


def test_transform_runs_in_the_workers(mixed: Path) -> None:
    def tag(sample: dict) -> dict:
        return {"y": sample["cls"] * 10, "pid": os.getpid()}

    ds = DatumDataset(mixed, prefix="img/", decode={"cls": "int"}, transform=tag, batch_size=4)
    batches = list(loader(ds, workers=2))
    assert {pid for b in batches for pid in b["pid"].tolist()}.isdisjoint({os.getpid()})
    assert sorted(y for b in batches for y in b["y"].tolist()) == sorted(10 * (i % 3) for i in range(12))
    assert set(batches[0]) == {"__key__", "__index__", "__skipped__", "y", "pid"}


def test_no_unpickling_without_opting_in(mixed: Path) -> None:
    with pytest.raises(InvalidInputError, match="unsafe=True"):
        DatumDataset(mixed, prefix="img/", decode={"pth": "pth"})
    with pytest.raises(InvalidInputError, match="unknown decoder"):
        DatumDataset(mixed, prefix="img/", decode={"jpg": "exec"})
    root = mixed.parent / "pickled"
    make_repo(root, {"a": {"npy": npy(np.array([{"x": 1}], dtype=object))}, "b": {"pickle": pickle.dumps([1, 2])}})
    with pytest.raises(SampleError, match="sample a: cannot decode"):
        next(iter(DatumDataset(root, keys=["a"], decode={"npy": "npy"})))
    (got,) = DatumDataset(root, keys=["b"], decode={"pickle": "pickle"}, unsafe=True)
    assert got["pickle"] == [1, 2]


class _Anything:
    """An object only a full unpickler rebuilds (running whatever its class says)."""


def test_pth_loads_tensors_only_even_when_allowed(mixed: Path) -> None:
    def saved(obj: object) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    root = mixed.parent / "pth"
    make_repo(root, {"t": {"pth": saved({"w": torch.arange(3)})}, "o": {"pth": saved(_Anything())}})
    (got,) = DatumDataset(root, keys=["t"], decode={"pth": "pth"}, unsafe=True)
    assert got["pth"]["w"].tolist() == [0, 1, 2]
    with pytest.raises(SampleError, match="sample o: cannot decode"):
        next(iter(DatumDataset(root, keys=["o"], decode={"pth": "pth"}, unsafe=True)))


def test_an_undecodable_sample_raises_or_is_skipped(mixed: Path) -> None:
    root = mixed.parent / "undecodable"
    make_repo(root, {f"k{i}": {"jpg": jpeg((8, 8), (1, 2, 3)) if i != 3 else b"not a jpeg"} for i in range(8)})
    with pytest.raises(SampleError, match="sample k3: cannot decode"):
        list(loader(DatumDataset(root, decode={"jpg": "rgb8"}, batch_size=4), workers=0))
    ds = DatumDataset(root, decode={"jpg": "rgb8"}, batch_size=4, on_error="skip")
    with pytest.warns(SkippedSampleWarning):
        batches = list(loader(ds, workers=0))
    assert sorted(keys_of(batches)) == [f"k{i}" for i in range(8) if i != 3]
    assert len(ds.skipped) == 1 and "k3" in ds.skipped[0]


def test_a_corrupt_shard_raises_naming_key_and_shard_or_is_skipped(tmp_path: Path) -> None:
    make_repo(tmp_path, labelled(60))
    good = DatumDataset(tmp_path, batch_size=8, seed=5)
    order = indexed(loader(good, workers=0))
    with datarepo.open(tmp_path) as repo:
        manifest = repo.manifest(repo.tree())
        victim = manifest.ranges(3)[1]  # a datum in the middle of a shard
        path = shard_file(repo, manifest.shards[3])
    os.chmod(path, 0o644)  # shards are read-only
    with open(path, "r+b") as f:
        f.seek(victim.offset + 512 + 5)  # in its first member's bytes
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SampleError) as raised:
        list(loader(DatumDataset(tmp_path, batch_size=8, seed=5), workers=0))
    assert victim.key in str(raised.value) and manifest.shards[3] in str(raised.value)
    ds = DatumDataset(tmp_path, batch_size=8, seed=5, on_error="skip")
    got = []
    for batch in DeviceLoader(loader(ds, workers=2), device="cpu"):
        got += indexed([batch])
    assert got == [(i, k) for i, k in order if k != victim.key]  # the others in their order
    assert len(ds.skipped) == 1 and victim.key in ds.skipped[0] and manifest.shards[3] in ds.skipped[0]
    assert ds.state_dict()["position"] == 60
    assert len(keys_of(loader(DatumDataset(tmp_path, batch_size=8, seed=5, verify=False), 0))) == 60  # unchecked: read as is


def test_device_loader_passes_batches_through_on_the_cpu(mixed: Path) -> None:
    ds = DatumDataset(mixed, prefix="img/", decode={"cls": "int"}, batch_size=5)
    plain = list(loader(ds, workers=0))
    moved = list(DeviceLoader(loader(ds, workers=0), device="cpu"))
    assert [b["__key__"] for b in moved] == [b["__key__"] for b in plain]
    assert all(torch.equal(a["cls"], b["cls"]) for a, b in zip(plain, moved))
    assert len(DeviceLoader(loader(ds, 0), device="cpu")) == 3
    batches = [(torch.ones(2), [torch.zeros(1), "x"])]
    assert list(DeviceLoader(batches, device="cpu")) == batches  # any iterable of batches


def test_stock_webdataset_reads_every_shard(mixed: Path, tmp_path: Path) -> None:
    webdataset = pytest.importorskip("webdataset")
    make_repo(tmp_path, labelled(50))
    with datarepo.open(tmp_path) as repo:
        manifest = repo.manifest(repo.tree())
        urls = [str(shard_file(repo, s)) for s in manifest.shards]
    got = {s["__key__"]: s for s in webdataset.WebDataset(urls, shardshuffle=False)}
    assert set(got) == {d.decode() for d in manifest.datums}
    first = manifest.ranges(0)[0]
    with datarepo.open(tmp_path) as repo:
        assert got[first.datum]["bin"] == repo.read(first.datum)["bin"]


def ring_files() -> list[str]:
    """Shared-memory files of the loader's workers that have a name (they are unlinked
    as soon as they are made: no worker, however it ends, leaves one behind)."""
    return [n for n in os.listdir("/dev/shm") if n.startswith("datarepo-")] if os.path.isdir("/dev/shm") else []


@pytest.mark.parametrize("size", [6000, 3 << 20])  # batches of 96 KB through shared memory; of 12 MB through the pipe
@pytest.mark.parametrize("batched_by", ["dataset", "loader"])
def test_bytes_reach_the_loop_whole_through_workers(tmp_path: Path, size: int, batched_by: str) -> None:
    samples = {f"s/{i:03d}": {"bin": os.urandom(size + i), "txt": b"%d" % i} for i in range(24 if size < 1 << 20 else 8)}
    make_repo(tmp_path, samples, shard_size=1 << 20)
    n = 16 if size < 1 << 20 else 4
    if batched_by == "dataset":
        batches = loader(DatumDataset(tmp_path, batch_size=n, seed=1), workers=2)
    else:
        batches = loader(DatumDataset(tmp_path, chunk_size=n, seed=1), workers=2, batch_size=n)
    got = {}
    for batch in batches:
        assert type(batch["bin"]) is list and type(batch["__key__"]) is list
        got.update(zip(batch["__key__"], zip(batch["bin"], batch["txt"])))
    assert got == {k: (m["bin"], m["txt"]) for k, m in samples.items()}
    assert ring_files() == []


def test_a_member_some_datums_lack_is_none_in_their_place(tmp_path: Path) -> None:
    make_repo(tmp_path, {f"k{i}": {"cls": b"%d" % i, **({"json": json_bytes(i)} if i % 3 == 0 else {})} for i in range(9)})
    (batch,) = loader(DatumDataset(tmp_path, decode={"cls": "int", "json": "json"}, batch_size=9, shuffle=False), workers=1)
    assert batch["json"] == [int(k[1:]) if int(k[1:]) % 3 == 0 else None for k in batch["__key__"]]
    assert batch["cls"].tolist() == [int(k[1:]) for k in batch["__key__"]]
