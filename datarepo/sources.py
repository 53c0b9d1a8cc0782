"""Readers of what ``ingest`` takes in: WebDataset tars and JSON lines (a folder is
scanned as a work tree is). Each yields :class:`NewDatum`s; anything it cannot take
raises InvalidInputError naming the source and where in it, never another error.
Keys and member names are checked at the door by :mod:`datarepo.keys`."""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from datarepo.errors import CorruptObjectError, InvalidInputError
from datarepo.fsutil import make_temp
from datarepo.hashing import CHUNK, Oid, datum_id, hash_bytes
from datarepo.keys import check_member, split_member
from datarepo.shards import (
    LARGE_FILE,
    REGULAR_KINDS,
    FileRange,
    MemberData,
    SparseRange,
    TarEntry,
    iter_entries,
    member_hash,
    member_size,
)

# Tars, plain or compressed (a compressed one is known by its first bytes, whatever its name).
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tzst")
_TAR_TEXT = ".tar, or compressed: .tar.gz, .tgz, .tar.bz2, .tar.xz, .tar.zst"
# Other compressed files: a tar compressed by a tool whose format is not read here, or a
# compressed file that is not named a tar.
UNREAD_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".lz", ".lzma", ".Z", ".zip", ".7z", ".rar")
_COMPRESSED_TEXT = f"of compressed files, only tars are read ({_TAR_TEXT})"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
# The longest JSON line (a datum) read, with its newline: a line is held whole while it is
# decoded, so a stream with no newline (``< /dev/zero``) must end in an error, not in all
# the memory there is. Larger datums go in a tar or a folder, which are streamed.
MAX_LINE_BYTES = 256 << 20


@dataclass(frozen=True)
class NewDatum:
    """A datum read from a source: its members, their hashes, and where it was read
    (``origin``: ``file:line`` or ``file member name``, for errors that name it)."""

    key: str
    members: dict[str, MemberData]
    hashes: dict[str, Oid]
    origin: str = ""

    @property
    def datum(self) -> Oid:
        return datum_id(self.hashes)

    @property
    def size(self) -> int:
        return sum(map(member_size, self.members.values()))


# The most names a source's braces may expand to (WebDataset's shard lists run to thousands).
MAX_BRACE_NAMES = 1_000_000
_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\}")


def _brace_bound(src: str) -> int:
    """At least as many names as ``src``'s braces expand to, counted without expanding
    them (a range's items are made all at once): the product of each numeric range's
    length and of each brace's number of commas plus one."""
    bound = 1
    for m in _RANGE.finditer(src):
        lo, hi, step = int(m[1]), int(m[2]), abs(int(m[3] or 1)) or 1
        bound *= abs(hi - lo) // step + 1
    for group in re.findall(r"\{[^{}]*\}", src):
        bound *= group.count(",") + 1
    return bound

def expand(src: str) -> list[str]:
    """The files a source names: a glob (``*.tar``: those that exist, sorted), braces
    (``x-{000..009}.tar``: each one, as WebDataset reads them; a missing one is an error,
    not a shard set with its datums deleted) or one path (none if it does not exist). A path
    that exists is itself, whatever it holds (``x[1].tar``, ``a{b}.tar``), as a folder is."""
    if os.path.exists(src):
        return [src]
    if any(c in src for c in "*?["):
        import glob

        return sorted(glob.glob(src))
    if "{" in src:
        import braceexpand

        if _brace_bound(src) > MAX_BRACE_NAMES:
            raise InvalidInputError(f"bad source {src!r}: its braces name more than {MAX_BRACE_NAMES:,} files")
        try:
            names = list(braceexpand.braceexpand(src))
        except braceexpand.UnbalancedBracesError as e:
            raise InvalidInputError(f"bad source {src!r}: {e}") from None
        if missing := [p for p in names if not os.path.exists(p)]:
            more = f" and {len(missing) - 1} more of its {len(names)}" if len(missing) > 1 else ""
            raise InvalidInputError(f"no such file: {missing[0]}{more} (named by {src!r})")
        return names
    return []


def stdin() -> BinaryIO:
    """Standard input as bytes; InvalidInputError where the process has none (``<&-``).
    Where a parent left it non-blocking (O_NONBLOCK on a pipe it shares), reads wait for
    data: else the first read that found none would end it, and the ingest of ``-``
    commit the prefix as empty, every datum in it deleted."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise InvalidInputError("standard input is closed: nothing to read for '-'")
    try:
        blocking = os.get_blocking(stream.fileno())
    except (AttributeError, OSError, ValueError):
        blocking = True
    return stream if blocking else io.BufferedReader(_WaitingReader(stream.fileno()))


class _WaitingReader(io.RawIOBase):
    """A non-blocking descriptor read as a blocking one: a read that finds no data waits for some."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def readinto(self, buffer: Any) -> int:
        import select

        while True:
            try:
                data = os.read(self.fd, len(buffer))
            except BlockingIOError:
                select.select([self.fd], [], [])
                continue
            buffer[: len(data)] = data
            return len(data)


def read_file(path: Path, notes: list[str], tmpdir: Path) -> Iterator[NewDatum]:
    """The datums of a tar (compressed or not) or JSON-lines file, by its suffix; a
    compressed tar is unpacked into a temporary file in ``tmpdir`` while it is read."""
    if path.name.endswith(JSONL_SUFFIXES):
        with open(path, "rb") as f:
            yield from read_jsonl(f, str(path))
    elif path.name.endswith(TAR_SUFFIXES):
        with _uncompressed(path, tmpdir) as tar:
            yield from read_tar(path, notes, tar)
    elif path.name.endswith(UNREAD_SUFFIXES):
        raise InvalidInputError(f"cannot ingest {path}: {_COMPRESSED_TEXT}")
    else:
        raise InvalidInputError(f"cannot ingest {path}: expected a folder, a tar shard ({_TAR_TEXT}) or a .jsonl file")


# A tar's compression, by its first bytes: what to open it with.
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "lzma", b"\x28\xb5\x2f\xfd": "zstd"}


@contextmanager
def _uncompressed(path: Path, tmpdir: Path) -> Iterator[Path]:
    """``path``, or where a compressed tar is unpacked: found by its first bytes, as
    WebDataset's ``tarfile.open(mode="r|*")`` finds it, whatever its suffix."""
    with open(path, "rb") as f:
        head = f.read(6)
    kind = next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        yield path
        return
    tmpdir.mkdir(exist_ok=True)
    fd, tmp = make_temp(tmpdir, ".tar")
    try:
        _unpack(kind, path, fd)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _unpack(kind: str, path: Path, fd: int) -> None:
    """Writes the tar that ``path`` holds compressed by ``kind`` to ``fd``; InvalidInputError
    if its data is not what ``kind`` reads."""
    import lzma
    import zlib

    import zstandard

    try:
        with open(fd, "wb") as out, _decompressor(kind, path) as stream:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # (the disk's error, not the data's)
            raise
        raise InvalidInputError(f"{path}: not a readable {kind} file ({e!s:.80})") from None


def _decompressor(kind: str, path: Path) -> BinaryIO:
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # type: ignore[return-value]
    module = importlib.import_module(kind)
    return module.open(path, "rb")  # type: ignore[no-any-return]


def read_tar(path: Path, notes: list[str], tar: Path | None = None) -> Iterator[NewDatum]:
    """The datums of the tar ``path`` (whose bytes are in ``tar``, if unpacked there). Its
    regular members with the same key (up to their basename's first dot) form one datum, as
    WebDataset groups consecutive ones, here wherever they lie (``tar cf`` of a folder
    writes them in the order the folder lists them); a hard link is the member it links
    to, a sparse member its whole bytes; a name that comes twice is its last member, as
    ``tar x`` leaves it. Members that are not files (symlinks, devices, fifos) are passed
    over with a note, folders silently."""
    tar = tar or path
    with open(tar, "rb") as f:
        try:
            files = _tar_files(f, path, notes)
        except CorruptObjectError as e:  # the tar is the user's input, not a stored object
            raise InvalidInputError(f"{path}: not a readable tar ({e.reason})") from None
        datums: dict[str, dict[str, TarEntry]] = {}
        for name, entry in files.items():
            key, ext = split_member(name)
            try:
                check_member(key, ext)
            except InvalidInputError as e:
                raise InvalidInputError(f"{path}: member {name!r}: {e}") from None
            datums.setdefault(key, {})[ext] = entry
        for key, entries in datums.items():
            members: dict[str, MemberData] = {}
            hashes: dict[str, Oid] = {}
            for ext, entry in entries.items():
                members[ext], hashes[ext] = _member(f, path, tar, entry)
            yield NewDatum(key, members, hashes, f"{path} member {_name(key, next(iter(entries)))}")


def _name(key: str, ext: str) -> str:
    return f"{key}.{ext}" if ext else key


_KIND_NAMES = {b"2": "a symlink", b"3": "a device", b"4": "a device", b"6": "a fifo"}


def _tar_files(f: BinaryIO, path: Path, notes: list[str]) -> dict[str, TarEntry]:
    """The files of a tar by name (a leading ``./`` dropped), in the order they first come;
    notes for what is passed over."""
    files: dict[str, TarEntry] = {}
    passed_over: dict[str, list[str]] = {}
    twice: list[str] = []
    unended: list[int] = []
    for entry in iter_entries(f, str(path), unended):
        name = _plain(entry.name)
        if entry.kind == b"1":  # a hard link: the bytes of the file it names, which came before
            target = files.get(_plain(entry.link))
            if target is None:
                why = f"a hard link to {_plain(entry.link)!r}, which the tar does not hold before it"
                passed_over.setdefault(why, []).append(name)
                continue
            entry = target
        elif entry.kind not in REGULAR_KINDS and entry.kind != b"S":
            if entry.kind not in (b"5", b"D"):  # (folders, GNU's incremental ones too)
                passed_over.setdefault(_KIND_NAMES.get(entry.kind, "not a file"), []).append(name)
            continue
        if name in files:
            twice.append(name)
        files[name] = entry
    for why, names in passed_over.items():
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        notes.append(f"skipped {path}: member {names[0]!r}{more}: {why}")
    if unended:
        notes.append(
            f"{path} ends at byte {unended[0]} without the zero blocks that end a tar: read as ending there (a copy cut short?)"
        )
    if twice:
        more = f" (and {len(twice) - 1} more)" if len(twice) > 1 else ""
        notes.append(f"{path}: member {twice[0]!r}{more} comes more than once: the last one is taken, as tar x leaves it")
    return files


def _plain(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _member(f: BinaryIO, path: Path, tar: Path, entry: TarEntry) -> tuple[MemberData, Oid]:
    """A member's bytes (a range of the tar, for a large one) and their hash."""
    if entry.sparse is None and entry.size <= LARGE_FILE:
        f.seek(entry.offset)
        raw = f.read(entry.size)
    else:
        span: FileRange | SparseRange
        if entry.sparse is None:
            span = FileRange(tar, entry.offset, entry.size)
        else:
            span = SparseRange(tar, entry.offset, *entry.sparse)
        if span.size > LARGE_FILE:
            try:
                oid = member_hash(span)
            except CorruptObjectError:
                raise InvalidInputError(f"{path}: truncated member at byte {entry.offset}") from None
            return span._replace(oid=oid), oid
        with span.open() as stream:  # a small sparse file: its bytes, holes and all
            raw = stream.read(span.size)
    if len(raw) != (entry.sparse[0] if entry.sparse else entry.size):
        raise InvalidInputError(f"{path}: truncated member at byte {entry.offset}")
    return raw, hash_bytes(raw)


def read_jsonl(stream: BinaryIO, name: str) -> Iterator[NewDatum]:
    """One datum a line: ``{"__key__": k, ext: text | {"base64": …} | {"text": …} | number}``.
    Other fields whose names begin with ``__`` are metadata and left out."""
    for lineno, line in enumerate(_bounded_lines(stream, name), 1):
        if line.strip():
            yield jsonl_datum(line, f"{name}:{lineno}")


def _bounded_lines(stream: BinaryIO, name: str) -> Iterator[bytes]:
    """The lines of ``stream``; InvalidInputError for one over :data:`MAX_LINE_BYTES`."""
    lineno = 0
    while line := stream.readline(MAX_LINE_BYTES + 1):
        lineno += 1
        _check_length(len(line), name, lineno)
        yield line


def _check_length(size: int, name: str, lineno: int) -> None:
    if size > MAX_LINE_BYTES:
        raise InvalidInputError(
            f"{name}:{lineno}: a line longer than {MAX_LINE_BYTES >> 20} MiB (a datum that large goes in a tar or a folder)"
        )


def jsonl_datum(line: bytes, where: str) -> NewDatum:
    """The datum one JSON line holds; InvalidInputError naming ``where`` if it holds none."""
    try:
        key, members = _datum(line)
        for ext in members:
            check_member(key, ext)
    except InvalidInputError as e:
        raise InvalidInputError(f"{where}: {e}") from None
    except (ValueError, TypeError, RecursionError, binascii.Error) as e:
        raise InvalidInputError(f"{where}: bad JSON-lines datum ({e!s:.80})") from None
    return NewDatum(key, members, {ext: hash_bytes(b) for ext, b in members.items()}, where)  # type: ignore[arg-type]


def lines_or_idle(stream: BinaryIO, idle: float | None) -> Iterator[bytes | None]:
    """The lines of a long-lived stream, and ``None`` whenever ``idle`` seconds pass with no
    whole line, so a reader may act on time while its producer is quiet. A stream that is
    not a pipe, terminal or file descriptor (or no ``idle``) gives its lines only."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if idle is None or fd is None:
        yield from _bounded_lines(stream, "<stdin>")
        return
    import select

    buffered, lineno = b"", 0
    while True:
        ready, _, _ = select.select([fd], [], [], idle)
        if not ready:
            yield None
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        *lines, buffered = (buffered + chunk).split(b"\n")
        for line in lines:
            lineno += 1
            _check_length(len(line) + 1, "<stdin>", lineno)
            yield line + b"\n"
        _check_length(len(buffered), "<stdin>", lineno + 1)
    if buffered:
        yield buffered


def _datum(line: bytes) -> tuple[str, dict[str, bytes]]:
    obj = json.loads(line, object_pairs_hook=_no_duplicates, parse_constant=_not_json, parse_float=_finite)
    if not isinstance(obj, dict):
        raise TypeError(f"a datum is a JSON object, not {_kind(obj)}")
    if "__key__" not in obj:
        raise ValueError('no "__key__" field (every line needs one)')
    key = obj["__key__"]
    if not isinstance(key, str):
        raise TypeError(f'"__key__" must be a string, not {_kind(key)}')
    members = {ext: _member_bytes(v) for ext, v in obj.items() if not ext.startswith("__")}
    if not members:
        raise ValueError(f"{key!r} has no members (fields besides __key__)")
    return key, members


def _not_json(token: str) -> float:
    raise ValueError(f"{token} is not JSON")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent, which must fit a float (``1e999`` does not)."""
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        names = [k for k, _ in pairs]
        twice = next(k for i, k in enumerate(names) if k in names[:i])
        raise ValueError(f"field {twice!r} appears twice")
    return obj


def _kind(value: object) -> str:
    names = {list: "a list", dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _member_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool) or value is None:
        raise ValueError(f"unsupported member value {value!r}")
    if isinstance(value, (int, float)):
        return str(value).encode()
    if isinstance(value, dict) and set(value) == {"base64"}:
        if not isinstance(value["base64"], str):
            raise ValueError("a base64 member must be a string")
        return base64.b64decode(value["base64"], validate=True)
    if isinstance(value, dict) and set(value) == {"text"} and isinstance(value["text"], str):
        return value["text"].encode("utf-8")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    raise ValueError(f"unsupported member value {value!r:.40}")
