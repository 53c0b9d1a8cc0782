"""Each pipeline's last commit is found without walking the whole history every time:
lineage, ``pipelines`` and ``run`` after many commits read each commit once, and a
damaged or lost ``pipeline_heads`` table never changes an answer."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import datarepo
from datarepo.repo import Repo
from tests.conftest import Cli
from tests.test_pipelines import run, texts, write_pipeline  # noqa: F401 (texts: a fixture)

UPPER = """
from datarepo import pipeline

@pipeline(input="raw/**", output="up/", version="1")
def upper(datum):
    return {"txt": datum["txt"].upper()}
"""
REVERSE = """
from datarepo import pipeline

@pipeline(input="up/**", output="rev/", version="1")
def reverse(datum):
    return {"txt": datum["txt"][::-1]}
"""


def spout(root: Path, n: int) -> None:
    """``n`` commits of one new key each, as a spout makes them."""
    with datarepo.open(root) as repo, repo.lock:
        for i in range(n):
            with repo.writer() as w:
                w.put(f"spout/{i:04d}", {"txt": f"s{i}".encode()})
            repo.commit(w.entries, f"spout {i}")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The commits read (``Repo.read_commit``), in order."""
    seen: list[str] = []
    read = Repo.read_commit

    def counted(self: Repo, oid: str):  # type: ignore[no-untyped-def]
        seen.append(oid)
        return read(self, oid)

    monkeypatch.setattr(Repo, "read_commit", counted)
    return seen


def lineage(cli: Cli, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(cli("lineage", *args, "--json").output)


def test_queries_after_many_commits_read_each_commit_once(texts: Path, cli: Cli, reads: list[str]) -> None:  # noqa: F811
    write_pipeline(texts, "upper.py", UPPER)
    write_pipeline(texts, "reverse.py", REVERSE)
    run(cli)
    spout(texts, 40)
    with datarepo.open(texts) as repo:
        history = {repo.resolve(f"HEAD~{i}") for i in range(1, 40)}  # the spout's commits before its last
    reads.clear()
    first = lineage(cli, "rev/a/001")
    assert [n["key"] for n in first["links"]] == ["up/a/001"] and first["links"][0]["links"][0]["key"] == "raw/a/001"
    assert history <= set(reads)  # the first query walks the spout's commits back to the runs' commits
    again = {}
    for args in (("rev/a/001",), ("spout/0003",), ("raw/a/001", "--downstream")):
        reads.clear()
        again[args] = lineage(cli, *args)
        assert not history & set(reads), args  # the heads' commits, not the history
    assert again[("rev/a/001",)] == first
    assert again[("spout/0003",)]["links"] == []  # raw data
    down = again[("raw/a/001", "--downstream")]
    assert [n["key"] for n in down["links"]] == ["up/a/001"] and down["links"][0]["links"][0]["key"] == "rev/a/001"
    spout(texts, 5)  # five more: only they are walked
    reads.clear()
    assert run(cli) == {"upper": {"processed": 0, "reused": 40, "failed": 0, "deleted": 0},
                        "reverse": {"processed": 0, "reused": 40, "failed": 0, "deleted": 0}}
    assert not history & set(reads)


def answers(cli: Cli) -> tuple[object, ...]:
    return (
        lineage(cli, "rev/b/002"),
        lineage(cli, "raw/b/002", "--downstream"),
        lineage(cli, "spout/0001"),
        lineage(cli, "up/a/003@HEAD~4"),
        cli("pipelines").output,
    )


@pytest.mark.parametrize("damage", ["garbage", "not json", "wrong head", "other pipeline", "lost"])
def test_a_damaged_heads_table_never_changes_an_answer(texts: Path, cli: Cli, damage: str) -> None:  # noqa: F811
    write_pipeline(texts, "upper.py", UPPER)
    write_pipeline(texts, "reverse.py", REVERSE)
    run(cli)
    spout(texts, 6)
    before = answers(cli)  # (fills the table)
    db = sqlite3.connect(texts / ".datarepo" / "index.sqlite")
    rows = db.execute("SELECT head_of, heads FROM pipeline_heads").fetchall()
    assert len(rows) >= 8
    with datarepo.open(texts) as repo:
        spout_commit, raw_commit = repo.resolve("HEAD~2"), repo.resolve("HEAD~8")
    with db:
        if damage == "garbage":
            db.execute("UPDATE pipeline_heads SET heads=?", (b"\xff\x00",))
        elif damage == "not json":
            db.execute("UPDATE pipeline_heads SET heads='[[\"upper\", 3]]'")
        elif damage == "wrong head":  # well formed, naming a commit no pipeline made
            db.execute("UPDATE pipeline_heads SET heads=?", (json.dumps([["upper", spout_commit], ["reverse", raw_commit]]),))
        elif damage == "other pipeline":  # the heads of the two pipelines swapped
            for head_of, heads in rows:
                swapped = [[("reverse" if n == "upper" else "upper"), c] for n, c in json.loads(heads)]
                db.execute("UPDATE pipeline_heads SET heads=? WHERE head_of=?", (json.dumps(swapped), head_of))
        else:
            db.execute("DROP TABLE pipeline_heads")
    db.close()
    assert answers(cli) == before
    assert answers(cli) == before  # (and the table written again serves as well)
