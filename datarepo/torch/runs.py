"""Run records: what a training run read (commit, selection, seed, epochs, world size,
decoders, order fingerprint, the user's extras), stored as a canonical JSON object under
``refs/runs/NAME``. The ref keeps the commit, and so its data, from ``gc``; the record
lets anyone list the exact order of any epoch again. No torch here: the ``runs`` command
reads records and orders without it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from datarepo.errors import InvalidInputError, ObjectNotFoundError
from datarepo.hashing import Oid
from datarepo.objects import FORMAT, Blob
from datarepo.refs import RUNS, check_name

if TYPE_CHECKING:
    from datarepo.repo import Repo
    from datarepo.torch.dataset import DatumDataset

RUN_TYPE = "run"


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


def record_run(repo: Repo, name: str, dataset: DatumDataset, extra: dict[str, Any] | None = None, force: bool = False) -> Oid:
    """Stores the run object of ``dataset`` and points ``refs/runs/NAME`` at it.

    Raises:
        InvalidInputError: a bad name, extras that are not JSON, or a run of that name
            already recorded (unless ``force``).
    """
    check_name(name, "run")
    if repo.refs.read(RUNS + name) is not None and not force:
        raise InvalidInputError(f"run {name!r} is already recorded")
    data = {"format": FORMAT, "type": RUN_TYPE, "name": name, "time": repo.now(), "author": repo.author()}
    data.update(dataset.run_spec())
    data["extra"] = extra or {}
    try:
        oid = repo.store.put_object(Blob(data))
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"run {name!r}: extra must be JSON data ({e})") from None
    repo.refs.update(RUNS + name, oid, message=f"run: {name}")
    return oid


def read_run(repo: Repo, name: str) -> dict[str, Any]:
    """The record of a run, by name.

    Raises:
        ObjectNotFoundError: no such run.
    """
    oid = repo.refs.read(RUNS + check_name(name, "run"))
    if oid is None:
        raise ObjectNotFoundError("run", name)
    return run_object(repo, oid)


def run_object(repo: Repo, oid: str) -> dict[str, Any]:
    obj = repo.store.get_object(oid)
    if not isinstance(obj, Blob) or obj.data.get("type") != RUN_TYPE:
        raise ObjectNotFoundError("run object", oid)
    return obj.data


def list_runs(repo: Repo) -> list[RunInfo]:
    """Every recorded run, by name."""
    out = []
    for name, oid in sorted(repo.refs.list(RUNS)):
        run = run_object(repo, oid)
        out.append(RunInfo(name, oid, run["commit"], run["prefix"], run["seed"], run["epochs"], run["world_size"], run["time"]))
    return out


def run_keys(repo: Repo, name: str, epoch: int = 0) -> Iterator[str]:
    """The keys of one epoch of a run, in the global order its dataset read them."""
    from datarepo.torch.plan import OrderSpec, select

    if epoch < 0:
        raise InvalidInputError("an epoch is 0 or more")
    run = read_run(repo, name)
    manifest, rows = select(repo, repo.tree(run["commit"]), run["prefix"], run["keys"])
    spec = OrderSpec(len(rows), run["seed"], run["shuffle"], run["block"], run["window"])
    ordered = rows[spec.epoch_order(epoch)]
    for lo in range(0, len(ordered), 65536):
        yield from (manifest.keys[r] for r in ordered[lo : lo + 65536].tolist())
