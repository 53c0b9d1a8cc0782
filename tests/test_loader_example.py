"""scripts/train_example.py trains from a repository's shards, stops, resumes, records its
run and replays it to the same bytes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")

from loader_fixtures import jpeg, make_repo  # noqa: E402

import datarepo  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_example.py"


def test_the_training_example_resumes_and_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = {f"train/{i:03d}": {"jpg": jpeg((40, 36), (i * 5 % 256, 80, 160)), "cls": b"%d" % (i % 3)} for i in range(70)}
    make_repo(tmp_path, samples, shard_size=16384)
    spec = importlib.util.spec_from_file_location("train_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main([str(tmp_path), "--run", "demo-run"]) == 0
    out = capsys.readouterr().out
    assert "stopped after 2 steps" in out and "same samples in the same order, bit for bit" in out
    with datarepo.open(tmp_path) as repo:
        assert [r.name for r in datarepo.torch.runs.list_runs(repo)] == ["demo-run"]
