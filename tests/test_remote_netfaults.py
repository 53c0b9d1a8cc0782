"""Remotes when the network fails under them (docs/remotes.md, "When the network fails"):
S3 on loopback (moto's server) behind a proxy that fails chosen requests as a network or a
server does (tests/fault_proxy.py). A transient fault is retried a bounded number of times
and the command completes; one that lasts fails the command in one line, leaves nothing
wrong here or on the remote, and the same command run again once the network is back does
only the work that is left. Bytes altered on the way are refused, never stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli, write_samples
from fault_proxy import FaultProxy, on
from test_remotes import _s3_remote, files_of, s3_endpoint  # noqa: F401  (s3_endpoint: a fixture)

import datarepo

pytest.importorskip("dvc")

ATTEMPTS = 2  # botocore's attempts of each request (AWS_MAX_ATTEMPTS), few to keep the tests short


@pytest.fixture
def net(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:  # noqa: F811
    """The proxy in front of the S3 endpoint; the environment names it, as a clone needs."""
    with FaultProxy(s3_endpoint) as proxy:
        for name, value in (("AWS_ENDPOINT_URL", proxy.url), ("AWS_ACCESS_KEY_ID", "test"),
                            ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1"),
                            ("AWS_MAX_ATTEMPTS", str(ATTEMPTS))):
            monkeypatch.setenv(name, value)
        yield proxy


@pytest.fixture
def remote(worktree: Path, cli: Cli, s3_endpoint: str, net: FaultProxy) -> str:  # noqa: F811
    """A repository of 20 samples in shards of 16 KiB, its remote ``s3`` reached through the
    proxy (nothing pushed yet); its URL."""
    write_samples(worktree, 20)
    cli("init", "--shard-size", "16K")
    cli("add", ".")
    cli("commit", "-m", "first")
    bucket = f"netfaults-{uuid.uuid4().hex[:12]}"
    _s3_remote(cli, s3_endpoint, bucket)
    cli("remote", "modify", "s3", "endpointurl", net.url)
    return f"s3://{bucket}/repo"


def one_error_line(result: object, *words: str) -> str:
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 1 and len(output.strip().splitlines()) == 1, output  # type: ignore[attr-defined]
    assert output.startswith("Error: ") and all(w in output for w in words), output
    return output


def more_shards(worktree: Path, cli: Cli) -> list[str]:
    """Commits 12 files of 3000 random bytes (several new shards) and pushes them; their shards."""
    with datarepo.open(worktree) as r:
        before = set(r.store.iter_shards())
    write_samples(worktree, 12, seed=7, prefix="more")
    cli("add", ".")
    cli("commit", "-m", "more")
    cli("push")
    with datarepo.open(worktree) as r:
        return sorted(set(r.store.iter_shards()) - before)


def test_transient_faults_under_a_push_are_retried_and_it_completes(tmp_path: Path, worktree: Path, cli: Cli,
                                                                    remote: str, net: FaultProxy) -> None:
    """Each upload fails once: an error answer, a reset connection, and the ref's write done
    by the server but its answer lost (its retry then finds the ref already written: the push
    said another push had moved it)."""
    net.fail(on("PUT", ".tar"), "503")
    net.fail(on("PUT", ".idx"), "500")
    net.fail(on("PUT", contains="/objects/"), "reset")
    net.fail(on("PUT", "refs/heads/main"), "drop")
    net.fail(lambda method, key: method == "GET" and not key, "reset")  # (a listing)
    assert "refs/heads/main\t(new)" in cli("push").output
    Cli(tmp_path)("clone", remote, "copy")
    assert files_of(tmp_path / "copy") == files_of(worktree)
    assert " 0 problems" in Cli(tmp_path / "copy")("fsck").output


def test_a_push_the_network_breaks_fails_in_one_line_and_the_next_does_the_rest(tmp_path: Path, worktree: Path,
                                                                               cli: Cli, remote: str,
                                                                               net: FaultProxy) -> None:
    net.fail(on("PUT", contains="/objects/"), "reset", times=None)  # the network goes, after the shards
    one_error_line(cli("push", ok=False), "remote 's3'")
    # Each request was tried as botocore is told (twice, each once more by aiohttp on a
    # dropped connection), not 5 x 5 times more by s3fs around it.
    assert 0 < net.count("PUT", contains="/objects/") <= 2 * ATTEMPTS
    assert net.count("PUT", "refs/heads/main") == 0  # (no ref names what is not there)
    assert " 0 problems" in cli("fsck").output
    net.heal()
    net.requests.clear()
    assert cli("push").output.startswith("uploaded 3 objects, 0 shards,")  # (the shards were there)
    assert net.count("PUT", ".tar") == net.count("PUT", ".idx") == 0
    Cli(tmp_path)("clone", remote, "copy")
    assert files_of(tmp_path / "copy") == files_of(worktree)


def test_a_body_cut_short_or_an_error_answer_under_a_clone_is_retried(tmp_path: Path, worktree: Path, cli: Cli,
                                                                      remote: str, net: FaultProxy) -> None:
    cli("push")
    net.fail(on("GET", ".tar"), "cut", times=2)  # (a shard's download resumes where it broke)
    net.fail(on("GET", ".idx"), "503")
    net.fail(on("GET", contains="/objects/"), "500")
    net.fail(on("GET", "refs/heads/main"), "reset")
    net.fail(lambda method, key: method == "GET" and not key, "cut")  # (a listing)
    Cli(tmp_path)("clone", remote, "copy")
    assert files_of(tmp_path / "copy") == files_of(worktree)
    assert " 0 problems" in Cli(tmp_path / "copy")("fsck").output


def test_a_clone_the_network_breaks_leaves_nothing_and_says_why_once(tmp_path: Path, cli: Cli, remote: str,
                                                                     net: FaultProxy) -> None:
    cli("push")
    net.fail(on("GET", ".tar"), "503", times=None)
    line = one_error_line(Cli(tmp_path)("clone", remote, "copy", ok=False), "remote 'origin'", "SlowDown")
    assert line.count("Please reduce your request rate") == 1, line  # (botocore's message repeats the server's)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    net.heal()
    Cli(tmp_path)("clone", remote, "copy")
    assert " 0 problems" in Cli(tmp_path / "copy")("fsck").output


def test_a_fetch_the_network_breaks_stores_nothing_wrong_and_the_next_does_the_rest(tmp_path: Path, worktree: Path,
                                                                                  cli: Cli, remote: str,
                                                                                  net: FaultProxy) -> None:
    cli("push")
    Cli(tmp_path)("clone", remote, "copy")
    b = Cli(tmp_path / "copy")
    with datarepo.open(tmp_path / "copy") as r:
        tracked = r.refs.read("refs/remotes/origin/main")
    new = more_shards(worktree, cli)
    assert len(new) >= 3
    last = f"{new[-1][:2]}/{new[-1][2:]}.tar"  # (fetched last: the others are whole here by then)
    net.fail(on("GET", last), "cut", times=None)
    net.requests.clear()
    one_error_line(b("fetch", ok=False), "remote 'origin'")
    assert 0 < net.count("GET", last) <= 3  # (three tries, each from where the last broke)
    with datarepo.open(tmp_path / "copy") as r:
        assert r.refs.read("refs/remotes/origin/main") == tracked
    assert " 0 problems" in b("fsck").output
    net.heal()
    net.requests.clear()
    assert "Fast-forward main" in b("pull").output
    assert [net.count("GET", f"{s[:2]}/{s[2:]}.tar") for s in new] == [0] * (len(new) - 1) + [1]
    assert files_of(tmp_path / "copy") == files_of(worktree)
    assert " 0 problems" in b("fsck").output


@pytest.mark.parametrize("what", [".tar", ".idx", "/objects/", "refs/heads/main"])
def test_bytes_altered_in_flight_are_refused_and_nothing_is_stored(tmp_path: Path, worktree: Path, cli: Cli,
                                                                   remote: str, net: FaultProxy, what: str) -> None:
    cli("push")
    Cli(tmp_path)("clone", remote, "copy")
    b = Cli(tmp_path / "copy")
    with datarepo.open(tmp_path / "copy") as r:
        tracked = r.refs.read("refs/remotes/origin/main")
    more_shards(worktree, cli)
    net.fail(on("GET", what) if what.startswith(".") or what.startswith("refs") else on("GET", contains=what), "flip")
    one_error_line(b("fetch", ok=False))
    with datarepo.open(tmp_path / "copy") as r:
        assert r.refs.read("refs/remotes/origin/main") == tracked
    assert " 0 problems" in b("fsck").output
    assert "Fast-forward main" in b("pull").output
    assert files_of(tmp_path / "copy") == files_of(worktree)


def test_a_server_that_stops_answering_fails_the_command_in_bounded_time(worktree: Path, cli: Cli, remote: str,
                                                                         net: FaultProxy) -> None:
    """Each request waits ``read_timeout`` (DVC's option of the remote) for an answer, tried
    as often as botocore is told; a command on a stalled server held for half an hour a
    request (s3fs's retries around botocore's)."""
    cli("push")
    cli("remote", "modify", "s3", "read_timeout", "1")
    net.fail(on("GET", "refs/heads/main"), "stall", times=None)
    one_error_line(cli("fetch", ok=False), "remote 's3'", "timeout")
    assert 0 < net.count("GET", "refs/heads/main") <= ATTEMPTS


def test_reading_a_remote_by_url_under_faults(tmp_path: Path, worktree: Path, cli: Cli, remote: str,
                                              net: FaultProxy) -> None:
    """A shard altered on its way into the cache folder is a SampleError, and is not kept
    there (it was, and every later run with that cache failed); a body cut short is resumed;
    an error that lasts is tried a bounded number of times. The read API checks what it
    reads (it returned the altered bytes as the datum's) and names the remote in its errors."""
    torch = pytest.importorskip("torch")
    from datarepo.errors import CorruptObjectError
    from datarepo.remotes_config import RemoteError
    from datarepo.torch import DatumDataset, SampleError

    cli("push")
    with datarepo.open(worktree) as ours:
        shards = sorted(ours.store.iter_shards())
        local = {e.key: ours.read(e.datum) for e in ours.tree().select()}

    def epoch(cache: Path, workers: int) -> dict[str, dict[str, bytes]]:
        ds = DatumDataset(remote, cache=str(cache))
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
        return {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")} for s in loader}

    net.fail(on("GET", f"{shards[0][:2]}/{shards[0][2:]}.tar"), "flip")
    with pytest.raises(SampleError, match=shards[0]):
        epoch(tmp_path / "cache", 0)
    assert not list((tmp_path / "cache").glob(f"shards/{shards[0][:2]}/*"))  # (nothing altered kept)
    net.fail(on("GET", ".tar"), "cut", times=2)
    assert epoch(tmp_path / "cache", 2) == local

    net.fail(on("GET", ".tar"), "503", times=None)
    net.requests.clear()
    with pytest.raises(SampleError):
        epoch(tmp_path / "other", 2)
    tries = [net.count("GET", f"{s[:2]}/{s[2:]}.tar") for s in shards]
    assert 0 < max(tries) <= 3 * ATTEMPTS  # (a shard's download three times, each request as botocore is told)
    with datarepo.open(remote) as theirs:
        entry = next(iter(theirs.tree().select()))
        net.heal()
        assert theirs.read(entry.datum) == local[entry.key]  # (a range of a shard: s3fs took its start as a version id)
        net.fail(on("GET", ".tar"), "503", times=None)
        net.requests.clear()
        with pytest.raises(RemoteError, match=remote):
            theirs.read(entry.datum)
        assert 0 < net.count("GET", ".tar") <= ATTEMPTS
        net.heal()
        net.fail(on("GET", ".tar"), "flip")
        with pytest.raises(CorruptObjectError):
            theirs.read(entry.datum)
        assert theirs.read(entry.datum) == local[entry.key]
