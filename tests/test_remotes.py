"""Remotes (docs/remotes.md): DVC's remote config, push, fetch, pull and clone against a
local-path remote and a real S3 endpoint on loopback (moto's server), through the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli, write_samples

import datarepo
from datarepo.repo import Repo


def files_of(root: Path) -> dict[str, bytes]:
    """Every file of a work tree (outside .datarepo and .dvc), path → bytes."""
    out = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".datarepo", ".dvc")]
        for n in names:
            p = Path(folder, n)
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def remote_files(store: Path) -> set[str]:
    return {p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()}


@pytest.fixture
def origin(tmp_path: Path, worktree: Path, cli: Cli) -> Path:
    """A repository of 20 samples, committed, with a local-path remote ``origin`` (empty)."""
    write_samples(worktree, 20)
    cli("init", "--shard-size", "16K")
    cli("add", ".")
    cli("commit", "-m", "first")
    store = tmp_path / "store"
    cli("remote", "add", "origin", str(store), "-d")
    return store


def test_remote_config_is_dvcs_own(worktree: Path, cli: Cli) -> None:
    cli("init")
    cli("remote", "add", "s3", "s3://bucket/data")
    cli("remote", "add", "backup", "/srv/backup", "--default")
    cli("remote", "modify", "s3", "endpointurl", "http://127.0.0.1:9")
    cli("remote", "modify", "s3", "secret_access_key", "hush", "--local")
    cli("remote", "add", "gone", "s3://b/gone")
    cli("remote", "modify", "gone", "access_key_id", "x", "--local")
    cli("remote", "remove", "gone")
    from dvc.config import Config

    config = Config(dvc_dir=str(worktree / ".dvc"), validate=True)
    assert config["core"]["remote"] == "backup"
    assert config["remote"]["s3"]["url"] == "s3://bucket/data"
    assert config["remote"]["s3"]["endpointurl"] == "http://127.0.0.1:9"
    assert "hush" not in (worktree / ".dvc" / "config").read_text()
    assert "hush" in (worktree / ".dvc" / "config.local").read_text()
    listed = cli("remote", "list").output.splitlines()
    assert listed == ["backup\t/srv/backup\t(default)", "s3\ts3://bucket/data"]
    cli("remote", "modify", "s3", "endpointurl", "--unset")
    assert "endpointurl" not in Config(dvc_dir=str(worktree / ".dvc"))["remote"]["s3"]
    bad = cli("remote", "modify", "s3", "no_such_option", "1", ok=False)
    assert bad.exit_code != 0 and len(bad.output.strip().splitlines()) == 1
    cli("remote", "remove", "backup")
    assert cli("remote", "list").output.splitlines() == ["s3\ts3://bucket/data"]
    for args in (("remote", "remove", "backup"), ("push", "-r", "nope"), ("remote", "add", "../x", "/tmp/x"),
                 ("remote", "add", "s3", "/elsewhere")):
        r = cli(*args, ok=False)
        assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1, args


def test_push_clone_pull_and_incremental_push(tmp_path: Path, worktree: Path, cli: Cli, origin: Path) -> None:
    first = cli("push").output
    assert "refs/heads/main\t(new)" in first
    with datarepo.open(worktree) as r:
        shards = set(r.store.iter_shards())
        head = r.head()
    assert {f"shards/{s[:2]}/{s[2:]}.tar" for s in shards} <= remote_files(origin)
    assert (origin / "refs/heads/main").read_text() == f"{head}\n"
    assert (origin / "HEAD").read_text() == "ref: refs/heads/main\n"
    Cli(tmp_path)("clone", str(origin), "copy")
    copy = tmp_path / "copy"
    assert files_of(copy) == files_of(worktree)
    b = Cli(copy)
    assert b("log", "--oneline").output.split()[0] == head[:12]
    assert "origin\t" in b("remote", "list").output and "(default)" in b("remote", "list").output
    assert " 0 problems" in b("fsck").output

    # One more sample: the push uploads one shard and three objects (commit, root, page).
    before = remote_files(origin)
    (worktree / "train" / "new.jpg").write_bytes(b"new sample")
    cli("add", ".")
    cli("commit", "-m", "second")
    out = cli("push").output
    assert out.startswith("uploaded 3 objects, 1 shards,")
    added = remote_files(origin) - before
    assert sorted(p.split("/")[0] for p in added) == ["objects"] * 3 + ["shards"] * 2
    assert cli("push").output.startswith("uploaded 0 objects, 0 shards, 0 bytes")

    pulled = b("pull").output
    assert "Fast-forward main" in pulled and "1 files written" in pulled
    assert files_of(copy) == files_of(worktree)
    assert b("log", "--oneline").output.splitlines()[0].endswith("second")
    assert "Already up to date" in b("pull").output


def a_clone_with_their_commit(tmp_path: Path, origin: Path) -> Cli:
    """A clone of ``origin`` in ``tmp_path/copy``, with a commit of its own ("theirs")."""
    Cli(tmp_path)("clone", str(origin), "copy")
    b = Cli(tmp_path / "copy")
    (tmp_path / "copy" / "theirs.txt").write_text("theirs")
    b("add", ".")
    b("commit", "-m", "theirs")
    return b


def test_non_fast_forward_is_refused_unless_forced(tmp_path: Path, worktree: Path, cli: Cli, origin: Path) -> None:
    cli("push")
    b = a_clone_with_their_commit(tmp_path, origin)
    b("push")
    theirs = (origin / "refs/heads/main").read_text()
    (worktree / "ours.txt").write_text("ours")
    cli("add", ".")
    cli("commit", "-m", "ours")
    refused = cli("push", ok=False)
    assert refused.exit_code != 0 and "fetch first" in refused.output
    assert (origin / "refs/heads/main").read_text() == theirs
    fetched = cli("fetch").output
    assert "refs/remotes/origin/main" in fetched
    assert cli("log", "--oneline", "origin/main").output.splitlines()[0].endswith("theirs")
    again = cli("push", ok=False)
    assert again.exit_code != 0 and "not a fast-forward" in again.output
    assert (origin / "refs/heads/main").read_text() == theirs
    diverged = cli("pull", ok=False)
    assert diverged.exit_code != 0 and "diverged" in diverged.output
    cli("push", "--force")
    with datarepo.open(worktree) as r:
        assert (origin / "refs/heads/main").read_text() == f"{r.head()}\n"
    pulled = b("pull", ok=False)  # the copy's commit is no ancestor of the forced one
    assert pulled.exit_code != 0 and "diverged" in pulled.output


def test_pull_refuses_uncommitted_changes(tmp_path: Path, worktree: Path, cli: Cli, origin: Path) -> None:
    cli("push")
    Cli(tmp_path)("clone", str(origin), "copy")
    copy = tmp_path / "copy"
    (worktree / "more.txt").write_text("more")
    cli("add", ".")
    cli("commit", "-m", "more")
    cli("push")
    (copy / "train" / "cat" / "0000.cls").write_text("9")
    r = Cli(copy)("pull", ok=False)
    assert r.exit_code != 0 and "uncommitted" in r.output
    assert (copy / "train" / "cat" / "0000.cls").read_text() == "9" and not (copy / "more.txt").exists()
    (copy / "train" / "cat" / "0000.cls").write_text("0")
    (copy / "notes.txt").write_text("never added")  # as in git, a file never added is no change
    assert "Fast-forward main" in Cli(copy)("pull").output
    assert (copy / "more.txt").read_text() == "more" and (copy / "notes.txt").read_text() == "never added"
    (worktree / "new.txt").write_text("pushed")
    cli("add", ".")
    cli("commit", "-m", "new")
    cli("push")
    (copy / "new.txt").write_text("mine, never added")  # in the way of the pulled file
    r = Cli(copy)("pull", ok=False)
    assert r.exit_code != 0 and r.output.strip().splitlines() == [
        "Error: uncommitted changes to new would be overwritten by pull: add or move them, then pull again"]
    assert (copy / "new.txt").read_text() == "mine, never added"


def test_run_records_travel(tmp_path: Path, worktree: Path, cli: Cli, origin: Path) -> None:
    pytest.importorskip("torch")
    from datarepo.torch import DatumDataset

    with datarepo.open(worktree) as r:
        run = r.record_run("exp-1", DatumDataset(worktree, prefix="train/"))
        head = r.head()
    assert "refs/runs/exp-1" in cli("push", "exp-1").output
    Cli(tmp_path)("init", "other")
    other = Cli(tmp_path / "other")
    other("remote", "add", "up", str(origin))
    other("fetch", "-r", "up")
    assert other("runs").output.split("\t")[:2] == ["exp-1", head[:12]]
    with datarepo.open(tmp_path / "other") as r:
        assert r.refs.read("refs/runs/exp-1") == run and r.resolve("exp-1") == head


def test_tags_runs_and_all(tmp_path: Path, worktree: Path, cli: Cli, origin: Path) -> None:
    cli("tag", "v1")
    cli("branch", "side")
    out = cli("push", "--all").output
    assert "refs/tags/v1" in out and "refs/heads/side" in out
    Cli(tmp_path)("clone", str(origin), "copy")
    b = Cli(tmp_path / "copy")
    assert "v1" in b("tag").output
    assert b("log", "--oneline", "origin/side").output == cli("log", "--oneline", "side").output
    # A tag that differs here is kept, and said so; a differing tag is not pushed without --force.
    (tmp_path / "copy" / "x.txt").write_text("x")
    b("add", ".")
    b("commit", "-m", "x")
    b("tag", "-f", "v1")
    kept = b("fetch")
    assert "kept refs/tags/v1" in kept.output
    refused = b("push", "v1", ok=False)
    assert refused.exit_code != 0 and "--force" in refused.output
    with datarepo.open(worktree) as r:
        assert (origin / "refs/tags/v1").read_text() == f"{r.resolve('v1')}\n"


def test_gc_keeps_what_remote_tracking_refs_reach(tmp_path: Path, worktree: Path, cli: Cli, origin: Path) -> None:
    cli("push")
    Cli(tmp_path)("clone", str(origin), "copy")
    (worktree / "later.txt").write_text("later")
    cli("add", ".")
    cli("commit", "-m", "later")
    cli("push")
    b = Cli(tmp_path / "copy")
    b("fetch")
    b("gc", "--prune", "now")
    b("checkout", "origin/main")
    assert (tmp_path / "copy" / "later.txt").read_text() == "later"
    assert "later" in b("diff", "main", "origin/main").output
    assert "later" in b("ls", "origin/main").output


def test_corrupt_remote_object_or_shard_is_refused(tmp_path: Path, worktree: Path, cli: Cli, origin: Path) -> None:
    cli("push")
    Cli(tmp_path)("clone", str(origin), "copy")
    b = Cli(tmp_path / "copy")
    (worktree / "train" / "late.jpg").write_bytes(b"late sample" * 50)
    cli("add", ".")
    cli("commit", "-m", "late")
    before = remote_files(origin)
    cli("push")
    new = sorted(remote_files(origin) - before)
    tar = next(origin / p for p in new if p.endswith(".tar"))
    objects = [origin / p for p in new if p.startswith("objects/")]
    copy_before = files_of(tmp_path / "copy")

    def refused(what: Path, damaged: bytes) -> None:
        good = what.read_bytes()
        os.chmod(what, 0o644)
        what.write_bytes(damaged)
        r = b("fetch", ok=False)
        assert r.exit_code != 0 and "corrupt" in r.output.lower(), r.output
        with datarepo.open(tmp_path / "copy") as repo:
            assert repo.refs.read("refs/remotes/origin/main") is not None  # as the clone left it
            assert tar.name.removesuffix(".tar") not in "".join(repo.store.iter_shard_files())
        assert " 0 problems" in b("fsck").output
        what.write_bytes(good)

    flipped = bytearray(tar.read_bytes())
    flipped[600] ^= 0xFF
    refused(tar, bytes(flipped))
    for obj in objects:  # each new object replaced by another object's bytes
        refused(obj, (origin / next(p for p in before if p.startswith("objects/"))).read_bytes())
    b("pull")
    assert files_of(tmp_path / "copy") != copy_before and files_of(tmp_path / "copy") == files_of(worktree)


def test_interrupted_push_leaves_remote_consistent(tmp_path: Path, worktree: Path, cli: Cli, origin: Path) -> None:
    """A push whose writes fail partway (a file where the commit's folder must go) moves no
    ref; the next push completes, uploading only what is still missing."""
    with datarepo.open(worktree) as r:
        head = r.head()
    blocker = origin / "objects" / head[:2]
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    failed = cli("push", ok=False)
    assert failed.exit_code != 0 and len(failed.output.strip().splitlines()) == 1
    assert not (origin / "refs/heads/main").exists()
    assert any(p.startswith("shards/") for p in remote_files(origin))
    blocker.unlink()
    out = cli("push").output
    assert out.startswith("uploaded 1 objects, 0 shards,")
    Cli(tmp_path)("clone", str(origin), "copy")
    assert files_of(tmp_path / "copy") == files_of(worktree)


def test_remote_ref_names_that_leave_the_repository_are_no_refs(tmp_path: Path, worktree: Path, cli: Cli, origin: Path) -> None:
    cli("push")
    head = (origin / "refs/heads/main").read_text()
    (origin / "refs/heads/bad.lock").write_text(head)
    (origin / "refs/heads/.hidden").write_text(head)
    (origin / "refs/heads/x..y").write_text(head)
    Cli(tmp_path)("clone", str(origin), "copy")
    with datarepo.open(tmp_path / "copy") as r:
        assert sorted(r.refs.names("refs/remotes/")) == ["refs/remotes/origin/main"]


def test_missing_plugin_and_unreachable_endpoint(worktree: Path, cli: Cli, tmp_path: Path) -> None:
    cli("init")
    cli("remote", "add", "gs", "gs://bucket/path")
    (worktree / "a.txt").write_text("a")
    cli("add", ".")
    cli("commit", "-m", "a")
    for args in (("push", "-r", "gs"), ("fetch", "-r", "gs")):  # no dvc-gs installed
        r = cli(*args, ok=False)
        assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and "gs" in r.output, r.output


def test_clone_of_nothing_is_refused(tmp_path: Path) -> None:
    r = Cli(tmp_path)("clone", str(tmp_path / "missing"), "none", ok=False)
    assert r.exit_code != 0 and "no repository" in r.output and not (tmp_path / "none").exists()


def test_a_work_tree_is_a_remote_as_in_git(tmp_path: Path, worktree: Path, cli: Cli) -> None:
    """``clone ../other`` and ``datarepo.open(URL)`` take a work tree for the repository in
    its .datarepo; a push may add branches there, never move the one checked out there."""
    write_samples(worktree, 5)
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "first")
    head = cli("log", "--oneline").output.split()[0]
    Cli(tmp_path)("clone", "work", "copy")
    Cli(tmp_path)("clone", f"file://{worktree}", "copy2")
    copy = tmp_path / "copy"
    assert files_of(copy) == files_of(worktree) == files_of(tmp_path / "copy2")
    b = Cli(copy)
    (copy / "theirs.txt").write_text("theirs")
    b("add", ".")
    b("commit", "-m", "theirs")
    refused = b("push", ok=False)
    assert refused.exit_code != 0 and "main checked out in its work tree" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert cli("log", "--oneline").output.split()[0] == head and "clean" in cli("status").output
    b("checkout", "-b", "feature")
    assert "refs/heads/feature\t(new)" in b("push", "-r", "origin", "feature").output
    cli("checkout", "feature")
    assert (worktree / "theirs.txt").read_text() == "theirs"
    with datarepo.open(f"file://{worktree}", cache=tmp_path / "cache") as r:
        assert r.read(r.tree("feature")["theirs"].datum) == {"txt": b"theirs"}


def test_stock_webdataset_reads_a_pushed_shard(worktree: Path, cli: Cli, origin: Path) -> None:
    wds = pytest.importorskip("webdataset")
    cli("push")
    with datarepo.open(worktree) as r:
        expected = {e.datum: r.read(e.datum) for e in r.tree().select()}
    urls = sorted(str(p) for p in origin.glob("shards/*/*.tar"))
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        seen[sample["__key__"]] = {k: v for k, v in sample.items() if not k.startswith("__")}
    assert seen == expected


# --- a real S3 endpoint on loopback ------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("dvc_s3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _s3_remote(cli: Cli, endpoint: str, bucket: str, create: bool = True) -> None:
    import boto3

    if create:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=bucket)
    cli("remote", "add", "s3", f"s3://{bucket}/repo", "-d")
    cli("remote", "modify", "s3", "endpointurl", endpoint)
    cli("remote", "modify", "s3", "access_key_id", "test", "--local")
    cli("remote", "modify", "s3", "secret_access_key", "test", "--local")
    cli("remote", "modify", "s3", "region", "us-east-1")


def test_s3_round_trip(tmp_path: Path, worktree: Path, cli: Cli, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write_samples(worktree, 30)
    cli("init", "--shard-size", "16K")
    cli("add", ".")
    cli("commit", "-m", "first")
    _s3_remote(cli, s3_endpoint, "round-trip")
    out = cli("push").output
    assert "refs/heads/main\t(new)" in out
    # clone takes a URL only: botocore reads the endpoint and credentials from the environment.
    for name, value in (("AWS_ENDPOINT_URL", s3_endpoint), ("AWS_ACCESS_KEY_ID", "test"),
                        ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    Cli(tmp_path)("clone", "s3://round-trip/repo", "copy")
    copy = tmp_path / "copy"
    b = Cli(copy)
    with datarepo.open(worktree) as ours, datarepo.open(copy) as theirs:
        assert theirs.head() == ours.head()
        entries = list(ours.tree().select())
        assert [e.key for e in theirs.tree().select()] == [e.key for e in entries]
        for e in entries:
            assert theirs.read(e.datum, verify=True) == ours.read(e.datum)
    assert files_of(copy) == files_of(worktree)
    (worktree / "s3.txt").write_text("more")
    cli("add", ".")
    cli("commit", "-m", "more")
    assert cli("push").output.startswith("uploaded 3 objects, 1 shards,")
    assert "Fast-forward main" in b("pull").output
    assert (copy / "s3.txt").read_text() == "more"


def test_clone_sets_the_remote_s_options_before_it_fetches(tmp_path: Path, worktree: Path, cli: Cli, s3_endpoint: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``clone -c OPTION=VALUE`` (git's ``clone -c``) sets DVC's options of origin before the
    first fetch: an S3 endpoint of one's own, a read timeout. Without them the clone could
    not reach the remote; an option DVC does not know is one error line, and nothing is left."""
    (worktree / "a.txt").write_text("a")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "a")
    _s3_remote(cli, s3_endpoint, "clone-options")
    cli("push")
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    here = Cli(tmp_path)
    bad = here("clone", "-c", "nosuch=1", "s3://clone-options/repo", "bad", ok=False)
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "nosuch" in bad.output
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".tmp-*"))
    assert here("clone", "-c", "oops", "s3://clone-options/repo", "bad", ok=False).exit_code == 2
    here("clone", "-c", f"endpointurl={s3_endpoint}", "-c", "read_timeout=5", "s3://clone-options/repo", "copy")
    assert (tmp_path / "copy" / "a.txt").read_text() == "a"
    config = (tmp_path / "copy" / ".dvc" / "config").read_text()
    assert s3_endpoint in config and "read_timeout = 5" in config
    assert "Already up to date" in Cli(tmp_path / "copy")("pull").output  # (the options stay: the remote is reached)


def test_s3_push_and_clone_leave_no_temporary_files(tmp_path: Path, worktree: Path, cli: Cli, s3_endpoint: str) -> None:
    """The commands, as processes of their own, remove what they put in the temporary
    folder (the shards a push to an object store writes before it uploads them, a clone's
    downloads) by the time they end."""
    write_samples(worktree, 30)
    cli("init", "--shard-size", "16K")
    _s3_remote(cli, s3_endpoint, "no-leftovers")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "PYTHONPATH": str(Path(__file__).parent.parent)}
    for cwd, args in ((worktree, ["add", "."]), (worktree, ["commit", "-m", "first"]), (worktree, ["push"]),
                      (tmp_path, ["clone", "s3://no-leftovers/repo", "copy"])):
        done = subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert list(tmp.iterdir()) == [], args
    assert files_of(tmp_path / "copy") == files_of(worktree)


def test_s3_unreachable_endpoint_is_one_line(worktree: Path, cli: Cli, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries would take seconds
    cli("init")
    (worktree / "a.txt").write_text("a")
    cli("add", ".")
    cli("commit", "-m", "a")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cli("remote", "add", "dead", "s3://bucket/x", "-d")
    cli("remote", "modify", "dead", "endpointurl", f"http://127.0.0.1:{closed}")
    cli("remote", "modify", "dead", "access_key_id", "test", "--local")
    cli("remote", "modify", "dead", "secret_access_key", "test", "--local")
    r = cli("push", ok=False)
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and "dead" in r.output


def test_help_does_not_import_dvc() -> None:
    code = "import sys, datarepo.cli_remote; print('dvc' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_python_api_push_fetch(tmp_path: Path, worktree: Path, cli: Cli, origin: Path) -> None:
    from datarepo.porcelain.remote import fetch, push

    with Repo.open(worktree) as r:
        result = push(r)
        assert result.transfer.shards == len(list(r.store.iter_shards())) and result.updated[0].ref == "refs/heads/main"
    Cli(tmp_path)("init", "other")
    other = tmp_path / "other"
    Cli(other)("remote", "add", "up", str(origin))
    with Repo.open(other) as r:
        fetched = fetch(r, "up")
        assert [u.ref for u in fetched.updated] == ["refs/remotes/up/main"]
        assert fetch(r, "up").transfer.objects == 0
