"""Bad input only ever raises our error: random bytes, and valid input with bytes flipped, cut
or inserted, fed to every parser of what the program reads, and through the real program."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datarepo import objects, sources
from datarepo.config import Config
from datarepo.errors import DataRepoError
from datarepo.objects import Commit, PageRef, Tree, TreePage
from datarepo.shards import DatumLoc, MemberLoc, ShardIndex, iter_tar
from datarepo.worktree import parse_ignore

OID = "0123456789abcdef0123456789abcdef"


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in [("a/x.jpg", b"jpeg"), ("a/x.cls", b"1"), ("README", b"r"), ("é" * 120 + ".txt", b"long")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


VALID = {
    "config": Config(sparse=("in/",), user={"name": "x"}).to_toml().encode(),
    "ignore": b"*.log\n!keep.log\n/build/\n# note\n**/tmp\n",
    "jsonl": b'{"__key__": "a", "txt": "x", "bin": {"base64": "AAE="}}\n{"__key__": "b/c", "n": 3, "j": [1, {"k": 2}]}\n',
    "tar": _tar(),
    "idx": ShardIndex(OID, 3072, (DatumLoc(OID, 0, 1536, (MemberLoc("jpg", 512, 4), MemberLoc("", 1536, 1))),)).to_bytes(),
    "commit": objects.encode(Commit(OID, (OID,), "a <a@b>", "2024-01-02T03:04:05Z", "m")),
    "tree": objects.encode(Tree((PageRef("a", 1, OID),))),
    "page": objects.encode(TreePage([["a", OID, 3]])),
}


@st.composite
def _damaged(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with a few bytes flipped, cut, inserted or repeated."""
    raw = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "repeat", "value"]))
        numbers = [m.span() for m in re.finditer(rb"-?\d+(\.\d+)?|\"[^\"]*\"|true|false|null", raw)]
        if op == "value" and numbers:  # a number or string of JSON or TOML where another belongs
            start, end = draw(st.sampled_from(numbers))
            raw[start:end] = draw(st.sampled_from([b"1e999", b"-1", b"1.5", b'"x"', b"null", b"[]", b"{}", b"true", b'"a/b"', b'""', b"-0", b"9" * 30]))
        elif op == "flip" and raw:
            raw[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del raw[at : at + draw(st.integers(1, 16))]
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\x00", b"\xff", b"\n", b'"', b"[", b"1e999"]))
        elif op == "truncate":
            del raw[at:]
        else:
            raw[at:at] = raw[at : at + draw(st.integers(1, 64))]
    return bytes(raw)


def _inputs(kind: str) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=2048) | _damaged(VALID[kind])


def _config(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.toml").write_bytes(raw)
        Config.load(Path(d) / "config.toml")


def _tar_members(raw: bytes) -> None:
    list(iter_tar(io.BytesIO(raw), "t.tar", []))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "t.tar").write_bytes(raw)
        list(sources.read_tar(Path(d) / "t.tar", []))


PARSERS: dict[str, Callable[[bytes], object]] = {
    "config": _config,
    "ignore": parse_ignore,
    "jsonl": lambda raw: list(sources.read_jsonl(io.BytesIO(raw), "x.jsonl")),
    "tar": _tar_members,
    "idx": lambda raw: ShardIndex.from_bytes(raw, "x.idx"),
    "commit": objects.decode,
    "tree": objects.decode,
    "page": objects.decode,
}


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_valid_input_parses(kind: str) -> None:
    PARSERS[kind](VALID[kind])


@pytest.mark.parametrize("kind", sorted(PARSERS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bad_input_raises_only_our_error(kind: str, data: st.DataObject) -> None:
    raw = data.draw(_inputs(kind))
    try:
        PARSERS[kind](raw)
    except DataRepoError:
        pass


def _program(args: list[str], cwd: Path, stdin: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real ``datarepo`` program, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "datarepo.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, "DATAREPO_AUTHOR": "t", "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})},
    )


def _fails_in_one_line(result: subprocess.CompletedProcess[bytes]) -> None:
    out = result.stdout + result.stderr
    assert b"Traceback" not in out, out.decode(errors="replace")
    assert result.returncode == 1, out.decode(errors="replace")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(b"Error: "), result.stderr


def _ok_or_one_line(result: subprocess.CompletedProcess[bytes]) -> None:
    if result.returncode != 0:
        _fails_in_one_line(result)
    assert b"Traceback" not in result.stderr


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("program")
    (root / "a.txt").write_bytes(b"a")
    assert _program(["init"], root).returncode == 0
    return root


_FEW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_FEW
@given(raw=_inputs("config"))
def test_the_program_reads_any_config_toml(repo_dir: Path, raw: bytes) -> None:
    config = repo_dir / ".datarepo" / "config.toml"
    good = config.read_bytes()
    config.write_bytes(raw)
    try:
        _ok_or_one_line(_program(["status"], repo_dir))
    finally:
        config.write_bytes(good)


@_FEW
@given(raw=_inputs("ignore"))
def test_the_program_reads_any_ignore_file(repo_dir: Path, raw: bytes) -> None:
    (repo_dir / ".datarepoignore").write_bytes(raw)
    try:
        _ok_or_one_line(_program(["status"], repo_dir))
    finally:
        (repo_dir / ".datarepoignore").unlink()


@_FEW
@given(raw=_inputs("jsonl"))
def test_the_program_reads_any_json_lines_on_stdin(repo_dir: Path, raw: bytes) -> None:
    _ok_or_one_line(_program(["ingest", "-", "--prefix", "in"], repo_dir, stdin=raw))


@_FEW
@given(raw=_inputs("tar"))
def test_the_program_reads_any_tar(repo_dir: Path, raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "x.tar").write_bytes(raw)
        _ok_or_one_line(_program(["ingest", str(Path(d) / "x.tar"), "--prefix", "t"], repo_dir))
