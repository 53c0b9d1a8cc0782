"""Writes ``<out>/<name>.json`` for the thumbnail in ``<in>``: its label and member sizes.

Run by the ``image_cards`` command transform (commands.toml); files whose names start
with ``_`` are not pipeline modules themselves.
"""

import json
import os
import sys
from pathlib import Path

inp, out = Path(sys.argv[1]), Path(sys.argv[2])
members = {p.name: p for p in inp.iterdir()}
stem = min(members).split(".")[0]
label = members.get(f"{stem}.cls")
card = {
    "format": os.environ.get("DATAREPO_PARAM_FORMAT", ""),
    "key": os.environ["DATAREPO_KEY"],
    "label": label.read_text().strip() if label else None,
    "bytes": {name.split(".", 1)[1]: p.stat().st_size for name, p in sorted(members.items())},
}
(out / f"{stem}.json").write_text(json.dumps(card, sort_keys=True))
