"""Bad pipelines and bad transforms: one clear line, a non-zero exit, nothing committed lost;
interrupted runs; a worker killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import datarepo
from tests.conftest import Cli, with_ctrl_c
from tests.test_pipelines import UPPER, commit_raw, committed_texts, run, write_pipeline, write_texts


@pytest.fixture
def texts(worktree: Path, cli: Cli) -> Path:
    return committed_texts(worktree, cli, 10)


def head(root: Path) -> str | None:
    with datarepo.open(root) as repo:
        return repo.head()


def one_error(cli: Cli, *args: str) -> str:
    """Runs a command that must fail; returns its one error line."""
    result = cli(*args, ok=False)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import no_such_module_here\n", "upper.py:1: cannot import: ModuleNotFoundError: No module named 'no_such_module_here'"),
        ("from datarepo import pipeline\n\ndef broken(:\n    pass\n", "upper.py:3: syntax error"),
        ("from datarepo import pipeline\n\n@pipeline(input='raw/**', output='up')\ndef f(d):\n    return d\n",
         "output: 'up' must be a key prefix ending with '/'"),
        ("from datarepo import pipeline\n\n@pipeline(input=42, output='up/')\ndef f(d):\n    return d\n", "bad input 42"),
        ("from datarepo import pipeline\n\n@pipeline(input='raw/**', output='up/', params={'x': object()})\ndef f(d, x):\n    return d\n",
         "params: must be JSON values"),
    ],
)
def test_a_pipeline_that_cannot_load(texts: Path, cli: Cli, source: str, message: str) -> None:
    before = head(texts)
    write_pipeline(texts, "upper.py", source)
    assert message in one_error(cli, "run")
    assert head(texts) == before


def test_two_pipelines_writing_one_prefix_and_a_cycle(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "upper.py", UPPER)
    write_pipeline(texts, "again.py", UPPER.replace("def upper", "def again"))
    assert "pipelines 'again' and 'upper' both write under 'up/'" in one_error(cli, "run")
    write_pipeline(texts, "again.py", UPPER.replace("def upper", "def again").replace('input="raw/**", output="up/"', 'input="up/**", output="raw2/"'))
    write_pipeline(texts, "upper.py", UPPER.replace('input="raw/**"', 'input="raw2/**"'))
    assert "the pipelines form a cycle" in one_error(cli, "run")
    write_pipeline(texts, "upper.py", UPPER.replace('input="raw/**"', 'input="**"'))
    assert "cycle" in one_error(cli, "run", "upper")
    assert head(texts) is not None


def test_unknown_pipeline_name(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "upper.py", UPPER)
    assert "no pipeline named 'nope' (known: upper)" in one_error(cli, "run", "nope")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("return 42", "TransformError: the transform returned int; expected a dict of members"),
        ("return {'a/b': b'x'}", "TransformError: invalid member name 'a/b'"),
        ("return {'txt': 3.5}", "member 'txt' is float; members are bytes or str"),
        ("return [('../escape', {'txt': b'x'})]", "output key: invalid key 'up/a/003/../escape'"),
        ("return {}", "has no member"),
        ("raise KeyError('nope')", "KeyError: 'nope'"),
        ("raise type('Odd', (Exception,), {'__str__': lambda self: exec('raise SystemExit(1)')})()",
         "Odd: (its message cannot be shown: SystemExit)"),
    ],
)
def test_a_transform_that_returns_something_wrong(texts: Path, cli: Cli, body: str, error: str) -> None:
    write_pipeline(texts, "upper.py", f'''
from datarepo import pipeline

@pipeline(input="raw/**", output="up/")
def upper(datum):
    if datum["__key__"] == "raw/a/003":
        {body}
    return {{"txt": datum["txt"]}}
''')
    line = one_error(cli, "run")
    assert "1 datum(s) failed, first upper up/a/003" in line and error in line
    with datarepo.open(texts) as repo:
        tree = repo.tree()
        assert "up/a/001" in tree and "up/a/003" not in tree and "raw/a/003" in tree


def test_a_hanging_transform_times_out(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "upper.py", '''
import time
from datarepo import pipeline

@pipeline(input="raw/**", output="up/", timeout=0.3)
def upper(datum):
    if datum["__key__"] == "raw/b/004":
        time.sleep(600)
    return {"txt": datum["txt"]}
''')
    line = one_error(cli, "run", "--workers", "2")
    assert "up/b/004: DatumTimeout: took longer than the timeout of 0.3 s" in line
    assert run(cli, "--dry-run", ok=True) == {} and "would process 1 (1 failed)" in cli("run", "--dry-run").output


def test_commands_that_fail_write_nothing_or_hang(texts: Path, cli: Cli) -> None:
    (texts / "pipelines").mkdir()
    (texts / "pipelines/_tool.py").write_text(
        "import sys, time, pathlib, os\n"
        "key = os.environ['DATAREPO_KEY']\n"
        "if key.endswith('001'):\n    print('disk on fire', file=sys.stderr); sys.exit(3)\n"
        "if key.endswith('002'):\n    sys.exit(0)\n"
        "if key.endswith('003'):\n    time.sleep(600)\n"
        "(pathlib.Path(sys.argv[2]) / 'x.txt').write_text('ok')\n"
    )
    (texts / "pipelines/tool.toml").write_text(
        '[pipeline.tool]\ncommand = ["{python}", "_tool.py", "{in}", "{out}"]\ninput = "raw/**"\noutput = "t/"\n'
        'timeout = 1\nbatch_size = 1\n'
    )
    result = cli("run", "--json", ok=False)
    assert result.exit_code == 1
    failures = {f[0]: f[1:] for f in __import__("json").loads(result.output.split("\nError")[0])["pipelines"][0]["failures"]}
    assert failures["t/a/001"] == ["TransformError", f"{sys.executable} exited with status 3: disk on fire"]
    assert failures["t/b/002"] == ["TransformError", f"{sys.executable} wrote nothing to its output folder"]
    assert failures["t/a/003"][0] == "DatumTimeout"
    with datarepo.open(texts) as repo:
        assert repo.read(repo.tree()["t/b/004"].datum) == {"txt": b"ok"}


KILLS_ITS_WORKER = '''
import os, signal
from datarepo import pipeline

@pipeline(input="raw/**", output="up/", batch_size=1)
def upper(datum):
    if datum["__key__"] == "raw/a/005":
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    return {"txt": datum["txt"]}
'''


def test_a_worker_killed_fails_its_batch_not_the_run(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "upper.py", KILLS_ITS_WORKER)
    line = one_error(cli, "run", "--workers", "2")
    assert "up/a/005: WorkerDied: the process running this batch died" in line
    with datarepo.open(texts) as repo:
        assert sum(1 for _ in repo.tree().select(prefix="up/")) == 9


def _cli_process(cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATAREPO_AUTHOR": "Test <test@example.com>"}
    return subprocess.Popen([sys.executable, "-m", "datarepo.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=with_ctrl_c)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])  # killed, or Ctrl-C
def test_a_killed_run_leaves_the_branch_and_its_work_is_reused(worktree: Path, cli: Cli, tmp_path: Path, how: str) -> None:
    cli("init", "--shard-size", "16K")
    write_texts(worktree, 40)
    commit_raw(cli)
    flag = tmp_path / "kill-the-driver"
    flag.write_text("")
    write_pipeline(worktree, "upper.py", f'''
import os, signal
from datarepo import pipeline

@pipeline(input="raw/**", output="up/", batch_size=1)
def upper(datum):
    if datum["__key__"] == "raw/b/030" and os.path.exists({str(flag)!r}):
        os.unlink({str(flag)!r})
        os.kill(os.getppid(), signal.{how})  # the driver, stopped mid-run
        signal.pause()
    return {{"txt": datum["txt"].upper()}}
''')
    before = head(worktree)
    proc = _cli_process(worktree, "run", "--workers", "1")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if how == "SIGKILL" else 130) and not flag.exists(), out
    if how == "SIGINT":
        assert out.decode().strip().endswith("interrupted")
    assert head(worktree) == before
    out = run(cli)["upper"]
    assert out["processed"] + out["reused"] == 40 and out["reused"] >= 10  # the finished batches were kept
    with datarepo.open(worktree) as repo:
        assert repo.read(repo.tree()["up/b/030"].datum) == {"txt": b"TEXT 30"}
    assert "0 problems" in cli("fsck").output


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])  # Ctrl-C, or a job scheduler's stop
@pytest.mark.parametrize("workers", [0, 2])  # (0: the serial executor, in the command's process)
def test_a_stopped_run_leaves_no_temporary_file(worktree: Path, cli: Cli, tmp_path: Path, how: str, workers: int) -> None:
    """Ctrl-C or SIGTERM of a run, in the process or on workers: each worker unwinds the
    batch it was in, so the shard it was writing (four outputs in) is removed, not left for
    ``gc``; so does the command itself."""
    cli("init")
    write_texts(worktree, 40)
    commit_raw(cli)
    flag = tmp_path / "interrupt-the-driver"
    flag.write_text("")
    write_pipeline(worktree, "upper.py", f'''
import os, signal
from datarepo import pipeline

seen = 0

@pipeline(input="raw/**", output="up/", batch_size=10)
def upper(datum):
    global seen
    seen += 1
    if seen == 5:  # the fifth datum of this worker's first batch
        try:
            os.unlink({str(flag)!r})  # (one worker only)
        except FileNotFoundError:
            pass
        else:
            if {workers} == 0:  # the command itself, in the transform
                os.kill(os.getpid(), signal.{how})
            else:
                os.kill(os.getppid(), signal.{how})
                signal.pause()
    return {{"txt": datum["txt"].upper()}}
''')
    before = head(worktree)
    proc = _cli_process(worktree, "run", *(["--workers", "2"] if workers else ["--executor", "serial"]))
    out, _ = proc.communicate(timeout=60)
    code, said = (130, "interrupted") if how == "SIGINT" else (143, "terminated")
    assert proc.returncode == code and out.decode().strip().endswith(said) and not flag.exists(), out
    assert sorted(p.name for p in (worktree / ".datarepo").rglob(".tmp-*")) == []
    assert head(worktree) == before
    assert run(cli)["upper"]["processed"] == 40
    assert "0 problems" in cli("fsck").output


def test_watch_runs_again_when_the_branch_moves(texts: Path, cli: Cli) -> None:
    write_pipeline(texts, "upper.py", UPPER)
    proc = _cli_process(texts, "run", "--watch", "--interval", "0.05", "--max-runs", "2")
    deadline = time.monotonic() + 60
    while "up/a/001" not in _tree_keys(texts) and time.monotonic() < deadline:
        time.sleep(0.05)
    write_texts(texts, 1, start=50)
    commit_raw(cli, "one more")
    out, _ = proc.communicate(timeout=60)
    lines = [line for line in out.decode().splitlines() if line.startswith("upper:")]
    assert proc.returncode == 0 and len(lines) == 2, out
    assert lines[0].startswith("upper: 10 processed") and lines[1].startswith("upper: 1 processed, 10 reused")


def _tree_keys(root: Path) -> set[str]:
    with datarepo.open(root) as repo:
        return {e.key for e in repo.tree().select(prefix="up/")} if repo.head() else set()
