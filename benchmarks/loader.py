"""Loader benchmark: datarepo's DatumDataset against WebDataset, LitData, Mosaic Streaming and loose files.

Run with the project's virtualenv and the ``bench`` extra (``pip install -e '.[bench]'``
after torch)::

    .venv/bin/python benchmarks/loader.py                 # 50,000 samples, 5,000 JPEGs
    .venv/bin/python benchmarks/loader.py --scale         # also plan an epoch over 1,000,000 datums
    .venv/bin/python benchmarks/loader.py --quick         # a smoke run of about a minute

Two sets of samples are made in a temporary directory (``--keep DIR`` keeps them, and
a later run with the same ``--keep`` reuses what is there):

* the core benchmark's set (``benchmarks/ingest.py``'s generator, same seed):
  ``--samples`` samples, a 4-16 KiB ``.jpg`` of random bytes and a ``.cls`` label each,
  under ``train/<class>/``;
* ``--jpeg-samples`` real JPEGs (Pillow, quality 90, 256-512 px a side, smooth random
  colour fields with noise) and their labels, in the same layout.

Each set is stored once in every loader's format: a datarepo repository (through
``repo.writer()``), WebDataset tar shards (``webdataset.TarWriter``), LitData chunks
(``litdata.optimize``), Mosaic MDS shards (``streaming.MDSWriter``), and the loose files
themselves. Then every loader reads whole shuffled epochs through a
``torch.utils.data.DataLoader`` (``--batch``, ``--workers``), in turns (one epoch of each
loader, then the next round), ``--repeats`` rounds:

* raw bytes, warm page cache (every file read once before);
* raw bytes, cold page cache: before every epoch ``sync`` and ``/proc/sys/vm/drop_caches``
  (root), or where that is not writable ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every
  file of the set (which needs no root);
* the JPEGs decoded and cropped to 224 x 224 (``rgb8``, Pillow's draft mode, resized on
  the shorter side, centre crop) by every loader, against the same decode and crop of
  bytes held in memory (a map-style dataset over a list, the same DataLoader).

Every epoch is checked: each key exactly once, the sum of the labels, and the bytes (or
the tensor shapes) delivered; a loader that drops or repeats samples stops the run.
Also measured: a plain ustar loop over the tar shards on one core (the ceiling of
reading tar), the cost of ``state_dict()`` taken every step, and with ``--scale`` the
time and peak RSS of planning an epoch over a repository of 1,000,000 datums (in a fresh
process).

Mosaic Streaming's package imports ``streaming.vision`` (torchvision) from its
``__init__``; where torchvision is not installed (no CPU build of it matches this torch),
its ``streaming.base`` modules (the writer and the dataset) are imported without that
``__init__``.

Progress goes to stderr, the tables (Markdown) to stdout.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from statistics import median
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from ingest import CLASSES, make_samples  # noqa: E402  the core benchmark's sample set

import datarepo  # noqa: E402
from datarepo.repo import Repo  # noqa: E402

CROP = 224
SHARD_BYTES = 32 << 20  # the peers' shard (chunk) size: 16 shards for the 511 MB set
WDS_SHUFFLE = 1000  # WebDataset's sample shuffle buffer
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# the sample sets ----------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    key: str
    jpg: Path
    cls: int


def sample_list(root: Path, count: int) -> list[Sample]:
    """The samples of a set made by ``make_samples`` or ``make_jpegs``, in key order."""
    out = []
    for i in range(count):
        key = f"train/class{i % CLASSES:02d}/{i:06d}"
        out.append(Sample(key, root / f"{key}.jpg", i % CLASSES))
    return sorted(out, key=lambda s: s.key)


def make_jpegs(root: Path, count: int, seed: int) -> None:
    """``count`` real JPEGs (256-512 px a side) and labels, laid out as ``make_samples`` does."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in range(CLASSES):
        (root / "train" / f"class{cls:02d}").mkdir(parents=True)
    for i in range(count):
        w, h = (int(x) for x in rng.integers(256, 513, size=2))
        coarse = Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8))
        field_ = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.int16)
        noise = rng.integers(-24, 25, size=(h, w, 3), dtype=np.int16)
        img = Image.fromarray(np.clip(field_ + noise, 0, 255).astype(np.uint8))
        stem = root / "train" / f"class{i % CLASSES:02d}" / f"{i:06d}"
        img.save(stem.with_suffix(".jpg"), quality=90)
        stem.with_suffix(".cls").write_bytes(b"%d" % (i % CLASSES))


def decode_crop(data: bytes) -> torch.Tensor:
    """The JPEG work every loader does: decoded at the smallest draft scale that keeps both
    sides at least 224, resized to 224 on the shorter side, centre-cropped, uint8 CHW (the
    function datarepo's ``["rgb8", 224]`` decoder calls, so every loader does the same work)."""
    from datarepo.torch.decode import decode_image

    return decode_image(data, "rgb8", CROP)


def keep_bytes(data: bytes) -> bytes:
    return data


# building each format -------------------------------------------------------------


def build_datarepo(samples: list[Sample], out: Path) -> None:
    repo = Repo.init(out)
    repo.close()
    with datarepo.open(out) as repo, repo.lock:
        with repo.writer() as w:
            for s in samples:
                w.put(s.key, {"jpg": s.jpg.read_bytes(), "cls": b"%d" % s.cls})
        repo.commit(w.entries, f"{len(samples)} samples")


def per_shard(samples: list[Sample]) -> int:
    total = sum(s.jpg.stat().st_size for s in samples)
    return max(1, round(len(samples) * SHARD_BYTES / max(total, 1)))


def build_wds(samples: list[Sample], out: Path) -> None:
    import webdataset as wds

    out.mkdir()
    step = per_shard(samples)
    for n, start in enumerate(range(0, len(samples), step)):
        with wds.TarWriter(str(out / f"shard-{n:05d}.tar")) as sink:
            for s in samples[start : start + step]:
                sink.write({"__key__": s.key, "jpg": s.jpg.read_bytes(), "cls": b"%d" % s.cls})


def litdata_item(root: str, key: str) -> dict:
    return {"key": key, "jpg": Path(root, key + ".jpg").read_bytes(), "cls": int(Path(root, key + ".cls").read_bytes())}


def build_litdata(samples: list[Sample], out: Path, root: Path) -> None:
    import litdata

    litdata.optimize(
        fn=partial(litdata_item, str(root)), inputs=[s.key for s in samples], output_dir=str(out),
        chunk_bytes=SHARD_BYTES, num_workers=2, reorder_files=False, verbose=False, start_method="fork",
    )


def mosaic() -> types.ModuleType:
    """``streaming.base`` (MDSWriter, StreamingDataset); see the module's docstring."""
    try:
        return importlib.import_module("streaming.base")
    except (ImportError, RuntimeError) as e:  # no torchvision, or one built for another torch
        if "torchvision" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "streaming" or m.startswith("streaming.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("streaming")
    package = types.ModuleType("streaming")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["streaming"] = package
    return importlib.import_module("streaming.base")


def build_mds(samples: list[Sample], out: Path) -> None:
    columns = {"key": "str", "jpg": "bytes", "cls": "int"}
    with mosaic().MDSWriter(out=str(out), columns=columns, size_limit=SHARD_BYTES, progress_bar=False) as sink:
        for s in samples:
            sink.write({"key": s.key, "jpg": s.jpg.read_bytes(), "cls": s.cls})


@dataclass
class SampleSet:
    """One set of samples, stored in every format, and what an epoch of it must deliver."""

    name: str
    root: Path  # the loose files, under root/train/
    samples: list[Sample]
    dirs: dict[str, Path] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)

    @property
    def keys(self) -> set[str]:
        return {s.key for s in self.samples}

    @property
    def label_sum(self) -> int:
        return sum(s.cls for s in self.samples)

    @property
    def total_bytes(self) -> int:
        return sum(s.jpg.stat().st_size for s in self.samples)


def prepare(workdir: Path, name: str, count: int, make: Callable[[Path, int, int], object], seed: int) -> SampleSet:
    base = workdir / name
    files = base / "files"
    if not files.exists():
        log(f"{name}: writing {count} samples")
        tmp = base / "files.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        make(tmp, count, seed)
        tmp.rename(files)
    found = len(list((files / "train").glob("*/*.jpg")))
    if found != count:
        sys.exit(f"benchmark: {files} holds {found} samples, not {count}: use another --keep directory")
    out = SampleSet(name, files, sample_list(files, count))
    builders: dict[str, Callable[[Path], None]] = {
        "datarepo": partial(build_datarepo, out.samples),
        "wds": partial(build_wds, out.samples),
        "litdata": partial(build_litdata, out.samples, root=files),
        "mds": partial(build_mds, out.samples),
    }
    for fmt, build in builders.items():
        target = base / fmt
        out.dirs[fmt] = target
        if target.exists():
            continue
        log(f"{name}: building the {fmt} format")
        tmp = base / f"{fmt}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        start = time.perf_counter()
        build(tmp)
        out.build_s[fmt] = time.perf_counter() - start
        tmp.rename(target)
    out.dirs["files"] = files
    return out


# the loaders -----------------------------------------------------------------------
# Each yields batches as (keys, payload, labels): payload a list of bytes or a uint8
# tensor of (batch, 3, 224, 224) images, labels a tensor.


@dataclass(frozen=True)
class Opts:
    batch: int
    workers: int
    seed: int
    decode: bool

    def loader(self, ds: object, **kwargs: object) -> DataLoader:
        return DataLoader(ds, **{"batch_size": self.batch, "num_workers": self.workers, **kwargs})

    @property
    def work(self) -> Callable[[bytes], object]:
        return decode_crop if self.decode else keep_bytes


class MapFiles(Dataset):
    """Loose files through a map-style dataset: one sample, two files."""

    def __init__(self, samples: list[Sample], work: Callable[[bytes], object]) -> None:
        self.items = [(s.key, str(s.jpg), str(s.jpg.with_suffix(".cls"))) for s in samples]
        self.work = work

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, object, int]:
        key, jpg, cls = self.items[i]
        with open(jpg, "rb") as f:
            data = f.read()
        with open(cls, "rb") as f:
            label = int(f.read())
        return key, self.work(data), label


class InMemory(Dataset):
    """The same samples' bytes held in a list: what a loader cannot beat."""

    def __init__(self, samples: list[Sample], work: Callable[[bytes], object]) -> None:
        self.items = [(s.key, s.jpg.read_bytes(), s.cls) for s in samples]
        self.work = work

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, object, int]:
        key, data, label = self.items[i]
        return key, self.work(data), label


def shuffled(opts: Opts) -> dict:
    return {"shuffle": True, "generator": torch.Generator().manual_seed(opts.seed)}


def loose_files(s: SampleSet, opts: Opts) -> Iterable:
    return opts.loader(MapFiles(s.samples, opts.work), **shuffled(opts))


def wds_loader(s: SampleSet, opts: Opts) -> Iterable:
    import webdataset as wds

    urls = sorted(str(p) for p in s.dirs["wds"].glob("*.tar"))
    ds = (
        wds.WebDataset(urls, shardshuffle=len(urls), seed=opts.seed, empty_check=False)
        .shuffle(WDS_SHUFFLE)
        .to_tuple("__key__", "jpg", "cls")
        .map_tuple(None, opts.work, int)
    )
    return opts.loader(ds)


class LitTransform:
    def __init__(self, work: Callable[[bytes], object]) -> None:
        self.work = work

    def __call__(self, item: dict) -> tuple[str, object, int]:
        return item["key"], self.work(bytes(item["jpg"])), item["cls"]  # LitData gives a memoryview


def litdata_loader(s: SampleSet, opts: Opts) -> Iterable:
    import litdata

    ds = litdata.StreamingDataset(str(s.dirs["litdata"]), shuffle=True, seed=opts.seed, transform=LitTransform(opts.work))
    return litdata.StreamingDataLoader(ds, batch_size=opts.batch, num_workers=opts.workers)


def mds_loader(s: SampleSet, opts: Opts) -> Iterable:
    base = mosaic()
    base.util.clean_stale_shared_memory()
    work = opts.work

    class MDS(base.StreamingDataset):
        def __getitem__(self, i: int) -> tuple[str, object, int]:
            item = super().__getitem__(i)
            return item["key"], work(item["jpg"]), item["cls"]

    ds = MDS(local=str(s.dirs["mds"]), shuffle=True, shuffle_seed=opts.seed, batch_size=opts.batch)
    return opts.loader(ds)


def in_memory(s: SampleSet, opts: Opts) -> Iterable:
    return opts.loader(InMemory(s.samples, opts.work), **shuffled(opts))


PEERS: dict[str, Callable[[SampleSet, Opts], Iterable]] = {
    "WebDataset": wds_loader,
    "LitData": litdata_loader,
    "Mosaic Streaming": mds_loader,
    "loose files": loose_files,
}


# measuring ---------------------------------------------------------------------------


class BadEpoch(Exception):
    pass


class Timing(NamedTuple):
    wall: float  # seconds
    cpu: float  # CPU seconds of this process and the workers it reaped, user and system


def cpu_now() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def epoch(name: str, s: SampleSet, batches: Iterable, opts: Opts) -> Timing:
    """The time of one epoch, wall and CPU (the DataLoader joins its workers as the epoch
    ends, so their CPU time is counted); checks that it delivered every sample exactly once."""
    keys: list[str] = []
    labels = size = 0
    start, cpu = time.perf_counter(), cpu_now()
    for batch_keys, payload, batch_labels in batches:
        keys.extend(batch_keys)
        labels += int(batch_labels.sum())
        if opts.decode:
            if tuple(payload.shape[1:]) != (3, CROP, CROP) or payload.dtype != torch.uint8:
                raise BadEpoch(f"{name}: a batch of {tuple(payload.shape)} {payload.dtype}")
            size += payload.shape[0]
        else:
            size += sum(map(len, payload))
    seconds, cpu = time.perf_counter() - start, cpu_now() - cpu
    want_size = len(s.samples) if opts.decode else s.total_bytes
    if len(keys) != len(s.samples) or set(keys) != s.keys or labels != s.label_sum or size != want_size:
        raise BadEpoch(
            f"{name}: an epoch delivered {len(keys)} samples ({len(set(keys))} distinct, "
            f"{len(s.keys - set(keys))} missing), labels summing to {labels} and {size} bytes or images; "
            f"expected {len(s.samples)} distinct samples, {s.label_sum}, {want_size}"
        )
    return Timing(seconds, cpu)


DROP_CACHES = "/proc/sys/vm/drop_caches"


def can_drop_all() -> bool:
    return os.access(DROP_CACHES, os.W_OK)


def drop_caches(dirs: Iterable[Path]) -> str:
    """Evicts the sets' files from the page cache: all of it through ``drop_caches`` where
    this process may write it (root), else each file with ``posix_fadvise``; returns how."""
    os.sync()
    if can_drop_all():
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
        return "drop_caches"
    for d in dirs:
        for path in d.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    return "posix_fadvise"


def warm(dirs: Iterable[Path]) -> None:
    for d in dirs:
        for path in d.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass


@dataclass
class Result:
    name: str
    runs: list[Timing]  # one an epoch
    samples: int
    kind: str = "peer"  # "ours", "peer" or "reference"

    @property
    def best(self) -> float:
        return self.samples / min(t.wall for t in self.runs)

    @property
    def median(self) -> float:
        return self.samples / median(t.wall for t in self.runs)

    @property
    def cpu_us(self) -> float:
        """The median CPU time a sample, all processes together, in microseconds."""
        return 1e6 * median(t.cpu for t in self.runs) / self.samples


def in_turns(
    s: SampleSet, loaders: dict[str, Callable[[SampleSet, Opts], Iterable]], opts: Opts, repeats: int, cold: bool
) -> dict[str, list[Timing]]:
    """``repeats`` epochs of each loader, taken in turns, so a slow spell of a shared
    machine weighs on all; every epoch is logged."""
    runs: dict[str, list[Timing]] = {name: [] for name in loaders}
    how = ""
    for r in range(repeats):
        for name, make in loaders.items():
            batches = make(s, opts)
            if cold:
                how = drop_caches(s.dirs.values())
            runs[name].append(epoch(name, s, batches, opts))
            del batches
            gc.collect()
            wall, cpu = runs[name][-1]
            log(f"  {s.name} {'cold' if cold else 'warm'} round {r + 1}: {name} {wall:.3f} s, {cpu:.3f} s CPU "
                f"({len(s.samples) / wall:,.0f} samples/s){' after ' + how if how else ''}")
    return runs


def ustar_loop(paths: list[Path]) -> int:
    """The ceiling of reading tar on one core: headers parsed in a loop, members read whole."""
    samples = 0
    for path in paths:
        with open(path, "rb", buffering=1 << 20) as f:
            while True:
                header = f.read(512)
                if len(header) < 512 or not header[0]:
                    break
                size = int(header[124:136].strip(b"\0 ") or b"0", 8)
                data = f.read(size)
                f.read(-size % 512)
                if header[:100].rstrip(b"\0").endswith(b".jpg"):
                    samples += 1 + 0 * len(data)
    return samples


def ustar_runs(s: SampleSet, repeats: int) -> list[Timing]:
    paths = sorted(s.dirs["wds"].glob("*.tar"))
    runs = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), cpu_now()
        found = ustar_loop(paths)
        runs.append(Timing(time.perf_counter() - start, cpu_now() - cpu))
        if found != len(s.samples):
            raise BadEpoch(f"ustar loop: {found} samples, expected {len(s.samples)}")
    return runs


# datarepo ------------------------------------------------------------------------------


def datarepo_dataset(s: SampleSet, opts: Opts, **options: object) -> object:
    """The fast path of docs/loader.md: the dataset collates batches in its workers."""
    from datarepo.torch import DatumDataset

    decode = {"jpg": ["rgb8", CROP] if opts.decode else "bytes", "cls": "int"}
    options = {"batch_size": opts.batch, **options}
    return DatumDataset(str(s.dirs["datarepo"]), rev="HEAD", prefix="train/", decode=decode, shuffle=True,
                        seed=opts.seed, **options)


def datarepo_batches(loader: Iterable) -> Iterator[tuple[list[str], object, torch.Tensor]]:
    for batch in loader:
        yield batch["__key__"], batch["jpg"], batch["cls"]


def datarepo_loader(s: SampleSet, opts: Opts) -> Iterable:
    return datarepo_batches(opts.loader(datarepo_dataset(s, opts), batch_size=None))


def datarepo_unverified(s: SampleSet, opts: Opts) -> Iterable:
    return datarepo_batches(opts.loader(datarepo_dataset(s, opts, verify=False), batch_size=None))


def datarepo_one_by_one(s: SampleSet, opts: Opts) -> Iterable:
    """Samples handed from the workers one by one, batched by the DataLoader."""
    ds = datarepo_dataset(s, opts, batch_size=None, chunk_size=opts.batch)
    return datarepo_batches(DataLoader(ds, batch_size=opts.batch, num_workers=opts.workers))


class StateCost(NamedTuple):
    """Epochs that took ``state_dict()`` after every step."""

    wall: float  # seconds inside the state_dict calls, by the wall clock
    cpu: float  # the same calls' CPU time (this thread's), which a busy machine does not stretch
    epoch: float  # the epoch's wall time
    steps: int
    size: int  # bytes of the largest state as JSON


def state_dict_cost(s: SampleSet, opts: Opts, repeats: int) -> StateCost:
    """Epochs that take ``state_dict(after=batch)`` after every step (the way docs/loader.md
    gives for a DataLoader with workers); the one where the calls took the least share."""
    best = None
    for _ in range(repeats):
        ds = datarepo_dataset(s, opts)
        wall = cpu = 0.0
        steps = size = 0
        start = time.perf_counter()
        for batch in opts.loader(ds, batch_size=None):
            t, c = time.perf_counter(), time.thread_time()
            state = ds.state_dict(after=batch)
            wall, cpu = wall + time.perf_counter() - t, cpu + time.thread_time() - c
            steps += 1
            size = max(size, len(json.dumps(state)))
        cost = StateCost(wall, cpu, time.perf_counter() - start, steps, size)
        if state["position"] != len(s.samples):
            raise BadEpoch(f"state_dict: the last state is at {state['position']}, not {len(s.samples)}")
        if best is None or cost.wall / cost.epoch < best.wall / best.epoch:
            best = cost
    return best


def same_decode(s: SampleSet, opts: Opts) -> int:
    """Checks that datarepo's ``rgb8`` decoder gives what ``decode_crop`` gives the peers,
    on the first batch of an epoch; returns how many images were compared."""
    ds = datarepo_dataset(s, opts, batch_size=16)
    batch = next(iter(ds))
    for key, image in zip(batch["__key__"], batch["jpg"]):
        if not torch.equal(image, decode_crop((s.root / f"{key}.jpg").read_bytes())):
            raise BadEpoch(f"datarepo's rgb8 decoder and the peers' decode_crop differ on {key}")
    return len(batch["__key__"])


def build_scale(path: Path, count: int) -> None:
    """A repository of ``count`` one-member datums (a few bytes each), through the writer."""
    Repo.init(path).close()
    with datarepo.open(path) as repo, repo.lock:
        with repo.writer() as w:
            for i in range(count):
                key = f"train/class{i % CLASSES:02d}/{i:07d}"
                w.put(key, {"cls": key.encode()})
        repo.commit(w.entries, f"{count} datums")


def memory_mb(field_: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, in MB. Not
    ``ru_maxrss``: that keeps the peak of the process that forked this one across exec."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field_ + ":"))
    return int(line.split()[1]) / 1024


def plan_child(path: Path) -> dict[str, float]:
    """In a fresh process, with torch and the loader imported first: the time of planning
    epoch 0 over the whole repository (the dataset made, its manifest and order), and the
    peak resident memory, in all and above what was resident before."""
    from datarepo.torch import DatumDataset

    before = memory_mb("VmRSS")
    start = time.perf_counter()
    ds = DatumDataset(str(path), rev="HEAD", prefix="train/", shuffle=True, seed=0)
    planned = len(ds.order(0))
    seconds = time.perf_counter() - start
    peak = memory_mb("VmHWM")
    return {"seconds": seconds, "datums": planned, "maxrss_mb": peak, "growth_mb": peak - before, "before_mb": before}


def plan_runs(path: Path, repeats: int) -> list[dict[str, float]]:
    cmd = [sys.executable, __file__, "--plan-child", str(path)]
    return [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout) for _ in range(repeats)]


# output ------------------------------------------------------------------------------


def rate(x: float) -> str:
    return f"{x:,.0f}"


def print_table(title: str, results: list[Result], targets: list[tuple[str, bool | None]], notes: list[str]) -> None:
    peers = [r for r in results if r.kind == "peer"]
    fastest = max(peers, key=lambda r: r.best) if peers else None
    wds = next((r for r in results if r.name == "WebDataset"), None)

    def ratio(r: Result, other: Result | None) -> str:
        if other is None or r is other:
            return "-"
        return f"{r.best / other.best:.2f}x ({r.median / other.median:.2f}x)"

    header = ("loader", "samples/s, best", "median", f"vs fastest peer ({fastest.name if fastest else '-'})", "vs WebDataset",
              "CPU us a sample", "epochs (s)")
    lines = [
        (r.name + (" (reference)" if r.kind == "reference" else ""), rate(r.best), rate(r.median), ratio(r, fastest),
         ratio(r, wds), f"{r.cpu_us:.0f}", ", ".join(f"{t.wall:.2f}" for t in r.runs))
        for r in results
    ]
    widths = [max(len(line[i]) for line in (header, *lines)) for i in range(len(header))]
    print(f"\n## {title}\n")
    for line in (header, tuple("-" * w for w in widths), *lines):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")
    print("\nRatios: best against best (median against median). CPU: the median epoch's CPU time (user and "
          "system) of the main process and its workers together, a sample.\n")
    for target, met in targets:
        print(f"- target: {target}: {'-' if met is None else 'met' if met else 'MISSED'}")
    for note in notes:
        print(f"- {note}")
    sys.stdout.flush()


def describe(repo_root: Path) -> list[str]:
    """The code and the machine the figures belong to."""
    from importlib.metadata import version

    peers = ", ".join(f"{p} {version(p)}" for p in ("torch", "webdataset", "litdata", "mosaicml-streaming", "pillow"))
    return machine.describe(repo_root, peers)


# the runs --------------------------------------------------------------------------------


def loaders_of(with_reference: bool, variants: bool = False) -> dict[str, Callable[[SampleSet, Opts], Iterable]]:
    out: dict[str, Callable[[SampleSet, Opts], Iterable]] = {"datarepo": datarepo_loader}
    if variants:
        out["datarepo, verify=False"] = datarepo_unverified
        out["datarepo, samples one by one"] = datarepo_one_by_one
    out.update(PEERS)
    if with_reference:
        out["bytes in memory"] = in_memory
    return out


def results_of(runs: dict[str, list[Timing]], samples: int) -> list[Result]:
    kinds = {"datarepo": "ours", "datarepo, verify=False": "ours", "datarepo, samples one by one": "ours",
             "bytes in memory": "reference", "plain ustar loop, 1 core": "reference"}
    return [Result(name, times, samples, kinds.get(name, "peer")) for name, times in runs.items()]


def bench_raw(s: SampleSet, opts: Opts, repeats: int) -> None:
    log(f"raw bytes, warm cache: {repeats} rounds")
    warm(s.dirs.values())
    runs = in_turns(s, loaders_of(True, variants=True), opts, repeats, cold=False)
    runs["plain ustar loop, 1 core"] = ustar_runs(s, repeats)
    results = results_of(runs, len(s.samples))
    ours, peers = results[0], [r for r in results if r.kind == "peer"]
    wds, fastest = next(r for r in peers if r.name == "WebDataset"), max(peers, key=lambda r: r.best)
    cost = state_dict_cost(s, opts, repeats)
    print_table(
        f"raw bytes, warm page cache ({len(s.samples):,} samples, {s.total_bytes / 1e6:.0f} MB)",
        results,
        [
            (f"datarepo >= 2x the fastest peer: {ours.best / fastest.best:.2f}x", ours.best >= 2 * fastest.best),
            (f"datarepo >= 5x WebDataset: {ours.best / wds.best:.2f}x", ours.best >= 5 * wds.best),
            (f"state_dict() every step < 1% of a step, by the wall clock: {100 * cost.wall / cost.epoch:.3f}% "
             f"({1e6 * cost.wall / cost.steps:.0f} us a call, {1e3 * cost.epoch / cost.steps:.1f} ms a step, "
             f"state {cost.size} bytes as JSON)", cost.wall / cost.epoch < 0.01),
            (f"state_dict() every step < 1% of a step, by the calls' CPU time: {100 * cost.cpu / cost.epoch:.3f}% "
             f"({1e6 * cost.cpu / cost.steps:.0f} us a call)", cost.cpu / cost.epoch < 0.01),
        ],
        ["built in (s): " + ", ".join(f"{k} {v:.1f}" for k, v in s.build_s.items())] if s.build_s else [],
    )


def bench_cold(s: SampleSet, opts: Opts, repeats: int) -> None:
    log(f"raw bytes, cold cache: {repeats} rounds")
    runs = in_turns(s, loaders_of(False), opts, repeats, cold=True)
    results = results_of(runs, len(s.samples))
    ours, fastest = results[0], max((r for r in results if r.kind == "peer"), key=lambda r: r.best)
    print_table(
        f"raw bytes, cold page cache ({len(s.samples):,} samples)",
        results,
        [(f"datarepo >= 2x the fastest peer: {ours.best / fastest.best:.2f}x", ours.best >= 2 * fastest.best)],
        [f"before every epoch: sync, then {'echo 3 > ' + DROP_CACHES if can_drop_all() else 'posix_fadvise(POSIX_FADV_DONTNEED) on every file of the set'}"],
    )


def bench_jpeg(s: SampleSet, opts: Opts, repeats: int) -> None:
    log(f"JPEG decode + crop to {CROP}, warm cache: {repeats} rounds")
    compared = same_decode(s, opts)
    warm(s.dirs.values())
    runs = in_turns(s, loaders_of(True), opts, repeats, cold=False)
    results = results_of(runs, len(s.samples))
    ours, memory = results[0], results[-1]
    peers = [r for r in results if r.kind == "peer"]
    print_table(
        f"JPEGs decoded and cropped to {CROP} ({len(s.samples):,} samples, {s.total_bytes / 1e6:.0f} MB, warm cache)",
        results,
        [
            (f"datarepo within 1.15x of the bytes in memory: {memory.best / ours.best:.2f}x slower",
             memory.best / ours.best <= 1.15),
            (f"datarepo ahead of every peer: {ours.best / max(r.best for r in peers):.2f}x the fastest",
             all(ours.best > r.best for r in peers)),
        ],
        [f"every peer and the reference decode with one function (Pillow draft mode, resize, centre crop, uint8 CHW), "
         f"datarepo with decode={{'jpg': ['rgb8', {CROP}]}}: the same tensors (checked on {compared} images)"],
    )


def bench_plan(workdir: Path, count: int, repeats: int) -> None:
    path = workdir / f"scale-{count}"
    if not (path / ".datarepo").exists():
        shutil.rmtree(path, ignore_errors=True)
        log(f"scale: building a repository of {count} datums through repo.writer()")
        start = time.perf_counter()
        build_scale(path, count)
        log(f"scale: built in {time.perf_counter() - start:.1f} s")
    runs = plan_runs(path, repeats)
    if any(r["datums"] != count for r in runs):
        raise BadEpoch(f"planning: {[r['datums'] for r in runs]} datums, expected {count}")
    times = [r["seconds"] for r in runs]
    rss, growth = max(r["maxrss_mb"] for r in runs), max(r["growth_mb"] for r in runs)
    print(f"\n## planning an epoch over {count:,} datums (a fresh process each)\n")
    print(f"- `DatumDataset(repo, prefix='train/', shuffle=True, seed=0)` and `.order(0)`: best {min(times):.3f} s, "
          f"median {median(times):.3f} s, of " + ", ".join(f"{t:.3f}" for t in times))
    print(f"- peak RSS {growth:.0f} MB above the {min(r['before_mb'] for r in runs):.0f} MB resident before "
          f"(Python, torch, numpy, datarepo imported); {rss:.0f} MB for the whole process")
    print(f"- target: under 1 s and under 300 MB: {min(times):.3f} s, {growth:.0f} MB: "
          f"{'met' if min(times) < 1 and growth < 300 else 'MISSED'}")
    sys.stdout.flush()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50_000, help="raw samples (0 skips the raw-bytes tables)")
    parser.add_argument("--jpeg-samples", type=int, default=5_000, help="real JPEGs (0 skips the JPEG table)")
    parser.add_argument("--repeats", type=int, default=5, help="epochs of each loader, in turns")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--scale", type=int, nargs="?", const=1_000_000, default=0, metavar="DATUMS",
                        help="also plan an epoch over a repository of DATUMS (1,000,000) datums")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache table")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 3,000 samples, 300 JPEGs, 2 rounds, --scale 20000")
    parser.add_argument("--keep", type=Path, help="work here and keep the sets (a later run reuses them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plan-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.samples, args.jpeg_samples, args.repeats = min(args.samples, 3_000), min(args.jpeg_samples, 300), 2
        args.scale = args.scale or 20_000
    return args


def main() -> None:
    args = parse_args()
    if args.plan_child:
        print(json.dumps(plan_child(args.plan_child)))
        return
    repo_root = Path(__file__).resolve().parents[1]
    workdir = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="datarepo-loader-bench-"))
    if workdir.is_relative_to(repo_root):
        sys.exit(f"benchmark: the working directory must be outside the repository ({repo_root})")
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"working in {workdir}")
    print("# datarepo loader benchmark\n\n" + "\n".join(f"- {line}" for line in describe(repo_root)))
    print(f"- batch {args.batch}, {args.workers} DataLoader workers, {args.repeats} rounds, seed {args.seed}")
    try:
        if args.samples:
            raw = prepare(workdir, f"raw-{args.samples}", args.samples, make_samples, args.seed)
            bench_raw(raw, Opts(args.batch, args.workers, args.seed, decode=False), args.repeats)
            if not args.no_cold:
                bench_cold(raw, Opts(args.batch, args.workers, args.seed, decode=False), args.repeats)
        if args.jpeg_samples:
            jpegs = prepare(workdir, f"jpeg-{args.jpeg_samples}", args.jpeg_samples, make_jpegs, args.seed)
            bench_jpeg(jpegs, Opts(args.batch, args.workers, args.seed, decode=True), args.repeats)
        if args.scale:
            bench_plan(workdir, args.scale, args.repeats)
        print("\n- load average at end (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    except BadEpoch as e:
        sys.exit(f"benchmark: {e}")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
