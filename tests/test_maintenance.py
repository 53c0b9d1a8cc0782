"""fsck, gc and repack keep committed data: a lost shard index, shards replaced under a
reader, and the grace period before retired shards are deleted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import shard_file, write_samples

from datarepo.errors import ObjectNotFoundError
from datarepo.repo import Repo
from datarepo.store import datum_members


def _idx_files(repo: Repo) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted((repo.dotdir / "shards").glob("*/*.idx"))}


def _tar_files(repo: Repo) -> list[Path]:
    return sorted((repo.dotdir / "shards").glob("*/*.tar"))


def test_lost_indexes_are_a_problem_gc_keeps_the_shards_and_fsck_rebuilds_them(repo_with_commit, cli) -> None:
    repo, files = repo_with_commit
    before, tars = _idx_files(repo), _tar_files(repo)
    assert len(before) >= 2
    for path in before:
        path.unlink()
    result = cli("fsck", ok=False)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(tars) and all("has no index" in e and "--rebuild-index" in e for e in errors)
    assert "in no shard" not in result.output and "garbage" not in result.output
    for args in (["gc"], ["gc", "--prune=now"], ["repack", "--all"], ["gc", "--prune=now"]):
        cli(*args)
        assert _tar_files(repo) == tars  # every tar holds reachable datums: none is deleted
    assert cli("cat", "HEAD:train/cat/0000.jpg").stdout_bytes == files["train/cat/0000.jpg"]
    out = cli("fsck", "--rebuild-index").output
    assert out.count("rebuilt: the index of shard") == len(tars) and "0 problems" in out
    assert _idx_files(repo) == before  # the same bytes as written with the shards
    assert "0 problems" in cli("fsck").output and "rebuilt" not in cli("fsck").output


def test_a_tar_without_index_holding_nothing_reachable_is_garbage(repo_with_commit, cli) -> None:
    """What a writer killed between its tar and its ``.idx`` leaves."""
    repo, _ = repo_with_commit
    writer = repo.store.new_shard()
    writer.add("0" * 32, [("bin", b"never committed")])  # named as no real datum is: never reachable
    tmp, index = writer.finish()
    repo.store.put_shard(tmp, index)
    shard_file(repo, index.shard, ".idx").unlink()
    out = cli("fsck").output
    assert f"garbage: shards/{index.shard[:2]}/{index.shard[2:]}.tar" in out and "0 problems" in out
    gc = json.loads(cli("gc", "--json").output)
    assert gc["shards"] == 1 and gc["pruned"] == 0 and not repo.store.has_shard(index.shard)
    assert json.loads(cli("gc", "--json", "--prune=now").output)["pruned"] == 1
    assert list(repo.store.iter_retired()) == []


def test_a_reader_holding_old_locations_survives_repack_until_the_grace_period_ends(repo_with_commit, worktree: Path, cli) -> None:
    repo, files = repo_with_commit
    (worktree / "train/cat/0000.jpg").write_bytes(b"changed")  # a small shard of its own: repack merges it
    cli("add", ".")
    cli("commit", "-m", "second")
    reader = Repo.open(repo.worktree)
    entries = {e["datum"]: e["key"] for e in json.loads(cli("ls", "HEAD~1", "--json").output)}
    before = {datum: reader.locate(datum) for datum in entries}  # looked up before the repack
    out = json.loads(cli("repack", "--all", "--json").output)
    gone = {d: at for d, at in before.items() if not repo.store.has_shard(at[0])}
    assert out["shards_in"] >= 2 and gone
    for _ in range(2):
        for datum, (shard, loc) in gone.items():
            key = entries[datum]
            assert datum_members(reader.store, shard, loc, large=1 << 20)["jpg"] == files[f"{key}.jpg"]
        gc = json.loads(cli("gc", "--json").output)  # within the grace period: kept
        assert gc["pruned"] == 0
    retired = len(list(repo.store.iter_retired()))
    fsck = cli("fsck").output
    assert "0 problems" in fsck and f"{retired} retired shards" in fsck
    assert "would delete 0 objects, " in cli("gc", "-n", "--prune=now").output
    assert json.loads(cli("gc", "--json", "--prune=now").output)["pruned"] == retired
    shard, loc = next(iter(gone.values()))
    with pytest.raises(ObjectNotFoundError, match=f"shard not found: {shard}"):
        datum_members(Repo.open(repo.worktree).store, shard, loc, large=1 << 20)
    assert cli("cat", "HEAD~1:train/cat/0000.jpg").stdout_bytes == files["train/cat/0000.jpg"]
    assert "0 problems" in cli("fsck").output


def test_gc_never_prunes_a_retired_shard_that_is_the_only_copy_of_reachable_data(repo_with_commit, cli) -> None:
    repo, files = repo_with_commit
    shard = next(repo.store.iter_shards())
    repo.store.retire_shard(shard, now=0)  # as if retired long ago, but still needed
    cli("gc", "--prune=now")
    assert [r.shard for r in repo.store.iter_retired()] == [shard]


def test_export_during_repack_finds_every_shard(worktree: Path, cli, tmp_path: Path) -> None:
    """Real processes: commits and ``repack --all`` rewrite every shard again and again
    while ``export`` of a tag runs; every export succeeds and gives the files back."""
    files = write_samples(worktree, 300)
    cli("init", "--shard-size", "16K")
    cli("add", ".")
    cli("commit", "-m", "first")
    cli("tag", "v1")
    env = {**os.environ, "DATAREPO_LOCK_TIMEOUT": "60"}
    command = [sys.executable, "-c", "from datarepo.cli import run; run()"]
    stop = threading.Event()
    repacks: list[int] = []

    def repack_forever() -> None:
        i = 0
        while not stop.is_set():
            (worktree / "a" / f"{i}.bin").parent.mkdir(exist_ok=True)
            (worktree / "a" / f"{i}.bin").write_bytes(b"%d" % i)  # sorts first: every shard changes
            for args in (["add", "a"], ["commit", "-m", f"a{i}"], ["repack", "--all"]):
                repacks.append(subprocess.run([*command, *args], cwd=worktree, env=env, capture_output=True).returncode)
            i += 1

    thread = threading.Thread(target=repack_forever)
    thread.start()
    try:
        for i in range(6):
            out = tmp_path / f"out{i}"
            done = subprocess.run([*command, "export", "v1", str(out)], cwd=worktree, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    finally:
        stop.set()
        thread.join()
    assert repacks and set(repacks) == {0}


@pytest.mark.parametrize("age", ["soon", "-1", "1x", "inf", ""])
def test_a_bad_prune_age_is_one_clear_line(repo_with_commit, cli, age: str) -> None:
    result = cli("gc", f"--prune={age}", ok=False)
    assert result.exit_code == 2 and result.output.splitlines() == [
        f"Error: Invalid value for '--prune': {age!r} is not 'now' or an age such as 90, 30m, 2h, 14d"
    ]


def _one_error_line(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and all(w in lines[0] for w in words), result.output


def test_a_branch_naming_a_tree_is_a_problem_and_gc_keeps_the_history(repo_with_commit, worktree: Path, cli) -> None:
    repo, files = repo_with_commit
    (worktree / "train/cat/0000.jpg").write_bytes(b"second")
    cli("add", ".")
    cli("commit", "-m", "second")
    head = repo.head()
    ref = repo.dotdir / "refs/heads/main"
    ref.write_text(f"{repo.read_commit(head).tree}\n")  # a tree id copied over the branch
    for log in (repo.dotdir / "logs").rglob("*"):  # and no reflog to keep the commits
        if log.is_file():
            log.unlink()
    result = cli("fsck", ok=False)
    assert "refs/heads/main" in result.output and "not a commit" in result.output
    _one_error_line(cli("gc", "--prune=now", ok=False), "refs/heads/main", "not a commit")
    _one_error_line(cli("repack", "--all", ok=False), "refs/heads/main", "not a commit")
    ref.write_text(f"{head}\n")  # mended: the whole history is still there
    assert len(cli("log", "--oneline").output.splitlines()) == 2
    assert cli("cat", "HEAD~1:train/cat/0000.jpg").stdout_bytes == files["train/cat/0000.jpg"]


def test_repack_refuses_a_repository_whose_objects_it_cannot_read(repo_with_commit, worktree: Path, cli) -> None:
    repo, files = repo_with_commit
    (worktree / "train/cat/0000.jpg").write_bytes(b"second")
    cli("add", ".")
    cli("commit", "-m", "second")
    tree = repo.read_commit(repo.resolve("HEAD~1")).tree  # only the old commit reaches it
    old_tree = repo.dotdir / "objects" / tree[:2] / tree[2:]
    saved = old_tree.read_bytes()
    os.chmod(old_tree, 0o644)
    old_tree.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    tars = _tar_files(repo)
    _one_error_line(cli("repack", "--all", ok=False), "repack refuses to run on a damaged repository")
    assert _tar_files(repo) == tars and list(repo.store.iter_retired()) == []
    old_tree.write_bytes(saved)
    assert cli("cat", "HEAD~1:train/cat/0000.jpg").stdout_bytes == files["train/cat/0000.jpg"]
    assert "0 problems" in cli("fsck").output


@pytest.mark.parametrize("command", [["gc", "--prune=now"], ["repack", "--all"]])
def test_an_index_that_lists_too_few_datums_never_retires_the_rest(repo_with_commit, cli, command: list[str]) -> None:
    repo, files = repo_with_commit
    tars = _tar_files(repo)
    for idx in _idx_files(repo):  # every .idx now lists no datum (or one fewer) than its tar holds
        os.chmod(idx, 0o644)
        doc = json.loads(idx.read_bytes())
        doc["datums"] = doc["datums"][:-1] if command[0] == "repack" else []
        idx.write_text(json.dumps(doc))
    assert "in no shard" in cli("fsck", ok=False).output
    cli(*command)
    assert all(t.exists() for t in tars)
    assert "0 problems" in cli("fsck", "--rebuild-index").output
    for path, data in files.items():
        assert cli("cat", f"HEAD:{path}").stdout_bytes == data


def test_repack_salvages_the_datums_of_a_damaged_shard_that_still_read_whole(repo_with_commit, cli) -> None:
    repo, files = repo_with_commit
    tar = max(_tar_files(repo), key=lambda p: p.stat().st_size)
    datums = json.loads(tar.with_suffix(".idx").read_bytes())["datums"]  # [datum, offset, length, members]
    broken, at = datums[0][0], datums[0][3][0][1]  # a byte of the first datum's first member flipped
    os.chmod(tar, 0o644)
    data = bytearray(tar.read_bytes())
    data[at] ^= 1
    tar.write_bytes(bytes(data))
    assert f"is damaged and is the only copy of {len(datums)} reachable datums" in cli("fsck", ok=False).output
    keys = {path.split(".")[0] for path in files}
    repacked = cli("repack", "--all", ok=False)  # every datum but the broken one
    assert repacked.exit_code == 1 and f"({len(keys) - 1} datums" in repacked.output
    assert f"1 reachable datums did not read whole: kept shard {tar.parent.name}{tar.stem}" in repacked.output
    assert "is damaged and is the only copy of 1 reachable datums" in cli("fsck", ok=False).output
    lost = {e.key for e in repo.tree() if e.datum == broken}
    for path, content in files.items():
        if path.split(".")[0] not in lost:
            assert cli("cat", f"HEAD:{path}").stdout_bytes == content
    cli("add", ".")  # the files restore the broken datum: nothing needs the damaged shard then
    cli("repack", "--all")
    cli("gc", "--prune=now")
    assert "0 problems" in cli("fsck").output
    for path, content in files.items():
        assert cli("cat", f"HEAD:{path}").stdout_bytes == content


def test_repack_all_mends_a_shard_cut_short_that_no_fsck_has_marked(repo_with_commit, cli) -> None:
    repo, files = repo_with_commit
    tar = max(_tar_files(repo), key=lambda p: p.stat().st_size)
    os.chmod(tar, 0o644)
    with open(tar, "r+b") as f:  # the end-of-archive blocks lost: every datum still reads whole
        f.truncate(tar.stat().st_size - 1024)
    cli("repack", "--all")
    assert "0 problems" in cli("fsck").output
    for path, data in files.items():
        assert cli("cat", f"HEAD:{path}").stdout_bytes == data
