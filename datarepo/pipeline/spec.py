"""Pipeline declarations: inputs, specs, and loading them from ``pipelines/``.

A pipeline is declared either by the :func:`datarepo.pipeline` decorator on a function in
a Python module, or as a ``[pipeline.NAME]`` table of a TOML file (a command transform).
:func:`load_specs` reads every ``*.py`` and ``*.toml`` of the folder (names starting with
``_`` are helpers, not read) into :class:`Spec` records; any problem is one
:class:`PipelineError` naming the file.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from datarepo.errors import DataRepoError, PipelineError
from datarepo.hashing import canonical_json, hash_bytes
from datarepo.keys import check_key
from datarepo.tree import glob_literal_prefix, glob_regex

COMBINATIONS = ("cross", "join", "union", "group")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class Drop(NamedTuple):
    """A transform's answer for a datum it filters out, with the reason recorded in the lineage."""

    reason: str


@dataclass(frozen=True)
class Source:
    """The keys a key glob selects at a revision (``None``: the branch being run)."""

    glob: str
    rev: str | None = None

    @property
    def label(self) -> str:
        return self.glob if self.rev is None else f"{self.glob}@{self.rev}"

    @property
    def strip(self) -> str:
        """The folder of the glob's literal start: what an output key does not repeat."""
        start = glob_literal_prefix(self.glob)
        return start[: start.rfind("/") + 1]

    def regex(self) -> re.Pattern[str]:
        return re.compile(glob_regex(self.glob), re.DOTALL)


@dataclass(frozen=True)
class Combine:
    """Several sources combined: ``cross`` (every tuple), ``join`` (tuples whose keys give
    the same value of ``on``), ``union`` (each datum alone), ``group`` (all the datums whose
    keys give the same value of ``on``, as one)."""

    kind: str
    parts: tuple[Source, ...]
    on: str | None = None

    @property
    def label(self) -> str:
        inner = ", ".join(p.label for p in self.parts)
        return f"{self.kind}({inner}{', on=' + repr(self.on) if self.on else ''})"


Input = Source | Combine


def source(glob: str, rev: str | None = None) -> Source:
    """The keys ``glob`` selects at ``rev`` (default: the branch being run)."""
    return _checked_source(Source(glob, rev))


def cross(*inputs: str | Source) -> Combine:
    """Every tuple of one datum of each input; the transform gets a list of datums."""
    return Combine("cross", tuple(map(_as_source, inputs)))


def join(*inputs: str | Source, on: str) -> Combine:
    """Tuples of one datum of each input whose keys give the same value of the regular
    expression ``on`` (its first group if it has one, else its whole match)."""
    return Combine("join", tuple(map(_as_source, inputs)), _checked_regex(on))


def union(*inputs: str | Source) -> Combine:
    """The datums of every input, each on its own, as one input."""
    return Combine("union", tuple(map(_as_source, inputs)))


def group(input: str | Source, by: str) -> Combine:
    """All datums whose keys give the same value of the regular expression ``by``, as one
    unit (a list of datums, in key order)."""
    return Combine("group", (_as_source(input),), _checked_regex(by))


def _as_source(value: str | Source) -> Source:
    if isinstance(value, Source):
        return value
    if isinstance(value, str):
        return source(value)
    raise PipelineError(f"an input is a key glob or a source, not {type(value).__name__}")


def _checked_source(src: Source) -> Source:
    if not isinstance(src.glob, str) or not src.glob or src.glob.startswith("/"):
        raise PipelineError(f"bad input glob {src.glob!r}: a relative key glob such as 'raw/**'")
    try:
        src.regex()
    except (re.error, DataRepoError, ValueError) as e:
        raise PipelineError(f"bad input glob {src.glob!r}: {e}") from None
    return src


def _checked_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except (re.error, TypeError) as e:
        raise PipelineError(f"bad key pattern {pattern!r}: {e}") from None
    return pattern


def as_input(value: Any) -> Input:
    """An input from what a declaration gives: a glob, a :class:`Source`, a
    :class:`Combine`, or (TOML) a table ``{glob, rev}``, ``{cross = [...]}``, ``{join =
    [...], on = "..."}``, ``{union = [...]}``, ``{group = "...", by = "..."}``."""
    if isinstance(value, (Source, Combine)):
        return value
    if isinstance(value, str):
        return source(value)
    if isinstance(value, dict):
        if "glob" in value:
            return source(value["glob"], value.get("rev"))
        kinds = [k for k in COMBINATIONS if k in value]
        if len(kinds) == 1:
            kind, parts = kinds[0], value[kinds[0]]
            if kind == "group":
                return group(as_input(parts), by=value.get("by", ""))  # type: ignore[arg-type]
            items = [as_input(p) for p in (parts if isinstance(parts, list) else [parts])]
            if kind == "join":
                return join(*items, on=value.get("on", ""))  # type: ignore[arg-type]
            return {"cross": cross, "union": union}[kind](*items)  # type: ignore[arg-type]
    raise PipelineError(f"bad input {value!r:.80}: a key glob, or a table of glob/rev, cross, join, union or group")


# --- specs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One pipeline, as declared."""

    name: str
    kind: str  # "python" or "command"
    file: str  # the declaring file, relative to the pipelines folder
    input: Input
    output: str
    version: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    max_failures: int | None = None
    retries: int = 0
    timeout: float = 600.0
    batch_size: int | None = None
    depends: tuple[str, ...] = ()
    function: str = ""  # the transform's name in its module (python)
    setup: str = ""  # the setup function's name in its module (python)
    command: tuple[str, ...] = ()  # the program and its arguments (command)
    declaration: str = ""  # what the fingerprint hashes of the declaring file

    @property
    def sources(self) -> tuple[Source, ...]:
        return self.input.parts if isinstance(self.input, Combine) else (self.input,)

    @property
    def keyed(self) -> bool:
        """True when each unit of work is one input key (a glob, or a union)."""
        return isinstance(self.input, Source) or self.input.kind == "union"

    @cached_property
    def strip(self) -> str:
        """The start of input keys an output key does not repeat (keyed inputs): the
        folder common to every source."""
        starts = [s.strip for s in self.sources]
        common = starts[0]
        for s in starts[1:]:
            while not s.startswith(common):
                common = common[: common.rstrip("/").rfind("/") + 1]
        return common

    def base(self, key: str) -> str:
        """The output key of the unit of an input key (keyed inputs)."""
        return self.output + key[len(self.strip) :]


def check_spec(spec: Spec) -> Spec:
    """Checks what a declaration gives; raises one PipelineError naming the pipeline."""
    where = f"pipeline {spec.name!r} ({spec.file})"
    if not _NAME.fullmatch(spec.name):
        raise PipelineError(f"{where}: a name is letters, digits, '_', '.', '-'")
    if not isinstance(spec.output, str) or not spec.output.endswith("/"):
        raise PipelineError(f"{where}: output {spec.output!r} must be a key prefix ending with '/'")
    try:
        check_key(spec.output.rstrip("/"))
        canonical_json({"params": spec.params})
    except DataRepoError as e:
        raise PipelineError(f"{where}: output: {e}") from None
    except (TypeError, ValueError) as e:
        raise PipelineError(f"{where}: params must be JSON values (str, int, float, bool, list, dict): {e}") from None
    for what, value in (("retries", spec.retries), ("workers", spec.workers or 1), ("max_failures", spec.max_failures or 0)):
        if type(value) is not int or value < 0:
            raise PipelineError(f"{where}: {what} must be a count, not {value!r}")
    if not isinstance(spec.timeout, (int, float)) or spec.timeout <= 0:
        raise PipelineError(f"{where}: timeout must be a positive number of seconds")
    return spec


def load_specs(folder: Path) -> list[Spec]:
    """Every pipeline declared in ``folder`` (``*.py`` and ``*.toml``), by name."""
    if not folder.is_dir():
        return []
    specs: dict[str, Spec] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(("_", ".")) or path.suffix not in (".py", ".toml"):
            continue
        for spec in load_file(folder, path):
            if spec.name in specs:
                raise PipelineError(f"two pipelines are named {spec.name!r}: in {specs[spec.name].file} and {spec.file}")
            specs[spec.name] = spec
    return [specs[n] for n in sorted(specs)]


def load_file(folder: Path, path: Path) -> list[Spec]:
    """The pipelines one file of ``folder`` declares."""
    return _python_specs(folder, path) if path.suffix == ".py" else _command_specs(folder, path)


# --- Python modules ---------------------------------------------------------------------------
_modules: dict[tuple[str, str], ModuleType] = {}  # (path, source hash) → module, in this process


def import_module(path: Path, rel: str) -> ModuleType:
    """The module of a pipeline file, imported once a process for each version of its text."""
    text = path.read_bytes()
    key = (str(path), hash_bytes(text))
    if key in _modules:
        return _modules[key]
    name = f"_datarepo_pipeline_{path.stem}_{key[1][:12]}"
    found = importlib.util.spec_from_file_location(name, path)
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module
    try:
        found.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[name]
        raise PipelineError(f"{rel}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        del sys.modules[name]
        raise PipelineError(f"{rel}: cannot import: {type(e).__name__}: {e}") from None
    _modules[key] = module
    return module


def _python_specs(folder: Path, path: Path) -> list[Spec]:
    rel = path.name
    module = import_module(path, rel)
    text = path.read_text(encoding="utf-8", errors="replace")
    specs = []
    for attr, fn in sorted(vars(module).items()):
        options = getattr(fn, "__datarepo_pipeline__", None)
        if options is None or not callable(fn) or getattr(fn, "__module__", None) != module.__name__:
            continue
        setup = options["setup"]
        if setup is not None and (not callable(setup) or getattr(module, setup.__name__, None) is not setup):
            raise PipelineError(f"{rel}: setup of {options['name']!r} must be a function of the module")
        try:
            specs.append(check_spec(Spec(
                name=options["name"], kind="python", file=rel, input=as_input(options["input"]),
                output=options["output"], version=options["version"], params=options["params"],
                workers=options["workers"], max_failures=options["max_failures"], retries=options["retries"],
                timeout=options["timeout"], batch_size=options["batch_size"], depends=options["depends"],
                function=attr, setup=setup.__name__ if setup else "", declaration=text,
            )))
        except PipelineError as e:
            raise PipelineError(f"{rel}: {e}") from None
    return specs


# --- command transforms in TOML ---------------------------------------------------------------
_TOML_KEYS = {
    "input", "output", "command", "version", "params", "workers", "max_failures", "retries", "timeout", "depends", "batch_size",
}


def _command_specs(folder: Path, path: Path) -> list[Spec]:
    import tomllib

    rel = path.name
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PipelineError(f"{rel}: not TOML: {e}") from None
    tables = doc.get("pipeline")
    if not isinstance(tables, dict) or set(doc) != {"pipeline"}:
        raise PipelineError(f"{rel}: expected [pipeline.NAME] tables and nothing else")
    return [_command_spec(rel, name, table) for name, table in sorted(tables.items())]


def _command_spec(rel: str, name: str, table: Any) -> Spec:
    where = f"{rel}: pipeline {name!r}"
    if not isinstance(table, dict):
        raise PipelineError(f"{where}: expected a table")
    unknown = set(table) - _TOML_KEYS
    missing = {"input", "output", "command"} - set(table)
    if unknown or missing:
        problem = f"unknown keys {', '.join(sorted(unknown))}" if unknown else f"missing {', '.join(sorted(missing))}"
        raise PipelineError(f"{where}: {problem}")
    command = table["command"]
    if isinstance(command, str):
        import shlex

        command = shlex.split(command)
    if not command or not all(isinstance(a, str) for a in command):
        raise PipelineError(f"{where}: command must be a list of strings (or one string)")
    try:
        return check_spec(Spec(
            name=name, kind="command", file=rel, input=as_input(table["input"]), output=table["output"],
            version=str(table.get("version", "")), params=dict(table.get("params", {})),
            workers=table.get("workers"), max_failures=table.get("max_failures"), retries=table.get("retries", 0),
            timeout=table.get("timeout", 600.0), batch_size=table.get("batch_size"),
            depends=tuple(table.get("depends", ())), command=tuple(command),
            declaration=canonical_json({"format": 1, **table}).decode(),
        ))
    except PipelineError as e:
        raise PipelineError(f"{rel}: {e}") from None
