"""Reading a remote by its URL without cloning it (docs/remotes.md, "Training from a
remote"): ``datarepo.open(URL)`` and ``DatumDataset(URL)`` over a pushed local-path remote
(``file://``) and over S3 on loopback (moto's server), with DataLoader workers, with and
without a local cache; read-only, checked, and refused where it cannot be right."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dvc")

from conftest import Cli, write_samples  # noqa: E402
from test_remotes import _s3_remote, origin, s3_endpoint  # noqa: E402,F401  (origin, s3_endpoint: fixtures)

import datarepo  # noqa: E402
from datarepo.errors import CorruptObjectError, InvalidInputError  # noqa: E402
from datarepo.objects import Blob  # noqa: E402
from datarepo.remotes_config import RemoteError  # noqa: E402
from datarepo.torch import DatumDataset, SampleError  # noqa: E402


@pytest.fixture
def pushed(origin: Path, cli: Cli) -> Path:  # noqa: F811
    """The repository of 20 samples in shards of 16 KiB, pushed to its local-path remote."""
    cli("push")
    return origin


def epoch(ds: DatumDataset, workers: int) -> list[tuple[str, bytes, int]]:
    """(key, jpg bytes, label) of one epoch through a DataLoader, in the order it gives them."""
    out = []
    for batch in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers):
        out += zip(batch["__key__"], batch["jpg"], batch["cls"].tolist())
    return out


def dataset(repo: object, **options: object) -> DatumDataset:
    defaults = {"shuffle": True, "seed": 5, "batch_size": 8, "decode": {"cls": "int"}}
    return DatumDataset(repo, **{**defaults, **options})  # type: ignore[arg-type]


def remote_listing(store: Path) -> dict[str, float]:
    return {str(p.relative_to(store)): p.stat().st_mtime for p in store.rglob("*")}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataset_reads_a_remote_by_url_as_it_reads_the_repository(worktree: Path, pushed: Path, workers: int) -> None:
    local = dataset(str(worktree))
    remote = dataset(pushed.as_uri())
    assert remote.commit == local.commit
    read = epoch(remote, workers)
    assert read == epoch(local, 0) and len(read) == 20


def test_the_read_api_over_a_url(worktree: Path, pushed: Path, cli: Cli) -> None:
    with datarepo.open(worktree) as ours, datarepo.open(pushed.as_uri()) as theirs:
        assert theirs.head() == ours.head() and theirs.current_branch() == "main"
        entries = list(ours.tree("main").select(prefix="train/cat/"))
        assert [e.key for e in theirs.tree("main").select(prefix="train/cat/")] == [e.key for e in entries]
        assert all(theirs.read(e.datum, verify=True) == ours.read(e.datum) for e in entries)


def test_a_kept_cache_learns_what_was_pushed_since(worktree: Path, pushed: Path, cli: Cli, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    first = epoch(dataset(pushed.as_uri(), cache=cache), 2)
    write_samples(worktree, 10, seed=1, prefix="more")
    cli("add", ".")
    cli("commit", "-m", "more")
    cli("push")
    grown = dataset(pushed.as_uri(), cache=cache)  # (the kept location cache reads the new shards' .idx)
    assert len(list(grown.keys_in_order())) == 30 and grown.commit == datarepo.open(worktree).head()
    assert epoch(dataset(pushed.as_uri(), rev="main~1", cache=cache), 2) == first


def test_a_shard_gone_from_the_remote_is_a_sample_error(pushed: Path) -> None:
    ds, skipping = dataset(pushed.as_uri()), dataset(pushed.as_uri(), on_error="skip")  # (planned with it there)
    tar = sorted(pushed.glob("shards/*/*.tar"))[0]
    tar.chmod(0o644)
    tar.unlink()
    with pytest.raises(SampleError, match=f"in shard {tar.parent.name}{tar.stem}"):
        epoch(ds, 0)
    with pytest.warns(UserWarning):
        read = epoch(skipping, 0)
    assert 0 < len(read) < 20 and len(skipping.skipped) == 20 - len(read)
    with pytest.raises(datarepo.errors.ObjectNotFoundError):  # planned after: its datums are in no shard
        dataset(pushed.as_uri())


def test_a_damaged_remote_shard_or_object_is_refused(worktree: Path, pushed: Path) -> None:
    tar = sorted(pushed.glob("shards/*/*.tar"))[0]
    tar.chmod(0o644)
    data = bytearray(tar.read_bytes())
    data[1536 + 10] ^= 0xFF  # (in the first datum's .jpg: .cls and its header, the .jpg's header, then its bytes)
    tar.write_bytes(bytes(data))
    with pytest.raises(SampleError, match="does not match"):
        epoch(dataset(pushed.as_uri(), shuffle=False), 0)
    with datarepo.open(worktree) as repo:  # a commit's tree replaced by another valid object
        commit = repo.read_commit(repo.head())
        other = repo.store.put_object(Blob({"not": "a tree"}))
    page = pushed / "objects" / commit.tree[:2] / commit.tree[2:]
    page.chmod(0o644)
    page.write_bytes((worktree / ".datarepo" / "objects" / other[:2] / other[2:]).read_bytes())
    with pytest.raises(CorruptObjectError):
        list(datarepo.open(pushed.as_uri()).tree("main").select())


def test_a_remote_opened_by_url_is_read_only(worktree: Path, pushed: Path) -> None:
    before = remote_listing(pushed)
    with datarepo.open(pushed.as_uri()) as repo:
        head = repo.head()
        for attempt in (lambda: repo.commit({}, "x"), lambda: repo.writer(),
                        lambda: repo.refs.update("refs/heads/x", head, expected=None, message="x"),
                        lambda: repo.record_run("r", dataset(repo))):
            with pytest.raises(InvalidInputError, match="read-only"):
                attempt()
    assert remote_listing(pushed) == before


def test_what_is_no_repository_or_no_cache_of_it_is_one_error(pushed: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for url in ((tmp_path / "nothing").as_uri(), (tmp_path / "empty").as_uri()):
        with pytest.raises(RemoteError, match="no repository at"):
            datarepo.open(url)
    other = tmp_path / "other"
    shutil.copytree(pushed, other)
    dataset(pushed.as_uri(), cache=str(tmp_path / "cache"))
    with pytest.raises(InvalidInputError, match="keeps the data of"):
        dataset(other.as_uri(), cache=str(tmp_path / "cache"))
    with pytest.raises(InvalidInputError, match="cache"):
        dataset(str(tmp_path), cache=str(tmp_path / "cache"))  # (a folder is no URL: nothing to cache)


@pytest.fixture
def on_s3(worktree: Path, cli: Cli, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    """A repository of 40 samples in shards of 16 KiB, pushed to S3 on loopback; the
    environment names the endpoint and credentials (as for a clone)."""
    write_samples(worktree, 40)
    cli("init", "--shard-size", "16K")
    cli("add", ".")
    cli("commit", "-m", "first")
    bucket = f"stream-{uuid.uuid4().hex[:12]}"  # (one server for the session: a bucket a test)
    _s3_remote(cli, s3_endpoint, bucket)
    cli("push")
    for name, value in (("AWS_ENDPOINT_URL", s3_endpoint), ("AWS_ACCESS_KEY_ID", "test"),
                        ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    return f"s3://{bucket}/repo"


def s3_shards(url: str) -> list[str]:
    import boto3

    listed = boto3.client("s3").list_objects_v2(Bucket=url.split("/")[2], Prefix="repo/shards/")
    return sorted(o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".tar"))


def test_a_dataset_streams_from_s3_with_workers_and_its_run_is_recorded_here(worktree: Path, on_s3: str) -> None:
    local = epoch(dataset(str(worktree)), 0)
    remote = dataset(on_s3)  # (a temporary cache folder, which the workers share)
    assert epoch(remote, 2) == local
    downloaded = sorted(p.name for p in Path(remote.cache).glob("shards/*/*.tar"))  # type: ignore[arg-type]
    assert downloaded == sorted(Path(k).name for k in s3_shards(on_s3))  # each shard once, whole
    with datarepo.open(worktree) as repo:  # (the commit it read is here: the run pins it)
        repo.record_run("from-s3", remote)
        again = DatumDataset.from_run(repo, "from-s3")
    assert epoch(again, 0) == local


def test_a_kept_cache_reads_no_shard_from_s3_again(worktree: Path, on_s3: str, tmp_path: Path) -> None:
    import boto3

    cache = str(tmp_path / "cache")
    first = epoch(dataset(on_s3, cache=cache), 2)
    uncached = dataset(on_s3, cache=str(tmp_path / "other"))  # (planned, nothing downloaded yet)
    for key in s3_shards(on_s3):  # the remote's shards gone: a second run reads the cached copies
        boto3.client("s3").delete_object(Bucket=on_s3.split("/")[2], Key=key)
    assert epoch(dataset(on_s3, cache=cache), 2) == first == epoch(dataset(str(worktree)), 0)
    with pytest.raises(SampleError, match="in shard"):  # (without them, each is a sample error)
        epoch(uncached, 0)
