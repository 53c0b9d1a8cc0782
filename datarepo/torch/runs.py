"""Run records: what a training run read (commit, selection, seed, epochs, world size,
decoders, order fingerprint, the user's extras), stored as a canonical JSON object under
``refs/runs/NAME``. The ref keeps the commit, and so its data, from ``gc``; the record
lets anyone list the exact order of any epoch again. No torch here: the ``runs`` command
reads records and orders without it."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from datarepo import args
from datarepo.errors import CorruptObjectError, DataRepoError, InvalidInputError, ObjectNotFoundError, RefConflictError
from datarepo.hashing import Oid, canonical_json, is_hex, is_oid
from datarepo.objects import FORMAT, Blob, Commit, Tree, TreePage
from datarepo.refs import RUNS, check_name

if TYPE_CHECKING:
    from datarepo.repo import Repo
    from datarepo.torch.dataset import DatumDataset

RUN_TYPE = "run"
# A record's extras: `datarepo runs` reads every record; a model's weights or logs go elsewhere.
MAX_EXTRA_BYTES = 1 << 20
_INT64 = 1 << 63  # counts, sizes and epochs are int64 where the loader computes with them

# The fields of a run record, and the JSON types each holds (a record stores them all).
_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "time": (str,), "author": (str,), "commit": (str,), "tree": (str,), "rev": (str,),
    "prefix": (str,), "keys": (list, type(None)), "count": (int,), "seed": (int,), "shuffle": (bool,),
    "block": (int,), "window": (int,), "pad": (bool,), "epochs": (int,), "world_size": (int,),
    "batch_size": (int, type(None)), "decode": (dict,), "verify": (bool,), "fingerprint": (str,), "extra": (dict,),
}  # fmt: skip


class RunInfo(NamedTuple):
    """One recorded run, as ``datarepo runs`` lists it."""

    name: str
    oid: Oid
    commit: Oid
    prefix: str
    seed: int
    epochs: int
    world_size: int
    time: str


class NotARunError(DataRepoError):
    """A ref under ``refs/runs/`` that does not name a run record (a commit or a tree
    written there, a missing or unreadable object, a record that lacks a field)."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"{ref} does not name a run record: {reason}")
        self.ref = ref
        self.reason = reason


def record_run(repo: Repo, name: str, dataset: DatumDataset, extra: Mapping[str, Any] | None = None, force: bool = False) -> Oid:
    """Stores the run object of ``dataset`` and points ``refs/runs/NAME`` at it.

    Raises:
        InvalidInputError: a bad name, a ``dataset`` that is not a DatumDataset (or one
            of another repository), extras that are not a dict of strict JSON data (no NaN
            or Infinity, at most 1 MiB), or a run of that name already recorded (unless
            ``force``).
    """
    check_name(args.text("name", name), "run")
    made = sys.modules.get("datarepo.torch.dataset")  # (not loaded: no DatumDataset was made)
    if made is None or not isinstance(dataset, made.DatumDataset):
        raise InvalidInputError(f"dataset must be a DatumDataset, not {type(dataset).__name__}")
    if extra is not None and not isinstance(extra, Mapping):
        raise InvalidInputError(f"run {name!r}: extra must be JSON data (a dict, not a {type(extra).__name__})")
    # Under the writer lock from the commit's check to the ref: a gc between them would delete
    # the commit, or the run object not yet named by a ref, and leave the ref naming nothing.
    with repo.lock:
        return _record(repo, name, dataset, extra, args.flag("force", force))


def _record(repo: Repo, name: str, dataset: DatumDataset, extra: Mapping[str, Any] | None, force: bool) -> Oid:
    if not force and repo.refs.read(RUNS + name) is not None:
        raise InvalidInputError(f"run {name!r} is already recorded")
    if not repo.store.has_object(dataset.commit):  # (its ref would keep nothing, and stop gc as damage)
        raise InvalidInputError(f"run {name!r}: the dataset reads commit {dataset.commit}, which is not in this repository")
    data = {"format": FORMAT, "type": RUN_TYPE, "name": name, "time": repo.now(), "author": repo.author()}
    data.update(dataset.run_spec())
    data["extra"] = dict(extra or {})
    for field, value in data.items():
        try:
            args.json_data(field, value)
        except InvalidInputError as e:
            raise InvalidInputError(f"run {name!r}: {e}") from None
    size = len(canonical_json(data["extra"]))
    if size > MAX_EXTRA_BYTES:
        raise InvalidInputError(
            f"run {name!r}: extra is {size} bytes of JSON, more than {MAX_EXTRA_BYTES} (keep large data elsewhere)"
        )
    oid = repo.store.put_object(Blob(data))
    try:  # (the ref must still be free as it is written: two runs recorded at once under one name)
        repo.refs.update(RUNS + name, oid, expected=True if force else None, message=f"run: {name}")
    except RefConflictError:
        raise InvalidInputError(f"run {name!r} is already recorded") from None
    return oid


def read_run(repo: Repo, name: str) -> dict[str, Any]:
    """The record of a run, by name.

    Raises:
        ObjectNotFoundError: no such run.
        NotARunError: its ref names something else than a run record.
    """
    ref = RUNS + check_name(args.text("name", name), "run")
    oid = _read_ref(repo, ref)
    if oid is None:
        raise ObjectNotFoundError("run", name)
    return run_object(repo, oid, ref)


def delete_run(repo: Repo, name: str) -> Oid | None:
    """Deletes ``refs/runs/NAME``, whether it names a run record or not (a damaged ref
    that stops ``gc`` is mended so); the data it alone kept is then ``gc``'s. Returns
    the oid it named, None where it held no object id.

    Raises:
        ObjectNotFoundError: no such run.
    """
    ref = RUNS + check_name(args.text("name", name), "run")
    with repo.lock:
        try:
            old = repo.refs.read(ref)
        except CorruptObjectError:
            old, expected = None, True  # what it holds is no id: anything there goes
        else:
            if old is None:
                raise ObjectNotFoundError("run", name)
            expected = old
        repo.refs.update(ref, None, expected=expected, message="deleted")
    return old


def _read_ref(repo: Repo, ref: str) -> Oid | None:
    try:
        return repo.refs.read(ref)
    except CorruptObjectError:  # not an object id: the ref file was written by hand
        raise NotARunError(ref, "it holds no object id") from None


def run_object(repo: Repo, oid: str, ref: str = "") -> dict[str, Any]:
    """The run record ``oid`` (named by ``ref``), its fields checked.

    Raises:
        NotARunError: ``oid`` is another object, is missing, or lacks a field.
    """
    ref = ref or f"object {oid}"
    try:
        obj = repo.store.get_object(oid)
    except ObjectNotFoundError:
        raise NotARunError(ref, f"{oid} is missing from the store") from None
    except DataRepoError as e:
        raise NotARunError(ref, str(e)) from None
    if not isinstance(obj, Blob) or obj.data.get("type") != RUN_TYPE:
        raise NotARunError(ref, f"{oid} is {_kind(obj)}")
    for field, types in _FIELDS.items():
        value = obj.data.get(field)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise NotARunError(ref, f"{oid} is a run object without a valid {field!r}")
    unknown = sorted(set(obj.data) - set(_FIELDS) - {"format", "type"})
    if unknown:
        raise NotARunError(ref, f"{oid} is a run object with a field a run record has not: {unknown[0][:40]!r}")
    try:
        _check_values(obj.data)
    except InvalidInputError as e:
        raise NotARunError(ref, f"{oid} is a run object with a bad value: {e}") from None
    return obj.data


def _check_values(run: dict[str, Any]) -> None:
    """Raises InvalidInputError, naming the field, where a record's value is not one that
    :func:`record_run` could have stored (what ``runs show --keys`` and ``from_run``
    would otherwise compute an order from, or fail on)."""
    from datarepo.torch.decode import check_spec

    for field in ("commit", "tree"):
        if not is_oid(run[field]):
            raise InvalidInputError(f"{field} is not an object id: {run[field][:40]!r}")
    for field in ("name", "rev", "prefix", "time", "author"):
        args.text(field, run[field])
    if run.get("keys") is not None:
        keys = args.key_list(run["keys"])
        if run["prefix"] or len(keys) != run["count"]:
            raise InvalidInputError(f"keys: {len(keys)} keys, a count of {run['count']} and a prefix {run['prefix']!r:.40}")
    args.integer("count", run["count"], 0, _INT64)
    args.integer("seed", run["seed"], 0, 1 << 128)
    for field in ("block", "window", "world_size"):
        args.integer(field, run[field], 1, _INT64)
    args.integer("epochs", run["epochs"], 1, _INT64 + 1)
    args.optional_integer("batch_size", run.get("batch_size"), 1, _INT64)
    check_spec(run["decode"], unsafe=True)  # (whether it may be used is from_run's question)
    if len(run["fingerprint"]) != 16 or not is_hex(run["fingerprint"]):
        raise InvalidInputError(f"fingerprint is not 16 hex digits: {run['fingerprint'][:40]!r}")


def _kind(obj: object) -> str:
    if isinstance(obj, Commit):
        return "a commit"
    if isinstance(obj, (Tree, TreePage)):
        return "a tree"
    kind = obj.data.get("type") if isinstance(obj, Blob) else None
    return f"a {kind} object" if isinstance(kind, str) and kind.isprintable() else "another object"


def list_runs(repo: Repo, problems: list[NotARunError] | None = None) -> list[RunInfo]:
    """Every recorded run, by name. A ref under ``refs/runs/`` that names no run record
    raises :class:`NotARunError`, or, given a list of ``problems``, is added to it and
    passed over (``datarepo runs`` lists the others, then names it)."""
    out = []
    for ref in sorted(repo.refs.names(RUNS)):
        try:
            oid = _read_ref(repo, ref)
            if oid is None:
                continue
            run = run_object(repo, oid, ref)
        except DataRepoError as e:
            if problems is None:
                raise
            problems.append(e if isinstance(e, NotARunError) else NotARunError(ref, str(e)))
            continue
        out.append(RunInfo(ref[len(RUNS) :], oid, *(run[f] for f in RunInfo._fields[2:])))
    return out


def run_keys(repo: Repo, name: str, epoch: int = 0) -> Iterator[str]:
    """The keys of one epoch of a run, in the global order its dataset read them.

    Raises:
        InvalidInputError: a bad name or epoch, or data that no longer gives the recorded
            order (when called, not when iterated).
        ObjectNotFoundError: no such run.
        NotARunError: its ref names something else than a run record.
    """
    from datarepo.torch.plan import OrderSpec, order_fingerprint, select

    epoch = args.integer("epoch", epoch, 0, _INT64)
    run = read_run(repo, name)
    manifest, rows = select(repo, repo.tree(run["commit"]), run["prefix"], run["keys"])
    spec = OrderSpec(len(rows), run["seed"], run["shuffle"], run["block"], run["window"])
    if len(rows) != run["count"] or order_fingerprint(manifest.datums, rows[spec.epoch_order(0)]) != run["fingerprint"]:
        raise InvalidInputError(f"run {name}: the data no longer gives the recorded order")
    ordered = rows[spec.epoch_order(epoch)]
    return (manifest.keys[r] for lo in range(0, len(ordered), 65536) for r in ordered[lo : lo + 65536].tolist())
