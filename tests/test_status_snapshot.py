"""The status snapshot: a status that reuses it must equal one computed from scratch."""

from __future__ import annotations

import contextlib
import json
import random
from array import array
from itertools import chain
from pathlib import Path

import pytest
from conftest import age, write_samples

from datarepo import snapshot
from datarepo import worktree as wt
from datarepo.errors import DirtyWorktreeError, InvalidInputError
from datarepo.porcelain import stage
from datarepo.porcelain.checkout import checkout
from datarepo.porcelain.history import commit
from datarepo.repo import Repo
from datarepo.statcols import StatColumns
from datarepo.worktree import Scan, scan


def _fresh(repo: Repo) -> stage.Status:
    """Status with the snapshot thrown away first."""
    with repo.index.transaction():
        repo.index.db.execute("DELETE FROM meta WHERE name=?", (snapshot.META_NAME,))
    return stage.status(repo)


def _as_dict(st: stage.Status) -> dict:
    return {"staged": st.staged.to_json(), "unstaged": st.unstaged.to_json(), "total": st.total.to_json()}


@pytest.fixture
def repo(worktree: Path) -> Repo:
    write_samples(worktree, 30)
    age(worktree, 60)
    repo = Repo.init(worktree)
    stage.add(repo, [str(worktree)])
    commit(repo, "first")
    return repo


def test_unchanged_tree_takes_the_fast_path(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    first = stage.status(repo)
    assert not first.total
    again = stage.status(repo)
    assert again.looked_at == 0 and _as_dict(again) == _as_dict(first)


def test_a_snapshot_whose_digest_no_longer_matches_is_saved_again(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """A digest that differs though no file did (one saved by an older datarepo, or a listing
    in another order) costs one comparison of the listings, not one every status."""
    first = stage.status(repo)
    head = json.loads(repo.index.get_meta(snapshot.META_NAME))
    with repo.index.transaction():
        repo.index.set_meta(snapshot.META_NAME, json.dumps({**head, "digest": "0" * 32}))
    assert _as_dict(stage.status(repo)) == _as_dict(first)
    monkeypatch.setattr(snapshot, "changed_keys", lambda *a: pytest.fail("the listing was compared again"))
    assert _as_dict(stage.status(repo)) == _as_dict(first)


def test_changed_keys_take_the_partial_path(repo: Repo, worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stage.status(repo)
    (worktree / "train/cat/0000.jpg").write_bytes(b"new")
    (worktree / "train/dog/0001.cls").unlink()
    (worktree / "train/dog/0003.jpg").unlink()
    (worktree / "train/dog/0003.cls").unlink()
    (worktree / "fresh.bin").write_bytes(b"added")
    st = stage.status(repo)
    assert st.looked_at == 4  # the keys of the changed files, not every key
    assert st.total.to_json() == {
        "added": ["fresh"],
        "modified": ["train/cat/0000", "train/dog/0001"],
        "deleted": ["train/dog/0003"],
    }


@pytest.mark.parametrize("damage", ["torn", "other", "missing"])
def test_a_listing_that_is_not_the_saved_one_is_not_used(repo: Repo, worktree: Path, damage: str) -> None:
    """The listing file is written without fsync: a torn one, or one another status
    replaced, must give the status computed from scratch, never a stale verdict."""
    stage.status(repo)
    listing = repo.dotdir / snapshot.LISTING_FILE
    (worktree / "train/cat/0000.jpg").write_bytes(b"new")
    if damage == "torn":
        listing.write_bytes(listing.read_bytes()[:-24])
    elif damage == "other":  # well formed, but of the tree as it is now: trusted, it would hide the change
        names, stats = scan(worktree).packed
        listing.write_bytes(len(names).to_bytes(8, "little") + names + stats)
    else:
        listing.unlink()
    assert _as_dict(stage.status(repo)) == _as_dict(_fresh(repo))
    assert stage.status(repo).total.modified == ["train/cat/0000"]


def test_add_keeps_the_snapshot_usable(repo: Repo, worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stage.status(repo)
    (worktree / "train/cat/0000.jpg").write_bytes(b"new")
    age(worktree, 60, only=[worktree / "train/cat/0000.jpg"])
    added = stage.add(repo, [str(worktree)])
    assert added.changes.modified == ["train/cat/0000"] and added.looked_at == 1
    st = stage.status(repo)
    assert st.looked_at == 0 and st.staged.modified == ["train/cat/0000"] and not st.unstaged


def test_add_of_some_paths_keeps_the_snapshot_usable(repo: Repo, worktree: Path) -> None:
    """``add PATH`` in a large tree must not leave the next status to look at every key:
    it looks again only at the keys the add chose and at those whose files changed."""
    stage.status(repo)
    chosen, left = worktree / "train/cat/0000.jpg", worktree / "train/dog/0001.jpg"
    for p in (chosen, left):
        p.write_bytes(b"new")
    age(worktree, 60, only=[chosen, left])
    added = stage.add(repo, [str(chosen)])
    assert added.changes.modified == ["train/cat/0000"]
    carried = _carried_status(repo, looked_at=2)
    assert carried["staged"]["modified"] == ["train/cat/0000"] and carried["unstaged"]["modified"] == ["train/dog/0001"]
    assert stage.status(repo).looked_at == 0


@pytest.mark.parametrize("cached", [False, True])
def test_rm_keeps_the_snapshot_usable(repo: Repo, worktree: Path, cached: bool) -> None:
    (worktree / "train/dog/0001.jpg").write_bytes(b"dirty, not removed")
    age(worktree, 60, only=[worktree / "train/dog/0001.jpg"])
    stage.status(repo)
    removed = stage.rm(repo, [str(worktree / "train/cat")], cached=cached)
    assert len(removed) == 15
    carried = _carried_status(repo, looked_at=15)  # the keys it removed, not every key
    assert carried["staged"]["deleted"] == removed and carried["unstaged"]["modified"] == ["train/dog/0001"]
    assert carried["unstaged"]["added"] == (removed if cached else [])


def test_a_first_add_leaves_a_snapshot_the_next_status_uses(worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first add leaves a snapshot and a stat cache the next status uses as they are:
    nothing looked at again, nothing read, and the same verdict as from scratch."""
    write_samples(worktree, 30)
    age(worktree, 60)
    repo = Repo.init(worktree)
    assert stage.add(repo, [str(worktree)]).hashed == 60
    st = stage.status(repo)
    assert st.looked_at == 0 and len(st.staged.added) == 30 and not st.unstaged
    assert stage.add(Repo.open(worktree), [str(worktree)]).hashed == 0  # the stat cache holds every file
    assert _as_dict(stage.status(repo)) == _as_dict(_fresh(repo))


def test_a_listing_is_filled_from_the_stats_files_were_read_at(tmp_path: Path) -> None:
    """A scan that stat'ed nothing (a first add's) takes the stats of the files read from the
    hasher's columns, as they were when read, and stats the others by path; a file gone
    since the scan leaves the listing, which is then a stat'ing scan's."""
    names = [f"d{i % 3}/{i:02d}.{ext}" for i in range(12) for ext in ("jpg", "cls")] + ["README"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    found = scan(tmp_path, with_stats=False)
    (tmp_path / "d1" / "04.cls").unlink()
    full = scan(tmp_path)
    read = sorted(n for n in full.names if n.endswith(".jpg"))
    here, there = read[::2], read[1::2]  # as if read by this process and by a helper
    as_read = {n: (i, 2 * i, 3 * i) for i, n in enumerate(read)}  # (not what a stat now gives)
    found.fill_stats(tmp_path, [(part, array("q", chain.from_iterable(map(as_read.get, part)))) for part in (here, there)])
    assert found.names == full.names and len(found.names) == len(names) - 1
    assert found.files == {**full.files, **as_read}
    assert found.packed == StatColumns.of(found.files).packed()
    expected = {"d1/04.jpg": as_read["d1/04.jpg"], "d2/05.jpg": as_read["d2/05.jpg"], "d2/05.cls": full.files["d2/05.cls"]}
    assert found.files_of(["d1/04", "d2/05"], "wds") == expected


def test_staging_and_commits_invalidate_the_snapshot(repo: Repo, worktree: Path) -> None:
    (worktree / "train/cat/0000.jpg").write_bytes(b"new")
    assert stage.status(repo).unstaged.modified == ["train/cat/0000"]
    stage.add(repo, [str(worktree)])
    st = stage.status(repo)
    assert st.staged.modified == ["train/cat/0000"] and not st.unstaged
    commit(repo, "second")
    assert not stage.status(repo).total and not stage.status(repo).staged


@pytest.mark.parametrize("seed", range(10))
def test_random_edits_agree_with_a_fresh_status(repo: Repo, worktree: Path, seed: int) -> None:
    rng = random.Random(seed)
    for step in range(25):
        files = sorted(p for p in worktree.rglob("*") if p.is_file() and ".datarepo" not in p.parts)
        action = rng.choice(
            ["modify", "modify", "delete", "create", "add", "add-part", "add-file", "rm", "rm-cached", "commit", "touch",
             "status", "checkout"]
        )
        if action == "modify":
            p = rng.choice(files)
            p.write_bytes(rng.randbytes(rng.randint(0, 50)))
            age(worktree, rng.choice([0, 60]), only=[p])
        elif action == "delete" and len(files) > 4:
            rng.choice(files).unlink()
        elif action == "create":
            p = worktree / f"new/{rng.randint(0, 5)}.{rng.choice(['jpg', 'cls'])}"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(rng.randbytes(8))
            age(worktree, rng.choice([0, 60]), only=[p])
        elif action == "add":
            stage.add(repo, [str(worktree)])
        elif action == "add-part" and (worktree / "train/cat").is_dir():
            stage.add(repo, [str(worktree / "train/cat")])
        elif action == "add-file":
            stage.add(repo, [str(rng.choice(files))])
        elif action in ("rm", "rm-cached") and (tracked := sorted(stage.tracked(repo))):
            with contextlib.suppress(InvalidInputError):  # (uncommitted changes in the way)
                stage.rm(repo, [str(worktree / rng.choice(tracked))], cached=action == "rm-cached")
        elif action == "commit" and repo.index.staging.changes():
            commit(repo, f"step {step}")
        elif action == "touch":
            age(worktree, 60, only=[rng.choice(files)])
        elif action == "checkout":
            target = rng.choice(["main", "HEAD~1"]) if repo.read_commit(repo.head()).parents else "main"
            with contextlib.suppress(DirtyWorktreeError):
                checkout(repo, target)
        reused = _as_dict(stage.status(repo))
        assert reused == _as_dict(_fresh(repo)), f"seed {seed} step {step} after {action}"


def _carried_status(repo: Repo, looked_at: int) -> dict:
    """A status that starts from the carried snapshot (looking at ``looked_at`` keys again,
    not every key), checked against a status computed from scratch."""
    st = stage.status(repo)
    assert st.looked_at == looked_at
    carried = _as_dict(st)
    assert carried == _as_dict(_fresh(repo))
    return carried


def test_commit_carries_the_snapshot(repo: Repo, worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (worktree / "train/cat/0000.jpg").write_bytes(b"staged then committed")
    (worktree / "train/dog/0001.jpg").write_bytes(b"left unstaged")
    age(worktree, 60, only=[worktree / "train/cat/0000.jpg", worktree / "train/dog/0001.jpg"])
    stage.add(repo, [str(worktree / "train/cat")])
    stage.status(repo)
    with repo.index.transaction():  # the commit does not read the staged part (after a first add, every key)
        repo.index.set_meta(f"{snapshot.META_NAME} staged", "not JSON")
    commit(repo, "second")
    carried = _carried_status(repo, looked_at=0)
    assert carried["total"]["modified"] == ["train/dog/0001"] and not carried["staged"]["modified"]


def test_checkout_carries_the_snapshot(repo: Repo, worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (worktree / "train/cat/0000.jpg").write_bytes(b"second")
    stage.add(repo, [str(worktree)])
    commit(repo, "second")
    (worktree / "train/dog/0001.jpg").write_bytes(b"dirty, not in the way")
    (worktree / "train/dog/0003.cls").write_bytes(b"staged, not in the way")
    age(worktree, 60, only=[worktree / "train/dog/0001.jpg", worktree / "train/dog/0003.cls"])
    stage.add(repo, [str(worktree / "train/dog/0003.cls")])
    stage.status(repo)
    checkout(repo, "HEAD~1")
    carried = _carried_status(repo, looked_at=1)  # the key the checkout moved
    assert carried["total"]["modified"] == ["train/dog/0001", "train/dog/0003"]
    assert carried["staged"]["modified"] == ["train/dog/0003"]


@pytest.mark.parametrize("few_keys", [0, 1_000])
@pytest.mark.parametrize("grouping", ["wds", "file"])
def test_the_files_of_some_keys_are_those_a_full_grouping_gives_them(
    tmp_path: Path, grouping: str, few_keys: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partial path finds a key's files by searching its directory's names, or, for many
    keys in one directory, by grouping them: either way it must find exactly the files a
    grouping of the whole listing gives the key, however names nest."""
    monkeypatch.setattr(wt, "FEW_KEYS", few_keys)
    names = ["x.jpg", "x.cls", "xy.jpg", "a/x.jpg", "a/x.seg.png", "a/x..jpg", "a/xx.jpg", "a/x.d/x.jpg",
             "a/x.d/y.cls", "a/b/x.jpg", "a/.hidden", "a/noext", "b.c/x.jpg", "b.c/x.d.e"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "a" / "linked.jpg").symlink_to(tmp_path / "x.jpg")
    found = scan(tmp_path, follow=True)
    split = {p: s for p in found.names if (s := wt.split_path(p, grouping)) is not None}
    every_key = sorted({s[0] for s in split.values()})
    rng = random.Random(7)
    for keys in [[k] for k in every_key] + [rng.sample(every_key, 4) for _ in range(20)] + [every_key]:
        expected = {p: found.files[p] for p, s in split.items() if s[0] in keys}
        assert Scan(found.names, found.stats, spans=found.spans).files_of(keys, grouping) == expected, keys


def test_grouping_gives_each_file_the_key_and_extension_split_path_gives_it() -> None:
    """:func:`group` cuts most paths at their first dot in one pass; every path, in any
    order, must land where :func:`split_path` puts it, or be noted as skipped."""
    names = ["a.jpg", "a.cls", "a.d/x.txt", "a.d/.hidden", ".hidden", "b.", "noext", "dir/noext", "x/y.tar.gz",
             "x/y.json", "a-x.cls", "d.e/f.g/h.i.j", "d.e/f.g/h", "./a", "z/.a.b", "é/ü.t", "a.b.c", "a.d/a.jpg"]
    rng = random.Random(3)
    for _ in range(500):
        files = rng.sample(names, rng.randint(0, len(names)))
        if rng.random() < 0.5:
            files.sort()
        expected: dict[str, dict[str, str]] = {}
        for rel in files:
            if (split := wt.split_path(rel, "wds")) is not None:
                expected.setdefault(split[0], {})[split[1]] = rel
        notes: list[str] = []
        assert wt.group(files, "wds", notes) == expected, files
        assert len(notes) == sum(wt.split_path(rel, "wds") is None for rel in files)


def test_a_file_a_checkout_wrote_and_the_user_deleted_is_seen_deleted(worktree: Path, cli) -> None:
    """The snapshot a checkout carries over was listed before the checkout: a file it then
    wrote, deleted before the next status, is in neither listing nor scan, yet is looked at."""
    (worktree / "a.txt").write_text("a")
    (worktree / "b.txt").write_text("b")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "one")
    (worktree / "b.txt").unlink()
    (worktree / "c.txt").write_text("c")
    cli("add", ".")
    cli("commit", "-m", "two")
    age(worktree)
    assert "work tree clean" in cli("status").output
    cli("checkout", "-f", "HEAD~1")
    cli("checkout", "main")
    (worktree / "c.txt").unlink()
    assert "deleted:  c" in cli("status").output
