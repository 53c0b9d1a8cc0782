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
import math
import warnings
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
        "json": _json,
        "int": _int,
        "cls": _int,
        "npy": _npy,
        "pth": _pth,
        "pickle": _pickle,
    }[name]


INT64 = 1 << 63


def _int(data: bytes) -> int:
    """The int a label's text says (``b"3"``, ``b" -3\n"``), one that a batch's int64
    column holds: digits, a sign, and spaces around them, no ``_`` (which ``int`` takes)."""
    value = int(data)
    if not -INT64 <= value < INT64 or b"_" in data:
        raise ValueError(f"{bytes(data[:40])!r} is not a decimal int of 64 bits")
    return value


def _json(data: bytes) -> Any:
    """Strict JSON: ``NaN``, ``Infinity`` and numbers past a double's range (``1e999``),
    which Python's ``json`` would take as ``nan`` and ``inf``, are errors."""
    return json.loads(data, parse_constant=_no_constant, parse_float=_finite)


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _finite(token: str) -> float:
    value = float(token)
    if value - value != 0:  # (inf: a number too large for a double)
        raise ValueError(f"{token[:40]} is out of a double's range")
    return value


def _npy(data: bytes) -> Any:
    """A tensor of a ``.npy``: its header is read first, and an array that its bytes do
    not hold whole (a huge shape over a few bytes: numpy would reserve all of it before
    finding the bytes short) or one of Python objects is refused before any allocation.
    Big-endian numbers are turned to the machine's order (torch takes no other)."""
    import numpy as np
    import torch

    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError("the array holds Python objects, which are not loaded without unpickling")
    held, declared = len(data) - f.tell(), math.prod(shape) * dtype.itemsize
    if declared != held:
        raise ValueError(f"the header declares {declared} bytes of array (shape {shape}), the file holds {held}")
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.from_numpy(array)


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
    with warnings.catch_warnings():  # (Pillow's warning of a large image: refused below, at the scale it decodes at)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
    if size is not None:
        img.draft(mode, (size, size))
    _not_a_bomb(img.size, Image.MAX_IMAGE_PIXELS)
    img = img.convert(mode)
    if size is not None:
        img = _fit(img, size)
    if scale is None:
        return img
    return image_tensor(img, scale)


def _not_a_bomb(size: tuple[int, int], limit: int | None) -> None:
    """Refuses an image of more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` (its
    decompression bomb limit, which Pillow itself only warns of up to twice that): a few
    bytes may declare an image of gigabytes. (Counted at the scale it decodes at: a JPEG
    read in draft mode decodes smaller.) Raise the limit there to read larger images."""
    if limit is not None and size[0] * size[1] > limit:
        w, h = size
        raise ValueError(f"image of {w} x {h} pixels, more than Image.MAX_IMAGE_PIXELS ({limit}): a decompression bomb?")


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
