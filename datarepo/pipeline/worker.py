"""One batch of a pipeline's work, in whatever process an executor runs it.

A :class:`Batch` is plain data: where the repository and the pipelines are, which
pipeline (and the fingerprint the driver planned with), its units of work and where their
input datums lie. :func:`run_batch` (the function executors map) loads the pipeline's
file once a process (and runs its ``setup`` once), reads the datums with
:class:`~datarepo.shardreader.ShardReader`, runs the transform on each unit under the
per-datum timeout, writes the outputs with :class:`~datarepo.write.DatumWriter` (shards
published content-addressed, not yet adopted), writes the records as a journal object
and returns an :class:`Outcome`: a lineage record per unit, the shards and the journal.
It never opens ``index.sqlite``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from datarepo.errors import DataRepoError, DatumTimeout, PipelineError, TransformError
from datarepo.executor import no_fork
from datarepo.hashing import datum_id, hash_bytes
from datarepo.keys import MAX_KEY_PARTS, check_key, check_member, is_utf8, split
from datarepo.pipeline.guard import class_of, described, interrupts, message_of, one_line, stops_run
from datarepo.pipeline.lineage import Record, write_journal
from datarepo.pipeline.spec import Drop, Spec, import_module
from datarepo.shardreader import DatumRange, ShardReader
from datarepo.store import Store
from datarepo.write import DatumWriter, PublishedShard

STDERR_TAIL = 400
# A unit: (base, cache key, ((input key, input datum), ...)).
Unit = tuple[str, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Batch:
    """Units of one pipeline's work, for any process."""

    dotdir: str
    folder: str  # the pipelines folder
    file: str  # the declaring file, in the folder
    name: str
    fingerprint: str
    units: list[Unit]
    reads: list[tuple[str, list[tuple[str, int, int]]]]  # shard → (datum, offset, length), in offset order
    shard_size: int


@dataclass(frozen=True)
class Outcome:
    """What a batch gave: a record per unit, in the batch's order, the shards it published
    and the journal object holding its records ("" for none)."""

    records: list[Record]
    shards: list[PublishedShard]
    journal: str = ""
    died: bool = False  # the process running it died: every unit failed with it (see :func:`worker_died`)


def run_batch(batch: Batch) -> Outcome:
    """Runs one batch (see the module's docstring)."""
    try:
        loaded = _load(batch)
    except DataRepoError as e:
        return failed(batch, type(e).__name__, str(e))
    store = Store(Path(batch.dotdir))
    datums = _read(store, batch.reads)
    writer = DatumWriter(store, batch.shard_size)
    try:
        with alarms():
            records = [loaded.run(unit, datums, writer) for unit in batch.units]
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    # Written here, not by the driver: encoding it is work the workers share.
    return Outcome(records, shards, write_journal(store, batch.name, batch.fingerprint, records))


def failed(batch: Batch, kind: str, message: str) -> Outcome:
    """Every unit of ``batch`` failed for one reason."""
    error = (one_line(kind, 200), one_line(message))
    return Outcome([Record(base, cache, inputs, (), error) for base, cache, inputs in batch.units], [])


def worker_died(batch: Batch) -> Outcome:
    """What a batch whose worker died (killed, out of memory) gave: each unit failed. (The
    driver runs the units of a batch of several again in smaller batches, so that only the
    unit that kills its worker fails.)"""
    outcome = failed(batch, "WorkerDied", "the process running this batch died (killed, or out of memory)")
    return Outcome(outcome.records, [], died=True)


def _read(store: Store, reads: list[tuple[str, list[tuple[str, int, int]]]]) -> dict[str, dict[str, bytes]]:
    datums: dict[str, dict[str, bytes]] = {}
    for shard, spans in reads:
        with store.open_shard(shard) as f:
            ranges = [DatumRange(d, d, offset, length) for d, offset, length in spans]  # type: ignore[arg-type]
            datums.update(ShardReader(f, ranges, shard))
    return datums


# --- the loaded pipeline, once a process ----------------------------------------------------
_loaded: dict[tuple[str, str, str], _Loaded] = {}


def _load(batch: Batch) -> _Loaded:
    key = (batch.folder, batch.name, batch.fingerprint)
    if key not in _loaded:
        from datarepo.pipeline.fingerprint import fingerprint
        from datarepo.pipeline.spec import load_file

        folder = Path(batch.folder)
        spec = next((s for s in load_file(folder, folder / batch.file) if s.name == batch.name), None)
        if spec is None or fingerprint(spec, folder) != batch.fingerprint:
            raise PipelineError(f"pipeline {batch.name!r} changed while it ran: run again")
        _loaded[key] = _Loaded.start(spec, folder)
    return _loaded[key]


@dataclass
class _Loaded:
    spec: Spec
    folder: Path
    fn: Any  # the Python transform (None for a command)
    extra: dict[str, Any]  # what setup gave

    @classmethod
    def start(cls, spec: Spec, folder: Path) -> _Loaded:
        if spec.kind == "command":
            return cls(spec, folder, None, {})
        module = import_module(folder / spec.file, spec.file)
        extra: dict[str, Any] = {}
        if spec.setup:
            try:
                with no_fork():
                    extra = getattr(module, spec.setup)()
                given = dict(extra) if isinstance(extra, dict) else None  # (a plain dict: no more user code)
            except BaseException as e:  # SystemExit too: only a real Ctrl-C goes on
                if stops_run(e):
                    raise
                raise PipelineError(f"setup of {spec.name!r} failed: {described(e)}") from None
            if given is None or not all(isinstance(k, str) for k in given):
                raise PipelineError(f"setup of {spec.name!r} must return a dict of keyword arguments, not {type(extra).__name__}")
            if clash := sorted(set(given) & set(spec.params)):
                raise PipelineError(f"setup of {spec.name!r} returned {clash[0]!r}, which is also one of its params")
            extra = given
        return cls(spec, folder, getattr(module, spec.function), extra)

    def run(self, unit: Unit, datums: dict[str, dict[str, bytes]], writer: DatumWriter) -> Record:
        base, cache, inputs = unit
        if not self.spec.keyed and (bad := _bad_key(base)) is not None:  # a join or group value made it
            return Record(base, cache, inputs, (), ("TransformError", bad))
        error: tuple[str, str] | None = None
        for _ in range(self.spec.retries + 1):
            given = [{**datums[d], "__key__": k} for k, d in inputs]  # (each try its own: a transform may change it)
            try:
                with no_fork(), deadline(self.spec.timeout):
                    result = self._call(given, base)
                outputs = _outputs(result, base)
                break
            except BaseException as e:  # the datum's failure (SystemExit too), recorded: never the others'
                if stops_run(e):
                    raise
                error = (class_of(e), message_of(e))
        else:
            return Record(base, cache, inputs, (), error)
        if isinstance(outputs, Drop):
            return Record(base, cache, inputs, (), None, outputs.reason)
        written = []
        for suffix, members in outputs:
            datum = datum_id({ext: hash_bytes(data) for ext, data in members.items()})
            writer.write(datum, sorted(members.items()))
            written.append((suffix, datum, sum(map(len, members.values()))))
        return Record(base, cache, inputs, tuple(written))

    def _call(self, given: list[dict[str, Any]], base: str) -> Any:
        combined = not self.spec.keyed
        if self.fn is None:
            return run_command(self.spec, self.folder, given, base, combined)
        return self.fn(given if combined else given[0], **self.spec.params, **self.extra)


@contextmanager
def alarms() -> Iterator[None]:
    """Lets :func:`deadline` interrupt the block's transforms (SIGALRM's handler is set once
    a batch: setting it costs more than a small transform)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGALRM, _expire)
    # (a mask a parent passed on through exec may block SIGALRM: no timeout would ever fire)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    _armed[0] = True
    try:
        with interrupts():  # (a Ctrl-C of a serial run stops it; a transform's KeyboardInterrupt fails its datum)
            yield
    finally:
        _armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGALRM, old)


def _expire(signum: int, frame: Any) -> None:
    raise DatumTimeout(f"took longer than the timeout of {_limit[0]:g} s")


_limit = [0.0]
_armed = [False]  # inside alarms(), in this process


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raises :class:`DatumTimeout` in the block after ``seconds``, inside :func:`alarms`
    (where this is the main thread; elsewhere the block runs unbounded)."""
    if not _armed[0]:
        yield
        return
    _limit[0] = seconds
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


# --- what a transform returned ----------------------------------------------------------------
_EXPECTED = "a dict of members, a list of (suffix, dict), None or Drop"


def _outputs(result: Any, base: str) -> list[tuple[str, dict[str, bytes]]] | Drop:
    if result is None:
        return Drop("")
    if isinstance(result, Drop):
        if not isinstance(result.reason, str):
            raise TransformError(f"Drop's reason is {type(result.reason).__name__}; it is a str")
        return Drop(one_line(result.reason))  # (recorded, and shown on one line)
    if isinstance(result, dict):
        pairs = [("", result)]
    elif isinstance(result, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in result):
        pairs = list(result)
        if not pairs:
            return Drop("")
    else:
        raise TransformError(f"the transform returned {type(result).__name__}; expected {_EXPECTED}")
    out, seen = [], set()
    for suffix, members in pairs:
        if not isinstance(suffix, str) or not isinstance(members, dict):
            kinds = f"({type(suffix).__name__}, {type(members).__name__})"
            raise TransformError(f"the transform returned a {kinds} pair; expected (str, dict)")
        suffix = str.__str__(suffix)
        key = f"{base}/{suffix}" if suffix else base
        if suffix in seen:
            raise TransformError(f"output key {key!r} is given twice")
        if (bad := _bad_key(key)) is not None:  # (under the prefix: a suffix leaves it only by '..')
            raise TransformError(bad)
        seen.add(suffix)
        out.append((suffix, _members(members, key)))
    return out


def _bad_key(key: str) -> str | None:
    """Why ``key`` may not be an output key (the project's one key rule), or None."""
    try:
        check_key(key)
    except DataRepoError as e:
        return f"output key: {e}"
    return None


def _members(members: dict[Any, Any], key: str) -> dict[str, bytes]:
    out = {}
    for ext, value in members.items():
        ext = str.__str__(ext) if isinstance(ext, str) else ext  # (a str subclass's methods are not asked)
        if isinstance(ext, str) and ext.startswith("__") and ext.endswith("__"):
            continue  # metadata such as __key__, as WebDataset's samples carry
        if not isinstance(ext, str) or not ext or ext.startswith("."):
            raise TransformError(f"output {key!r}: {ext!r} is not a member name (an extension such as 'jpg')")
        try:
            check_member(key, ext)  # the extension, and the file it comes back to in a work tree
        except DataRepoError as e:
            raise TransformError(str(e)) from None
        if isinstance(value, str):
            value = str.encode(value)  # (str's own: a subclass's encode() is not asked)
        elif type(value) is not bytes and isinstance(value, (bytes, bytearray, memoryview)):
            value = memoryview(value).tobytes()  # the bytes it holds (not a subclass's __len__ or __bytes__)
        elif not isinstance(value, bytes):
            raise TransformError(f"output {key!r}: member {ext!r} is {type(value).__name__}; members are bytes or str")
        out[ext] = value
    if not out:
        raise TransformError(f"output {key!r} has no member")
    return out


# --- command transforms ---------------------------------------------------------------------------
def run_command(
    spec: Spec, folder: Path, given: list[dict[str, Any]], base: str, combined: bool
) -> list[tuple[str, dict[str, bytes]]]:
    """Runs ``spec.command`` in ``folder`` on one unit: each datum's members written to an
    input folder (``{in}``; a sub-folder ``0``, ``1``… each when the unit has several
    datums), its outputs read from an output folder (``{out}``): files named ``<stem>.<ext>``,
    one output datum per stem (at the base if there is one stem, else at ``base/<stem>``)."""
    tmp = tempfile.mkdtemp(prefix="datarepo-run-")
    try:
        inp, out = Path(tmp, "in"), Path(tmp, "out")
        out.mkdir()
        for i, datum in enumerate(given):
            target = inp / str(i) if combined else inp
            target.mkdir(parents=True)
            name = datum["__key__"].rsplit("/", 1)[-1]
            for ext, data in datum.items():
                if ext != "__key__":
                    (target / (f"{name}.{ext}" if ext else name)).write_bytes(data)
        subst = {"{in}": str(inp), "{out}": str(out), "{python}": sys.executable}
        argv = [subst.get(a, a) for a in spec.command]
        _execute(spec, argv, folder, inp, out, base, Path(tmp, "stderr"))
        return _collected(Path(tmp), argv[0])
    finally:
        _remove(tmp)


def _remove(tmp: str) -> None:
    """Deletes a unit's folder, however deep the command nested folders in it (deeper than
    ``shutil.rmtree`` recurses, or than a path may be long: then ``rm -rf`` does it)."""
    try:
        shutil.rmtree(tmp)
    except (OSError, RecursionError):
        subprocess.run(["rm", "-rf", "--", tmp], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


def _execute(spec: Spec, argv: list[str], folder: Path, inp: Path, out: Path, base: str, errors: Path) -> None:
    """Runs the command, its stderr to the file ``errors`` (not a pipe: a program it left
    running in the background could hold a pipe open for ever, and a pipe's whole text
    would be held in memory). Waits for the program itself, then ends what it left running
    in its process group."""
    env = {**os.environ, "DATAREPO_IN": str(inp), "DATAREPO_OUT": str(out), "DATAREPO_KEY": base}
    for name, value in spec.params.items():
        env[f"DATAREPO_PARAM_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    with open(errors, "w+b") as err:
        try:
            proc = subprocess.Popen(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        except OSError as e:
            raise TransformError(f"cannot run {argv[0]!r}: {e.strerror}") from None
        try:
            proc.wait(timeout=spec.timeout)
        except subprocess.TimeoutExpired:  # the command's whole group ends (a shell's children too)
            raise DatumTimeout(f"the command took longer than the timeout of {spec.timeout:g} s") from None
        finally:
            _kill(proc)
        if proc.returncode != 0:
            tail = _tail(err)
            raise TransformError(f"{argv[0]} exited with status {proc.returncode}" + (f": {tail}" if tail else ""))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Ends the command's process group: the program (if it still runs) and whatever it
    started and left running there (a process that left the group is beyond reach)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(err: BinaryIO) -> str:
    """The end of what the command wrote to stderr, as one clean line."""
    size = err.seek(0, os.SEEK_END)
    err.seek(max(0, size - 4 * STDERR_TAIL))
    return one_line(err.read().decode(errors="replace"), 4 * STDERR_TAIL)[-STDERR_TAIL:].strip()


def _collected(tmp: Path, program: str) -> list[tuple[str, dict[str, bytes]]]:
    """The outputs a command left in ``tmp/out``: regular files only. A symbolic link (it
    could name any file of the machine), a FIFO (reading it would wait for ever), a socket
    or a device, a hard link to a file outside the unit's folders, or a name that is not
    UTF-8, fails the datum: no link is followed."""
    found: dict[str, dict[str, bytes]] = {}
    linked: dict[tuple[int, int], tuple[str, int]] = {}  # (device, inode) → (a path, its links), of files with several
    try:
        top = os.open(tmp / "out", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise TransformError(f"{program} replaced its output folder with something not a folder") from None
    try:
        for rel, data in _files(top, "", linked, program):
            stem, ext = split(rel)
            found.setdefault(stem, {})[ext] = data
    finally:
        os.close(top)
    if linked:
        _check_links(tmp, linked)
    if not found:
        raise TransformError(f"{program} wrote nothing to its output folder")
    if len(found) == 1:
        return [("", next(iter(found.values())))]
    return sorted(found.items())


def _files(folder: int, rel: str, linked: dict[tuple[int, int], tuple[str, int]], program: str) -> Iterator[tuple[str, bytes]]:
    """(path, contents) of each regular file under the open folder ``folder``, whose path is
    ``rel``; opened relative to it, never through a link (``O_NOFOLLOW``, then ``fstat``).
    Files with several names (hard links) are noted in ``linked``."""
    if rel.count("/") >= MAX_KEY_PARTS:
        raise TransformError(f"{program} nested folders more than {MAX_KEY_PARTS} deep in its output folder")
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        path = f"{rel}{name}"
        if not is_utf8(path):
            raise TransformError(f"output file name {os.fsencode(path)!r} is not UTF-8")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
        except OSError as e:  # ELOOP: a symbolic link; ENXIO: a socket
            raise TransformError(f"output file {path!r} is {_kind(folder, name, e)}: outputs are regular files") from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                yield from _files(fd, path + "/", linked, program)
            elif stat.S_ISREG(info.st_mode):
                if info.st_nlink > 1:
                    linked[(info.st_dev, info.st_ino)] = (path, info.st_nlink)
                with os.fdopen(os.dup(fd), "rb") as f:
                    yield path, f.read()
            else:
                raise TransformError(f"output file {path!r} is {_KINDS.get(stat.S_IFMT(info.st_mode), 'not a regular file')}: "
                                     "outputs are regular files")
        finally:
            os.close(fd)


def _check_links(tmp: Path, linked: dict[tuple[int, int], tuple[str, int]]) -> None:
    """A hard link in the output folder is an output only when each of its file's names
    lies in the unit's own folders (an input passed on by ``ln``): a link to any other file
    of the machine would store that file."""
    names: dict[tuple[int, int], int] = dict.fromkeys(linked, 0)
    for top, folders, files in os.walk(tmp):  # (os.walk follows no link to a folder)
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(top, name))
                if (node := (info.st_dev, info.st_ino)) in names:
                    names[node] += 1
    for node, (path, links) in sorted(linked.items(), key=lambda item: item[1]):
        if names[node] < links:
            raise TransformError(f"output file {path!r} is a hard link to a file outside the command's folders: "
                                 "outputs are files the command wrote")


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def _kind(folder: int, name: str, error: OSError) -> str:
    try:
        mode = os.lstat(name, dir_fd=folder).st_mode
    except OSError:
        return f"not readable ({error.strerror})"
    if stat.S_ISLNK(mode):
        return "a symbolic link (not followed)"
    return _KINDS.get(stat.S_IFMT(mode), f"not readable ({error.strerror})")
