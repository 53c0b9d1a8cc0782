"""Bad input: one clear error line, a non-zero exit, and nothing committed is harmed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import Cli, one_error_line, shard_file, without_file_override

from datarepo.repo import Repo


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for w in words:
        assert w in lines[0], lines[0]


def test_outside_a_repository(tmp_path: Path) -> None:
    _one_line_error(Cli(tmp_path)("status", ok=False), "not a datarepo repository")


def test_unknown_revision(repo_with_commit, cli) -> None:
    _one_line_error(cli("log", "nope", ok=False), "unknown revision", "nope")
    _one_line_error(cli("show", "HEAD~5", ok=False), "no such ancestor")
    _one_line_error(cli("cat", "HEAD:no/such/key.jpg", ok=False), "no such key")
    _one_line_error(cli("checkout", "deadbeef", ok=False), "unknown revision")


def test_empty_repository_log_and_commit(worktree: Path, cli) -> None:
    cli("init")
    assert cli("log").output == ""
    assert cli("ls").output == ""
    _one_line_error(cli("commit", "-m", "x", ok=False), "nothing to commit")
    _one_line_error(cli("init", ok=False), "already a datarepo repository")


def test_symlinks_are_skipped_with_a_note_or_followed(worktree: Path, cli, tmp_path: Path) -> None:
    target = tmp_path / "outside.jpg"
    target.write_bytes(b"target bytes")
    (worktree / "link.jpg").symlink_to(target)
    (worktree / "real.jpg").write_bytes(b"real")
    cli("init")
    out = cli("add", ".").output
    assert "skipped symlink link.jpg" in out
    cli("commit", "-m", "x")
    assert [e["key"] for e in json.loads(cli("ls", "--json").output)] == ["real"]
    cli("add", "--follow", ".")
    cli("commit", "-m", "y")
    assert cli("cat", "HEAD:link.jpg").stdout_bytes == b"target bytes"


def test_a_fifo_is_left_out_with_a_note_and_refused_when_named(worktree: Path, cli) -> None:
    """As git passes over what it cannot store: ``add .`` stores the rest and says what it
    left out, status never calls the tree clean meanwhile, and naming the fifo is an error."""
    (worktree / "ok.jpg").write_bytes(b"ok")
    os.mkfifo(worktree / "pipe.jpg")
    cli("init")
    out = cli("add", ".").output
    assert "note: not a regular file: pipe.jpg (left out)" in out and "staged 1 added" in out
    cli("commit", "-m", "x")
    status = cli("status").output
    assert "not a regular file: pipe.jpg" in status and "work tree clean" not in status
    _one_line_error(cli("add", "pipe.jpg", ok=False), "not a regular file: pipe.jpg")


def test_a_name_that_is_not_utf8_is_left_out_and_blocks_nothing(worktree: Path, cli) -> None:
    (worktree / "ok.jpg").write_bytes(b"ok")
    bad = os.path.join(os.fsencode(worktree), b"bad\xff.jpg")
    with open(bad, "wb") as f:
        f.write(b"x")
    cli("init")
    out = cli("add", ".").output
    assert "not valid UTF-8 (left out)" in out and "staged 1 added" in out
    cli("commit", "-m", "x")
    status = cli("status").output
    assert "not valid UTF-8" in status and "nothing to commit, but 1 left out" in status
    _one_line_error(cli("add", os.fsdecode(bad), ok=False), "not valid UTF-8")


def test_empty_files_round_trip(worktree: Path, cli) -> None:
    (worktree / "empty.txt").write_bytes(b"")
    (worktree / "empty.cls").write_bytes(b"")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "empty")
    assert cli("cat", "HEAD:empty.txt").stdout_bytes == b""
    assert "0 problems" in cli("fsck").output


def test_unreadable_file(worktree: Path) -> None:
    """Runs the CLI without the power to bypass file permissions (root reads everything),
    so reading the file really fails."""
    (worktree / "ok.jpg").write_bytes(b"ok")
    (worktree / "secret.jpg").write_bytes(b"secret")
    os.chmod(worktree / "secret.jpg", 0)
    env = {**os.environ, "DATAREPO_AUTHOR": "t"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "datarepo.cli", *a], cwd=worktree, env=env,  # noqa: E731
                                    capture_output=True, text=True, preexec_fn=without_file_override)
    assert run("init").returncode == 0
    result = run("add", ".")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["Error: cannot read secret.jpg: Permission denied"]
    assert Repo.open(worktree).index.staging.changes() == {}


def test_a_directory_whose_files_cannot_be_stated(worktree: Path) -> None:
    """A directory that can be listed but not searched (read, no execute permission): its
    names are found, each stat is refused, and the error names the file and why."""
    (worktree / "ok.jpg").write_bytes(b"ok")
    (worktree / "locked").mkdir()
    (worktree / "locked" / "a.jpg").write_bytes(b"a")
    env = {**os.environ, "DATAREPO_AUTHOR": "t"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "datarepo.cli", *a], cwd=worktree, env=env,  # noqa: E731
                                    capture_output=True, text=True, preexec_fn=without_file_override)
    assert run("init").returncode == 0 and run("add", "ok.jpg").returncode == 0
    os.chmod(worktree / "locked", 0o644)
    try:
        result = run("status")
    finally:
        os.chmod(worktree / "locked", 0o755)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["Error: cannot stat locked/a.jpg: Permission denied"]
    assert run("status", "--json").returncode == 0  # searchable again: the file is seen


class _Flipped(NamedTuple):
    shard: str
    path: Path
    raw: bytearray  # the shard's bytes, one of them flipped
    at: int  # where
    datum: str  # the datum that holds it
    key: str  # a key of that datum
    ext: str  # and the member


def _flip_a_byte(repo) -> _Flipped:  # type: ignore[no-untyped-def]
    """Flips the last byte of the largest member of a shard's first datum."""
    shard = next(repo.store.iter_shards())
    path = shard_file(repo, shard)
    os.chmod(path, 0o644)
    first = repo.store.read_index(shard).datums[0]
    member = max(first.members, key=lambda m: m.size)
    raw = bytearray(path.read_bytes())
    at = member.offset + member.size - 1
    raw[at] ^= 0xFF
    path.write_bytes(raw)
    key = next(e.key for p in repo.store.get_object(repo.read_commit(repo.head()).tree).pages
               for e in repo.store.get_object(p.page).entries if e.datum == first.datum)
    return _Flipped(shard, path, raw, at, first.datum, key, member.ext)


def test_corrupted_shard_is_named(repo_with_commit, worktree: Path, cli) -> None:
    repo, _ = repo_with_commit
    shard, path, raw, at, datum, key, ext = _flip_a_byte(repo)
    result = cli("fsck", ok=False)
    assert result.exit_code == 1 and f"corrupt object {shard}.tar" in result.output
    # Its datums are in a shard, a damaged one: one line says so, not one line a datum.
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    held = len(repo.store.read_index(shard).datums)
    assert len(errors) == 2 and "in no shard" not in result.output
    assert f"shard {shard} is damaged and is the only copy of {held} reachable datums" in errors[1]
    from datarepo.errors import CorruptObjectError

    with pytest.raises(CorruptObjectError, match=shard):
        repo.read(datum, verify=True)
    # Whatever hands the datum's bytes on checks them first: one line naming the shard, never
    # the flipped bytes as the datum's.
    file = worktree / f"{key}.{ext}"
    before = file.read_bytes()
    _one_line_error(cli("cat", f"HEAD:{key}.{ext}", ok=False), f"corrupt object {shard}.tar")
    _one_line_error(cli("export", "HEAD", str(worktree.parent / "out"), ok=False), f"corrupt object {shard}.tar")
    _one_line_error(cli("export", "HEAD", str(worktree.parent / "outs"), "--shards", ok=False), shard)
    file.unlink()
    _one_line_error(cli("checkout", "-f", "HEAD", ok=False), f"corrupt object {shard}.tar")
    assert not file.exists()
    repacked = cli("repack", "--all", ok=False)  # what reads whole is salvaged; the damaged shard is kept
    assert repacked.exit_code == 1 and f"error: 1 reachable datums did not read whole: kept shard {shard}" in repacked.output
    assert (repo.dotdir / "shards" / shard[:2] / f"{shard[2:]}.tar").exists()
    raw[at] ^= 0xFF  # mended: nothing was lost
    path.write_bytes(raw)
    cli("checkout", "-f", "HEAD")
    assert file.read_bytes() == before
    assert "0 problems" in cli("fsck").output


def test_a_corrupted_large_member_is_caught_as_it_is_copied(repo_with_commit, worktree: Path, cli, monkeypatch) -> None:
    """Members over the read-whole limit are streamed into the work tree once, and the datum's
    id is checked against what was written: a mismatch removes the files again."""
    from datarepo.porcelain import checkout, history

    monkeypatch.setattr(checkout, "LARGE_FILE", 16)  # every .jpg of the samples is streamed
    monkeypatch.setattr(history, "LARGE_FILE", 16)
    repo, _ = repo_with_commit
    flipped = _flip_a_byte(repo)
    file = f"{flipped.key}.{flipped.ext}"
    size = (worktree / file).stat().st_size
    assert size > 16
    (worktree / file).unlink()
    _one_line_error(cli("checkout", "-f", "HEAD", ok=False), f"corrupt object {flipped.shard}.tar")
    assert not (worktree / file).exists()
    _one_line_error(cli("export", "HEAD", str(worktree.parent / "out"), ok=False), f"corrupt object {flipped.shard}.tar")
    assert not (worktree.parent / "out" / file).exists()
    # cat streams it once: its bytes are out before the check, which then fails the command
    result = cli("cat", f"HEAD:{file}", ok=False)
    assert result.exit_code == 1 and f"corrupt object {flipped.shard}.tar" in result.stderr
    assert result.stdout_bytes == bytes(flipped.raw[flipped.at - size + 1 : flipped.at + 1])


def test_a_corrupt_ref_is_an_error_never_an_unborn_branch(repo_with_commit, worktree: Path, cli) -> None:
    """A branch file that holds no commit id was read as an unborn branch: log printed
    nothing, fsck found nothing, a commit would have started a new history and gc would
    then have deleted the old one. Now every command that reads it says so in one line."""
    repo, _ = repo_with_commit
    head = repo.head()
    ref = repo.dotdir / "refs/heads/main"
    ref.write_text("garbage\n")
    for args in (["log"], ["status"], ["commit", "-m", "x"], ["gc"], ["branch"]):
        _one_line_error(cli(*args, ok=False), "refs/heads/main")
    result = cli("fsck", ok=False)
    assert result.exit_code == 1 and "refs/heads/main" in result.output
    assert ref.read_text() == "garbage\n"
    _one_line_error(cli("branch", "main", head, ok=False), "refs/heads/main")  # not without -f
    cli("branch", "-f", "main", head)  # the way to mend it
    assert ref.read_text() == f"{head}\n"
    assert "0 problems" in cli("fsck").output
    (repo.dotdir / "HEAD").write_text("0123\n")  # a detached HEAD that names no commit
    _one_line_error(cli("log", ok=False), "HEAD")


def test_a_deleted_shard_leaves_its_datums_in_no_shard(repo_with_commit, cli) -> None:
    repo, _ = repo_with_commit
    shard = next(repo.store.iter_shards())
    held = {d.datum for d in repo.store.read_index(shard).datums}
    shard_file(repo, shard, ".idx").unlink()
    shard_file(repo, shard).unlink()
    result = cli("fsck", ok=False)
    lost = [line for line in result.output.splitlines() if line.endswith("is in no shard")]
    assert {line.split()[2] for line in lost} == held and "damaged" not in result.output


def test_truncated_shard_is_named(repo_with_commit, worktree: Path, cli) -> None:
    repo, _ = repo_with_commit
    shard = next(repo.store.iter_shards())
    index = repo.store.read_index(shard)
    path = shard_file(repo, shard)
    os.chmod(path, 0o644)
    os.truncate(path, index.datums[-1].offset + 10)
    key = next(e for e in repo.store.get_object(repo.store.get_object(repo.read_commit(repo.head()).tree).pages[0].page).entries
               if e.datum == index.datums[-1].datum).key
    _one_line_error(cli("cat", f"HEAD:{key}.jpg", ok=False), f"corrupt object {shard}.tar", "truncated")
    assert f"corrupt object {shard}.tar" in cli("fsck", ok=False).output


def test_corrupted_commit_object_is_named(repo_with_commit, cli) -> None:
    repo, _ = repo_with_commit
    head = repo.head()
    path = repo.dotdir / "objects" / head[:2] / head[2:]
    os.chmod(path, 0o644)
    path.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    _one_line_error(cli("log", ok=False), f"corrupt object {head}")
    assert f"corrupt object {head}" in cli("fsck", ok=False).output


def test_object_with_wrong_content_fails_fsck(repo_with_commit, cli) -> None:
    repo, _ = repo_with_commit
    head = repo.head()
    path = repo.dotdir / "objects" / head[:2] / head[2:]
    c = repo.read_commit(head)
    from datarepo import objects

    forged = objects.Commit(c.tree, c.parents, c.author, c.time, "forged message")
    os.chmod(path, 0o644)
    path.write_bytes(objects.encode(forged))
    assert f"corrupt object {head}: content hashes to" in cli("fsck", ok=False).output


def test_unsafe_keys_from_untrusted_input_are_refused(tmp_path: Path, worktree: Path, cli) -> None:
    import io
    import tarfile

    bad = tmp_path / "evil.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    cli("init")
    _one_line_error(cli("ingest", str(bad), "--prefix", "x", ok=False), "invalid key")
    lines = tmp_path / "evil.jsonl"
    lines.write_text('{"__key__": "/etc/passwd", "txt": "x"}\n')
    _one_line_error(cli("ingest", str(lines), "--prefix", "x", ok=False), "invalid key")


def test_bad_jsonl_and_truncated_tar(tmp_path: Path, worktree: Path, cli) -> None:
    (tmp_path / "bad.jsonl").write_text('{"__key__": "a", "txt": "x"}\nnot json\n')
    cli("init")
    _one_line_error(cli("ingest", str(tmp_path / "bad.jsonl"), "--prefix", "x", ok=False), "bad.jsonl:2")
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("a.bin")
        info.size = 5000
        tf.addfile(info, io.BytesIO(b"y" * 5000))
    (tmp_path / "cut.tar").write_bytes(buf.getvalue()[:2000])
    _one_line_error(cli("ingest", str(tmp_path / "cut.tar"), "--prefix", "x", ok=False), "truncated")
    (tmp_path / "junk.tar").write_bytes(b"\x01" * 1024)
    _one_line_error(cli("ingest", str(tmp_path / "junk.tar"), "--prefix", "x", ok=False), "junk.tar")
    assert cli("log").output == ""


def test_names_that_are_not_utf8_in_a_tar_or_json_lines_are_refused(tmp_path: Path, worktree: Path, cli) -> None:
    """A tar member's name is bytes, and JSON may escape a lone surrogate: neither can be a
    key or an extension, which are stored as UTF-8. One line, and nothing is committed."""
    import io
    import tarfile

    bad = tmp_path / "latin1.tar"
    with tarfile.open(bad, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("caf\xe9.jpg")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    cli("init")
    _one_line_error(cli("ingest", str(bad), "--prefix", "x", ok=False), "latin1.tar", "not valid UTF-8")
    for n, line in enumerate(['{"__key__": "a\\ud800", "txt": "x"}', '{"__key__": "a", "t\\ud800": "x"}']):
        (tmp_path / f"s{n}.jsonl").write_text(line + "\n")
        _one_line_error(cli("ingest", str(tmp_path / f"s{n}.jsonl"), "--prefix", "x", ok=False), f"s{n}.jsonl:1", "not valid UTF-8")
    assert cli("log").output == ""


def test_tar_members_that_are_not_regular_files_are_skipped_with_a_note(tmp_path: Path, worktree: Path, cli) -> None:
    """As WebDataset reads a tar, only regular members make samples; a link, device or fifo
    is passed over, and the ingest says so (a directory is not worth a note)."""
    import io
    import tarfile

    src = tmp_path / "mixed.tar"
    with tarfile.open(src, "w") as tf:
        for name, kind, data in [
            ("d", tarfile.DIRTYPE, b""),
            ("d/a.jpg", tarfile.REGTYPE, b"jpeg"),
            ("d/a.cls", tarfile.REGTYPE, b"3"),
            ("d/b.jpg", tarfile.SYMTYPE, b""),
            ("d/c.jpg", tarfile.LNKTYPE, b""),
            ("d/f.jpg", tarfile.FIFOTYPE, b""),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            info.linkname = "a.jpg" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tf.addfile(info, io.BytesIO(data) if data else None)
    cli("init")
    result = cli("ingest", str(src), "--prefix", "x")
    assert f"note: skipped {src}: member 'd/b.jpg': a symlink" in result.output
    assert f"note: skipped {src}: member 'd/f.jpg': a fifo" in result.output
    assert f"note: skipped {src}: member 'd/c.jpg': a hard link to 'a.jpg', which the tar does not hold" in result.output
    assert cli("ls", "HEAD").output.split() == ["x/d/a"]
    assert cli("cat", "HEAD:x/d/a.jpg").stdout_bytes == b"jpeg"


def test_keys_that_would_be_both_a_file_and_a_directory_are_refused_before_writing(
    tmp_path: Path, worktree: Path, cli
) -> None:
    """An ingest can hold keys ``x`` (a ``.jpg``) and ``x.jpg/y``: stock WebDataset reads them,
    but no folder can hold both. export and checkout refuse them in one line before writing
    a file, and leave the work tree and HEAD as they were; a file in the way that the same
    checkout removes first is no obstacle."""
    cli("init")
    (worktree / "p").mkdir()
    (worktree / "p" / "keep.txt").write_text("k")
    cli("add", ".")
    cli("commit", "-m", "base")
    lines = tmp_path / "a.jsonl"
    lines.write_text('{"__key__": "keep", "txt": "k"}\n{"__key__": "x", "jpg": "a"}\n{"__key__": "x.jpg/y", "txt": "b"}\n')
    cli("ingest", str(lines), "--prefix", "p")  # p is in the work tree: checkout writes there
    _one_line_error(cli("export", "HEAD", str(tmp_path / "out"), ok=False), "p/x.jpg would be both a file and a directory")
    assert not (tmp_path / "out").exists()
    head = cli("log", "--oneline", "-n", "1").output
    _one_line_error(cli("checkout", "-f", "HEAD", ok=False), "p/x.jpg would be both")
    assert sorted(p.name for p in (worktree / "p").iterdir()) == ["keep.txt"]
    assert cli("log", "--oneline", "-n", "1").output == head
    # one key at a time: p/x on disk, then p/x.jpg/y beside it
    lines.write_text('{"__key__": "keep", "txt": "k"}\n{"__key__": "x", "jpg": "a"}\n')
    cli("ingest", str(lines), "--prefix", "p")
    cli("checkout", "-f", "HEAD")
    assert (worktree / "p" / "x.jpg").read_text() == "a"
    lines.write_text('{"__key__": "x.jpg/y", "txt": "b"}\n')
    cli("ingest", str(lines), "--prefix", "p", "--append")
    _one_line_error(cli("checkout", "-f", "HEAD", ok=False), "p/x.jpg is a file where a directory is needed")
    assert (worktree / "p" / "x.jpg").read_text() == "a"
    # the same files, once p/x is gone from the revision: its file is removed, then the directory made
    lines.write_text('{"__key__": "keep", "txt": "k"}\n{"__key__": "x.jpg/y", "txt": "b"}\n')
    cli("ingest", str(lines), "--prefix", "p")
    cli("checkout", "-f", "HEAD")
    assert (worktree / "p" / "x.jpg" / "y.txt").read_text() == "b"
    # and back: the directory goes with its last file, unless a file no datum holds (an ignored one) stays in it
    lines.write_text('{"__key__": "keep", "txt": "k"}\n{"__key__": "x", "jpg": "a"}\n')
    cli("ingest", str(lines), "--prefix", "p")
    (worktree / ".datarepoignore").write_text("*.log\n")
    (worktree / "p" / "x.jpg" / "NOTES.log").write_bytes(b"ignored")
    _one_line_error(cli("checkout", "-f", "HEAD", ok=False), "p/x.jpg is a directory where a file is needed")
    assert (worktree / "p" / "x.jpg" / "NOTES.log").read_bytes() == b"ignored"
    (worktree / "p" / "x.jpg" / "NOTES.log").unlink()
    cli("checkout", "-f", "HEAD")
    assert (worktree / "p" / "x.jpg").read_text() == "a"


def test_invalid_ref_names(repo_with_commit, cli) -> None:
    for name in ("a..b", "a b", "x.lock", "a/", "~x", ".hidden", "a:b"):
        _one_line_error(cli("branch", name, ok=False), "invalid branch name")
        _one_line_error(cli("tag", "--", name, ok=False), "invalid tag name")


def test_deleting_the_index_loses_no_data(repo_with_commit, worktree: Path, cli) -> None:
    repo, files = repo_with_commit
    (worktree / ".datarepo/index.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (worktree / f".datarepo/index.sqlite{suffix}").unlink(missing_ok=True)
    assert cli("cat", "HEAD:train/cat/0000.jpg").stdout_bytes == files["train/cat/0000.jpg"]
    assert json.loads(cli("status", "--json").output) == {"added": [], "modified": [], "deleted": []}
    assert "index rebuilt" in cli("fsck", "--rebuild-index").output


def test_damaged_index_is_set_aside_and_rebuilt(repo_with_commit, worktree: Path, cli) -> None:
    _, files = repo_with_commit
    index = worktree / ".datarepo/index.sqlite"
    for suffix in ("-wal", "-shm"):
        (worktree / f".datarepo/index.sqlite{suffix}").unlink(missing_ok=True)
    index.write_bytes(b"this is not a database" * 100)
    assert cli("cat", "HEAD:train/cat/0000.jpg").stdout_bytes == files["train/cat/0000.jpg"]
    assert json.loads(cli("status", "--json").output) == {"added": [], "modified": [], "deleted": []}
    assert (worktree / ".datarepo/index.sqlite.damaged").exists()
    assert "0 problems" in cli("fsck").output


def test_commit_refuses_a_staged_datum_no_shard_holds(repo_with_commit, worktree: Path, cli) -> None:
    (worktree / "extra.txt").write_bytes(b"staged, then its shard is forgotten")
    cli("add", ".")
    repo = Repo.open(worktree)
    head = repo.head()
    (datum, _), = [v for k, v in repo.index.staging.changes().items() if k == "extra"]
    shard, _ = repo.index.locations.locate(datum) or (None, None)
    with repo.index.transaction():
        repo.index.locations.drop_shard(shard)
    _one_line_error(cli("commit", "-m", "x", ok=False), "staged datum", datum)
    assert Repo.open(worktree).head() == head


def _program(cwd: Path, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """The real program in a process of its own, without the power to bypass file permissions."""
    env = {**os.environ, "DATAREPO_AUTHOR": "t", "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, preexec_fn=kw.pop("preexec_fn", without_file_override), **kw)


def test_an_unreadable_directory_blocks_only_what_it_could_hide(worktree: Path) -> None:
    """``add good.txt`` does not care about a directory elsewhere; ``add .`` and ``status``
    refuse, since the directory's datums would look deleted, and list every bad entry."""
    (worktree / "good.txt").write_bytes(b"good")
    for name in ("locked", "shut"):
        (worktree / name).mkdir()
        (worktree / name / "a.txt").write_bytes(b"a")
    assert _program(worktree, "init").returncode == 0
    os.chmod(worktree / "locked", 0)
    os.chmod(worktree / "shut", 0)
    try:
        assert _program(worktree, "add", "good.txt").returncode == 0
        result = _program(worktree, "add", ".")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            "error: cannot read directory shut/: Permission denied",
            "Error: cannot read directory locked/: Permission denied (and 1 more)",
        ] or result.stderr.strip().splitlines() == [
            "error: cannot read directory locked/: Permission denied",
            "Error: cannot read directory shut/: Permission denied (and 1 more)",
        ], result.stderr
        one_error_line(_program(worktree, "add", "locked/a.txt"), "locked", "Permission denied")
    finally:
        os.chmod(worktree / "locked", 0o755)
        os.chmod(worktree / "shut", 0o755)
    assert list(Repo.open(worktree).index.staging.changes()) == ["good"]


def test_add_follow_of_one_path_ignores_a_dangling_link_elsewhere(worktree: Path, cli) -> None:
    (worktree / "x.txt").write_bytes(b"x")
    (worktree / "dangling.txt").symlink_to(worktree / "gone.txt")
    cli("init")
    cli("add", "--follow", "x.txt")
    out = cli("add", "--follow", ".").output
    assert "skipped symlink dangling.txt: its target cannot be read" in out
    assert "work tree clean" not in cli("status", "--follow").output


def test_stdin_that_is_closed_is_one_line(worktree: Path) -> None:
    assert _program(worktree, "init").returncode == 0
    result = _program(worktree, "ingest", "-", "--prefix", "p", preexec_fn=lambda: os.close(0))
    one_error_line(result, "standard input is closed")


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        ('{"txt": "no key"}\n', ['<stdin>:1', 'no "__key__" field']),
        ('[1, 2]\n', ["<stdin>:1", "a datum is a JSON object, not a list"]),
        ('"text"\n', ["<stdin>:1", "not a string"]),
        ('{"__key__": 3, "txt": "x"}\n', ['"__key__" must be a string']),
        ('{"__key__": "a"}\n', ["has no members"]),
        ('{"__key__": "a", "txt": "x", "txt": "y"}\n', ["field 'txt' appears twice"]),
        ('{"__key__": "a", "txt": true}\n', ["unsupported member value True"]),
        ('{"__key__": "a", "b/c": "x"}\n', ["<stdin>:1", "invalid member name 'b/c'"]),
        ('{"__key__": "a", "x\\u0000": "x"}\n', ["invalid member name"]),
        ('{"__key__": "a/../b", "txt": "x"}\n', ["invalid key"]),
        ('{"__key__": ".datarepo/HEAD", "txt": "x"}\n', ["invalid key"]),
        # a dot in the key's last part: its file a.b.txt would be read back as key 'a'
        ('{"__key__": "d/a.b", "txt": "x"}\n', ["<stdin>:1", "invalid key 'd/a.b'", "whose key is 'd/a'"]),
        ('{"__key__": "a.", "txt": "x"}\n', ["invalid key 'a.'"]),
        ('{"__key__": "a.b", "": "x"}\n', ["invalid key 'a.b'"]),
        ('{"__key__": "a", "txt": "1"}\n{"__key__": "b", "txt": "2"}\n{"__key__": "a", "txt": "3"}\n',
         ["key 'a' comes twice: <stdin>:1 and <stdin>:3"]),
        ('{"__key__": "a", "txt": {"base64": "!!"}}\n', ["<stdin>:1", "bad JSON-lines datum"]),
        (b"\xff\xfe\n", ["<stdin>:1"]),
        ("[" * 100_000 + "\n", ["<stdin>:1"]),
    ],
)
def test_bad_json_lines_are_one_line_and_commit_nothing(worktree: Path, cli, lines: str | bytes, words: list[str]) -> None:
    cli("init")
    _one_line_error(cli("ingest", "-", "--prefix", "p", input=lines, ok=False), *words)
    assert cli("log").output == ""


def test_a_key_twice_across_files_is_refused(tmp_path: Path, worktree: Path, cli) -> None:
    import io
    import tarfile

    (tmp_path / "one.jsonl").write_text('{"__key__": "a", "txt": "1"}\n')
    (tmp_path / "two.jsonl").write_text('{"__key__": "a", "txt": "2"}\n')
    cli("init")
    _one_line_error(cli("ingest", str(tmp_path / "*.jsonl"), "--prefix", "p", ok=False),
                    f"key 'a' comes twice: {tmp_path}/one.jsonl:1 and {tmp_path}/two.jsonl:1")
    for name in ("x.tar", "y.tar"):  # two shards of one set, each with a sample 'a'
        with tarfile.open(tmp_path / name, "w") as tf:
            info = tarfile.TarInfo("a.jpg")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    _one_line_error(cli("ingest", str(tmp_path / "*.tar"), "--prefix", "p", ok=False), "key 'a' comes twice",
                    "x.tar member a.jpg", "y.tar member a.jpg")
    assert cli("log").output == ""


def test_a_member_name_that_cannot_be_stored_is_refused_at_the_door(tmp_path: Path, worktree: Path, cli) -> None:
    """A member named ``a/b`` was once taken, and then cat, export and repack failed forever."""
    cli("init")
    _one_line_error(cli("ingest", "-", "--prefix", "p", input='{"__key__": "k", "a/b": "x"}\n', ok=False), "invalid member name")
    assert cli("log").output == ""
    cli("ingest", "-", "--prefix", "p", input='{"__key__": "k", "": "no extension", "txt": "t"}\n')
    assert cli("cat", "HEAD:p/k").stdout_bytes == b"no extension"
    cli("export", "HEAD", str(tmp_path / "out"))
    assert (tmp_path / "out" / "p" / "k").read_bytes() == b"no extension"
    cli("repack", "--all")
    assert "0 problems" in cli("fsck").output


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("DATAREPO_LOCK_TIMEOUT", "soon", ["DATAREPO_LOCK_TIMEOUT must be a number of seconds", "'soon'"]),
        ("DATAREPO_LOCK_TIMEOUT", "-1", ["DATAREPO_LOCK_TIMEOUT"]),
        ("DATAREPO_LOCK_TIMEOUT", "nan", ["DATAREPO_LOCK_TIMEOUT"]),
        ("DATAREPO_TIME", "yesterday", ["DATAREPO_TIME must be a UTC time", "'yesterday'"]),
        ("DATAREPO_TIME", "2024-13-01T00:00:00Z", ["DATAREPO_TIME"]),
    ],
)
def test_bad_environment_variables_are_one_line(repo_with_commit, worktree: Path, name: str, value: str, words: list[str]) -> None:
    (worktree / "new.txt").write_bytes(b"n")
    assert _program(worktree, "add", "new.txt").returncode == 0
    one_error_line(_program(worktree, "commit", "-m", "x", env={name: value}), *words)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_bad_worker_counts_are_one_line(repo_with_commit, worktree: Path, value: str) -> None:
    (worktree / "new.txt").write_bytes(b"n")
    one_error_line(_program(worktree, "add", "new.txt", env={"DATAREPO_WORKERS": value}), "DATAREPO_WORKERS", repr(value))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"[core\n", ["config.toml"]),
        (b"\xff\xfe", ["not UTF-8"]),
        (b"core = 3\n", ["[core] must be a table"]),
        (b'[core]\nshard_size = "big"\n', ["core.shard_size must be a whole number", "'big'"]),
        (b"[core]\nshard_size = true\n", ["core.shard_size must be a whole number"]),
        (b"[core]\nshard_size = 1e999\n", ["core.shard_size must be a whole number"]),
        (b"[core]\nshard_size = 10\n", ["shard_size must be at least 1024"]),
        (b'[core]\ngrouping = "dirs"\n', ["grouping must be one of wds, file"]),
        (b'[core]\nbare = "no"\n', ["core.bare must be true or false"]),
        (b'[core]\nsparse = ["in"]\n', ["sparse prefix ends with '/'"]),
        (b'[core]\nsparse = ["../x/"]\n', ["sparse prefix", "invalid key"]),
        (b"[core]\nsparse = [1]\n", ["core.sparse must hold only strings"]),
        (b"[user]\nname = 1\n", ["[user] must hold only strings"]),
        (b"[gc]\nreflog_expire_days = -1\n", ["reflog_expire_days must not be negative"]),
    ],
)
def test_a_bad_config_is_one_line(repo_with_commit, worktree: Path, cli, text: bytes, words: list[str]) -> None:
    (worktree / ".datarepo" / "config.toml").write_bytes(text)
    _one_line_error(cli("status", ok=False), "config.toml", *words)


def test_ingested_keys_come_back_under_the_same_keys(worktree: Path, cli) -> None:
    """Every key ingest takes is the key its files give back: after a checkout the work tree
    is clean, and adding it again moves no datum (a JSON key 'a.b' once came back as 'a')."""
    cli("init")
    lines = "".join(json.dumps({"__key__": k, "txt": k, "": "bare"}) + "\n" for k in ["x", ".env", "d.e/f"])
    lines += json.dumps({"__key__": "h.", "": "ends in a dot"}) + "\n"
    cli("ingest", "-", "--prefix", "p", input=lines)
    cli("checkout", "-f", "HEAD")
    assert "clean" in cli("status").output
    cli("add", ".")
    assert cli("status").output.count("\n") <= 2 and "clean" in cli("status").output


def test_a_bad_ignore_file_is_one_line(repo_with_commit, worktree: Path, cli) -> None:
    (worktree / ".datarepoignore").write_text("*.log\n!\n")
    _one_line_error(cli("status", ok=False), ".datarepoignore line 2: not a gitignore pattern")
    (worktree / ".datarepoignore").write_bytes(b"*.log\n\xff\xfe\n")  # not UTF-8: read as best it can be
    cli("status")


@pytest.mark.parametrize("what", ["object", "shard", "index", "ref"])
def test_a_fifo_in_the_store_is_named_as_damage_never_waited_on(repo_with_commit, worktree: Path, what: str) -> None:
    """A FIFO put where the store keeps a file: every command that reads it says so in one
    line (fsck always), and none waits forever for a writer to open it."""
    repo, files = repo_with_commit
    shard = next(iter(repo.store.iter_shards()))
    victim = {
        "object": worktree / ".datarepo" / "objects" / repo.head()[:2] / repo.head()[2:],
        "shard": shard_file(repo, shard),
        "index": shard_file(repo, shard, ".idx"),
        "ref": worktree / ".datarepo" / "refs" / "heads" / "main",
    }[what]
    victim.chmod(0o644)
    victim.unlink()
    os.mkfifo(victim)
    exe = str(Path(sys.executable).with_name("datarepo"))
    key = sorted(files)[0]
    for args in (["log"], ["ls"], ["cat", f"HEAD:{key}"], ["export", "HEAD", "out"], ["fsck"]):
        done = subprocess.run([exe, *args], cwd=worktree, capture_output=True, text=True, timeout=60)
        if done.returncode or args == ["fsck"]:
            assert done.returncode == 1 and "not a regular file" in done.stderr + done.stdout, (args, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1 or args == ["fsck"], done.stderr
