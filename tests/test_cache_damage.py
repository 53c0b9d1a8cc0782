"""Damaged rows of the rebuildable cache ``index.sqlite``: each command goes on correctly
without what it cannot trust, or says in one line what is damaged and how to get past it;
nothing it cannot trust is committed, and fsck sees what it should. The file is edited with
sqlite3, as a tool or a stray write would, and the commands run through the real CLI."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import Cli, write_samples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datarepo import tree as trees
from datarepo.errors import DataRepoError, InvalidInputError
from datarepo.keys import check_key
from datarepo.manifest import ShardReader
from datarepo.repo import Repo


def q(root: Path, sql: str, *params: object) -> list[tuple]:
    db = sqlite3.connect(root / ".datarepo" / "index.sqlite")
    try:
        rows = db.execute(sql, params).fetchall()
        db.commit()
        return rows
    finally:
        db.close()


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def head_keys(root: Path) -> list[str]:
    return [e.key for e in Repo.open(root).tree().select()]


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("committed") / "work"
    root.mkdir()
    files = write_samples(root, 20)
    cli = Cli(root)
    cli("init", "--shard-size", "16K")
    cli("add", ".")
    cli("commit", "-m", "first")
    cli("status")
    return root, files


@pytest.fixture
def repo(committed: tuple[Path, dict[str, bytes]], worktree: Path) -> dict[str, bytes]:
    """20 samples committed, one status seen (a snapshot saved): a copy of one made once."""
    shutil.copytree(committed[0], worktree, symlinks=True, dirs_exist_ok=True)
    return committed[1]


def assert_clean(cli: Cli) -> None:
    assert "nothing to commit" in cli("status").output


def assert_cat_all(cli: Cli, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert cli("cat", f"HEAD:{path}").stdout_bytes == data, path


# --- the status snapshot ------------------------------------------------------------------------
SNAPSHOT_VALUES = [
    ("status-snapshot total", '{"added": 5}'),
    ("status-snapshot staged", "[1, 2]"),
    ("status-snapshot recheck", '[["a"]]'),
    ("status-snapshot group_notes", "not json"),
    ("status-snapshot", '{"token": 5}'),
    ("status-snapshot", "[]"),
]


@pytest.mark.parametrize(("name", "value"), SNAPSHOT_VALUES)
def test_a_damaged_status_snapshot_is_no_snapshot(
    repo: dict[str, bytes], worktree: Path, cli: Cli, name: str, value: str
) -> None:
    q(worktree, "UPDATE meta SET value=? WHERE name=?", value, name)
    assert_clean(cli)
    (worktree / "train/cat/0000.jpg").write_bytes(b"changed")
    q(worktree, "UPDATE meta SET value=? WHERE name=?", value, name)
    assert "train/cat/0000" in cli("status").output
    assert "staged 0 added, 1 modified" in cli("add", ".").output


@pytest.mark.parametrize("value", [b"\xff\xfe", 7, None])
def test_a_meta_value_that_is_not_text_reads_as_unset(repo: dict[str, bytes], worktree: Path, cli: Cli, value: object) -> None:
    (worktree / "train/cat/0000.cls").write_bytes(b"staged")
    cli("add", ".")
    sql = "UPDATE meta SET value=CAST(? AS TEXT)" if isinstance(value, bytes) else "UPDATE meta SET value=?"
    q(worktree, sql, value)  # every value at once: schema, snapshot, stat base, staged version and tree
    assert "train/cat/0000" in cli("status").output  # still staged: the file was not set aside
    assert not (worktree / ".datarepo" / "index.sqlite.damaged").exists()
    cli("commit", "-m", "second")
    assert cli("cat", "HEAD:train/cat/0000.cls").stdout_bytes == b"staged"
    assert_cat_all(cli, {p: d for p, d in repo.items() if p.endswith(".cls") and p != "train/cat/0000.cls"})


# --- the stat cache -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "value"),
    [("hash", "zz"), ("hash", b"\x00" * 16), ("size", "x"), ("mtime_ns", 1.5), ("seen_ns", None), ("path", b"\xff")],
)
def test_damaged_stat_rows_are_passed_over(repo: dict[str, bytes], worktree: Path, cli: Cli, column: str, value: object) -> None:
    for path in ("train/cat/0000.jpg", "train/dog/0001.jpg"):  # a re-add writes rows, not a base
        (worktree / path).write_bytes(b"new " + path.encode())
    cli("add", ".")
    cli("commit", "-m", "second")
    assert q(worktree, "SELECT count(*) FROM stat")[0][0] >= 2
    as_text = isinstance(value, bytes) and column == "path"  # (bytes as text: not UTF-8)
    sql = f"UPDATE stat SET {column}=CAST(? AS TEXT)" if as_text else f"UPDATE stat SET {column}=?"
    if column == "path":  # (the primary key: one row at a time)
        q(worktree, sql + " WHERE path='train/cat/0000.jpg'", value)
    else:
        q(worktree, sql, value)
    q(worktree, "DELETE FROM meta WHERE name LIKE 'status-snapshot%'")  # status must look at the stats
    assert_clean(cli)
    (worktree / "train/cat/0000.jpg").write_bytes(b"third")
    assert "train/cat/0000" in cli("status").output


@pytest.mark.parametrize("where", ["middle", "meta"])
def test_a_damaged_stat_base_is_read_as_empty(repo: dict[str, bytes], worktree: Path, cli: Cli, where: str) -> None:
    base = worktree / ".datarepo" / "index.stats"
    assert base.is_file()
    if where == "middle":
        raw = bytearray(base.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        base.chmod(0o644)
        base.write_bytes(bytes(raw))
    else:
        q(worktree, "UPDATE meta SET value='[\"index.stats\", 5]' WHERE name='stat-base'")
    q(worktree, "DELETE FROM meta WHERE name LIKE 'status-snapshot%'")
    assert_clean(cli)


# --- the location cache -------------------------------------------------------------------------
LOCATION_DAMAGE = [
    "UPDATE location SET members='garbage'",
    "UPDATE location SET offset=-100",
    "UPDATE location SET length=1099511627776",
    "UPDATE location SET offset=offset+512",
    "UPDATE location SET offset=offset+1024, members=''",
    "UPDATE location SET shard='not a shard'",
    "UPDATE location SET shard=CAST(x'ff00' AS TEXT)",
    "UPDATE location SET members=CAST(x'c0' AS TEXT)",
    "UPDATE location SET offset='x', length=NULL",
    "UPDATE shard SET size=1",
    "UPDATE shard SET size='big', datums=x'00'",
]


@pytest.mark.parametrize("damage", LOCATION_DAMAGE)
def test_damaged_location_rows_are_read_again_from_the_idx(repo: dict[str, bytes], worktree: Path, cli: Cli, damage: str) -> None:
    q(worktree, damage)
    assert_cat_all(cli, repo)
    # read through the API too, unverified: right bytes, from a row read again
    q(worktree, damage)
    api = Repo.open(worktree)
    for entry in api.tree().select():
        ext = "jpg" if f"{entry.key}.jpg" in repo else "cls"
        assert api.read(entry.datum)[ext] == repo[f"{entry.key}.{ext}"]


@pytest.mark.parametrize("damage", LOCATION_DAMAGE)
def test_a_manifest_never_hands_on_wrong_bytes_from_a_damaged_location_row(
    repo: dict[str, bytes], worktree: Path, damage: str
) -> None:
    """A row that does not parse, or whose span is no tar block of its shard, is left out
    and placed again from the .idx; one well formed but wrong (moved a block on) reaches
    the manifest, whose reader finds a header that does not name the datum: an error
    naming the shard, unverified too, never other bytes."""
    q(worktree, damage)
    api = Repo.open(worktree)
    manifest = api.manifest(api.tree())
    assert len(manifest) == len(repo) // 2
    for i, shard in enumerate(manifest.shards):
        for r in manifest.ranges(i):
            held = {d.datum: (d.offset, d.length) for d in api.store.read_index(shard).datums}
            with api.store.open_shard(shard) as f:
                try:
                    [(key, members)] = ShardReader(f, [r], shard, verify=False)
                except DataRepoError as e:
                    assert held[r.datum] != (r.offset, r.length) and shard in str(e)
                    continue
            assert all(members[ext] == repo[f"{key}.{ext}"] for ext in members)


def test_a_row_pointing_at_other_bytes_of_its_shard_is_mended_by_a_reader_that_verifies(
    repo: dict[str, bytes], worktree: Path, cli: Cli
) -> None:
    # every row moved one datum on, members and all: well formed, inside the shard, wrong
    rows = q(worktree, "SELECT datum, shard, offset, length, members FROM location ORDER BY shard, offset")
    for (d, *_), (_, s, o, n, m) in itertools.pairwise(rows):
        q(worktree, "UPDATE location SET shard=?, offset=?, length=?, members=? WHERE datum=?", s, o, n, m, d)
    assert_cat_all(cli, repo)
    assert cli("fsck").exit_code == 0


def test_fsck_reports_location_rows_the_idx_disagrees_with_and_rebuild_mends_them(
    repo: dict[str, bytes], worktree: Path, cli: Cli
) -> None:
    assert cli("fsck").exit_code == 0
    q(worktree, "UPDATE location SET offset=offset+1")
    result = cli("fsck", ok=False)
    assert result.exit_code != 0
    lines = result.output.splitlines()
    assert any("index.sqlite" in line and "location rows" in line and "--rebuild-index" in line for line in lines)
    q(worktree, "UPDATE shard SET size=size+1")
    assert "shard rows" in cli("fsck", ok=False).output
    cli("fsck", "--rebuild-index")
    assert "0 problems" in cli("fsck").output
    assert_cat_all(cli, repo)


# --- the staging area ---------------------------------------------------------------------------
def a_stored_datum(root: Path) -> str:
    return q(root, "SELECT datum FROM location LIMIT 1")[0][0]


BAD_STAGED = [
    ("'../../escaped'", "{D}", "5"),
    ("'/abs'", "{D}", "5"),
    ("'a//b'", "{D}", "5"),
    ("'.git/config'", "{D}", "5"),
    ("'a' || char(0) || 'b'", "{D}", "5"),
    ("CAST(x'ff61' AS TEXT)", "{D}", "5"),
    ("x'6162'", "{D}", "5"),
    ("'train/new'", "'zz'", "5"),
    ("'train/new'", "x'00'", "5"),
    ("'train/new'", "{D}", "-1"),
    ("'train/new'", "{D}", "'five'"),
]


@pytest.mark.parametrize(("key", "datum", "size"), BAD_STAGED)
def test_commit_refuses_a_damaged_staged_row_and_commits_nothing(
    repo: dict[str, bytes], worktree: Path, cli: Cli, key: str, datum: str, size: str
) -> None:
    head = cli("log", "--oneline").output
    stored = a_stored_datum(worktree)
    q(worktree, f"INSERT INTO staged VALUES ({key}, {datum.format(D=repr(stored))}, {size})")
    q(worktree, "DELETE FROM meta WHERE name='staged_tree'")
    result = cli("commit", "-m", "evil", ok=False)
    assert result.exit_code != 0
    [line] = error_lines(result.output)
    assert "index.sqlite" in line and "staged" in line
    assert cli("log", "--oneline").output == head
    assert all(check_key(k) for k in head_keys(worktree))
    assert "nothing to commit" in cli("commit", "-m", "again", ok=False).output  # the rows were dropped
    assert "0 problems" in cli("fsck").output


@pytest.mark.parametrize(("key", "datum", "size"), BAD_STAGED[:3])
def test_a_damaged_staged_row_beside_sound_ones_is_dropped_and_the_sound_ones_committed(
    repo: dict[str, bytes], worktree: Path, cli: Cli, key: str, datum: str, size: str
) -> None:
    q(worktree, f"INSERT INTO staged VALUES ({key}, {datum.format(D=repr(a_stored_datum(worktree)))}, {size})")
    assert_clean(cli)  # (a row no status reads is dropped once one does)
    (worktree / "train/cat/0000.cls").write_bytes(b"7")
    cli("add", ".")
    assert "train/cat/0000" in cli("status").output
    [line] = error_lines(cli("commit", "-m", "second", ok=False).output)
    assert "index.sqlite" in line and "nothing committed" in line
    cli("commit", "-m", "second")  # the sound staged change, without the damaged row
    assert all(check_key(k) for k in head_keys(worktree))
    assert cli("cat", "HEAD:train/cat/0000.cls").stdout_bytes == b"7"


def test_fsck_reports_a_damaged_staged_row(repo: dict[str, bytes], worktree: Path, cli: Cli) -> None:
    q(worktree, "INSERT INTO staged VALUES ('../x', ?, 5)", a_stored_datum(worktree))
    result = cli("fsck", ok=False)
    assert any("index.sqlite" in line and "'../x'" in line for line in result.output.splitlines())
    assert "0 problems" in cli("fsck").output  # dropped


def test_commit_refuses_a_staged_datum_no_shard_holds(repo: dict[str, bytes], worktree: Path, cli: Cli) -> None:
    q(worktree, "INSERT INTO staged VALUES ('train/ghost', ?, 5)", "0" * 32)
    q(worktree, "DELETE FROM meta WHERE name='staged_tree'")
    result = cli("commit", "-m", "ghost", ok=False)
    assert result.exit_code != 0 and "staged datum not found" in result.output
    assert "train/ghost" not in head_keys(worktree)


def test_a_staged_datum_whose_location_row_is_damaged_is_found_in_its_idx(
    repo: dict[str, bytes], worktree: Path, cli: Cli
) -> None:
    (worktree / "train/cat/0000.cls").write_bytes(b"9")
    cli("add", ".")
    q(worktree, "DELETE FROM meta WHERE name='staged_tree'")
    q(worktree, "UPDATE location SET offset=-1")
    cli("commit", "-m", "second")
    assert cli("cat", "HEAD:train/cat/0000.cls").stdout_bytes == b"9"


# --- keys in commits and trees ------------------------------------------------------------------
def test_the_commit_api_refuses_an_invalid_key(repo: dict[str, bytes], worktree: Path) -> None:
    api = Repo.open(worktree)
    before = api.head()
    entry = next(iter(api.tree().select()))
    with pytest.raises(InvalidInputError, match="invalid key"):
        api.commit({"../x": ("../x", entry.datum, entry.size)}, "evil")
    assert api.head() == before


def test_fsck_checks_the_keys_of_every_reachable_tree_page(repo: dict[str, bytes], worktree: Path, cli: Cli) -> None:
    api = Repo.open(worktree)
    entry = next(iter(api.tree().select()))
    # a tree written past the commit API's check (by another tool, say)
    tree = trees.apply_changes(api.store, api.tree_of(None), {"a/../../b": ("a/../../b", entry.datum, entry.size)})
    api.commit_tree(tree, "evil", api.head())
    result = cli("fsck", ok=False)
    assert any("tree page" in line and "a/../../b" in line for line in result.output.splitlines())


# --- any cell, any value ------------------------------------------------------------------------
CELLS = {
    "meta": ["value"],
    "stat": ["path", "size", "mtime_ns", "ino", "seen_ns", "hash"],
    "location": ["datum", "shard", "offset", "length", "members"],
    "shard": ["shard", "size", "datums"],
    "staged": ["key", "datum", "size"],
}
KEYS = {"meta": "name", "stat": "path", "location": "datum", "shard": "shard", "staged": "key"}
VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(["", "[]", "{}", '{"added": 5}', "0 1 x/2 3 y", "../../x", "a" * 32]),
)


STAGED_IN_PRISTINE = {"train/cat/0000.cls"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with every kind of row: a commit, staged changes with a staged tree,
    stat rows beside the base, a status snapshot."""
    root = tmp_path_factory.mktemp("pristine") / "work"
    root.mkdir()
    cli = Cli(root)
    write_samples(root, 12)
    cli("init", "--shard-size", "16K")
    cli("add", ".")
    cli("commit", "-m", "first")
    (root / "train/cat/0000.cls").write_bytes(b"changed")  # (STAGED_IN_PRISTINE)
    (root / "train/extra.txt").write_bytes(b"new")
    cli("add", ".")
    cli("status")
    return root


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damaged_cell_gives_a_right_result_or_one_error_line(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    root = tmp_path_factory.mktemp("damaged") / "work"
    shutil.copytree(pristine, root, symlinks=True)
    for _ in range(data.draw(st.integers(1, 3))):
        table = data.draw(st.sampled_from(sorted(CELLS)))
        column = data.draw(st.sampled_from(CELLS[table]))
        pk = KEYS[table]
        keys = q(root, f"SELECT typeof({pk}), CAST({pk} AS BLOB) FROM {table}")  # (a key may be damaged already)
        if not keys:
            continue
        kind, key = data.draw(st.sampled_from(keys))
        value = data.draw(VALUES)
        as_text = isinstance(value, bytes) and data.draw(st.booleans())  # (bytes as text: not UTF-8)
        sql = f"UPDATE {table} SET {column}={'CAST(? AS TEXT)' if as_text else '?'} WHERE typeof({pk})=? AND CAST({pk} AS BLOB)=?"
        try:
            q(root, sql, value, kind, key)
        except sqlite3.IntegrityError:
            continue  # (a key that another row has, or NULL)
    for name in data.draw(st.sets(st.sampled_from(["index.stats", "index.listing"]))):  # the files beside it
        side = root / ".datarepo" / name
        raw = bytearray(side.read_bytes())
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at : at + 8] = data.draw(st.binary(min_size=1, max_size=8))
        side.write_bytes(bytes(raw))
    cli = Cli(root)
    work = [p for p in root.rglob("*") if p.is_file() and ".datarepo" not in p.parts]
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in work}
    for args in (["status"], ["add", "."], ["cat", "HEAD:train/dog/0001.jpg"], ["commit", "-m", "after"], ["fsck"]):
        result = cli(*args, ok=False)  # anything but a DataRepoError would raise here
        assert result.exit_code == 0 or args[0] == "fsck" or len(error_lines(result.output)) == 1, (args, result.output)
        if args[0] == "cat" and result.exit_code == 0:
            assert result.stdout_bytes == files["train/dog/0001.jpg"]
    assert all(check_key(k) for k in head_keys(root))
    api = Repo.open(root)
    for entry in api.tree().select():  # what was committed is stored, and what the files hold
        for ext, data_ in api.read(entry.datum, verify=True).items():
            path = f"{entry.key}.{ext}" if ext else entry.key
            # (a staged change whose row was damaged is not committed: the file may be newer;
            # a staged key changed to another valid one has no file)
            assert files.get(path, data_) == data_ or path in STAGED_IN_PRISTINE, path
