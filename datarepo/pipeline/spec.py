"""Pipeline declarations: inputs, specs, and loading them from ``pipelines/``.

A pipeline is declared either by the :func:`datarepo.pipeline` decorator on a function in
a Python module, or as a ``[pipeline.NAME]`` table of a TOML file (a command transform).
:func:`load_specs` reads every ``*.py`` and ``*.toml`` of the folder (names starting with
``_`` are helpers, not read) into :class:`Spec` records; any problem is one
:class:`PipelineError` naming the file.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from datarepo.args import not_json
from datarepo.errors import DataRepoError, PipelineError
from datarepo.executor import MAX_WORKERS
from datarepo.hashing import canonical_json, hash_bytes
from datarepo.keys import check_prefix, is_utf8
from datarepo.pipeline.guard import described, interrupts, line_in, stops_run
from datarepo.tree import KeyGlob, compile_glob, glob_literal_prefix

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

    def matcher(self) -> KeyGlob:
        """The glob compiled (:class:`datarepo.tree.KeyGlob`: bounded time for any glob)."""
        return compile_glob(self.glob)


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
    return Combine("cross", _sources(inputs))


def join(*inputs: str | Source, on: str) -> Combine:
    """Tuples of one datum of each input whose keys give the same value of the regular
    expression ``on`` (its first group if it has one, else its whole match)."""
    return Combine("join", _sources(inputs), _checked_regex(on))


def union(*inputs: str | Source) -> Combine:
    """The datums of every input, each on its own, as one input."""
    return Combine("union", _sources(inputs))


def group(input: str | Source, by: str) -> Combine:
    """All datums whose keys give the same value of the regular expression ``by``, as one
    unit (a list of datums, in key order)."""
    return Combine("group", (_as_source(input),), _checked_regex(by))


def _sources(inputs: tuple[str | Source, ...]) -> tuple[Source, ...]:
    if not inputs:
        raise PipelineError("a combination takes one input or more")
    return tuple(map(_as_source, inputs))


def _as_source(value: str | Source) -> Source:
    if isinstance(value, Source):
        return value
    if isinstance(value, str):
        return source(value)
    raise PipelineError(f"an input is a key glob or a source, not {type(value).__name__}")


def _checked_source(src: Source) -> Source:
    if not isinstance(src.glob, str) or not src.glob or src.glob.startswith("/"):
        raise PipelineError(f"bad input glob {src.glob!r}: a relative key glob such as 'raw/**'")
    if src.rev is not None and (not isinstance(src.rev, str) or not src.rev.strip() or "\x00" in src.rev):
        raise PipelineError(f"bad revision {src.rev!r} of input {src.glob!r}: a revision name such as 'v1'")
    try:
        src.matcher()
        if folder := src.strip.rstrip("/"):  # the keys it reads lie there: the key rule's
            check_prefix(folder)
    except (re.error, DataRepoError, ValueError) as e:
        raise PipelineError(f"bad input glob {src.glob!r}: {e}") from None
    return src


def _checked_regex(pattern: str) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise PipelineError(f"bad key pattern {pattern!r}: a regular expression such as r'[^/]+$'")
    try:
        re.compile(pattern)
    except (re.error, TypeError, OverflowError, RecursionError) as e:
        raise PipelineError(f"bad key pattern {pattern!r}: {e}") from None
    return pattern


def as_input(value: Any) -> Input:
    """An input from what a declaration gives: a glob, a :class:`Source`, a
    :class:`Combine`, or (TOML) a table ``{glob, rev}``, ``{cross = [...]}``, ``{join =
    [...], on = "..."}``, ``{union = [...]}``, ``{group = "...", by = "..."}``."""
    if isinstance(value, Source):
        return _checked_source(value)
    if isinstance(value, Combine):
        if value.kind not in COMBINATIONS or not value.parts or not all(isinstance(p, Source) for p in value.parts):
            raise PipelineError(f"bad input {value!r:.80}: made by cross, join, union or group")
        for part in value.parts:
            _checked_source(part)
        return value if value.kind not in _PATTERN else replace(value, on=_checked_regex(value.on))  # type: ignore[arg-type]
    if isinstance(value, str):
        return source(value)
    if isinstance(value, dict):
        kinds = [k for k in COMBINATIONS if k in value]
        fields = {"glob", "rev"} if "glob" in value or not kinds else {kinds[0], _PATTERN.get(kinds[0], kinds[0])}
        if len(kinds) + ("glob" in value) != 1 or set(value) - fields:
            raise PipelineError(f"bad input {value!r:.80}: a table of glob (and rev), or of one of cross, join (and on), "
                                "union, group (and by)")
        if "glob" in value:
            return source(value["glob"], value.get("rev"))
        kind, parts = kinds[0], value[kinds[0]]
        if kind == "group":
            return group(as_input(parts), by=value.get("by", ""))  # type: ignore[arg-type]
        if not isinstance(parts, list) or not parts:
            raise PipelineError(f"bad input: {kind} takes a list of inputs, not {parts!r:.80}")
        items = [as_input(p) for p in parts]
        if kind == "join":
            return join(*items, on=value.get("on", ""))  # type: ignore[arg-type]
        return {"cross": cross, "union": union}[kind](*items)  # type: ignore[arg-type]
    raise PipelineError(f"bad input {value!r:.80}: a key glob, or a table of glob/rev, cross, join, union or group")


_PATTERN = {"join": "on", "group": "by"}


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


MAX_TIMEOUT = 1e6  # seconds one datum may take, at most (11 days)
MAX_RETRIES = 100
MAX_BATCH = 10_000_000
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_spec(spec: Spec) -> Spec:
    """Checks every field of a declaration; raises one PipelineError naming the file, the
    pipeline and the field."""
    _check_fields(f"{spec.file}: pipeline {spec.name!r}", {name: getattr(spec, name) for name in ("name", *_CHECKS)})
    return spec


def check_declaration(options: dict[str, Any]) -> None:
    """Checks the options of a ``@pipeline`` declaration as the function is decorated (the
    checks of :func:`check_spec`, which loading the module makes again).

    Raises:
        PipelineError: ``"pipeline 'NAME': FIELD: why"``.
    """
    where = f"pipeline {options['name']!r:.80}"
    _field(where, "input", as_input, options["input"])
    depends = _field(where, "depends", _strings, options["depends"])
    setup = options["setup"]
    if setup is not None and not callable(setup):
        raise PipelineError(f"{where}: setup: must be a function of the module, not {setup!r:.80}")
    _check_fields(where, {**{name: options[name] for name in ("name", *_CHECKS)}, "depends": depends})


def _check_fields(where: str, values: dict[str, Any]) -> None:
    if not isinstance(values["name"], str) or not _NAME.fullmatch(values["name"]):
        raise PipelineError(f"{where}: name: a name is letters, digits, '_', '.', '-'")
    for name, check in _CHECKS.items():
        try:
            check(values[name])
        except (DataRepoError, TypeError, ValueError, OverflowError) as e:
            raise PipelineError(f"{where}: {name}: {e}") from None


def _check_output(output: Any) -> None:
    if not isinstance(output, str) or not output.endswith("/"):
        raise PipelineError(f"{output!r:.80} must be a key prefix ending with '/'")
    check_prefix(output[:-1])  # the key rule: no '..', no empty part, not .datarepo/, .git/, .dvc/ …


def _check_params(params: Any) -> None:
    if not isinstance(params, dict):
        raise PipelineError(f"must be a table of names and JSON values, not {type(params).__name__}")
    for name in params:
        if not isinstance(name, str) or not _PARAM.fullmatch(name):
            raise PipelineError(f"param name {name!r:.80} is not a name (letters, digits, '_')")
    if (why := not_json(params, "params")) is not None:
        raise PipelineError(f"must be JSON values (str, int, float, bool, list, dict): {why}")


def _count(least: int, most: int, optional: bool = False) -> Any:
    def check(value: Any) -> None:
        if value is None and optional:
            return
        if type(value) is not int or not least <= value <= most:
            raise PipelineError(f"must be a whole number from {least} to {most}, not {value!r:.80}")

    return check


def _check_timeout(value: Any) -> None:
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise PipelineError(f"must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}, not {value!r:.80}")


def _check_strings(what: str, nonempty: bool = False) -> Any:
    def check(values: Any) -> None:
        if not isinstance(values, tuple) or (nonempty and not values):
            raise PipelineError(f"must be a list of {what}")
        for v in values:
            if not isinstance(v, str) or not v or "\x00" in v or not is_utf8(v):
                raise PipelineError(f"must be a list of {what}, not holding {v!r:.80}")

    return check


def _check_version(value: Any) -> None:
    if not isinstance(value, str) or "\x00" in value or not is_utf8(value) or len(value) > 1000:
        raise PipelineError(f"must be a string (of at most 1000 characters), not {value!r:.80}")


_CHECKS: dict[str, Any] = {
    "output": _check_output,
    "version": _check_version,
    "params": _check_params,
    "workers": _count(1, MAX_WORKERS, optional=True),
    "max_failures": _count(0, 2**63 - 1, optional=True),
    "retries": _count(0, MAX_RETRIES),
    "timeout": _check_timeout,
    "batch_size": _count(1, MAX_BATCH, optional=True),
    "depends": _check_strings("file or package names"),
}


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
        with interrupts():
            found.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[name]
        raise PipelineError(f"{rel}:{e.lineno}: syntax error: {e.msg}") from None
    except BaseException as e:  # SystemExit, KeyboardInterrupt … too: only a real Ctrl-C goes on
        del sys.modules[name]
        if stops_run(e):
            raise
        line = line_in(e, found.origin or str(path))
        if isinstance(e, PipelineError):  # a declaration refused as its function is decorated
            raise PipelineError(f"{rel}: {e}") from None
        raise PipelineError(f"{rel}{f':{line}' if line else ''}: cannot import: {described(e)}") from None
    _modules[key] = module
    return module


def _python_specs(folder: Path, path: Path) -> list[Spec]:
    rel = path.name
    module = import_module(path, rel)
    text = path.read_text(encoding="utf-8", errors="replace")
    specs = []
    for attr, fn, options in _declared(rel, module):
        where = f"{rel}: pipeline {options['name']!r}"
        setup = options["setup"]
        if setup is not None and (not callable(setup) or getattr(module, getattr(setup, "__name__", ""), None) is not setup):
            raise PipelineError(f"{where}: setup: must be a function of the module")
        specs.append(check_spec(Spec(
            name=options["name"], kind="python", file=rel, input=_field(where, "input", as_input, options["input"]),
            output=options["output"], version=options["version"], params=options["params"],
            workers=options["workers"], max_failures=options["max_failures"], retries=options["retries"],
            timeout=options["timeout"], batch_size=options["batch_size"],
            depends=_field(where, "depends", _strings, options["depends"]),
            function=attr, setup=setup.__name__ if setup else "", declaration=text,
        )))
    return specs


def _declared(rel: str, module: ModuleType) -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, function, options) of each function of ``module`` that ``@pipeline`` marked.
    Looking at the module's objects runs their code (``__getattr__``): what that raises is
    the module's error, as at import."""
    found = []
    for attr, fn in sorted(vars(module).items()):
        try:
            options = getattr(fn, "__datarepo_pipeline__", None)
            if isinstance(options, dict) and callable(fn) and getattr(fn, "__module__", None) == module.__name__:
                found.append((attr, fn, options))
        except BaseException as e:
            if stops_run(e):
                raise
            raise PipelineError(f"{rel}: cannot read {attr!r}: {described(e)}") from None
    return found


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
        problem = f"unknown field {', '.join(sorted(unknown))}" if unknown else f"missing {', '.join(sorted(missing))}"
        raise PipelineError(f"{where}: {problem}")
    spec = check_spec(Spec(
        name=name, kind="command", file=rel, input=_field(where, "input", as_input, table["input"]),
        output=table["output"], version=table.get("version", ""), params=table.get("params", {}),
        workers=table.get("workers"), max_failures=table.get("max_failures"), retries=table.get("retries", 0),
        timeout=table.get("timeout", 600.0), batch_size=table.get("batch_size"),
        depends=_field(where, "depends", _strings, table.get("depends", [])),
        command=_field(where, "command", _command, table["command"]),
    ))
    for param, value in spec.params.items():  # (each reaches the program as DATAREPO_PARAM_<NAME>)
        if isinstance(value, str) and "\x00" in value:
            raise PipelineError(f"{where}: params: {param} holds a NUL character, which an environment variable cannot")
    return replace(spec, declaration=canonical_json({"format": 1, **table}).decode())  # (JSON values, checked)


def _field(where: str, name: str, parse: Any, value: Any) -> Any:
    """``parse(value)``, its error one line naming the file, pipeline and field."""
    try:
        return parse(value)
    except (DataRepoError, TypeError, ValueError, RecursionError) as e:
        raise PipelineError(f"{where}: {name}: {e}") from None


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise PipelineError(f"must be a list of strings, not {type(value).__name__}")
    return tuple(value)


def _command(value: Any) -> tuple[str, ...]:
    """A command's program and arguments: a list of strings, or one string split as a shell
    would (``shlex``)."""
    if isinstance(value, str):
        import shlex

        try:
            value = shlex.split(value)
        except ValueError as e:  # No closing quotation, No escaped character
            raise PipelineError(str(e)) from None
    if not isinstance(value, (list, tuple)) or not value:
        raise PipelineError("must be a list of strings (or one string), naming a program")
    for arg in value:
        if not isinstance(arg, str) or "\x00" in arg or not is_utf8(arg):
            raise PipelineError(f"must be a list of strings (or one string), not holding {arg!r:.80}")
    if not value[0].strip():
        raise PipelineError("the program's name is empty")
    return tuple(value)
