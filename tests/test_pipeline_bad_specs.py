"""Pipelines that declare, raise or write what they must not: keys the key rule forbids, a
``SystemExit``, fields of a TOML file of the wrong kind, outputs that are links or FIFOs.
Each is one clear line (a bad declaration) or a recorded failure of the datum concerned
(the others committed), never a traceback, a silent exit or a file outside the work tree
taken as an output."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datarepo
from tests.conftest import Cli, with_ctrl_c
from tests.test_pipeline_errors import head, one_error
from tests.test_pipelines import UPPER, commit_raw, committed_texts, write_pipeline, write_texts


@pytest.fixture
def texts(worktree: Path, cli: Cli) -> Path:
    return committed_texts(worktree, cli, 10)


def failures(cli: Cli, *args: str) -> dict[str, list[str]]:
    """Runs the pipelines, which must fail some datums; their (class, message) by base."""
    result = cli("run", "--json", *args, ok=False)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output.split("\nError: ")[0])
    return {f[0]: f[1:] for p in report["pipelines"] for f in p["failures"]}


def outputs(root: Path, prefix: str) -> dict[str, dict[str, bytes]]:
    with datarepo.open(root) as repo:
        return {e.key: repo.read(e.datum) for e in repo.tree().select(prefix=prefix)}


# --- the key rule, for output prefixes and every output key ------------------------------------
@pytest.mark.parametrize("output", [".datarepo/", "a/.git/", ".dvc/", "a/.datarepoignore/", "o//", "../o/", "/etc/"])
def test_an_output_prefix_the_key_rule_forbids_is_one_error(texts: Path, cli: Cli, output: str) -> None:
    before = head(texts)
    write_pipeline(texts, "t.py", f"from datarepo import pipeline\n\n@pipeline(input='raw/**', output={output!r})\n"
                                  "def f(d):\n    return {'txt': b'x'}\n")
    for command in ("run", "pipelines"):
        assert one_error(cli, command).startswith("Error: t.py: pipeline 'f': output: invalid ")
    (texts / "pipelines/t.py").unlink()
    (texts / "pipelines/c.toml").write_text(f'[pipeline.x]\ncommand = ["true"]\ninput = "raw/**"\noutput = {json.dumps(output)}\n')
    assert one_error(cli, "run").startswith("Error: c.toml: pipeline 'x': output: invalid ")
    assert head(texts) == before and "0 problems" in cli("fsck").output


@pytest.mark.parametrize("glob", [".git/**", "a/.datarepo/*", "../raw/**"])
def test_an_input_glob_under_a_forbidden_folder_is_one_error(texts: Path, cli: Cli, glob: str) -> None:
    write_pipeline(texts, "t.py", f"from datarepo import pipeline\n\n@pipeline(input={glob!r}, output='o/')\n"
                                  "def f(d):\n    return d\n")
    assert one_error(cli, "run").startswith(f"Error: t.py: pipeline 'f': input: bad input glob {glob!r}")


def test_an_output_key_the_key_rule_forbids_fails_its_datum(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "t.py", '''
from datarepo import pipeline

@pipeline(input="raw/**", output="up/")
def upper(datum):
    key = datum["__key__"]
    if key == "raw/a/003":
        return [(".git/x", {"txt": b"x"})]
    if key == "raw/b/004":
        return [("a/.datarepo/b", {"txt": b"x"})]
    return {"txt": datum["txt"]}
''')
    failed = failures(cli)
    assert failed["up/a/003"] == ["TransformError", "output key: invalid key 'up/a/003/.git/x': "
                                  ".datarepo, .datarepoignore, .dvc, .git are the repository's own folders"]
    assert "invalid key 'up/b/004/a/.datarepo/b'" in failed["up/b/004"][1]
    assert sorted(outputs(texts, "up/")) == sorted(f"up/{'ab'[i % 2 == 0]}/{i:03d}" for i in range(10) if i not in (3, 4))
    assert "0 problems" in cli("fsck").output and "up/a/001" in cli("ls").output


def test_a_group_value_that_makes_no_key_fails_its_unit(worktree: Path, cli: Cli) -> None:
    cli("init")
    for name in ("v/.env", "v/.git.txt", "v/x.txt", "w/.git.txt"):
        (worktree / "raw" / name).parent.mkdir(parents=True, exist_ok=True)
        (worktree / "raw" / name).write_text(name)
    commit_raw(cli)
    write_pipeline(worktree, "g.py", '''
from datarepo import pipeline

@pipeline(input=pipeline.group("raw/**", by=r"[.]"), output="o/")
def dots(datums):
    return {"n": str(len(datums))}

@pipeline(input=pipeline.join("raw/*/.*", "raw/v/*", on=r"[.]git$"), output="j/")
def pairs(datums):
    return {"n": str(len(datums))}

@pipeline(input=pipeline.group("raw/**", by=r"raw/(zz)?"), output="p/")
def none(datums):
    return {"n": b"x"}
''')
    failed = failures(cli, "--executor", "serial")
    own = ".datarepo, .datarepoignore, .dvc, .git are the repository's own folders"
    assert failed == {
        "o/.": ["TransformError", "output key: invalid key 'o/.': keys are relative '/'-separated paths without '.' or '..'"],
        "j/.git/0": ["TransformError", f"output key: invalid key 'j/.git/0': {own}"],
        "j/.git/1": ["TransformError", f"output key: invalid key 'j/.git/1': {own}"],
    }
    assert head(worktree) is not None and outputs(worktree, "o/") == {} and "0 problems" in cli("fsck").output


# --- SystemExit and other BaseExceptions -----------------------------------------------------------
@pytest.mark.parametrize("raised", ["SystemExit(0)", "SystemExit('bye')", "KeyboardInterrupt()", "GeneratorExit()"])
def test_a_module_raising_a_base_exception_at_import_is_one_error(texts: Path, cli: Cli, raised: str) -> None:
    write_pipeline(texts, "t.py", f"from datarepo import pipeline\n\nraise {raised}\n")
    kind = raised.split("(")[0]
    for command in ("run", "pipelines", "dag"):
        assert one_error(cli, command).startswith(f"Error: t.py:3: cannot import: {kind}")


def test_a_module_object_raising_system_exit_when_looked_at_is_one_error(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "t.py", "class Odd:\n    def __getattr__(self, name):\n        raise SystemExit(name)\n\nodd = Odd()\n")
    assert one_error(cli, "run") == "Error: t.py: cannot read 'odd': SystemExit: __datarepo_pipeline__"


def _cli_process(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATAREPO_AUTHOR": "Test <test@example.com>"}
    return subprocess.run([sys.executable, "-m", "datarepo.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, preexec_fn=with_ctrl_c)


def test_sys_exit_at_import_in_a_real_process(texts: Path) -> None:
    write_pipeline(texts, "t.py", "import sys\nsys.exit(0)\n")
    done = _cli_process(texts, "run")
    assert done.returncode == 1 and done.stderr.strip() == "Error: t.py:2: cannot import: SystemExit: 0", done


EXITS = '''
import sys
from datarepo import pipeline

def ready():
    return {{"n": 1}}

@pipeline(input="raw/**", output="up/", batch_size=2, setup={setup})
def upper(datum, **setup):
    key = datum["__key__"]
    if key == "raw/a/001":
        raise SystemExit("bye")
    if key == "raw/b/002":
        sys.exit(3)
    if key == "raw/a/003":
        raise KeyboardInterrupt("not a Ctrl-C")
    if key == "raw/b/004":
        raise GeneratorExit("closed")
    return {{"txt": datum["txt"].upper()}}
'''


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_transform_raising_system_exit_fails_its_datum_only(texts: Path, cli: Cli, executor: str) -> None:
    write_pipeline(texts, "t.py", EXITS.format(setup="ready"))
    failed = failures(cli, "--executor", executor, "--workers", "2")
    assert failed == {"up/a/001": ["SystemExit", "bye"], "up/b/002": ["SystemExit", "3"],
                      "up/a/003": ["KeyboardInterrupt", "not a Ctrl-C"], "up/b/004": ["GeneratorExit", "closed"]}
    assert outputs(texts, "up/")["up/b/000"] == {"txt": b"TEXT 0"} and len(outputs(texts, "up/")) == 6
    retried = failures(cli, "--executor", executor)  # recorded as failed: tried again, and only they
    assert sorted(retried) == sorted(failed)


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_setup_raising_system_exit_fails_its_datums(texts: Path, cli: Cli, executor: str) -> None:
    write_pipeline(texts, "t.py", EXITS.format(setup="ready").replace('return {"n": 1}', 'raise SystemExit("no model")'))
    failed = failures(cli, "--executor", executor, "--workers", "2")
    assert len(failed) == 5 and set(map(tuple, failed.values())) == {("PipelineError", "setup of 'upper' failed: SystemExit: no model")}


def test_a_real_ctrl_c_still_stops_a_serial_run(texts: Path, tmp_path: Path) -> None:
    write_pipeline(texts, "t.py", '''
import os, signal
from datarepo import pipeline

@pipeline(input="raw/**", output="up/", batch_size=1)
def upper(datum):
    if datum["__key__"] == "raw/b/004":
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C of the run, which runs the transforms itself
    return {"txt": datum["txt"].upper()}
''')
    before = head(texts)
    done = _cli_process(texts, "run", "--executor", "serial")
    assert done.returncode == 130 and done.stderr.strip().endswith("interrupted"), done
    assert head(texts) == before


# --- every field of a TOML file ------------------------------------------------------------------
GOOD = {"command": ["true"], "input": "raw/**", "output": "o/"}


def toml(value: Any) -> str:
    """``value`` as TOML (strings as JSON writes them, with DEL escaped as TOML wants)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    return "{" + ", ".join(f"{toml(k)} = {toml(v)}" for k, v in value.items()) + "}"


def write_toml(root: Path, table: dict[str, Any]) -> None:
    (root / "pipelines").mkdir(exist_ok=True)
    body = "".join(f"{json.dumps(k)} = {toml(v)}\n" for k, v in table.items())
    (root / "pipelines/c.toml").write_text(f"[pipeline.x]\n{body}")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("command", "echo 'unterminated", "command: No closing quotation"),
        ("command", "echo \\", "command: No escaped character"),
        ("command", "", "command: must be a list of strings"),
        ("command", [], "command: must be a list of strings"),
        ("command", ["", "x"], "command: the program's name is empty"),
        ("command", [1, 2], "command: must be a list of strings (or one string), not holding 1"),
        ("input", "", "input: bad input glob ''"),
        ("input", 42, "input: bad input 42"),
        ("input", {"glob": "raw/**", "bogus": 1}, "input: bad input"),
        ("input", {"rev": "v1"}, "input: bad input"),
        ("input", {"union": ["raw/a/*"], "glob": "raw/**"}, "input: bad input"),
        ("input", {"join": ["raw/a/*", "raw/b/*"]}, "input: bad key pattern ''"),
        ("input", {"cross": []}, "input: bad input: cross takes a list of inputs"),
        ("input", {"glob": "raw/**", "rev": 3}, "input: bad revision 3"),
        ("output", "", "output: '' must be a key prefix ending with '/'"),
        ("output", 5, "output: 5 must be a key prefix"),
        ("version", 1, "version: must be a string"),
        ("params", {"a": math.nan}, "params: must be JSON values"),
        ("params", {"a-b": 1}, "params: param name 'a-b' is not a name"),
        ("params", "x", "params: must be a table"),
        ("workers", 0, "workers: must be a whole number from 1 to 1024, not 0"),
        ("workers", 10**15, "workers: must be a whole number from 1 to 1024"),
        ("workers", 2.5, "workers: must be a whole number"),
        ("retries", -1, "retries: must be a whole number from 0 to 100, not -1"),
        ("max_failures", -1, "max_failures: must be a whole number from 0"),
        ("batch_size", 0, "batch_size: must be a whole number from 1"),
        ("timeout", -1, "timeout: must be a number of seconds above 0"),
        ("timeout", math.nan, "timeout: must be a number of seconds above 0"),
        ("timeout", math.inf, "timeout: must be a number of seconds above 0"),
        ("timeout", 1e300, "timeout: must be a number of seconds above 0 and at most 1e+06"),
        ("timeout", True, "timeout: must be a number of seconds"),
        ("depends", [""], "depends: must be a list of file or package names"),
        ("depends", "numpy", "depends: must be a list of strings"),
        ("depends", ["no-such-package-here"], "depends: 'no-such-package-here' is neither a file in pipelines/ nor an installed package"),
        ("colour", "blue", "unknown field colour"),
    ],
)
def test_every_field_of_a_toml_pipeline_is_checked(texts: Path, cli: Cli, field: str, value: Any, message: str) -> None:
    write_toml(texts, {**GOOD, field: value})
    for command in ("run", "pipelines"):
        assert one_error(cli, command) == f"Error: c.toml: pipeline 'x': {message}" or message in one_error(cli, command)
        assert one_error(cli, command).startswith("Error: c.toml: pipeline 'x': ")


FIELDS = ["command", "input", "output", "version", "params", "workers", "max_failures", "retries", "timeout",
          "depends", "batch_size", "colour"]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.sampled_from(["", "raw/**", "o/", ".git/", "a/.dvc/", "echo 'x", "{python}", "../x/"]),
)
_values = st.recursive(_scalars.filter(lambda v: v is not None), lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["glob", "rev", "join", "on", "a", "b c"]), inner, max_size=3),
), max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(FIELDS), _values, min_size=1, max_size=3))
def test_a_fuzzed_toml_pipeline_loads_or_is_one_error_naming_the_field(texts: Path, cli: Cli, changes: dict[str, Any]) -> None:
    write_toml(texts, {**GOOD, **changes})
    result = cli("pipelines", ok=False)
    if result.exit_code == 0:
        assert result.output.startswith("x  ")
        return
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    named = [f for f in FIELDS if line.startswith(f"Error: c.toml: pipeline 'x': {f}: ")]
    assert named or "unknown field colour" in line or line.startswith("Error: c.toml: not TOML"), line


# --- what a command leaves in its output folder ------------------------------------------------
def write_command(root: Path, script: str) -> None:
    (root / "pipelines").mkdir(exist_ok=True)
    (root / "pipelines/_tool.py").write_text(
        "import os, sys, pathlib\nkey = os.environ['DATAREPO_KEY']\nout = sys.argv[1]\n"
        "pathlib.Path(out, 'x.txt').write_text('ok')\n" + script)
    (root / "pipelines/tool.toml").write_text(
        '[pipeline.tool]\ncommand = ["{python}", "_tool.py", "{out}"]\ninput = "raw/**"\noutput = "t/"\ntimeout = 20\n')


LINK_TO_FILE = "os.symlink(SECRET, os.path.join(out, 'p.txt'))"
FIFO = "os.mkfifo(os.path.join(out, 'p.txt'))  # read, it would wait for ever"
NOT_UTF8 = "open(os.path.join(os.fsencode(out), b'q\\xff.txt'), 'wb').write(b'x')"
LINK_TO_FOLDER = "os.symlink(os.path.dirname(SECRET), os.path.join(out, 'd'))"
UNDER_GIT = "os.makedirs(os.path.join(out, '.git')); open(os.path.join(out, '.git', 'config.txt'), 'w').write('x')"
OUT_REPLACED = "import shutil; shutil.rmtree(out); os.symlink(os.path.dirname(SECRET), out)"


@pytest.mark.parametrize(
    ("scripts", "errors"),
    [
        ((LINK_TO_FILE, FIFO, NOT_UTF8), ("output file 'p.txt' is a symbolic link (not followed): outputs are regular files",
                                          "output file 'p.txt' is a FIFO: outputs are regular files",
                                          "output file name b'q\\xff.txt' is not UTF-8")),
        ((LINK_TO_FOLDER, UNDER_GIT, OUT_REPLACED), ("output file 'd' is a symbolic link (not followed): outputs are regular files",
                                                     "output key: invalid key 't/b/002/.git/config': ",
                                                     "replaced its output folder with something not a folder")),
    ],
)
def test_a_command_output_that_is_a_link_a_fifo_or_not_utf8_fails_its_datum(
    texts: Path, cli: Cli, tmp_path: Path, scripts: tuple[str, ...], errors: tuple[str, ...]
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the work tree")
    write_command(texts, f"SECRET = {str(secret)!r}\n" + "".join(
        f"if key.endswith('00{i}'):\n    {script}\n" for i, script in enumerate(scripts, 1)))
    failed = failures(cli)
    assert sorted(failed) == ["t/a/001", "t/a/003", "t/b/002"]
    for i, error in enumerate(errors, 1):
        (kind, message), = [f for base, f in failed.items() if base.endswith(f"00{i}")]
        assert kind == "TransformError" and error in message, message
    made = outputs(texts, "t/")
    assert len(made) == 7 and made["t/b/004"] == {"txt": b"ok"}
    assert all(b"outside" not in data for datum in made.values() for data in datum.values())


# --- lineage, from the repository alone ----------------------------------------------------------
REVERSE = '''
from datarepo import pipeline

@pipeline(input="up/**", output="rev/", version="1")
def reverse(datum):
    return {"txt": datum["txt"][::-1]}
'''


def _chain(cli: Cli, key: str) -> list[tuple[str, str]]:
    node, chain = json.loads(cli("lineage", key, "--json").output), []
    while True:
        chain.append((node["key"], node.get("pipeline", "")))
        if not node["links"]:
            return chain
        (node,) = node["links"]


def test_lineage_of_outputs_of_pipelines_removed_or_renamed_since(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "upper.py", UPPER)
    write_pipeline(texts, "reverse.py", REVERSE)
    cli("run")
    expected = [("rev/a/005", "reverse"), ("up/a/005", "upper"), ("raw/a/005", "")]
    assert _chain(cli, "rev/a/005") == expected
    (texts / "pipelines/upper.py").unlink()  # removed: its outputs stay, made by it
    (texts / "pipelines/reverse.py").rename(texts / "pipelines/backwards.py")
    write_pipeline(texts, "backwards.py", REVERSE.replace("def reverse", "def backwards").replace("rev/", "back/"))
    assert "backwards: 10 processed" in cli("run").output
    assert _chain(cli, "rev/a/005") == expected
    assert _chain(cli, "back/a/005") == [("back/a/005", "backwards"), ("up/a/005", "upper"), ("raw/a/005", "")]
    assert _chain(cli, "raw/a/005") == [("raw/a/005", "")]
    write_texts(texts, 1, start=5, word="new")  # a raw commit after the pipeline commits
    commit_raw(cli, "one changed")
    assert _chain(cli, "up/a/005") == [("up/a/005", "upper"), ("raw/a/005", "")]
    assert _chain(cli, "raw/a/005") == [("raw/a/005", "")]


def test_lineage_reads_no_pipeline_code(texts: Path, cli: Cli, tmp_path: Path) -> None:
    write_pipeline(texts, "upper.py", UPPER)
    cli("run")
    marker = tmp_path / "imported"
    write_pipeline(texts, "upper.py", f"open({str(marker)!r}, 'w').close()\nraise SystemExit('no import here')\n")
    write_pipeline(texts, "broken.py", "import no_such_module_here\n")
    assert _chain(cli, "up/b/002") == [("up/b/002", "upper"), ("raw/b/002", "")]
    assert _chain(cli, "raw/b/002") == [("raw/b/002", "")]
    assert "upper" in cli("lineage", "raw/b/002", "--downstream").output
    assert not marker.exists()
    assert "cannot import" in one_error(cli, "pipelines")
