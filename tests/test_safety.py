"""Crashes and concurrent writers: the repository stays valid and no update is lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from datarepo.errors import RefConflictError
from datarepo.porcelain.history import log
from datarepo.porcelain.maintenance import fsck
from datarepo.repo import Repo
from datarepo.tree import iter_tree

# A child that commits forever: iteration i rewrites 3 of 12 keys with content
# that is a pure function of (i, key), then prints i once the commit returned.
COMMITTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from datarepo.repo import Repo
    from datarepo.porcelain.stage import add
    from datarepo.porcelain.history import commit
    from datarepo.porcelain.maintenance import gc, repack

    root = Path(sys.argv[1])
    start = int(sys.argv[2])
    maintain = sys.argv[3] == "maintain"
    repo = Repo.open(root)
    for i in range(start, start + 10_000):
        for k in (i % 12, (i * 5) % 12, (i * 7 + 3) % 12):
            (root / f"k{k:02d}.bin").write_bytes(bytes([i % 251]) * (1000 + 97 * k + i % 50))
        add(repo, [str(root)])
        commit(repo, f"i={i}")
        print(i, flush=True)
        if maintain and i % 3 == 0:
            repack(repo, all_shards=True)
            gc(repo)
    """
)


def expected_content(n: int) -> dict[str, bytes]:
    """What keys hold after the commit of iteration n."""
    content: dict[str, bytes] = {}
    for i in range(n + 1):
        for k in (i % 12, (i * 5) % 12, (i * 7 + 3) % 12):
            content[f"k{k:02d}"] = bytes([i % 251]) * (1000 + 97 * k + i % 50)
    return content


@pytest.mark.parametrize("mode", ["commit", "maintain", "split"])
def test_sigkill_while_committing_never_breaks_the_repository(tmp_path: Path, mode: str) -> None:
    """SIGKILL at random points of commits (and, in "maintain", of repack --all and gc;
    in "split", every add stores its datums over a pool of worker processes)."""
    root = tmp_path / "w"
    root.mkdir()
    repo = Repo.init(root, shard_size=8192)
    if mode == "maintain":  # gc may then delete whatever no ref reaches right away
        repo.config = replace(repo.config, reflog_expire_days=0)
        repo.config.save(repo.dotdir / "config.toml")
    rng = random.Random(1)
    env = {**os.environ, "DATAREPO_LOCK_TIMEOUT": "2"}
    if mode == "split":
        env |= {"DATAREPO_WORKERS": "2", "DATAREPO_PARALLEL_MIN_BYTES": "0"}
    next_i = 0
    for _ in range(30):
        proc = subprocess.Popen([sys.executable, "-c", COMMITTER, str(root), str(next_i), mode], env=env,
                                stdout=subprocess.PIPE, text=True)
        # Killed once it has committed a few times (counted, not timed: a busy machine only
        # slows the test down), at a random point of what it does next.
        wanted = rng.randint(1, 3)
        done: list[int] = []
        while len(done) < wanted and (line := proc.stdout.readline()):
            done.append(int(line))
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        done += [int(x) for x in out.split()]
        assert len(done) >= wanted, f"the child ended before it committed {wanted} times"
        repo = Repo.open(root)
        result = fsck(repo)
        assert result.problems == [], result.problems
        head = repo.head()
        if head is None:
            assert not done
            continue
        n = int(repo.read_commit(head).message.removeprefix("i="))
        assert not done or n in (done[-1], done[-1] + 1)  # killed after the ref moved, before the print
        got = {e.key: repo.read(e.datum, verify=True)["bin"] for e in iter_tree(repo.store, repo.read_commit(head).tree)}
        assert got == expected_content(n)
        assert [c.message for _, c in log(repo)] == [f"i={i}" for i in range(n, -1, -1)]
        repo.close()
        next_i = n + 1
    assert next_i >= 30  # each child committed at least once


CONCURRENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from datarepo.repo import Repo
    from datarepo.porcelain.ingest import ingest

    repo, src, who = Repo.open(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    for round in range(4):
        (src / f"{who}.txt").write_text(f"{who} round {round}")
        ingest(repo, str(src), prefix=f"w/{who}", message=f"{who} {round}")
    """
)


def test_concurrent_committers_lose_no_update(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "bare", bare=True)
    writers = [f"p{i}" for i in range(4)]
    procs = []
    for who in writers:
        src = tmp_path / who
        src.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", CONCURRENT, str(repo.dotdir), str(src), who]))
    assert all(p.wait(timeout=120) == 0 for p in procs)
    repo = Repo.open(repo.dotdir)
    entries = {e.key: repo.read(e.datum, verify=True)["txt"] for e in iter_tree(repo.store, repo.read_commit(repo.head()).tree)}
    assert entries == {f"w/{who}/{who}": f"{who} round 3".encode() for who in writers}
    messages = sorted(c.message for _, c in log(repo))
    assert messages == sorted(f"{who} {r}" for who in writers for r in range(4))
    assert fsck(repo).problems == []


def test_ref_update_is_compare_and_swap(repo_with_commit) -> None:
    repo, _ = repo_with_commit
    head = repo.head()
    other = repo.read_commit(head).tree
    with pytest.raises(RefConflictError):
        repo.refs.update("refs/heads/main", other, expected=other)
    assert repo.head() == head
    with pytest.raises(RefConflictError):
        repo.refs.update("refs/heads/new", head, expected=head)
    repo.refs.update("refs/heads/new", head, expected=None)
    assert repo.refs.read("refs/heads/new") == head


def test_a_killed_writer_leaves_no_lock_behind(repo_with_commit, tmp_path: Path) -> None:
    repo, _ = repo_with_commit
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from datarepo.repo import Repo; r=Repo.open(sys.argv[1]);"
         " r.lock.acquire(); print('locked', flush=True); time.sleep(60)", str(repo.worktree)],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    repo.lock.timeout = 0.3
    from datarepo.errors import LockedError

    with pytest.raises(LockedError):
        repo.lock.acquire()
    holder.kill()
    holder.wait()
    repo.lock.acquire()
    repo.lock.release()


def test_large_file_is_streamed(worktree: Path, cli) -> None:
    """A member bigger than the read-whole limit goes through the streaming path."""
    from datarepo import shards

    big = worktree / "big.bin"
    with open(big, "wb") as f:
        for i in range(40):
            f.write(bytes([i]) * (1 << 20))
    assert big.stat().st_size > shards.LARGE_FILE
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "big")
    repo = Repo.open(worktree)
    (entry,) = list(iter_tree(repo.store, repo.read_commit(repo.head()).tree))
    assert entry.size == 40 << 20
    assert repo.read(entry.datum, verify=True)["bin"] == big.read_bytes()
    assert json.loads(cli("status", "--json").output)["modified"] == []


@pytest.mark.parametrize("verb", ["commit", "ingest"])
def test_every_shard_is_published_before_the_ref_moves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verb: str) -> None:
    """DESIGN §4's write order: a crash right after the ref update must find every datum stored."""
    from datarepo.porcelain.history import commit
    from datarepo.porcelain.ingest import ingest
    from datarepo.porcelain.stage import add
    from datarepo.refs import Refs

    root = tmp_path / "w"
    src = tmp_path / "src"
    for d in (root, src):
        d.mkdir()
        for i in range(43):  # not a multiple of the 5 datums a shard holds: the last shard is partial
            (d / f"{i:03d}.bin").write_bytes(bytes([i]) * 3000)
    repo = Repo.init(root, shard_size=16384)
    seen = []
    real_update = Refs.update

    def checked_update(self, name, new, *args, **kwargs):
        if new is not None:
            tree = Repo.open(root).store.get_object(Repo.open(root).store.get_object(new).tree)
            unstored = [e.key for p in tree.pages for e in repo.store.get_object(p.page).entries
                        if Repo.open(root).index.locations.locate(e.datum) is None]
            seen.append((unstored, sorted(p.name for p in (repo.dotdir / "shards").glob(".tmp-*"))))
        return real_update(self, name, new, *args, **kwargs)

    monkeypatch.setattr(Refs, "update", checked_update)
    if verb == "commit":
        add(repo, [str(root)])
        commit(repo, "x")
    else:
        ingest(repo, str(src), "src")
    assert seen == [([], [])]


def test_large_tar_member_is_streamed_on_ingest(tmp_path: Path, worktree: Path, cli) -> None:
    import io
    import tarfile

    from datarepo import shards

    big = bytes(range(256)) * ((shards.LARGE_FILE >> 8) + 4096)
    with tarfile.open(tmp_path / "big.tar", "w") as tf:
        for name, data in (("s/0.bin", big), ("s/0.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    cli("init")
    cli("ingest", str(tmp_path / "big.tar"), "--prefix", "big")
    assert cli("cat", "HEAD:big/s/0.bin").stdout_bytes == big
    assert "0 problems" in cli("fsck").output


def test_a_temporary_file_gets_a_name_no_file_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stat

    from datarepo import fsutil

    fd, first = fsutil.make_temp(tmp_path, ".tar")
    os.write(fd, b"kept")
    os.close(fd)
    assert first.name.startswith(fsutil.TMP_PREFIX) and first.suffix == ".tar"
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    draws = iter([bytes.fromhex(first.name[len(fsutil.TMP_PREFIX) : -4]), b"\x01" * 8])  # the first draw is taken
    monkeypatch.setattr(fsutil.os, "urandom", lambda n: next(draws))
    fd, second = fsutil.make_temp(tmp_path, ".tar")
    os.close(fd)
    assert second != first and first.read_bytes() == b"kept"


def test_gc_removes_what_killed_writers_left_beside_refs_and_caches(repo_with_commit, cli) -> None:
    """A writer killed between writing a temporary file and renaming it leaves the file: a
    ref's (under ``refs/``) or a cache's (``status`` writes its listing at the top, without
    the lock, so a fresh one there may be a live writer's and is left alone)."""
    import time

    repo, _ = repo_with_commit
    left = [repo.dotdir / "refs/heads/.tmp-0123456789abcdef", repo.dotdir / ".tmp-fedcba9876543210"]
    live = repo.dotdir / ".tmp-00000000000000aa"
    for path in (*left, live):
        path.write_bytes(b"half")
    hour_ago = time.time() - 3700
    os.utime(left[1], (hour_ago, hour_ago))
    out = cli("fsck").output
    assert all(f"garbage: {p.relative_to(repo.dotdir)}" in out for p in left) and live.name not in out
    [branch] = cli("branch").output.splitlines()  # no branch named ".tmp-…"
    assert "0 problems" in out and branch.split()[:2] == ["*", "main"]
    cli("gc")
    assert not any(p.exists() for p in left) and live.exists()
    assert "garbage" not in cli("fsck").output
