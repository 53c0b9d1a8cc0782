"""Damaged bytes for property tests of the readers of pages: a few bytes changed, cut out
or put in, drawn by Hypothesis."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def damaged_bytes(raw: bytes, data: Any, alphabet: bytes) -> bytes:
    """``raw`` with one to three edits, each a byte of ``alphabet`` set or put in at a drawn
    place, or up to 40 bytes cut out there."""
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(out)))
        edit = data.draw(st.sampled_from(["set", "cut", "put"]))
        byte = data.draw(st.sampled_from(alphabet))
        if edit == "set" and at < len(out):
            out[at] = byte
        elif edit == "cut":
            del out[at : at + data.draw(st.integers(1, 40))]
        else:
            out[at:at] = bytes([byte])
    return bytes(out)
