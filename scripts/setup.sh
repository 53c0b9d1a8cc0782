#!/usr/bin/env bash
# Idempotent environment setup: a virtualenv in .venv with datarepo installed
# in editable mode, plus its dev, torch and remote (DVC) extras.
#
# torch is installed first and on its own, pinned to the CPU build: once a
# torch that satisfies the "torch" extra is present, pip keeps it; otherwise
# resolving the extra would pull the CUDA build and gigabytes of nvidia
# packages. Where pip is configured with a local wheel directory
# (PIP_FIND_LINKS or pip.conf's find-links) holding torch-2.13.0+cpu, pip
# prefers that wheel over the plain PyPI one.
#
# Running it again is cheap: nothing is installed while .venv/bin/datarepo
# exists and pyproject.toml is not newer than the stamp this script leaves.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TORCH_VERSION=2.13.0
VENV=.venv
STAMP="$VENV/.datarepo-setup-stamp"
PYTHON=${PYTHON:-python3}

if [ -x "$VENV/bin/datarepo" ] && [ -f "$STAMP" ] && [ ! pyproject.toml -nt "$STAMP" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)

echo "setup: upgrading pip"
"${pip[@]}" install --upgrade pip

echo "setup: installing torch==$TORCH_VERSION (CPU build) before anything that depends on it"
"${pip[@]}" install --prefer-binary "torch==$TORCH_VERSION"

echo "setup: installing datarepo in editable mode with the dev, torch and remote (DVC) extras"
"${pip[@]}" install --prefer-binary -e '.[dev,torch,remote]'

touch "$STAMP"
echo "setup: done ($("$VENV/bin/datarepo" --version))"
