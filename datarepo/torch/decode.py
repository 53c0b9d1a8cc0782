"""Decoders of members, by name: what ``DatumDataset(decode={ext: spec})`` takes.

A spec is plain data, so that a run record stores it: a name (``"rgb8"``, ``"int"``), or
a name and a size for images (``["rgb8", 224]``: decoded at a reduced scale where the
image is larger, with Pillow's draft mode, then resized so that its shorter side is 224
and cropped to 224 x 224 at its centre). Nothing is unpickled unless the dataset is made
with ``unsafe=True``: ``"pth"`` (``torch.load``) and ``"pickle"`` are refused otherwise.

| spec | gives |
| --- | --- |
| ``"bytes"`` | the member's bytes, unchanged (members the spec does not name, too) |
| ``"txt"`` | ``str`` (UTF-8) |
| ``"json"`` | the parsed JSON value |
| ``"int"`` (or ``"cls"``) | ``int`` of the text (``b"3"``, ``b" 3\\n"``) |
| ``"npy"`` | a tensor from a ``.npy`` file (``allow_pickle=False``) |
| ``"rgb8"``, ``"l8"`` | a ``uint8`` tensor, channels first (3 x H x W, 1 x H x W) |
| ``"rgb"``, ``"l"`` | a ``float32`` tensor in [0, 1], channels first |
| ``"pil"`` | a ``PIL.Image`` in RGB |
| ``"pth"`` / ``"pickle"`` | ``torch.load(weights_only=True)`` / ``pickle.loads``, only with ``unsafe=True`` |
| ``None`` | the member is left out |
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from numbers import Integral
from typing import Any

from datarepo.errors import InvalidInputError
from datarepo.keys import check_ext

_IMAGE = {"rgb8": ("RGB", False), "l8": ("L", False), "rgb": ("RGB", True), "l": ("L", True), "pil": ("RGB", None)}
_PLAIN = {"bytes", "txt", "json", "int", "cls", "npy"}
_UNSAFE = {"pth", "pickle"}
_ALL = set(_IMAGE) | _PLAIN | _UNSAFE
Spec = str | list | tuple | None


def check_spec(decode: Mapping[str, Spec] | None, unsafe: bool) -> dict[str, Any]:
    """The decode spec as plain JSON data (a list for a sized image), checked.

    Raises:
        InvalidInputError: ``decode`` is not a dict of member name to decoder, names an
            unknown decoder, a bad size, or an unsafe decoder without ``unsafe=True``.
    """
    if decode is None:
        return {}
    if not isinstance(decode, Mapping):
        raise InvalidInputError(f"decode must be a dict of member name to decoder, not {decode!r:.60}")
    out: dict[str, Any] = {}
    for ext, spec in decode.items():
        if not isinstance(ext, str):
            raise InvalidInputError(f"decode: a member name is a str, not {ext!r:.60}")
        try:
            check_ext(ext)
        except InvalidInputError as e:
            raise InvalidInputError(f"decode: {e}") from None
        out[ext] = _checked(ext, spec, unsafe)
    return out


def _checked(ext: str, spec: Any, unsafe: bool) -> Any:
    """One member's spec as plain data: a name, None, or ``[image decoder, size]``."""
    if isinstance(spec, (list, tuple)):
        name, size = spec if len(spec) == 2 else (None, None)
        if not isinstance(name, str) or name not in _IMAGE:
            raise InvalidInputError(f"decode: {spec!r:.60} for {ext!r} is not [an image decoder, a size]")
        if isinstance(size, bool) or not isinstance(size, Integral) or size < 1:
            raise InvalidInputError(f"decode: the size in {spec!r:.60} for {ext!r} must be a positive int")
        return [name, int(size)]
    if spec is not None and (not isinstance(spec, str) or spec not in _ALL):
        raise InvalidInputError(f"decode: unknown decoder {spec!r:.60} for {ext!r}")
    if spec in _UNSAFE and not unsafe:
        raise InvalidInputError(f"decode: decoder {spec!r} for {ext!r} unpickles data: pass unsafe=True to allow it")
    return spec


def decoder(spec: dict[str, Any], unsafe: bool = False) -> Callable[[dict[str, bytes]], dict[str, Any]] | None:
    """A function from a datum's members to its decoded fields; None where the spec
    leaves every member as bytes. An unpickling decoder is made only with ``unsafe``."""
    check_spec(spec, unsafe)
    if all(s == "bytes" for s in spec.values()):
        return None
    funcs = {ext: _one(s) for ext, s in spec.items()}

    def decode(members: dict[str, bytes]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ext, data in members.items():
            f = funcs.get(ext, _bytes)
            if f is not None:
                out[ext] = f(data)
        return out

    return decode


def _bytes(data: bytes) -> bytes:
    return data


def _one(spec: Any) -> Callable[[bytes], Any] | None:
    name, size = spec if isinstance(spec, list) else (spec, None)
    if name is None:
        return None
    if name in _IMAGE:
        return lambda data: decode_image(data, name, size)
    return {
        "bytes": _bytes,
        "txt": lambda d: d.decode("utf-8"),
        "json": json.loads,
        "int": lambda d: int(d),
        "cls": lambda d: int(d),
        "npy": _npy,
        "pth": _pth,
        "pickle": _pickle,
    }[name]


def _npy(data: bytes) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))


def _pth(data: bytes) -> Any:
    """Tensors (and plain containers of them), through torch's restricted unpickler even when
    allowed: an arbitrary object needs ``"pickle"``."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def _pickle(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)


def decode_image(data: bytes, name: str, size: int | None = None) -> Any:
    """An image decoded as ``name`` says; with ``size``, at the smallest scale Pillow's
    draft mode gives that keeps both sides at least ``size`` (JPEG decodes at 1/2, 1/4 or
    1/8 scale), then resized to ``size`` on its shorter side and cropped at the centre."""
    from PIL import Image

    mode, scale = _IMAGE[name]
    img = Image.open(io.BytesIO(data))
    if size is not None:
        img.draft(mode, (size, size))
    img = img.convert(mode)
    if size is not None:
        img = _fit(img, size)
    if scale is None:
        return img
    return image_tensor(img, scale)


def _fit(img: Any, size: int) -> Any:
    w, h = img.size
    k = size / min(w, h)
    if k != 1:
        img = img.resize((max(size, round(w * k)), max(size, round(h * k))))
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def image_tensor(img: Any, scale: bool) -> Any:
    """A Pillow image as a channels-first tensor: uint8, or float32 in [0, 1]."""
    import numpy as np
    import torch

    array = np.asarray(img)
    t = torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1).copy()).permute(2, 0, 1)
    return t.float().div_(255) if scale else t
