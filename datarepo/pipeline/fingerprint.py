"""A pipeline's fingerprint (DESIGN §3.5): what its outputs depend on besides its inputs.

fingerprint = xxh3-128 of the canonical JSON of: the declaring file's text (the whole
Python module, so that a helper the transform calls counts too; or the command's TOML
table), the transform's and setup's names, the params, the version, and each declared
dependency (a file's hash, an installed package's version). A command's arguments that
name files in the pipelines folder (its script) are dependencies without being declared.
"""

from __future__ import annotations

from pathlib import Path

from datarepo.errors import PipelineError
from datarepo.hashing import Oid, canonical_json, hash_bytes
from datarepo.pipeline.spec import Spec


def fingerprint(spec: Spec, folder: Path) -> Oid:
    """The fingerprint of ``spec``, declared in ``folder``."""
    return hash_bytes(canonical_json({
        "format": 1,
        "kind": spec.kind,
        "declaration": spec.declaration,
        "function": spec.function,
        "setup": spec.setup,
        "command": list(spec.command),
        "params": spec.params,
        "version": spec.version,
        "depends": dependencies(spec, folder),
    }))


def dependencies(spec: Spec, folder: Path) -> dict[str, str]:
    """Each dependency of ``spec``, by name: a file's hash or a package's version."""
    found = {}
    for name in spec.depends:
        found[name] = _dependency(spec, folder, name)
    for arg in spec.command:
        path = folder / arg
        if "/" not in arg.strip("./") and arg not in found and path.is_file():
            found[arg] = "file:" + hash_bytes(path.read_bytes())
    return found


def _dependency(spec: Spec, folder: Path, name: str) -> str:
    if name.startswith("/") or ".." in name.replace("\\", "/").split("/"):
        raise PipelineError(f"{spec.file}: pipeline {spec.name!r}: depends: {name!r} is outside {folder.name}/: "
                            "name files of the pipelines folder (or bump version for one elsewhere)")
    path = folder / name
    if path.is_file():
        return "file:" + hash_bytes(path.read_bytes())
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "package:" + version(name)
    except (PackageNotFoundError, ValueError):
        raise PipelineError(
            f"{spec.file}: pipeline {spec.name!r}: depends: {name!r} is neither a file in {folder.name}/ nor an installed package"
        ) from None
