#!/usr/bin/env bash
# The end-to-end demo: set up .venv (if needed), then walk the whole user flow
# of the datarepo CLI in a fresh temporary directory. Exits non-zero on the
# first step that fails. Pass --keep to keep the temporary directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
