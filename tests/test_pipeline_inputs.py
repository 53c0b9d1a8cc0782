"""Pipeline inputs and transforms: combinations, several outputs, filters, setup, commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import datarepo
from tests.conftest import Cli
from tests.test_pipelines import commit_raw, run, write_pipeline


def keys(root: Path, prefix: str) -> dict[str, dict[str, bytes]]:
    with datarepo.open(root) as repo:
        return {e.key: repo.read(e.datum) for e in repo.tree().select(prefix=prefix)}


@pytest.fixture
def pairs(worktree: Path, cli: Cli) -> Path:
    """raw/img/<n>.txt and raw/lab/<n>.txt for n in 0..3, and raw/lab/9.txt alone."""
    cli("init", "--shard-size", "16K")
    for n in range(4):
        for kind in ("img", "lab"):
            path = worktree / "raw" / kind / f"{n}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{kind}{n}")
    (worktree / "raw/lab/9.txt").write_text("lab9")
    commit_raw(cli)
    return worktree


def test_join_on_a_key_pattern(pairs: Path, cli: Cli) -> None:
    write_pipeline(pairs, "pair.py", '''
        from datarepo import pipeline

        @pipeline(input=pipeline.join("raw/img/*", "raw/lab/*", on=r"[^/]+$"), output="pairs/")
        def pair(datums):
            img, lab = datums
            return {"txt": img["txt"] + b"+" + lab["txt"]}
    ''')
    assert run(cli)["pair"]["processed"] == 4
    assert keys(pairs, "pairs/") == {f"pairs/{n}": {"txt": f"img{n}+lab{n}".encode()} for n in range(4)}
    (pairs / "raw/lab/2.txt").write_text("LAB2")
    commit_raw(cli, "one label")
    assert run(cli)["pair"] == {"processed": 1, "reused": 3, "failed": 0, "deleted": 0}
    assert keys(pairs, "pairs/2")["pairs/2"] == {"txt": b"img2+LAB2"}
    up = json.loads(cli("lineage", "pairs/2", "--json").output)
    assert sorted(link["key"] for link in up["links"]) == ["raw/img/2", "raw/lab/2"]


def test_cross_union_and_group(pairs: Path, cli: Cli) -> None:
    write_pipeline(pairs, "combos.py", '''
        from datarepo import pipeline

        @pipeline(input=pipeline.cross("raw/img/[01]", "raw/lab/[01]"), output="cross/")
        def crossed(datums):
            return {"txt": b"".join(d["txt"] for d in datums)}

        @pipeline(input=pipeline.union("raw/img/*", "raw/lab/9"), output="union/")
        def unioned(datum):
            return {"txt": datum["__key__"]}

        @pipeline(input=pipeline.group("raw/**", by=r"raw/(\\w+)/"), output="group/")
        def grouped(datums):
            return {"json": str(len(datums)), "txt": b",".join(d["txt"] for d in datums)}
    ''')
    out = run(cli)
    assert (out["crossed"]["processed"], out["unioned"]["processed"], out["grouped"]["processed"]) == (4, 5, 2)
    assert keys(pairs, "cross/")["cross/1/0"] == {"txt": b"img1lab0"}
    assert len(keys(pairs, "cross/")) == 4
    assert sorted(keys(pairs, "union/")) == ["union/img/0", "union/img/1", "union/img/2", "union/img/3", "union/lab/9"]
    assert keys(pairs, "group/") == {"group/img": {"json": b"4", "txt": b"img0,img1,img2,img3"},
                                     "group/lab": {"json": b"5", "txt": b"lab0,lab1,lab2,lab3,lab9"}}
    (pairs / "raw/lab/9.txt").unlink()
    commit_raw(cli, "drop lab 9")
    out = run(cli)
    assert out["unioned"] == {"processed": 0, "reused": 4, "failed": 0, "deleted": 1}
    assert out["grouped"] == {"processed": 1, "reused": 1, "failed": 0, "deleted": 0}
    assert out["crossed"]["processed"] == 0


def test_several_outputs_filters_and_reasons(pairs: Path, cli: Cli) -> None:
    write_pipeline(pairs, "split.py", '''
        from datarepo import pipeline

        @pipeline(input="raw/img/*", output="parts/")
        def split(datum):
            n = int(datum["txt"][-1:])
            if n == 3:
                return pipeline.Drop("three is skipped")
            if n == 2:
                return None
            return [("head", {"txt": datum["txt"][:3]}), ("tail", {"txt": datum["txt"][3:]})]
    ''')
    assert run(cli)["split"] == {"processed": 4, "reused": 0, "failed": 0, "deleted": 0, "dropped": 2}
    assert keys(pairs, "parts/") == {"parts/0/head": {"txt": b"img"}, "parts/0/tail": {"txt": b"0"},
                                     "parts/1/head": {"txt": b"img"}, "parts/1/tail": {"txt": b"1"}}
    down = json.loads(cli("lineage", "raw/img/3", "--downstream", "--json").output)
    assert down["links"][0]["dropped"] == "three is skipped"
    up = json.loads(cli("lineage", "parts/1/tail", "--json").output)
    assert up["links"][0]["key"] == "raw/img/1"


def test_setup_runs_once_per_worker_process(pairs: Path, cli: Cli, tmp_path: Path) -> None:
    marks = tmp_path / "setups"
    marks.mkdir()
    write_pipeline(pairs, "model.py", f'''
        import os
        from datarepo import pipeline

        def load():
            open(os.path.join({str(marks)!r}, str(os.getpid())), "a").write("x")
            return {{"model": b"M"}}

        @pipeline(input="raw/**", output="scored/", setup=load, batch_size=1)
        def score(datum, model):
            return {{"txt": model + datum["txt"]}}
    ''')
    assert run(cli, "--workers", "2")["score"]["processed"] == 9
    calls = [p.read_text() for p in marks.iterdir()]
    assert 1 <= len(calls) <= 2 and all(c == "x" for c in calls)  # 9 batches, one setup a process
    assert keys(pairs, "scored/lab/9") == {"scored/lab/9": {"txt": b"Mlab9"}}


def test_command_transform(pairs: Path, cli: Cli) -> None:
    (pairs / "pipelines").mkdir()
    (pairs / "pipelines/_shout.py").write_text(
        "import os, sys, pathlib\n"
        "inp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
        "for f in inp.iterdir():\n"
        "    (out / f.name).write_bytes(f.read_bytes().upper() + os.environ['DATAREPO_PARAM_MARK'].encode())\n"
    )
    (pairs / "pipelines/shout.toml").write_text(
        '[pipeline.shout]\ncommand = ["{python}", "_shout.py", "{in}", "{out}"]\n'
        'input = "raw/img/*"\noutput = "loud/"\nparams = {mark = "!"}\n'
    )
    assert run(cli)["shout"]["processed"] == 4
    assert keys(pairs, "loud/1") == {"loud/1": {"txt": b"IMG1!"}}
    assert run(cli)["shout"]["processed"] == 0
    (pairs / "pipelines/_shout.py").write_text((pairs / "pipelines/_shout.py").read_text().replace(".upper()", ""))
    assert "would process 4 (4 code)" in cli("run", "--dry-run").output  # the script is in the fingerprint


def test_input_at_a_fixed_revision(pairs: Path, cli: Cli) -> None:
    cli("tag", "v1")
    (pairs / "raw/img/0.txt").write_text("newer")
    commit_raw(cli, "newer")
    write_pipeline(pairs, "old.py", '''
        from datarepo import pipeline

        @pipeline(input=pipeline.source("raw/img/*", rev="v1"), output="old/")
        def old(datum):
            return {"txt": datum["txt"]}
    ''')
    run(cli)
    assert keys(pairs, "old/0") == {"old/0": {"txt": b"img0"}}
