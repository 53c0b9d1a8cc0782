"""Handing a batch's bytes from a DataLoader worker to the training process through shared
memory, not through the pipe.

A DataLoader pickles each batch into a pipe: every member's bytes are copied four times
(into the pickle, into the pipe, out of it, out of the pickle), 64 KiB at a time, each
time waking the other process. Measured here, that was about 16 µs of CPU a 10 KiB
sample, twice what reading it from the shard costs. Instead, each worker keeps a *ring*:
a file of a few fixed slots in ``/dev/shm``, its space reserved when it is made. A list
of bytes is copied into a free slot, and only its place (the worker's process id and
descriptor of the file, a token, the slot, the lengths) goes through the pipe; the
training process reads the bytes out of the file as it unpickles the batch, then marks
the slot free. Nothing is inherited across a fork: the place is plain data.

The file is unlinked as soon as it is made: the training process opens it through
``/proc/<pid>/fd/<fd>`` (Linux), and it is gone with the last of the two processes,
however the worker ends (a DataLoader terminates a worker that does not stop). Where a
list does not fit a slot, every slot is taken, or no ring can be made (no ``/dev/shm`` or
``/proc``, no space), the bytes go through the pipe as before.
"""

from __future__ import annotations

import mmap
import os
import secrets
import threading
from typing import Any

from datarepo.errors import InvalidInputError

SHM = "/dev/shm"
RING_ENV = "DATAREPO_SHM_RING"  # "0": every batch through the DataLoader's pipe (where /proc is hardened, say)
SLOTS = 4
SLOT_BYTES = 8 << 20
_FREE, _FULL = 0, 1
_TOKEN_AT, _TOKEN_BYTES = 64, 16  # after the slots' state bytes
_HEADER = mmap.PAGESIZE  # the state bytes and the token, then the slots


class Ring:
    """A worker's slots in one shared, unlinked file (see :func:`ring_of_this_process`)."""

    def __init__(self, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES) -> None:
        self.slots, self.slot_bytes = slots, slot_bytes
        self.token = secrets.token_bytes(_TOKEN_BYTES)
        size = _HEADER + slots * slot_bytes
        path = f"{SHM}/datarepo-{os.getpid()}-{self.token.hex()}"
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.unlink(path)
            os.posix_fallocate(self.fd, 0, size)  # the space now, or ENOSPC now: never SIGBUS later
            self.map = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.map[_TOKEN_AT : _TOKEN_AT + _TOKEN_BYTES] = self.token

    def put(self, blobs: list[bytes]) -> Shared | None:
        """The place of ``blobs`` copied into a free slot; None where none is free or
        they do not fit one."""
        lengths = list(map(len, blobs))
        if sum(lengths) > self.slot_bytes:
            return None
        slot = self.map.find(bytes([_FREE]), 0, self.slots)
        if slot < 0:
            return None
        at = _HEADER + slot * self.slot_bytes
        for blob, n in zip(blobs, lengths):
            self.map[at : at + n] = blob
            at += n
        self.map[slot] = _FULL
        return Shared((os.getpid(), self.fd, self.token.hex()), slot, _HEADER + slot * self.slot_bytes, lengths)


Place = tuple[int, int, str]  # the worker's pid, its descriptor of the ring, the ring's token


class Shared:
    """A list of bytes left in a ring's slot: pickles as its place, and unpickles (in the
    training process) as the list, read out of the slot, which is then freed."""

    __slots__ = ("lengths", "offset", "ring", "slot")

    def __init__(self, ring: Place, slot: int, offset: int, lengths: list[int]) -> None:
        self.ring, self.slot, self.offset, self.lengths = ring, slot, offset, lengths

    def __reduce__(self) -> tuple[Any, ...]:
        return take, (self.ring, self.slot, self.offset, self.lengths)


def take(ring: Place, slot: int, offset: int, lengths: list[int]) -> list[bytes]:
    """The bytes a worker left in a slot of its ring, read out; the slot is freed."""
    mapped = _opened(ring)
    out = []
    for n in lengths:
        out.append(mapped[offset : offset + n])
        offset += n
    mapped[slot] = _FREE
    return out


# The rings this (training) process reads: mapped once each, unmapped once their worker
# is gone (the file's space is freed when the last mapping of it closes).
_OPENED: dict[Place, mmap.mmap] = {}
_OPENED_IN = [0]
_LOCK = threading.Lock()


def _opened(ring: Place) -> mmap.mmap:
    pid, wfd, token = int(ring[0]), int(ring[1]), str(ring[2])
    with _LOCK:
        if _OPENED_IN[0] != os.getpid():  # (a forked child does not use its parent's)
            _OPENED.clear()
            _OPENED_IN[0] = os.getpid()
        mapped = _OPENED.get((pid, wfd, token))
        if mapped is None:
            _close_the_dead()
            fd = os.open(f"/proc/{pid}/fd/{wfd}", os.O_RDWR | os.O_CLOEXEC)
            try:
                mapped = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
            if mapped[_TOKEN_AT : _TOKEN_AT + _TOKEN_BYTES].hex() != token:  # another process, another file
                mapped.close()
                raise ValueError(f"process {pid} holds no ring {token}")
            _OPENED[(pid, wfd, token)] = mapped
        return mapped


def _close_the_dead() -> None:
    for place in list(_OPENED):
        try:
            os.kill(place[0], 0)
        except ProcessLookupError:
            _OPENED.pop(place).close()
        except PermissionError:
            pass


_RING: tuple[int, Ring | None] | None = None


def ring_wanted() -> bool:
    """Whether ``DATAREPO_SHM_RING`` leaves the rings on: unset, empty or ``1``; ``0`` turns
    them off.

    Raises:
        InvalidInputError: another value (``false``, ``off``), which would leave them on.
    """
    text = os.environ.get(RING_ENV, "").strip()
    if text not in ("", "0", "1"):
        raise InvalidInputError(f"{RING_ENV} must be 0 or 1, not {text[:40]!r}")
    return text != "0"


def ring_of_this_process() -> Ring | None:
    """This process's ring, made on first use; None where none can be made."""
    global _RING
    if _RING is None or _RING[0] != os.getpid():
        wanted = ring_wanted() and os.path.isdir(f"/proc/{os.getpid()}/fd")
        try:
            ring: Ring | None = Ring() if wanted else None
        except (OSError, AttributeError):  # no /dev/shm, no space, or no posix_fallocate
            ring = None
        _RING = (os.getpid(), ring)
    return _RING[1]


def shared(blobs: list[bytes]) -> Shared | list[bytes]:
    """A list of bytes as it should cross to the training process: in this process's
    ring where it fits, else as it is."""
    ring = ring_of_this_process()
    return (ring.put(blobs) if ring is not None else None) or blobs
