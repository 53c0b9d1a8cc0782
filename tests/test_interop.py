"""Interoperation with the other tools of a data team: tars made by GNU tar, Python's
tarfile and WebDataset go into ``ingest`` as ``tar x`` would unpack them; what datarepo
writes is read by GNU tar, tarfile and stock WebDataset; git and DVC share the folder.
Everything here runs the real tools."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import Cli

BIN = Path(sys.executable).parent
LONG = "n" * 120  # a name part over ustar's 100 bytes


def run(*args: str | Path, cwd: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, f"{args}\n{proc.stdout}{proc.stderr}"
    return proc


def files_under(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (symlinks left out), by its relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def tar_x(tar: Path, dest: Path) -> dict[str, bytes]:
    """What GNU tar unpacks from ``tar``."""
    dest.mkdir()
    run("tar", "xf", tar, "-C", dest)
    return files_under(dest)


def ingested(cli: Cli, tmp_path: Path, src: Path | str, prefix: str = "p") -> tuple[dict[str, bytes], str]:
    """Ingests ``src`` under ``prefix`` and exports it again: the files that come back, and
    what the ingest printed."""
    out = cli("ingest", str(src), "--prefix", prefix).output
    dest = tmp_path / f"export-{len(list(tmp_path.glob('export-*')))}"
    cli("export", "HEAD", str(dest), "--prefix", prefix + "/")
    return files_under(dest / prefix), out


def source_folder(root: Path, long_names: bool = True) -> Path:
    """A folder as a data team has one: datums of several members, an empty file, a file
    without extension, non-ASCII and long names, a hard link, a symlink, an empty folder."""
    files = {
        "a.jpg": os.urandom(3000), "a.cls": b"1", "a.json": b'{"x": 1}', "empty.txt": b"", "README": b"read me",
        "sub/b.jpg": os.urandom(70_000), "sub/b.cls": b"2", "sub/déjà vu.txt": "ça".encode(),
    }
    if long_names:
        files[f"sub/{LONG}/c.txt"] = b"long folder"
        files[f"sub/{'m' * 200}.txt"] = b"long name"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.link(root / "sub/b.jpg", root / "sub/hard.jpg")
    os.symlink("a.jpg", root / "link.jpg")
    (root / "nothing").mkdir()
    return root


# --- tars from other producers into ingest -----------------------------------------------------
@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "pax", "ustar", "v7"])
@pytest.mark.parametrize("order", ["--sort=none", "--sort=name"])
def test_a_gnu_tar_ingests_as_tar_x_unpacks_it(tmp_path: Path, cli: Cli, fmt: str, order: str) -> None:
    """Every regular file, a hard link's too, comes back byte for byte, in whatever order
    ``tar cf`` listed the folder (its members of one datum apart: refused before)."""
    src = source_folder(tmp_path / "src", long_names=fmt in ("gnu", "oldgnu", "pax"))
    tar = tmp_path / "x.tar"
    run("tar", f"--format={fmt}", order, "-cf", tar, "-C", src, ".")
    cli("init")
    got, out = ingested(cli, tmp_path, tar)
    want = tar_x(tar, tmp_path / "x")
    assert got == want and "sub/hard.jpg" in got and got["empty.txt"] == b""
    assert f"note: skipped {tar}: member 'link.jpg': a symlink" in out
    assert cli("cat", "HEAD:p/sub/hard.jpg").stdout_bytes == want["sub/b.jpg"]


def test_a_gnu_incremental_tar_keeps_its_names(tmp_path: Path, cli: Cli) -> None:
    """``tar -G`` writes access and change times where ustar keeps a name's prefix: they
    were read as one, and the ingest refused '15305621160/./a.cls'."""
    src = source_folder(tmp_path / "src")
    tar = tmp_path / "x.tar"
    run("tar", "-G", "-cf", tar, "-C", src, ".")
    cli("init")
    got, _ = ingested(cli, tmp_path, tar)
    assert got == tar_x(tar, tmp_path / "x")


@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "pax"])
def test_a_sparse_tar_ingests_whole(tmp_path: Path, cli: Cli, fmt: str) -> None:
    """``tar -S`` keeps a sparse file's data and a map of its holes. In the PAX form the
    ingest stored the map and data as the file, under 'GNUSparseFile.N/'; GNU's were
    skipped as if not files. A large one (over 32 MiB) is streamed."""
    src = tmp_path / "src"
    src.mkdir()
    for name, size in (("small.bin", 1 << 20), ("large.bin", 40 << 20)):
        with open(src / name, "wb") as f:
            f.truncate(size)
            for at in (0, size // 3, size - 5):
                f.seek(at)
                f.write(os.urandom(5))
    (src / "dense.txt").write_bytes(b"dense")
    tar = tmp_path / "x.tar"
    run("tar", "-S", f"--format={fmt}", "-cf", tar, "-C", src, ".")
    cli("init")
    got, out = ingested(cli, tmp_path, tar)
    assert got == files_under(src) and "note" not in out


def _compress(tar: Path, kind: str, dest: Path) -> Path:
    """``tar`` compressed as the tool ``kind`` does it (by Python's modules of the same
    formats, so the tools need not be installed)."""
    import bz2
    import lzma

    import zstandard

    raw = tar.read_bytes()
    packers = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress, "zstd": zstandard.compress}
    dest.write_bytes(packers[kind](raw))
    return dest


@pytest.mark.parametrize(
    ("kind", "name"),
    [("gzip", "x.tar.gz"), ("gzip", "x.tgz"), ("bzip2", "x.tar.bz2"), ("xz", "x.tar.xz"), ("zstd", "x.tar.zst"),
     ("gzip", "gzipped.tar")],
)
def test_a_compressed_tar_ingests_as_the_plain_one(tmp_path: Path, cli: Cli, kind: str, name: str) -> None:
    """WebDataset reads gzipped shards (tarfile's "r|*" finds the compression by its first
    bytes, whatever the name): ingest did not ("expected ... a .tar shard")."""
    src = source_folder(tmp_path / "src")
    tar = tmp_path / "plain.tar"
    run("tar", "--sort=name", "-cf", tar, "-C", src, ".")
    packed = _compress(tar, kind, tmp_path / name)
    cli("init")
    got, _ = ingested(cli, tmp_path, packed)
    assert got == tar_x(tar, tmp_path / "x")
    assert not any((cli.cwd / ".datarepo/tmp").iterdir())  # the unpacked copy is gone


@pytest.mark.parametrize(
    ("name", "raw", "words"),
    [
        ("x.tar.lz4", b"\x04\x22\x4d\x18 lz4 frames", ["cannot ingest", "only tars are read", ".tar.gz", ".tar.zst"]),
        ("x.zip", b"PK\x03\x04", ["cannot ingest", "only tars are read"]),
        ("x.tar.gz", b"\x1f\x8b\x08\x00 cut short", ["x.tar.gz: not a readable gzip file"]),
        ("x.tar.zst", b"\x28\xb5\x2f\xfd junk", ["x.tar.zst: not a readable zstd file"]),
        ("x.tar.xz", b"\xfd7zXZ\x00 junk", ["x.tar.xz: not a readable lzma file"]),
        ("x.tar.bz2", b"BZh9 junk", ["x.tar.bz2: not a readable bz2 file"]),
        ("x.tgz", gzip.compress(b"x" * 100, mtime=0)[:12] + b"\xff" * 40, ["x.tgz: not a readable gzip file"]),
    ],
)
def test_a_compression_not_read_or_broken_is_one_line(tmp_path: Path, cli: Cli, name: str, raw: bytes, words: list[str]) -> None:
    (tmp_path / name).write_bytes(raw)
    cli("init")
    result = cli("ingest", str(tmp_path / name), "--prefix", "p", ok=False)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(w in lines[0] for w in words), lines[0]
    assert cli("log").output == "" and not any((cli.cwd / ".datarepo/tmp").glob("*"))


def test_a_bad_member_in_a_compressed_tar_is_named(tmp_path: Path, cli: Cli) -> None:
    """The tar's errors are the tar's, not the compression's."""
    tar = tmp_path / "x.tar"
    with tarfile.open(tar, "w") as tf:
        tf.addfile(tarfile.TarInfo("a/../b.txt"), io.BytesIO(b""))
    packed = _compress(tar, "gzip", tmp_path / "x.tar.gz")
    cli("init")
    result = cli("ingest", str(packed), "--prefix", "p", ok=False)
    assert result.exit_code == 1 and result.output.startswith(f"Error: {packed}: member 'a/../b.txt': invalid key"), result.output


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_python_tarfile_ingests_with_long_and_non_ascii_names(tmp_path: Path, cli: Cli, fmt: int) -> None:
    names = [f"d/{'a' * 120}.txt", f"d/{'b' * 250}.txt", f"d/{'c' * 200}/{'x' * 200}.jpg", "d/ünïcödé/日本.txt",
             "d/e.cls", "d/e.json"]
    tar = tmp_path / "x.tar"
    with tarfile.open(tar, "w", format=fmt) as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            data = name.encode()
            info.size = len(data)
            if fmt == tarfile.PAX_FORMAT:  # PAX records that carry only metadata
                info.pax_headers = {"mtime": "1700000000.25", "uid": "99999999", "comment": "é"}
            tf.addfile(info, io.BytesIO(data))
    cli("init")
    got, _ = ingested(cli, tmp_path, tar)
    assert got == {name: name.encode() for name in names}


def test_webdataset_writers_ingest_as_webdataset_reads_them(tmp_path: Path, cli: Cli) -> None:
    wds = pytest.importorskip("webdataset")
    with wds.TarWriter(str(tmp_path / "tw.tar")) as w:
        for i in range(5):
            w.write({"__key__": f"s/{i:03d}", "txt": f"t{i}", "cls": i, "json": {"a": i}, "bin": bytes(range(i))})
    with wds.ShardWriter(str(tmp_path / "sw-%03d.tar"), maxcount=3, verbose=0) as w:
        for i in range(7):
            w.write({"__key__": f"k{i}", "txt": f"t{i}"})
    cli("init")
    for src, prefix in ((tmp_path / "tw.tar", "tw"), (str(tmp_path / "sw-{000..002}.tar"), "sw")):
        urls = str(src) if prefix == "tw" else [str(p) for p in sorted(tmp_path.glob("sw-*.tar"))]
        want = {f"{s['__key__']}.{ext}": data for s in wds.WebDataset(urls, shardshuffle=False)
                for ext, data in s.items() if not ext.startswith("__")}
        got, _ = ingested(cli, tmp_path, src, prefix)
        assert got == want


def test_a_name_twice_is_its_last_member_as_tar_x_leaves_it(tmp_path: Path, cli: Cli) -> None:
    """``tar rf`` appends a newer copy of a file: the ingest refused the tar."""
    (tmp_path / "a.txt").write_bytes(b"old")
    (tmp_path / "a.cls").write_bytes(b"1")
    tar = tmp_path / "x.tar"
    run("tar", "-cf", tar, "a.txt", "a.cls", cwd=tmp_path)
    (tmp_path / "a.txt").write_bytes(b"new")
    run("tar", "-rf", tar, "./a.txt", cwd=tmp_path)
    cli("init")
    got, out = ingested(cli, tmp_path, tar)
    assert got == tar_x(tar, tmp_path / "x") == {"a.txt": b"new", "a.cls": b"1"}
    assert f"note: {tar}: member 'a.txt' comes more than once: the last one is taken, as tar x leaves it" in out


def test_a_tar_without_its_end_blocks_is_read_to_its_end_with_a_note(tmp_path: Path, cli: Cli) -> None:
    """GNU tar, tarfile and WebDataset read a tar that stops after a member (a writer that
    was not closed): the ingest refused it as truncated. An empty file is no tar."""
    tar = tmp_path / "x.tar"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("a.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    tar.write_bytes(tar.read_bytes()[:1024])
    assert run("tar", "tf", tar).stdout == "a.txt\n"
    cli("init")
    got, out = ingested(cli, tmp_path, tar)
    assert got == {"a.txt": b"abc"}
    assert f"note: {tar} ends at byte 1024 without the zero blocks that end a tar" in out
    (tmp_path / "empty.tar").write_bytes(b"")
    result = cli("ingest", str(tmp_path / "empty.tar"), "--prefix", "p", ok=False)
    assert result.exit_code == 1 and result.output == f"Error: {tmp_path}/empty.tar: not a readable tar (an empty file)\n"
    assert cli("ls", "HEAD").output.split() == ["p/a"]


def test_what_is_no_file_is_skipped_with_a_note_naming_it(tmp_path: Path, cli: Cli) -> None:
    tar = tmp_path / "x.tar"
    with tarfile.open(tar, "w") as tf:
        for name, kind, link in [("ok.txt", tarfile.REGTYPE, ""), ("null", tarfile.CHRTYPE, ""),
                                 ("disk", tarfile.BLKTYPE, ""), ("pipe", tarfile.FIFOTYPE, ""),
                                 ("orphan.txt", tarfile.LNKTYPE, "not/in/the/tar.txt"), ("dir", tarfile.DIRTYPE, "")]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = 2 if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(b"ok") if kind == tarfile.REGTYPE else None)
    cli("init")
    got, out = ingested(cli, tmp_path, tar)
    assert got == {"ok.txt": b"ok"}
    assert f"note: skipped {tar}: member 'null' (and 1 more): a device" in out
    assert f"note: skipped {tar}: member 'pipe': a fifo" in out
    assert f"note: skipped {tar}: member 'orphan.txt': a hard link to 'not/in/the/tar.txt', which the tar does not" in out
    assert "dir" not in out


# --- readers of what datarepo writes -----------------------------------------------------------
def _awkward_work_tree(root: Path) -> dict[str, bytes]:
    files = {
        f"d/{'k' * 120}.txt": b"over 100",
        f"d/{'q' * 160}.json": b"{}",
        f"d/{'e' * 240}.extension.txt": b"a member name over 255 bytes",
        "/".join(["d/deep"] + ["s" * 60] * 4) + "/x.txt": b"a key over 255 bytes",
        "d/déjà vu.txt": "non-ASCII".encode(),
        "d/日本語.jpg": os.urandom(1000),
        "d/big.bin": os.urandom((32 << 20) + 123),  # streamed, not held whole
        "d/plain.cls": b"1",
        "d/plain.jpg": os.urandom(600),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_shards_are_read_by_gnu_tar_tarfile_and_webdataset(tmp_path: Path, worktree: Path, cli: Cli) -> None:
    """Both the repository's shards (members named by datum id) and ``export --shards``
    (named by key): GNU tar lists and unpacks them without a word on stderr, tarfile in its
    strictest mode reads the same members, and stock WebDataset the same samples."""
    wds = pytest.importorskip("webdataset")
    files = _awkward_work_tree(worktree)
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "x")
    cli("export", "HEAD", str(tmp_path / "shards"), "--shards", "--shard-size", "1M")
    exported = sorted((tmp_path / "shards").glob("*.tar"))
    stored = sorted((worktree / ".datarepo/shards").glob("*/*.tar"))
    assert len(exported) > 1 and stored
    unpacked = tmp_path / "x"
    unpacked.mkdir()
    for shard in exported + stored:
        listed = run("tar", "--warning=all", "-tvf", shard)
        assert listed.stderr == "" and listed.stdout
        out = unpacked / shard.name
        out.mkdir()
        done = run("tar", "--warning=all", "-xf", shard, "-C", out)
        assert done.stderr == ""
        with tarfile.open(shard, errorlevel=2) as tf:
            for m in tf:
                assert m.isreg() and (m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime) == (0o444, 0, 0, "", "", 0)
                assert (out / m.name).read_bytes() == tf.extractfile(m).read()  # type: ignore[union-attr]
    from_tar: dict[str, bytes] = {}
    for shard in exported:
        from_tar.update(files_under(unpacked / shard.name))
    assert from_tar == files
    samples = {s["__key__"]: s for s in wds.WebDataset([str(p) for p in exported], shardshuffle=False)}
    assert samples["d/plain"]["jpg"] == files["d/plain.jpg"] and samples["d/plain"]["cls"] == b"1"
    assert samples["d/日本語"]["jpg"] == files["d/日本語.jpg"]
    assert samples["d/big"]["bin"] == files["d/big.bin"]
    assert samples[f"d/{'e' * 240}"]["extension.txt"] == files[f"d/{'e' * 240}.extension.txt"]
    by_id = {s["__key__"]: s for s in wds.WebDataset([str(p) for p in stored], shardshuffle=False)}
    datum = cli("ls", "HEAD", "-l", "--json").output
    assert all(key in datum for key in by_id)


def test_a_member_of_8_gib_has_a_header_gnu_tar_reads(tmp_path: Path) -> None:
    """ustar's size field ends at 8 GiB: past it the size goes in a PAX header. The data is
    a hole in a sparse file, so nothing is written."""
    from datarepo.shards import END_OF_ARCHIVE, tar_header

    size = 8 << 30
    tar = tmp_path / "huge.tar"
    header = tar_header("0" * 32 + ".bin", size)
    with open(tar, "wb") as f:
        f.write(header)
        f.truncate(len(header) + size + len(END_OF_ARCHIVE))
    listed = run("tar", "--warning=all", "-tvf", tar)
    assert listed.stderr == "" and f" {size} " in listed.stdout
    with tarfile.open(tar) as tf:
        assert [(m.name, m.size) for m in tf] == [("0" * 32 + ".bin", size)]


# --- git and DVC in the same folder ------------------------------------------------------------
def test_a_repository_inside_git_keeps_out_of_it(worktree: Path, cli: Cli) -> None:
    """``git add .`` took the repository's shards in, and ``git clean -fd`` deleted them: its
    folder now holds a .gitignore of '*', as a virtual environment does."""
    run("git", "init", "-q", ".", cwd=worktree)
    (worktree / "a.txt").write_bytes(b"x")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "x")
    assert ".datarepo" not in run("git", "status", "--porcelain", "--ignored=no", cwd=worktree).stdout
    run("git", "add", ".", cwd=worktree)
    assert run("git", "ls-files", cwd=worktree).stdout.split() == ["a.txt"]
    run("git", "clean", "-fdq", cwd=worktree)
    assert cli("cat", "HEAD:a.txt").stdout_bytes == b"x"
    cli("fsck")
    assert "0 leftover files" in cli("gc").output


def test_a_repository_inside_a_folder_dvc_tracks_keeps_out_of_it(tmp_path: Path, cli: Cli) -> None:
    """``dvc add`` of a folder holding a work tree cached the repository's shards, index and
    refs, and ``dvc checkout`` put the refs of then back: the commits since were off the
    branch. The repository's folder holds a .dvcignore of '*'."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    run("git", "init", "-q", ".", cwd=project)
    run("dvc", "init", "-q", cwd=project)
    work = Cli(project / "data")
    work("init")
    (project / "data/a.txt").write_text("1")
    work("add", ".")
    work("commit", "-m", "one")
    run("dvc", "add", "-q", "data", cwd=project)
    assert "nfiles: 1\n" in (project / "data.dvc").read_text()
    (project / "data/a.txt").write_text("2")
    work("add", ".")
    work("commit", "-m", "two")
    run("dvc", "checkout", "-f", "data", cwd=project)
    assert (project / "data/a.txt").read_text() == "1"
    assert [line.split(maxsplit=1)[1] for line in work("log", "--oneline").output.splitlines()] == ["two", "one"]
    assert "0 problems" in work("fsck").output


@pytest.mark.parametrize("force", [False, True])
def test_checkout_keeps_ignored_files_that_share_a_datum_s_name(worktree: Path, cli: Cli, force: bool) -> None:
    """DVC's pointer ``x.csv.dvc`` (or ``x.jpg.tmp``) is a member of ``x`` by its name. Left
    out by .datarepoignore, status never saw it, and a checkout that moved ``x`` deleted it."""
    cli("init")
    (worktree / ".datarepoignore").write_text("*.dvc\n*.tmp\n")
    (worktree / "d").mkdir()
    (worktree / "d/x.csv").write_text("1")
    (worktree / "d/y.csv").write_text("y")
    cli("add", ".")
    cli("commit", "-m", "one")
    (worktree / "d/x.csv").write_text("2")
    (worktree / "d/y.csv").unlink()
    cli("add", ".")
    cli("commit", "-m", "two")
    kept = {"d/x.csv.dvc": "outs: ...", "d/x.jpg.tmp": "scratch", "d/y.txt.tmp": "scratch of y"}
    for rel, text in kept.items():
        (worktree / rel).write_text(text)
    assert "work tree clean" in cli("status").output
    cli("checkout", *(["-f"] if force else []), "HEAD~1")
    assert (worktree / "d/x.csv").read_text() == "1" and (worktree / "d/y.csv").read_text() == "y"
    cli("checkout", *(["-f"] if force else []), "main")
    assert not (worktree / "d/y.csv").exists()
    assert {rel: (worktree / rel).read_text() for rel in kept} == kept


def test_git_files_in_the_work_tree(tmp_path: Path, worktree: Path, cli: Cli) -> None:
    """.gitignore is not read (what git ignores is often the very data, as DVC puts its data
    there): it is a file like others. No .git, folder or file, at any depth, is data: a
    submodule's .git file (a pointer to its git folder) was added, and a checkout wrote it
    back."""
    run("git", "init", "-q", ".", cwd=worktree)
    (worktree / ".gitignore").write_text("*.bin\n")
    (worktree / "data.bin").write_bytes(b"data")
    (worktree / "sub").mkdir()
    (worktree / "sub/.git").write_text("gitdir: ../.git/modules/sub\n")
    (worktree / "sub/x.txt").write_text("x")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "x")
    assert cli("ls", "HEAD").output.split() == [".gitignore", "data", "sub/x"]
    refused = cli("add", "sub/.git", ok=False)
    assert refused.exit_code == 1 and "sub/.git is never added" in refused.output
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"__key__": "m/.git", "": "gitdir: /elsewhere"}\n')
    refused = cli("ingest", str(lines), "--prefix", "p", ok=False)
    assert refused.exit_code == 1 and "a .git file is git's, not data" in refused.output


def test_dvc_works_in_a_work_tree_whose_remotes_datarepo_made(tmp_path: Path, worktree: Path, cli: Cli) -> None:
    """``remote add`` makes .dvc as ``dvc init`` would: outside git, ``dvc status`` there
    failed ("not a git repository"), and ``dvc init -f``, the way out, deleted the remotes."""
    cli("init")
    (worktree / "a.txt").write_bytes(b"a")
    cli("add", ".")
    cli("commit", "-m", "x")
    cli("remote", "add", "origin", str(tmp_path / "remote"), "-d")
    run("dvc", "status", cwd=worktree)
    assert "origin" in run("dvc", "remote", "list", cwd=worktree).stdout
    (worktree / "f.csv").write_bytes(b"1,2\n")
    run("dvc", "add", "-q", "f.csv", cwd=worktree)
    assert (worktree / ".dvc/cache").is_dir()
    cli("add", ".")
    cli("commit", "-m", "dvc's pointer file is a member")
    assert cli("ls", "HEAD").output.split() == ["a", "f"]
    assert cli("cat", "HEAD:f.csv").stdout_bytes == b"1,2\n"
    cli("push")
    assert set((worktree / ".dvc/.gitignore").read_text().split()) == {"/config.local", "/tmp", "/cache"}


def test_a_work_tree_in_a_folder_of_a_dvc_project_shares_its_config(tmp_path: Path, cli: Cli) -> None:
    """``remote add`` made a .dvc of the work tree's own: DVC took the folder for a project
    of its own, and the enclosing project's ``dvc status`` no longer saw its .dvc files."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    run("git", "init", "-q", ".", cwd=project)
    run("dvc", "init", "-q", cwd=project)
    (project / "data/x.csv").write_text("1\n")
    run("dvc", "add", "-q", "data/x.csv", cwd=project)
    work = Cli(project / "data")
    work("init")
    work("add", ".")
    work("commit", "-m", "x")
    work("remote", "add", "origin", str(tmp_path / "remote"), "-d")
    assert not (project / "data/.dvc").exists() and "origin" in (project / ".dvc/config").read_text()
    assert "origin" in run("dvc", "remote", "list", cwd=project / "data").stdout
    work("push")
    (project / "data/x.csv").write_text("2\n")
    assert "modified:" in run("dvc", "status", cwd=project).stdout  # DVC still sees its file


def test_datarepo_in_a_git_and_dvc_project(tmp_path: Path, worktree: Path, cli: Cli) -> None:
    """In a project where git and DVC were there first: DVC's cache and state are not data,
    its pointer files and .dvcignore are; remote add keeps DVC's own remotes and settings;
    a checkout writes new files, never into DVC's hard-linked cache; DVC still works."""
    run("git", "init", "-q", ".", cwd=worktree)
    run("dvc", "init", "-q", cwd=worktree)
    run("dvc", "remote", "add", "dvcstore", str(tmp_path / "dvcstore"), cwd=worktree)
    run("dvc", "config", "cache.type", "hardlink", cwd=worktree)
    (worktree / "big.bin").write_bytes(b"v1")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "v1")
    (worktree / "big.bin").unlink()
    (worktree / "big.bin").write_bytes(b"v2")
    run("dvc", "add", "-q", "big.bin", cwd=worktree)
    cached = next(p for p in (worktree / ".dvc/cache").rglob("*") if p.is_file())
    cli("add", ".")
    cli("commit", "-m", "v2")
    assert cli("ls", "HEAD").output.split() == [".dvcignore", ".gitignore", "big"]
    cli("remote", "add", "origin", str(tmp_path / "remote"))
    assert {"dvcstore", "origin"} <= set(run("dvc", "remote", "list", cwd=worktree).stdout.split())
    assert "hardlink" in (worktree / ".dvc/config").read_text()
    cli("checkout", "HEAD~1")
    assert (worktree / "big.bin").read_bytes() == b"v1" and cached.read_bytes() == b"v2"
    cli("checkout", "main")
    run("dvc", "status", cwd=worktree)
    run("dvc", "push", "-r", "dvcstore", cwd=worktree)
    cli("push", "-r", "origin")
    assert ".datarepo" not in run("git", "status", "--porcelain", cwd=worktree).stdout
