"""The user's flow through the real CLI: init, add, status, commit, log, diff, checkout…"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_samples

from datarepo.repo import Repo


def test_init_add_commit_status(worktree: Path, cli) -> None:
    write_samples(worktree, 10)
    cli("init")
    st = json.loads(cli("status", "--json").output)
    assert len(st["added"]) == 10 and st["modified"] == st["deleted"] == []
    out = cli("add", ".").output
    assert "staged 10 added" in out
    assert "Changes to be committed" in cli("status").output
    assert "10 keys changed" in cli("commit", "-m", "first").output
    assert json.loads(cli("status", "--json").output) == {"added": [], "modified": [], "deleted": []}
    assert "work tree clean" in cli("status").output


def test_edit_delete_add_then_commit(repo_with_commit, worktree: Path, cli) -> None:
    repo, files = repo_with_commit
    (worktree / "train/cat/0000.cls").write_bytes(b"7")
    for ext in ("jpg", "cls"):
        (worktree / f"train/dog/0001.{ext}").unlink()
    write_samples(worktree, 2, seed=9, prefix="new")
    expected = {
        "added": ["new/cat/0000", "new/dog/0001"],
        "modified": ["train/cat/0000"],
        "deleted": ["train/dog/0001"],
    }
    assert json.loads(cli("status", "--json").output) == expected
    cli("add", ".")
    cli("commit", "-m", "fix labels")
    assert json.loads(cli("diff", "HEAD~1", "HEAD", "--json").output) == expected
    log = json.loads(cli("log", "--json").output)
    assert [c["message"] for c in log] == ["fix labels", "first"]
    assert log[0]["parents"] == [log[1]["commit"]]
    show = json.loads(cli("show", "HEAD", "--json").output)
    assert show["changes"] == expected
    assert cli("cat", "HEAD~1:train/cat/0000.cls").stdout_bytes == b"0"
    assert cli("cat", "HEAD:train/cat/0000.cls").stdout_bytes == b"7"
    old_keys = [e["key"] for e in json.loads(cli("ls", "HEAD~1", "--prefix", "train/dog/", "--json").output)]
    assert "train/dog/0001" in old_keys and all(k.startswith("train/dog/") for k in old_keys)


def test_checkout_restores_work_tree_byte_for_byte(repo_with_commit, worktree: Path, cli) -> None:
    _, files = repo_with_commit
    (worktree / "train/cat/0000.jpg").write_bytes(b"changed")
    (worktree / "train/dog/0003.jpg").unlink()
    (worktree / "train/dog/0003.cls").unlink()
    (worktree / "train/cat/0002.cls").unlink()  # a datum that loses a member
    write_samples(worktree, 1, seed=3, prefix="extra")
    cli("add", ".")
    cli("commit", "-m", "second")
    cli("checkout", "HEAD~1")
    now = {p.relative_to(worktree).as_posix(): p.read_bytes() for p in worktree.rglob("*") if p.is_file() and ".datarepo" not in p.parts}
    assert now == files
    assert not (worktree / "extra").exists()
    assert json.loads(cli("status", "--json").output) == {"added": [], "modified": [], "deleted": []}
    cli("checkout", "main")
    assert (worktree / "train/cat/0000.jpg").read_bytes() == b"changed"
    assert not (worktree / "train/cat/0002.cls").exists() and (worktree / "train/cat/0002.jpg").exists()
    assert not (worktree / "train/dog/0003.jpg").exists() and (worktree / "extra").is_dir()
    repo = Repo.open(worktree)
    assert repo.current_branch() == "main"
    moves = [(old, new) for old, new, _, msg in repo.refs.reflog("HEAD") if msg.startswith("checkout")]
    assert moves == [(repo.head(), repo.resolve("HEAD~1")), (repo.resolve("HEAD~1"), repo.head())]
    (worktree / "train/cat/0000.jpg").write_bytes(b"thrown away")
    assert cli("checkout", "-f", "HEAD").output.startswith("Switched to branch main")  # HEAD stays attached, as in git
    assert (worktree / "train/cat/0000.jpg").read_bytes() == b"changed"
    assert Repo.open(worktree).current_branch() == "main"


def test_forced_checkout_removes_only_the_untracked_file_in_the_way(worktree: Path, cli) -> None:
    """Where the revision needs a directory, a file never added that stands there goes (as
    with git's -f); the other members of its datum stay."""
    cli("init")
    (worktree / "d/x.jpg").mkdir(parents=True)
    (worktree / "d/x.jpg/y.txt").write_bytes(b"tracked")
    cli("add", ".")
    cli("commit", "-m", "a")
    cli("tag", "a")
    cli("rm", "d/x.jpg/y.txt")
    cli("commit", "-m", "b")
    assert not (worktree / "d").exists()  # rm took the directories it emptied
    (worktree / "d").mkdir()
    (worktree / "d/x.jpg").write_bytes(b"never added")
    (worktree / "d/x.cls").write_bytes(b"never added either")
    cli("checkout", "-f", "a")
    assert (worktree / "d/x.jpg/y.txt").read_bytes() == b"tracked"
    assert (worktree / "d/x.cls").read_bytes() == b"never added either"


def test_diff_of_a_revision_against_the_work_tree(repo_with_commit, worktree: Path, cli) -> None:
    """``diff REV``, as ``git diff REV``: REV against the work tree, across commits since."""
    (worktree / "train/cat/0000.cls").write_bytes(b"7")
    cli("add", ".")
    cli("commit", "-m", "second")
    (worktree / "train/dog/0001.jpg").write_bytes(b"edited, not added")
    write_samples(worktree, 1, seed=3, prefix="extra")
    for ext in ("jpg", "cls"):
        (worktree / f"train/cat/0002.{ext}").unlink()
    expected = {"added": ["extra/cat/0000"], "modified": ["train/cat/0000", "train/dog/0001"], "deleted": ["train/cat/0002"]}
    assert json.loads(cli("diff", "--json", "HEAD~1").output) == expected
    (worktree / "train/cat/0000.cls").write_bytes(b"0")  # back to its content at HEAD~1
    expected["modified"] = ["train/dog/0001"]
    assert json.loads(cli("diff", "--json", "HEAD~1").output) == expected
    assert "train/cat/0000" in json.loads(cli("diff", "--json").output)["modified"]  # HEAD: it differs


def test_checkout_refuses_to_overwrite_uncommitted_changes(repo_with_commit, worktree: Path, cli) -> None:
    (worktree / "train/cat/0000.jpg").write_bytes(b"second")
    cli("add", ".")
    cli("commit", "-m", "second")
    (worktree / "train/cat/0000.jpg").write_bytes(b"precious, uncommitted")
    result = cli("checkout", "HEAD~1", ok=False)
    assert result.exit_code == 1
    assert "uncommitted changes to train/cat/0000" in result.output
    assert (worktree / "train/cat/0000.jpg").read_bytes() == b"precious, uncommitted"
    cli("checkout", "--force", "HEAD~1")
    assert (worktree / "train/cat/0000.jpg").read_bytes() != b"precious, uncommitted"


def test_forced_checkout_keeps_untracked_files_as_git_does(repo_with_commit, worktree: Path, cli) -> None:
    """``checkout --force`` discards changes to what HEAD or the staging area holds; a datum
    never added stays, unless the revision holds its key (then it is overwritten)."""
    (worktree / "train/cat/0000.jpg").write_bytes(b"second")
    cli("add", ".")
    cli("commit", "-m", "second")
    (worktree / "train/cat/0000.jpg").write_bytes(b"thrown away")
    (worktree / "notes").mkdir()
    (worktree / "notes/draft.txt").write_bytes(b"never added")
    write_samples(worktree, 1, seed=5, prefix="staged")
    cli("add", "staged")
    cli("checkout", "--force", "HEAD~1")
    assert (worktree / "train/cat/0000.jpg").read_bytes() != b"thrown away"
    assert (worktree / "notes/draft.txt").read_bytes() == b"never added"
    assert [p for p in worktree.glob("staged/**/*") if p.is_file()] == []  # staged, never committed: discarded
    assert json.loads(cli("status", "--json").output) == {"added": ["notes/draft"], "modified": [], "deleted": []}


def test_branch_tag_and_revision_forms(repo_with_commit, worktree: Path, cli) -> None:
    repo, _ = repo_with_commit
    first = repo.head()
    cli("branch", "exp")
    cli("checkout", "exp")
    (worktree / "train/cat/0000.cls").write_bytes(b"9")
    cli("add", ".")
    cli("commit", "-m", "on exp")
    cli("tag", "v1")
    repo = Repo.open(worktree)
    second = repo.head()
    assert repo.resolve("main") == first
    assert repo.resolve("exp") == repo.resolve("v1") == repo.resolve("HEAD") == second
    assert repo.resolve("v1~1") == repo.resolve("HEAD^") == repo.resolve("exp~") == first
    assert repo.resolve(second[:8]) == second
    names = {b["name"]: b for b in json.loads(cli("branch", "--json").output)}
    assert names["exp"]["current"] and names["main"]["commit"] == first
    assert json.loads(cli("tag", "--json").output)[0]["name"] == "v1"
    assert cli("branch", "-d", "exp", ok=False).exit_code == 1
    cli("checkout", "main")
    cli("branch", "-d", "exp")
    assert repo.resolve("v1") == second
    assert cli("log", "--oneline", "v1").output.count("\n") == 2
    # -n as in git: at most N commits; 0 none; a negative N, no limit
    assert [cli("log", "--oneline", "-n", n, "v1").output.count("\n") for n in ("1", "0", "-1")] == [1, 0, 2]
    # checkout -b NAME, as in git: a new branch at HEAD, uncommitted changes kept
    (worktree / "train/cat/0000.cls").write_bytes(b"kept")
    assert cli("checkout", "-b", "fresh").output.startswith("Switched to branch fresh")
    assert Repo.open(worktree).current_branch() == "fresh" and repo.resolve("fresh") == first
    assert (worktree / "train/cat/0000.cls").read_bytes() == b"kept"
    assert cli("checkout", ok=False).exit_code == 2


def test_rm_stages_deletion(repo_with_commit, worktree: Path, cli) -> None:
    cli("rm", "train/cat/0000.jpg")
    assert not (worktree / "train/cat/0000.jpg").exists() and not (worktree / "train/cat/0000.cls").exists()
    cli("commit", "-m", "rm")
    assert json.loads(cli("show", "--json").output)["changes"]["deleted"] == ["train/cat/0000"]
    # a directory's last datums go with the directory, as with git rm; its parent stays while not empty
    keys = [e["key"] for e in json.loads(cli("ls", "--json", "--prefix", "train/dog/").output)]
    cli("rm", "train/dog")
    assert not (worktree / "train/dog").exists() and (worktree / "train").is_dir()
    assert json.loads(cli("status", "--json").output)["deleted"] == keys


def test_add_path_limits_what_is_staged(repo_with_commit, worktree: Path, cli) -> None:
    (worktree / "train/cat/0000.cls").write_bytes(b"5")
    (worktree / "train/dog/0001.cls").write_bytes(b"5")
    cli("add", "train/cat")
    st = cli("status").output
    assert st.index("train/cat/0000") < st.index("Changes not staged") < st.index("train/dog/0001")
    cli("add", "train/cat")  # nothing left to stage there: not an error
    # a path that names nothing (a typo) is refused, as git refuses a pathspec that matches nothing
    result = cli("add", "train/cta", ok=False)
    assert result.exit_code == 1 and "no file or tracked datum matches 'train/cta'" in result.output
    (worktree / "train/dog/0001.jpg").unlink()
    (worktree / "train/dog/0001.cls").unlink()
    cli("add", "train/dog/0001.jpg")  # gone from the work tree, but tracked: its deletion is staged
    assert "deleted:  train/dog/0001" in cli("status").output.split("Changes not staged")[0]


def test_path_arguments_select_the_keys_they_name_or_hold(worktree: Path, cli, monkeypatch) -> None:
    """A file argument selects its key (the path, or the path up to a dot of its name, never
    of a folder's name); a directory argument, every key under it. The selection is looked up
    in sets, and must agree with testing each key against each argument."""
    from datarepo.pathspec import parse, select

    for rel in ["a/b.jpg", "a/b.x.png", "c/x.cls", "d.e/f.jpg", "g"]:
        (worktree / rel).parent.mkdir(parents=True, exist_ok=True)
        (worktree / rel).write_bytes(b"x")
    cli("init")
    monkeypatch.chdir(worktree)
    args = ["a/b.x.png", "c", "d.e/f.jpg", "g"]
    repo = Repo.open(worktree)
    selection = select(repo, parse(worktree, args), [], dict)
    named = [a + "/" if (worktree / a).is_dir() else a for a in args]
    keys = ["a/b", "a/b.x", "a/bb", "a", "c/x", "c/y/z", "c", "cx/y", "d", "d.e/f", "d.e/g", "g", "g/h"]
    expected = [k for k in keys if any(k.startswith(n) if n.endswith("/") else k == n or n.startswith(k + ".") and "/" not in n[len(k):] for n in named)]
    assert [k for k in keys if k in selection] == expected == ["a/b", "a/b.x", "c/x", "c/y/z", "d.e/f", "g"]
    assert parse(worktree, ["."]) is None


def test_ignore_file_and_never_added_dirs(worktree: Path, cli) -> None:
    write_samples(worktree, 2)
    (worktree / ".datarepoignore").write_text("*.tmp\nscratch/\n")
    (worktree / "train/cat/0000.tmp").write_bytes(b"x")
    (worktree / "scratch").mkdir()
    (worktree / "scratch/a.jpg").write_bytes(b"x")
    (worktree / ".git").mkdir()
    (worktree / ".git/HEAD.txt").write_bytes(b"x")
    (worktree / ".dvc").mkdir()
    (worktree / ".dvc/config.txt").write_bytes(b"x")
    for nested in ("train/clone/.git", "train/inner/.datarepo/shards", "train/inner/.dvc"):
        (worktree / nested).mkdir(parents=True)
        (worktree / nested / "x.bin").write_bytes(b"x")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "x")
    keys = [e["key"] for e in json.loads(cli("ls", "--json").output)]
    assert keys == ["train/cat/0000", "train/dog/0001"]
    members = cli("ls", "-l").output
    assert "0000" in members


def test_nested_ignore_files_apply_below_their_directory_deepest_first(worktree: Path, cli) -> None:
    files = {
        "keep/a.jpg": b"a",  # the root file ignores *.jpg, but keep/ has "!*.jpg"
        "keep/b.tmp": b"b",  # keep/ ignores *.tmp
        "other/c.jpg": b"c",  # ignored by the root file
        "other/c.cls": b"1",
        "other/sub/d.cls": b"2",  # "sub/d.cls" is anchored to other/, not to the root
        "sub/d.cls": b"3",
        "drop/e.cls": b"4",  # drop/ ignores itself whole: a negation below cannot bring e.cls back
        "drop/in/f.cls": b"5",
    }
    for rel, data in files.items():
        (worktree / rel).parent.mkdir(parents=True, exist_ok=True)
        (worktree / rel).write_bytes(data)
    (worktree / ".datarepoignore").write_text("*.jpg\n")
    (worktree / "keep/.datarepoignore").write_text("!*.jpg\n*.tmp\n")
    (worktree / "other/.datarepoignore").write_text("sub/d.cls\n")
    (worktree / "drop/.datarepoignore").write_text("*\n")
    (worktree / "drop/in/.datarepoignore").write_text("!f.cls\n")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "x")
    sizes = {e["key"]: e["size"] for e in json.loads(cli("ls", "--json").output)}
    assert sizes == {"keep/a": 1, "other/c": 1, "sub/d": 1}  # other/c: its .cls alone
    assert cli("cat", "HEAD:keep/a.jpg").stdout_bytes == b"a"
    assert json.loads(cli("status", "--json").output) == {"added": [], "modified": [], "deleted": []}
    (worktree / "other/.datarepoignore").write_text("")  # un-ignoring shows the file as new
    assert json.loads(cli("status", "--json").output)["added"] == ["other/sub/d"]


def test_listings_quote_a_key_with_a_control_character(worktree: Path, cli) -> None:
    """As git quotes such a path: a newline in a key must not split its line of a listing."""
    (worktree / "a\nb.txt").write_bytes(b"x")
    (worktree / "plain ü.txt").write_bytes(b"y")
    cli("init")
    assert '  added:    "a\\nb"\n' in cli("status").output
    assert "  added:    plain ü\n" in cli("status").output
    cli("add", ".")
    cli("commit", "-m", "odd")
    assert cli("ls").output.splitlines() == ['"a\\nb"', "plain ü"]
    assert json.loads(cli("ls", "--json").output)[0]["key"] == "a\nb"
    assert cli("show", "HEAD").output.count('"a\\nb"') == 1


def test_file_grouping(worktree: Path, cli) -> None:
    (worktree / "a").mkdir()
    (worktree / "a/x.seg.png").write_bytes(b"png")
    (worktree / "a/README").write_bytes(b"readme")
    cli("init", "--grouping", "file")
    cli("add", ".")
    cli("commit", "-m", "x")
    assert [e["key"] for e in json.loads(cli("ls", "--json").output)] == ["a/README", "a/x.seg.png"]
    assert cli("cat", "HEAD:a/README").stdout_bytes == b"readme"
    assert cli("cat", "HEAD:a/x.seg.png").stdout_bytes == b"png"


def test_wds_grouping_of_multi_dot_names(worktree: Path, cli) -> None:
    (worktree / "a").mkdir()
    (worktree / "a/x.seg.png").write_bytes(b"seg")
    (worktree / "a/x.jpg").write_bytes(b"img")
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "x")
    assert [e["key"] for e in json.loads(cli("ls", "--json").output)] == ["a/x"]
    assert cli("cat", "HEAD:a/x.seg.png").stdout_bytes == b"seg"
    assert "name one as KEY.EXT" in cli("cat", "HEAD:a/x", ok=False).output


def test_export_folder_and_shards(repo_with_commit, worktree: Path, tmp_path: Path, cli) -> None:
    _, files = repo_with_commit
    cli("export", "HEAD", str(tmp_path / "out"), "--prefix", "train/cat/")
    got = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert got == {k: v for k, v in files.items() if k.startswith("train/cat/")}
    cli("export", "HEAD", str(tmp_path / "shards"), "--shards", "--shard-size", "8K")
    tars = sorted((tmp_path / "shards").glob("*.tar"))
    assert len(tars) > 1
    import webdataset as wds

    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == sorted({k.rsplit(".", 1)[0] for k in files})
    for s in samples:
        assert s["jpg"] == files[s["__key__"] + ".jpg"] and s["cls"] == files[s["__key__"] + ".cls"]
    assert "must be a new or empty directory" in cli("export", "HEAD", str(tmp_path / "out"), ok=False).output


def test_fsck_gc_repack_keep_data(repo_with_commit, worktree: Path, cli) -> None:
    repo, files = repo_with_commit
    for i in range(3):
        (worktree / "train/cat/0000.jpg").write_bytes(bytes([i]) * 5000)
        cli("add", ".")
        cli("commit", "-m", f"c{i}")
    assert "0 problems" in cli("fsck").output
    before = len(list(repo.store.iter_shards()))
    out = json.loads(cli("repack", "--json").output)
    assert out["shards_in"] >= 2 and len(list(repo.store.iter_shards())) < before
    cli("tag", "keep", "HEAD~2")
    cli("gc")
    assert "0 problems" in cli("fsck").output
    for rev in ("HEAD", "keep", "HEAD~3"):
        for e in json.loads(cli("ls", rev, "--json").output):
            assert Repo.open(worktree).read(e["datum"], verify=True)
    assert cli("cat", "keep:train/cat/0000.jpg").stdout_bytes == bytes([0]) * 5000


def test_gc_removes_unreachable(repo_with_commit, worktree: Path, cli) -> None:
    repo, _ = repo_with_commit
    (worktree / "train/cat/0000.jpg").write_bytes(b"z" * 40000)
    cli("add", ".")
    cli("commit", "-m", "big")
    big = json.loads(cli("ls", "--json", "--prefix", "train/cat/0000").output)[0]["datum"]
    cli("checkout", "-b", "other", "HEAD~1")
    cli("branch", "-d", "-f", "main")  # (no other ref reaches it: -d alone keeps it)
    repo.config = repo.config.__class__(**{**repo.config.__dict__, "reflog_expire_days": 0})
    repo.config.save(repo.dotdir / "config.toml")
    import time

    time.sleep(1.1)
    out = json.loads(cli("gc", "--json").output)
    assert out["objects"] >= 1 and out["shards"] >= 1
    assert Repo.open(worktree).index.locations.locate(big) is None
    assert "0 problems" in cli("fsck").output


def test_listing_commands_have_json(repo_with_commit, cli) -> None:
    for args in (("status",), ("diff",), ("log",), ("ls",), ("branch",), ("tag",), ("fsck",), ("show",)):
        json.loads(cli(*args, "--json").output)


def test_help_imports_neither_torch_nor_dvc() -> None:

    code = "import sys, datarepo.cli; print(any(m in sys.modules for m in ('torch', 'dvc', 'webdataset', 'sqlite3')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_bare_repository_and_ingest(tmp_path: Path, make_samples) -> None:
    from conftest import Cli

    src = tmp_path / "src"
    src.mkdir()
    make_samples(src, 6)
    bare = tmp_path / "bare"
    Cli(tmp_path)("init", "--bare", str(bare))
    c = Cli(bare)
    c("ingest", str(src), "--prefix", "raw/")
    assert len(json.loads(c("ls", "--json").output)) == 6
    assert "bare" in c("status", ok=False).output
    assert c("cat", "HEAD:raw/train/cat/0000.cls").stdout_bytes == b"0"
    assert "0 problems" in c("fsck").output


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(worktree: Path, cli) -> None:
    write_samples(worktree, 2000)  # `ls -l` prints more than a pipe holds
    cli("init")
    cli("add", ".")
    cli("commit", "-m", "many")
    # The console script's entry point, as `datarepo ls -l | head -1` runs it.
    entry = "import sys; from datarepo.cli import run; sys.argv[0] = 'datarepo'; run()"
    proc = subprocess.Popen([sys.executable, "-c", entry, "ls", "-l"], cwd=worktree,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().endswith(b" train/cat/0000\n")
    proc.stdout.close()
    assert proc.wait(timeout=60) == 141 and proc.stderr.read() == b""
    proc.stderr.close()
    done = subprocess.run([sys.executable, "-c", entry, "log", "--oneline"], cwd=worktree, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.endswith(" many\n")  # output still reaches a reader that stays


def test_progress_bar_on_a_terminal_and_quiet_when_piped(worktree: Path, cli) -> None:
    import pty

    write_samples(worktree, 30)
    cli("init")
    piped = subprocess.run([sys.executable, "-m", "datarepo.cli", "add", "."], cwd=worktree, capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stderr == ""
    (worktree / "train/cat/0000.cls").write_bytes(b"changed")
    leader, follower = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "datarepo.cli", "add", "."], cwd=worktree, stdout=subprocess.PIPE,
                          stderr=follower, text=True)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.returncode == 0 and "staged 0 added, 1 modified" in proc.stdout
    assert b"adding" in shown and b"30/30" in shown
