"""Keys and file names that hold characters with a meaning elsewhere in the CLI (``:`` of
``REV:key``, ``@`` of ``KEY@REV``, revision syntax, glob and brace characters, ignore-file
syntax, spaces, a leading ``-`` or ``"``, names of refs, unicode forms, case, long and deep
names): stored and given back byte for byte by every command that names or prints a key,
and printed so that no two keys read the same."""

from __future__ import annotations

import glob as globs
import io
import json
import tarfile
import unicodedata
from pathlib import Path

import pytest
import webdataset as wds
from conftest import Cli

import datarepo
from tests.test_pipelines import write_pipeline

STEMS = [
    "a:b", "x@y", "til~1", "car^", "st*r", "q?", "br[1]", "cu{1,2}", "#hash", "!bang", "sp ace", " lead",
    "trail ", "-dash", "main", "HEAD", '"quote', "back\\t", unicodedata.normalize("NFC", "é"),
    unicodedata.normalize("NFD", "é"), "Case", "case", "txt/k", "main/k", "é" * 125 + "x", "/".join("d" * 60) + "/f",
]


def _key_lines(output: str, start: str = "") -> list[str]:
    """The keys of a listing, one a line after ``start``, a quoted one read back."""
    keys = [line[len(start):] for line in output.splitlines() if line.startswith(start)]
    return [json.loads(k) if k.startswith('"') else k for k in keys]


@pytest.fixture
def odd(worktree: Path, cli: Cli) -> dict[str, bytes]:
    """A committed repository of one file ``<stem>.txt`` for each stem (its bytes name it)."""
    cli("init")
    files = {}
    for stem in STEMS:
        files[stem] = f"{stem!r}\n".encode()
        (worktree / f"{stem}.txt").parent.mkdir(parents=True, exist_ok=True)
        (worktree / f"{stem}.txt").write_bytes(files[stem])
    cli("add", ".")
    cli("commit", "-m", "odd names")
    return files


def test_every_odd_name_comes_back_byte_for_byte(worktree: Path, cli: Cli, odd: dict[str, bytes]) -> None:
    assert [e["key"] for e in json.loads(cli("ls", "--json").output)] == sorted(STEMS)
    assert _key_lines(cli("ls").output) == sorted(STEMS)
    long = [line[24:] for line in cli("ls", "-l").output.splitlines()]  # datum id, size, key
    assert [json.loads(k) if k.startswith('"') else k for k in long] == sorted(STEMS)
    assert _key_lines(cli("show").output, "  added:    ") == sorted(STEMS)
    for stem, data in odd.items():
        assert cli("cat", f"HEAD:{stem}.txt").stdout_bytes == data
        assert cli("cat", f"HEAD:{stem}").stdout_bytes == data
        escaped = "".join(f"[{c}]" if c in "*?[]\\" else c for c in stem)
        assert _key_lines(cli("ls", "--glob", escaped).output) == [stem]
    repo = datarepo.open(worktree)
    entries = {e.key: e for e in repo.tree().select()}
    assert {k: repo.read(e.datum) for k, e in entries.items()} == {k: {"txt": v} for k, v in odd.items()}
    assert [e.key for e in repo.tree().select(glob="x@*")] == ["x@y"]
    assert [e.key for e in repo.tree().select(prefix="main")] == ["main", "main/k"]


def test_export_files_and_shards_and_ingest_them_back(worktree: Path, cli: Cli, odd: dict[str, bytes]) -> None:
    cli("export", "HEAD", str(worktree.parent / "files"))
    assert {stem: (worktree.parent / "files" / f"{stem}.txt").read_bytes() for stem in odd} == odd
    shards = worktree.parent / "shards"
    cli("export", "HEAD", str(shards), "--shards")
    read = {s["__key__"]: s["txt"] for s in wds.WebDataset(sorted(globs.glob(f"{shards}/*.tar")), shardshuffle=False)}
    assert read == odd
    for src in (str(worktree.parent / "files"), *sorted(map(str, shards.glob("*.tar")))):
        out = cli("ingest", src, "--prefix", "back/").output
        assert "0 newly stored" in out
        repo = datarepo.open(worktree)
        assert {e.key.removeprefix("back/"): repo.read(e.datum)["txt"] for e in repo.tree().select(prefix="back/")} == odd


def test_jsonl_ingest_takes_odd_keys(worktree: Path, cli: Cli, odd: dict[str, bytes]) -> None:
    lines = "".join(json.dumps({"__key__": stem, "txt": data.decode()}) + "\n" for stem, data in odd.items())
    assert "0 newly stored" in cli("ingest", "-", "--prefix", "j/", input=lines).output
    assert [e.key for e in datarepo.open(worktree).tree().select(prefix="j/")] == sorted(f"j/{s}" for s in STEMS)


def test_rm_status_diff_and_checkout_name_each_key(worktree: Path, cli: Cli, odd: dict[str, bytes]) -> None:
    removed = []
    for stem in sorted(STEMS, reverse=True):  # (``rm main`` takes the folder main/ too, as git's rm -r)
        removed += _key_lines(cli("rm", "--", stem).output, "rm ")
    assert sorted(removed) == sorted(STEMS)
    assert _key_lines(cli("status").output, "  deleted:  ") == sorted(STEMS)
    assert _key_lines(cli("diff").output, "D\t") == sorted(STEMS)
    cli("commit", "-m", "none")
    assert _key_lines(cli("diff", "main~1", "main").output, "D\t") == sorted(STEMS)
    assert _key_lines(cli("diff", "main").output) == []  # the branch main, not the key
    cli("checkout", "main~1")
    assert {stem: (worktree / f"{stem}.txt").read_bytes() for stem in odd} == odd


def test_ignore_file_escapes_its_own_syntax(worktree: Path, cli: Cli, odd: dict[str, bytes]) -> None:
    (worktree / ".datarepoignore").write_text("\\#hash.txt\n\\!bang.txt\ntrail\\ .txt\nbr\\[1\\].txt\nst\\*r.txt\n")
    assert _key_lines(cli("status").output, "  deleted:  ") == sorted(["#hash", "!bang", "trail ", "br[1]", "st*r"])


@pytest.mark.parametrize("command", ["ls", "status", "diff", "show", "rm", "lineage"])
def test_a_key_that_looks_quoted_is_quoted(worktree: Path, cli: Cli, command: str) -> None:
    """The key ``"a\\tb"`` (quotes and a backslash) and the key a<TAB>b never print alike."""
    cli("init")
    names = ['"a\\tb"', "a\tb", '"', 'x"']
    for name in names:
        (worktree / name).write_text(name)
    cli("add", ".")
    if command in ("ls", "show", "rm", "lineage"):
        cli("commit", "-m", "x")
    if command == "lineage":
        lines = [cli("lineage", "--", name).output.rsplit(" ", 5)[0] for name in names]
    elif command == "rm":
        lines = [cli("rm", "--", name).output.strip().removeprefix("rm ") for name in names]
    elif command == "ls":
        lines = cli("ls").output.splitlines()
    else:
        lines = cli(command).output.splitlines()
        lines = [line.split("\t", 1)[1] if "\t" in line else line.split(":", 1)[1].strip() for line in lines if "\t" in line or "added:" in line]
    assert sorted(json.loads(line) if line.startswith('"') else line for line in lines) == sorted(names)


@pytest.mark.parametrize("name", ["s[1].tar", "s{a,b}.tar", "s*.tar", "s?.tar", "s{1}.tar"])
def test_ingest_source_named_with_pattern_characters_is_that_file(worktree: Path, cli: Cli, name: str) -> None:
    cli("init")
    for decoy in ("s1.tar", "sa.tar", "sb.tar", "sx.tar"):
        _tar(worktree.parent / decoy, {"decoy.txt": b"decoy"})
    _tar(worktree.parent / name, {"one.txt": b"1", "two.txt": b"2"})
    cli("ingest", str(worktree.parent / name), "--prefix", "p/")
    assert [e.key for e in datarepo.open(worktree).tree().select()] == ["p/one", "p/two"]
    folder = worktree.parent / name.replace(".tar", "")
    folder.mkdir()
    (folder / "f.txt").write_bytes(b"f")
    cli("ingest", str(folder), "--prefix", "q/")
    assert [e.key for e in datarepo.open(worktree).tree().select(prefix="q/")] == ["q/f"]


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_lineage_of_a_key_with_at(worktree: Path, cli: Cli) -> None:
    cli("init")
    (worktree / "raw").mkdir()
    for stem in ("x@y", "a:b", "til~1", "-d", "sp ace"):
        (worktree / "raw" / f"{stem}.txt").write_text(stem)
    cli("add", "raw")
    cli("commit", "-m", "raw")
    write_pipeline(worktree, "upper.py", UPPER)
    cli("run")
    repo = datarepo.open(worktree)
    assert {e.key: repo.read(e.datum)["txt"] for e in repo.tree().select(prefix="up/")} == {
        f"up/{s}": s.upper().encode() for s in ("x@y", "a:b", "til~1", "-d", "sp ace")}
    tree = cli("lineage", "up/x@y@HEAD").output.splitlines()
    assert [line.split()[0] for line in tree] == ["up/x@y", "raw/x@y"]
    assert cli("lineage", "--downstream", "raw/x@y@main").output.splitlines()[1].split()[0] == "up/x@y"
    assert [line.split()[0] for line in cli("lineage", "--", "up/-d").output.splitlines()] == ["up/-d", "raw/-d"]
    result = cli("lineage", "up/x@y", ok=False)
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("Error: ") and "'up/x@y@HEAD'" in result.output


UPPER = '''
from datarepo import pipeline

@pipeline(input="raw/**", output="up/", version="1")
def upper(datum):
    return {"txt": datum["txt"].upper()}
'''


@pytest.mark.parametrize(("args", "hint"), [
    (("cat", "a:b.txt"), "'HEAD:a:b.txt'"), (("lineage", "x@y"), "'x@y@HEAD'"), (("lineage", "--downstream", "x@y"), "'x@y@HEAD'"),
])
def test_a_key_holding_the_separator_is_named_with_its_revision(worktree: Path, cli: Cli, args: tuple[str, ...], hint: str) -> None:
    cli("init")
    for name in ("a:b.txt", "x@y.txt"):
        (worktree / name).write_text(name)
    cli("add", ".")
    cli("commit", "-m", "x")
    result = cli(*args, ok=False)
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: ") and hint in result.output
    named = [*args[:-1], hint.strip("'")]
    assert cli(*named).output.startswith(("a:b.txt", "x@y "))


def test_a_pipeline_input_names_a_folder_with_glob_characters_by_escapes(worktree: Path, cli: Cli) -> None:
    cli("init")
    for folder, name in (("raw[1]", "x"), ("raw1", "y")):
        (worktree / folder).mkdir()
        (worktree / folder / f"{name}.txt").write_text(name)
    cli("add", ".")
    cli("commit", "-m", "raw")
    write_pipeline(worktree, "upper.py", UPPER.replace('input="raw/**"', 'input="raw\\\\[1\\\\]/**"'))
    cli("run")
    repo = datarepo.open(worktree)
    assert {e.key: repo.read(e.datum)["txt"] for e in repo.tree().select(prefix="up/")} == {"up/raw[1]/x": b"X"}
