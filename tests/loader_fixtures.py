"""Repositories for the loader's tests, made through the public write API."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datarepo
from datarepo.repo import Repo


def make_repo(root: Path, samples: dict[str, dict[str, bytes]], shard_size: int = 8192, message: str = "samples") -> str:
    """A repository at ``root`` whose HEAD holds ``samples``; returns the commit."""
    Repo.init(root, shard_size=shard_size).close()
    return add_commit(root, samples, message)


def add_commit(root: Path, samples: dict[str, dict[str, bytes]], message: str) -> str:
    with datarepo.open(root) as repo, repo.lock:
        with repo.writer() as w:
            for key, members in samples.items():
                w.put(key, members)
        return repo.commit(w.entries, message)


def labelled(n: int, prefix: str = "train/", seed: int = 0) -> dict[str, dict[str, bytes]]:
    """``n`` samples of random bytes (100-700 of them) and a class label."""
    rng = random.Random(seed)
    return {f"{prefix}{i:04d}": {"bin": rng.randbytes(rng.randint(100, 700)), "cls": b"%d" % (i % 5)} for i in range(n)}


def jpeg(size: tuple[int, int], color: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def keys_of(batches: Iterable[dict[str, Any]]) -> list[str]:
    return [k for b in batches for k in b["__key__"]]


def indexed(batches: Iterable[dict[str, Any]]) -> list[tuple[int, str]]:
    """(global position, key) of every sample of some batches, in the order received."""
    return [(int(i), k) for b in batches for i, k in zip(b["__index__"].tolist(), b["__key__"])]


def loader(ds: Any, workers: int, batch_size: int | None = None, **kw: Any) -> Any:
    """A DataLoader over ``ds`` (batches from the dataset itself by default)."""
    import torch

    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, **kw)
