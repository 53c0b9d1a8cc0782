"""Two real processes training with DistributedDataParallel over gloo: the dataset takes
its rank and world size from torch.distributed, and between them the ranks see every
sample once, in as many steps each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from loader_fixtures import labelled, make_repo  # noqa: E402

N = 101  # odd: one rank's last sample is padding


def train(rank: int, repo: str, rendezvous: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from datarepo.torch import DatumDataset

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        ds = DatumDataset(repo, prefix="train/", decode={"cls": "int"}, batch_size=8, seed=3)
        model = DistributedDataParallel(torch.nn.Linear(1, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        seen, steps = [], 0
        for batch in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1):
            loss = model(batch["cls"].float().unsqueeze(1)).pow(2).mean()
            opt.zero_grad()
            loss.backward()  # an all-reduce: a rank with a batch more would wait here forever
            opt.step()
            seen += [(int(i), k) for i, k in zip(batch["__index__"].tolist(), batch["__key__"])]
            steps += 1
        everything: list[object] = [None, None]
        dist.all_gather_object(everything, {"rank": ds.rank, "world": ds.world_size, "steps": steps, "seen": seen})
        if rank == 0:
            Path(out).write_text(json.dumps(everything))
    finally:
        dist.destroy_process_group()


def test_two_ddp_processes_see_every_sample_once(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", labelled(N))
    out = tmp_path / "seen.json"
    args = (str(tmp_path / "repo"), str(tmp_path / "rdzv"), str(out))
    torch.multiprocessing.start_processes(train, args=args, nprocs=2, join=True, start_method="fork")
    ranks = json.loads(out.read_text())
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 7
    positions = [p for r in ranks for p, _ in r["seen"]]
    assert sorted(positions) == list(range(N + 1))  # one padded position, none twice
    keys = [k for r in ranks for p, k in r["seen"] if p < N]
    assert sorted(keys) == sorted(labelled(N))  # every sample once
