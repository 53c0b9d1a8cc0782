"""Remotes used as a careless, unlucky or hostile user would (docs/remotes.md): remotes
that hold damage or no repository, odd names and URLs, interrupted and racing transfers,
clones into folders that are in the way. Each is refused in one line, or completed, and
nothing committed here is lost."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Cli, holds_open
from fault_proxy import FaultProxy, on
from test_remotes import _s3_remote, a_clone_with_their_commit, files_of, origin, s3_endpoint  # noqa: F401  (origin, s3_endpoint: fixtures)

import datarepo

pytest.importorskip("dvc")

EXE = str(Path(sys.executable).with_name("datarepo"))


def one_line_error(result: object, text: str) -> None:
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code != 0 and len(output.strip().splitlines()) == 1, output  # type: ignore[attr-defined]
    assert text in output, output


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, so that one that waits forever fails the test."""
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_a_file_url_remote_is_the_folder_it_names(tmp_path: Path, worktree: Path, cli: Cli) -> None:
    cli("init")
    (worktree / "a.txt").write_text("a")
    cli("add", ".")
    cli("commit", "-m", "a")
    store = tmp_path / "store"
    cli("remote", "add", "up", store.as_uri(), "-d")
    cli("push")
    assert (store / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert sorted(p.name for p in worktree.iterdir()) == [".datarepo", ".dvc", "a.txt"]  # (no folder "file:")
    Cli(tmp_path)("clone", store.as_uri(), "copy")
    assert files_of(tmp_path / "copy") == files_of(worktree)
    (worktree / "b.txt").write_text("b")
    cli("add", ".")
    cli("commit", "-m", "b")
    cli("push")
    assert "Fast-forward main" in Cli(tmp_path / "copy")("pull").output
    assert files_of(tmp_path / "copy") == files_of(worktree)


@pytest.mark.parametrize("what", ["ref", "HEAD", "object", "shard", "index"])
def test_a_fifo_in_a_local_remote_is_refused_never_waited_on(tmp_path: Path, worktree: Path, cli: Cli,
                                                             origin: Path, what: str) -> None:  # noqa: F811
    cli("push")
    with datarepo.open(worktree) as r:
        head = r.head()
        shard = sorted(r.store.iter_shards())[0]
    victim = {
        "ref": origin / "refs/heads/main",
        "HEAD": origin / "HEAD",
        "object": origin / "objects" / head[:2] / head[2:],
        "shard": origin / "shards" / shard[:2] / f"{shard[2:]}.tar",
        "index": origin / "shards" / shard[:2] / f"{shard[2:]}.idx",
    }[what]
    victim.unlink()
    os.mkfifo(victim)
    done = run(tmp_path, "clone", str(origin), "copy")
    assert done.returncode == 1 and "not a regular file" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "copy").exists()
    if what == "ref":  # (the work tree has the rest: its fetch reads nothing else)
        done = run(worktree, "fetch")
        assert done.returncode == 1 and "not a regular file" in done.stderr, done.stderr
    read = f"import datarepo; r = datarepo.open({origin.as_uri()!r}); r.head(); [r.read(e.datum) for e in r.tree('main').select()]"
    done = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "not a regular file" in done.stderr.strip().splitlines()[-1], done.stderr


def test_a_remote_dvc_cannot_write_leaves_the_config_as_it_was(worktree: Path, cli: Cli) -> None:
    """DVC truncates .dvc/config, then writes it: a name it cannot quote left it empty,
    every remote and the default gone."""
    cli("init")
    cli("remote", "add", "keep", "s3://bucket/keep", "-d")
    cli("remote", "modify", "keep", "secret_access_key", "x", "--local")
    before = {p.name: p.read_bytes() for p in (worktree / ".dvc").iterdir()}
    one_line_error(cli("remote", "add", "it's", "/srv/other", ok=False), "not changed")
    long = "r" * 201  # (refs/remotes/<name>/… must be a file name here)
    one_line_error(cli("remote", "add", long, "/srv/other", ok=False), "invalid remote name")
    assert {p.name: p.read_bytes() for p in (worktree / ".dvc").iterdir()} == before
    assert cli("remote", "list").output == "keep\ts3://bucket/keep\t(default)\n"


def test_fetch_from_a_place_that_holds_no_repository_says_so(tmp_path: Path, worktree: Path, cli: Cli,
                                                             origin: Path) -> None:  # noqa: F811
    cli("push")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    for url in (str(tmp_path / "typo"), str(tmp_path / "empty"), str(tmp_path / "a-file"), "http://127.0.0.1:9/x"):
        cli("remote", "add", "-f", "other", url)
        one_line_error(cli("fetch", "-r", "other", ok=False), f"no repository at {url}")
        one_line_error(cli("pull", "-r", "other", ok=False), f"no repository at {url}")
    with datarepo.open(worktree) as r:
        assert list(r.refs.names("refs/remotes/")) == []


def test_clone_into_what_is_in_the_way_or_a_failed_clone_leaves_it_as_it_was(tmp_path: Path, cli: Cli,
                                                                             origin: Path) -> None:  # noqa: F811
    cli("push")
    here = Cli(tmp_path)
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    one_line_error(here("clone", str(origin), "a-file", ok=False), "is not a folder")
    one_line_error(here("clone", str(origin), "dangling", ok=False), "is not a folder")
    one_line_error(here("clone", str(origin), "full", ok=False), "is not empty")
    assert (tmp_path / "a-file").read_text() == "mine" and os.listdir(tmp_path / "full") == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    one_line_error(here("clone", str(tmp_path / "typo"), "empty", ok=False), "no repository at")
    assert os.listdir(tmp_path / "empty") == []  # (it was given: it stays, as empty as it was)
    one_line_error(here("clone", str(tmp_path / "typo"), "new/deep/copy", ok=False), "no repository at")
    assert not (tmp_path / "new").exists()  # (the folders the clone made are gone)
    here("clone", str(origin), "empty")
    assert " 0 problems" in Cli(tmp_path / "empty")("fsck").output


def test_a_fetch_killed_after_it_stored_shards_is_completed_by_the_next(tmp_path: Path, worktree: Path, cli: Cli,
                                                                          origin: Path) -> None:  # noqa: F811
    """Killed after the shards were published here but before their datums' locations were
    recorded: every later fetch said the remote lacked those datums."""
    cli("push")
    Cli(tmp_path)("clone", str(origin), "copy")
    for i in range(12):
        (worktree / "more" / f"{i}.bin").parent.mkdir(exist_ok=True)
        (worktree / "more" / f"{i}.bin").write_bytes(os.urandom(3000))
    cli("add", ".")
    cli("commit", "-m", "more")
    cli("push")
    killed = ("import os, datarepo.repo, datarepo.porcelain.remote as remote\n"
              "sync = datarepo.repo.Repo.sync_locations\n"
              "def die_once_shards_are_published(self, *args):\n"
              "    if len(list(self.store.iter_shards())) > shards: os._exit(9)\n"
              "    return sync(self, *args)\n"
              "datarepo.repo.Repo.sync_locations = die_once_shards_are_published\n"
              "repo = datarepo.repo.Repo.open('.')\n"
              "shards = len(list(repo.store.iter_shards()))\n"
              "remote.fetch(repo, 'origin')\n")
    done = subprocess.run([sys.executable, "-c", killed], cwd=tmp_path / "copy", capture_output=True, timeout=60)
    assert done.returncode == 9
    b = Cli(tmp_path / "copy")
    assert "Fast-forward main" in b("pull").output
    assert files_of(tmp_path / "copy") == files_of(worktree)
    assert " 0 problems" in b("fsck").output


def test_a_cache_folder_that_cannot_be_one_is_one_error(tmp_path: Path, cli: Cli, origin: Path) -> None:  # noqa: F811
    from datarepo.errors import InvalidInputError

    cli("push")
    (tmp_path / "a-file").write_text("mine")
    cannot_make = [Path("/proc/no-cache-here")] if Path("/proc/self").is_dir() else []  # (no folder is made in /proc)
    for cache in (tmp_path / "a-file", tmp_path / "a-file" / "below", *cannot_make):
        with pytest.raises(InvalidInputError, match="cannot be used"):
            datarepo.open(origin.as_uri(), cache=cache)
    assert (tmp_path / "a-file").read_text() == "mine"
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "url")  # (where a cache says whose it is)
    read = f"import datarepo; datarepo.open({origin.as_uri()!r}, cache={str(tmp_path / 'fifo')!r})"
    done = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "cannot be used: not a regular file" in done.stderr.strip().splitlines()[-1]


def test_refs_that_would_be_folders_of_each_other(tmp_path: Path, worktree: Path, cli: Cli,
                                                  origin: Path) -> None:  # noqa: F811
    """A ref is a file, so ``a`` and ``a/b`` cannot both be refs (as in git)."""
    cli("branch", "a/b")
    cli("push", "--all")
    Cli(tmp_path)("clone", str(origin), "copy")
    b = Cli(tmp_path / "copy")
    head = (origin / "refs/heads/main").read_text()
    # The remote's a/b is gone and an a came (by hand: no push makes that): the stale
    # remote-tracking a/b is replaced, not in the way of every later fetch.
    (origin / "refs/heads/a/b").unlink()
    (origin / "refs/heads/a").rmdir()
    (origin / "refs/heads/a").write_text(head)
    (origin / "refs/tags").mkdir()
    (origin / "refs/tags/v1").write_text(head)
    b("tag", "v1/mine")  # (a tag of its own there: the remote's v1 is kept out, and said so)
    fetched = b("fetch")
    assert "refs/remotes/origin/a\t(new)" in fetched.output and "kept refs/tags/v1" in fetched.output
    with datarepo.open(tmp_path / "copy") as r:
        assert sorted(r.refs.names("refs/remotes/")) == ["refs/remotes/origin/a", "refs/remotes/origin/main"]
        assert sorted(r.refs.names("refs/tags/")) == ["refs/tags/v1/mine"]
    # A push that would make a ref where one is a folder of it is refused before anything is uploaded.
    before = sorted(p.relative_to(origin).as_posix() for p in origin.rglob("*"))
    (worktree / "new.txt").write_text("new")
    cli("add", ".")
    cli("commit", "-m", "new")
    one_line_error(cli("push", "a/b", ok=False), "cannot create refs/heads/a/b on remote 'origin': refs/heads/a exists")
    assert sorted(p.relative_to(origin).as_posix() for p in origin.rglob("*")) == before


def test_an_s3_remote_whose_refs_no_folder_could_hold(tmp_path: Path, worktree: Path, cli: Cli, s3_endpoint: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """An object store has keys, not folders: ``refs/heads/a`` beside ``refs/heads/a/b``, or
    a name longer than a file's, can be there; a fetch refuses the one and passes over
    the other, before anything is stored or any ref moved."""
    import boto3

    (worktree / "a.txt").write_text("a")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "a")
    _s3_remote(cli, s3_endpoint, "clashing-refs")
    for branch in ("x/z", "x/y/w"):  # (nested names: x and x/y are key prefixes there, no refs)
        cli("branch", branch)
    cli("push", "--all")
    cli("branch", "-d", "x/z")
    cli("branch", "-d", "x/y/w")
    cli("branch", "x")
    one_line_error(cli("push", "x", ok=False), "cannot create refs/heads/x on remote 's3': refs/heads/x/y/w exists")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    head = s3.get_object(Bucket="clashing-refs", Key="repo/refs/heads/main")["Body"].read()
    s3.put_object(Bucket="clashing-refs", Key=f"repo/refs/heads/{'x' * 300}", Body=head)
    for name, value in (("AWS_ENDPOINT_URL", s3_endpoint), ("AWS_ACCESS_KEY_ID", "test"),
                        ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    Cli(tmp_path)("clone", "s3://clashing-refs/repo", "copy")
    tracking = ["refs/remotes/origin/main", "refs/remotes/origin/x/y/w", "refs/remotes/origin/x/z"]
    with datarepo.open(tmp_path / "copy") as r:
        assert sorted(r.refs.names("refs/remotes/")) == tracking
    for key in ("repo/refs/heads/a", "repo/refs/heads/a/b"):
        s3.put_object(Bucket="clashing-refs", Key=key, Body=head)
    with datarepo.open("s3://clashing-refs/repo") as theirs:  # (x is a key prefix there: no revision)
        assert theirs.resolve("x/z") == theirs.head()
        with pytest.raises(datarepo.errors.DataRepoError, match="unknown revision"):
            theirs.resolve("x")
    one_line_error(Cli(tmp_path / "copy")("fetch", ok=False), "has both refs/heads/a and refs/heads/a/b")
    with datarepo.open(tmp_path / "copy") as r:
        assert sorted(r.refs.names("refs/remotes/")) == tracking


def test_of_two_pushes_racing_to_one_branch_the_second_is_refused(tmp_path: Path, worktree: Path, cli: Cli,
                                                                  origin: Path) -> None:  # noqa: F811
    """No lost update: a push moves a branch only from the commit it saw, read under the
    remote's lock (``lock`` in its folder, held from its listing to its ref write), so the
    later of two racing pushes sees the earlier one's commit and is refused, as a
    non-fast-forward is."""
    from datarepo.fsutil import WriterLock

    cli("push")
    b = a_clone_with_their_commit(tmp_path, origin)
    with datarepo.open(tmp_path / "copy") as r:
        theirs = r.head()
    b("branch", "theirs")
    b("push", "theirs")  # (their objects are on the remote; main is not moved yet)
    (worktree / "ours.txt").write_text("ours")
    cli("add", ".")
    cli("commit", "-m", "ours")
    lock = origin / "lock"
    with WriterLock(lock):  # the other push, between its check and its ref write
        pushing = subprocess.Popen([EXE, "push"], cwd=worktree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while pushing.poll() is None and not holds_open(pushing.pid, lock):  # (our push waits for the lock)
            time.sleep(0.001)
        with contextlib.suppress(subprocess.TimeoutExpired):
            pushing.wait(timeout=1)  # (a push that does not wait for the lock is done by now)
        (origin / "refs/heads/main").write_text(f"{theirs}\n")  # their push moves main
    out, err = pushing.communicate(timeout=60)
    assert pushing.returncode == 1 and "fetch first" in err and len(err.strip().splitlines()) == 1, out + err
    assert (origin / "refs/heads/main").read_text() == f"{theirs}\n"


@pytest.mark.parametrize("branch", ["main", "fresh"])
def test_of_two_pushes_racing_to_one_s3_branch_the_second_is_refused(tmp_path: Path, worktree: Path, cli: Cli,
                                                                     s3_endpoint: str, branch: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """S3 has no lock: a push writes a ref only if it is still what the push read (If-Match
    its ETag, or If-None-Match for a new ref). Here another push moves the ref while ours is
    between reading and writing it: ours is refused in one line and theirs stays."""
    import boto3

    bucket = f"racing-pushes-{branch}"
    gate = FaultProxy(s3_endpoint)
    try:
        (worktree / "a.txt").write_text("a")
        cli("init")
        cli("add", ".")
        cli("commit", "-m", "a")
        _s3_remote(cli, s3_endpoint, bucket)
        cli("remote", "modify", "s3", "endpointurl", gate.url)
        cli("push")
        for name, value in (("AWS_ENDPOINT_URL", gate.url), ("AWS_ACCESS_KEY_ID", "test"),
                            ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        Cli(tmp_path)("clone", f"s3://{bucket}/repo", "copy")
        b = Cli(tmp_path / "copy")
        (tmp_path / "copy" / "theirs.txt").write_text("theirs")
        b("add", ".")
        b("commit", "-m", "theirs")
        with datarepo.open(tmp_path / "copy") as r:
            theirs = r.head()
        b("branch", "theirs")
        b("push", "theirs")  # (their objects are on the remote)
        if branch != "main":
            cli("branch", branch)
            cli("checkout", branch)
        (worktree / "ours.txt").write_text("ours")
        cli("add", ".")
        cli("commit", "-m", "ours")
        held = gate.fail(on("PUT", f"refs/heads/{branch}"), "hold")  # the window between its read of the ref and its write
        pushing = subprocess.Popen([EXE, "push"], cwd=worktree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert held.held.wait(60), pushing.communicate()
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
        s3.put_object(Bucket=bucket, Key=f"repo/refs/heads/{branch}", Body=f"{theirs}\n".encode())  # their push
        held.released.set()
        out, err = pushing.communicate(timeout=60)
    finally:
        gate.close()
    assert pushing.returncode == 1 and len(err.strip().splitlines()) == 1, out + err
    assert "was moved by another push meanwhile: fetch, then push again" in err, err
    assert s3.get_object(Bucket=bucket, Key=f"repo/refs/heads/{branch}")["Body"].read() == f"{theirs}\n".encode()


def test_a_remote_ref_file_too_long_to_be_a_ref_is_refused_unread(tmp_path: Path, cli: Cli,
                                                                  origin: Path) -> None:  # noqa: F811
    cli("push")
    head = (origin / "refs/heads/main").read_text().strip()
    with open(origin / "refs/heads/main", "w") as f:  # an oid, then zero bytes up to 64 MiB
        f.write(head)
        f.truncate(64 << 20)
    one_line_error(Cli(tmp_path)("clone", str(origin), "copy", ok=False), "is longer than a ref")
    one_line_error(cli("fetch", ok=False), "is longer than a ref")
    with pytest.raises(datarepo.errors.CorruptObjectError, match="is longer than a ref"):
        datarepo.open(origin.as_uri()).head()


def test_a_remote_url_or_option_that_is_not_one_line_is_refused(worktree: Path, cli: Cli) -> None:
    cli("init")
    cli("remote", "add", "o", "s3://bucket/o", "-d")
    before = (worktree / ".dvc" / "config").read_bytes()
    for args in (("add", "p", ""), ("add", "p", "/srv/p\n[core]\nremote = p"), ("modify", "o", "url", ""),
                 ("modify", "o", "url", "s3://bucket/o\n['remote \"q\"']"), ("modify", "o", "endpointurl", "http://x\r\n")):
        one_line_error(cli("remote", *args, ok=False), "invalid remote")
    assert (worktree / ".dvc" / "config").read_bytes() == before
    assert cli("remote", "list").output == "o\ts3://bucket/o\t(default)\n"


def test_push_makes_no_repository_among_other_files(tmp_path: Path, worktree: Path, cli: Cli) -> None:
    """``remote add o .`` (or a folder in the work tree) then push wrote objects/, shards/,
    refs/ into the work tree, which the next ``add .`` took as data."""
    cli("init")
    (worktree / "a.txt").write_text("a")
    cli("add", ".")
    cli("commit", "-m", "a")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "letter.txt").write_text("mine")
    for url, why in ((".", "is this repository itself"), ("backup", "is in the work tree"),
                     (str(tmp_path / "home"), "holds other files")):
        cli("remote", "add", "-f", "o", url, "-d")
        one_line_error(cli("push", ok=False), why)
    assert sorted(p.name for p in worktree.iterdir()) == [".datarepo", ".dvc", "a.txt"]
    assert os.listdir(tmp_path / "home") == ["letter.txt"]
    assert "nothing to commit" in cli("status").output
    cli("remote", "add", "-f", "o", str(tmp_path / "store"), "-d")
    cli("push")
    (worktree / "b.txt").write_text("b")
    cli("add", ".")
    cli("commit", "-m", "b")
    cli("push")  # (a repository there now: pushed to again)


def test_removing_a_remote_removes_its_remote_tracking_refs(tmp_path: Path, worktree: Path, cli: Cli,
                                                            origin: Path) -> None:  # noqa: F811
    """No command could delete them: a remote removed, then one of that name added at
    another URL, mixed the old remote's branches with the new one's, and gc kept them."""
    cli("branch", "side")
    cli("push", "--all")
    Cli(tmp_path)("init", "other")
    b = Cli(tmp_path / "other")
    b("remote", "add", "up", str(origin), "-d")
    b("remote", "add", "keep", str(origin))
    b("fetch", "-r", "up")
    b("fetch", "-r", "keep")
    b("remote", "remove", "up")
    with datarepo.open(tmp_path / "other") as r:
        assert sorted(r.refs.names("refs/remotes/")) == ["refs/remotes/keep/main", "refs/remotes/keep/side"]
    assert b("remote", "list").output == f"keep\t{origin}\n"
    one_line_error(b("log", "up/main", ok=False), "up/main")


@pytest.mark.parametrize("key", ["../../evil", "/abs/evil", ".datarepo/HEAD"])
def test_a_remote_tree_whose_key_leaves_the_work_tree_is_refused_by_fetch(tmp_path: Path, worktree: Path, cli: Cli,
                                                                          origin: Path, key: str) -> None:  # noqa: F811
    """Pages are hashed, not trusted: a page another tool wrote with a key the key rule
    refuses was stored by fetch, leaving fsck with problems (checkout then refused it)."""
    from datarepo.objects import Commit
    from datarepo.tree import write_tree

    cli("push")
    Cli(tmp_path)("clone", str(origin), "copy")
    with datarepo.open(worktree) as r:  # another tool writes a commit whose tree has that key
        head = r.read_commit(r.head())
        rows = [(e.key, e.datum, e.size) for e in r.tree().select()]
        tree = write_tree(r.store, sorted([*rows, (key, rows[0][1], rows[0][2])]))
        evil = r.store.put_object(Commit(tree, (r.head(),), head.author, head.time, "evil"))
        r.refs.update("refs/heads/evil", evil, expected=None)
        written = [evil, tree, *(p.page for p in r.store.get_object(tree).pages)]  # type: ignore[attr-defined]
    one_line_error(cli("push", "evil", ok=False), "cannot push a damaged repository")
    for oid in written:  # (push refuses to send them: copied by hand)
        (origin / "objects" / oid[:2]).mkdir(exist_ok=True)
        shutil.copyfile(worktree / ".datarepo" / "objects" / oid[:2] / oid[2:], origin / "objects" / oid[:2] / oid[2:])
    (origin / "refs/heads/evil").write_text(f"{evil}\n")
    one_line_error(Cli(tmp_path)("clone", str(origin), "victim", ok=False), "invalid key")
    assert not (tmp_path / "victim").exists()
    b = Cli(tmp_path / "copy")
    one_line_error(b("fetch", ok=False), "invalid key")
    with datarepo.open(tmp_path / "copy") as r:
        assert list(r.refs.names("refs/remotes/")) == ["refs/remotes/origin/main"] and not r.store.has_object(evil)
    assert " 0 problems" in b("fsck").output


@pytest.mark.parametrize("name", ["config", "config.local"])
def test_a_fifo_for_dvc_config_is_refused_never_waited_on(worktree: Path, cli: Cli, name: str) -> None:
    cli("init")
    cli("remote", "add", "o", "s3://bucket/o")
    (worktree / ".dvc" / name).unlink(missing_ok=True)
    os.mkfifo(worktree / ".dvc" / name)
    for args in (["remote", "add", "p", "/srv/p"], ["fetch"]):
        done = run(worktree, *args)
        assert done.returncode == 1 and done.stderr == f"Error: .dvc/{name}: not a regular file\n", (args, done.stderr)


def test_a_mistyped_url_does_not_claim_the_cache_folder(tmp_path: Path, cli: Cli, origin: Path) -> None:  # noqa: F811
    from datarepo.remotes_config import RemoteError

    cli("tag", "v1")
    cli("push", "v1")  # (a remote with a tag only: no HEAD, a repository all the same)
    with datarepo.open(tmp_path / "work") as ours:
        v1 = ours.resolve("v1")
    cache = tmp_path / "cache"
    with pytest.raises(RemoteError, match="no repository at"):
        datarepo.open((tmp_path / "typo").as_uri(), cache=cache)
    assert not cache.exists()
    with datarepo.open(origin.as_uri(), cache=cache) as r:
        assert r.resolve("v1") == v1


def test_a_push_removes_what_pushes_killed_long_ago_left_on_a_folder_remote(tmp_path: Path, worktree: Path, cli: Cli,
                                                                             origin: Path) -> None:  # noqa: F811
    """A push killed mid-upload leaves its temporary file (``.tmp-…``, never read as an
    object or shard). The next push removes those an hour old, and keeps the young ones:
    a live push beside it may be writing them."""
    cli("push")
    shard = next((origin / "shards").rglob("*.tar"))
    obj = next(p for p in (origin / "objects").rglob("*") if p.is_file())
    ref = origin / "refs" / "heads" / "main"
    old = [shard.with_name(".tmp-0123456789abcdef.tar"), obj.with_name(".tmp-00aa11bb22cc33dd"),
           ref.with_name(".tmp-0a1b2c3d4e5f6a7b"), origin / ".tmp-1a2b3c4d5e6f7a8b"]  # (a ref's, HEAD's)
    young = [shard.with_name(".tmp-fedcba9876543210.tar"), obj.with_name(".tmp-ffeeddccbbaa9988"),
             ref.with_name(".tmp-b7a6f5e4d3c2b1a0")]
    for path in old + young:
        path.write_bytes(b"half an upload")
    hours_ago = time.time() - 2 * 3600
    for path in old:
        os.utime(path, (hours_ago, hours_ago))
    (worktree / "more.txt").write_text("more")
    cli("add", ".")
    cli("commit", "-m", "more")
    cli("push")
    assert [p.exists() for p in old + young] == [False] * len(old) + [True] * len(young)
    Cli(tmp_path)("clone", str(origin), "copy")
    assert files_of(tmp_path / "copy") == files_of(worktree)
