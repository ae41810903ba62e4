"""A bounded single-producer, single-consumer byte ring in shared memory: how a worker hands
its scored batches to the observer without pickling and without ever waiting.

Records are byte strings, written whole or not at all. The producer (one worker process)
copies a record in, then advances `head`; the consumer (the observer) copies records out,
then advances `tail`. Both counters only grow (byte positions modulo the capacity), each is
written by one side only, and each is an aligned 8-byte store, atomic on x86-64, where other
cores also see stores in program order: a consumer that reads the new `head` finds the
record's bytes. A record that does not fit in the free space is refused and counted in the
ring itself (`dropped`, `dropped_rows`): a slow observer costs a worker nothing but the count.

Layout: a 256-byte header (head; tail; the producer's counters; the consumer's mark: each on
a cache line of its own), then the data. A record is a 4-byte length, the bytes, padding to 8; a record that would
cross the end is written at the start instead, after a WRAP marker where one fits.

A producer killed mid-record leaves `head` before it: the record never existed, and a new
producer (the restarted worker) attaches the same ring and goes on from `head`.

The consumer reads with a cursor of its own and frees space with `release`: the observer
releases a record only once the scoring log has committed its rows (a `Receipt`), so the ring
is the write-ahead log of what the observer has not made durable. A consumer killed before it
released starts again from `tail` (a new observer, after `seek` past what the log already has).

The segment is fully reserved when it is made (posix_fallocate): a ring that was created can
always be written. Without that, /dev/shm filling up later would kill the first process to
touch a new page of it (SIGBUS).

`multiprocessing.shared_memory` provides the memory (one named segment per ring, created
and finally unlinked by the supervisor); Python's standard library has no ring, and Arrow's
IPC has none either (its shared-memory store, Plasma, was removed in Arrow 12).
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

HEADER = 256
_HEAD, _TAIL, _DROPPED, _DROPPED_ROWS = 0, 8, 16, 17  # int64 indices into the header
_MARK = 24  # the consumer's: a position it wants to outlive it (the observer's: forwarded up to)
_LEN = struct.Struct("<I")
WRAP = 0xFFFFFFFF


def _align(n: int) -> int:
    return (n + 7) & ~7


class SharedMemoryFull(OSError):
    """/dev/shm has no room for a segment: the message says what to change."""


@dataclass(slots=True)
class Receipt:
    """A record read from a ring and not yet released: the ring's name, the record's end
    position, and whether whoever needed it is done (the scoring log, once its rows are
    committed or given up)."""

    ring: str
    end: int
    done: bool = False


def create_shm(size: int, what: str) -> shared_memory.SharedMemory:
    """A new segment of `size` bytes, every page reserved now (posix_fallocate): a segment
    that was made can always be written. SharedMemoryFull when /dev/shm has no room."""
    shm = shared_memory.SharedMemory(create=True, size=size)
    try:
        os.posix_fallocate(shm._fd, 0, size)
    except OSError as exc:
        release_shm(shm, owner=True)
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise
        try:
            st = os.statvfs("/dev/shm")
            free = f"{st.f_bavail * st.f_frsize / 2**20:.0f} MiB free"
        except OSError:
            free = "its free space unknown"
        raise SharedMemoryFull(
            exc.errno, f"cannot reserve {size / 2**20:.1f} MiB of shared memory for {what} (/dev/shm: {free}); "
            "lower [server] handoff_ring_bytes or workers, or give the container more shared memory "
            "(docker run --shm-size)") from None
    except AttributeError:  # no fallocate here (not Linux): the segment stays sparse
        pass
    return shm


class Ring:
    """One end of a ring. `create` makes the segment; `attach` opens it by name."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool):
        self._shm = shm
        self._owner = owner
        self.name = shm.name
        self.capacity = shm.size - HEADER
        self._counters = np.ndarray((HEADER // 8,), dtype=np.int64, buffer=shm.buf[:HEADER])
        self._data = shm.buf[HEADER:]
        self._read = int(self._counters[_TAIL])  # the consumer's cursor: read up to here

    @classmethod
    def create(cls, capacity: int, what: str = "a hand-off ring") -> "Ring":
        if capacity < 64 or capacity % 8:
            raise ValueError(f"ring capacity must be a multiple of 8 and at least 64 bytes, not {capacity}")
        shm = create_shm(HEADER + capacity, what)
        shm.buf[:HEADER] = bytes(HEADER)
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> "Ring":
        return cls(attach_shm(name), owner=False)

    # -- producer ---------------------------------------------------------------------------
    def put(self, parts: list, rows: int = 0) -> bool:
        """Write one record made of `parts` (bytes-like, concatenated). False when it does not
        fit now (counted as dropped, with its rows): never waits."""
        size = sum(len(p) if not isinstance(p, memoryview) else p.nbytes for p in parts)
        c = self._counters
        head, tail = int(c[_HEAD]), int(c[_TAIL])
        cap = self.capacity
        need = _align(4 + size)
        pos = head % cap
        skip = cap - pos if pos + need > cap else 0  # the record goes to the start instead
        if need > cap or head + skip + need - tail > cap:
            c[_DROPPED] += 1
            c[_DROPPED_ROWS] += rows
            return False
        data = self._data
        if skip:
            if skip >= 4:
                _LEN.pack_into(data, pos, WRAP)
            pos = 0
        _LEN.pack_into(data, pos, size)
        at = pos + 4
        for p in parts:
            n = len(p) if not isinstance(p, memoryview) else p.nbytes
            data[at:at + n] = p if not isinstance(p, memoryview) else p.cast("B")
            at += n
        c[_HEAD] = head + skip + need  # publish last
        return True

    # -- consumer ---------------------------------------------------------------------------
    def read(self) -> list[tuple[bytes, int]]:
        """Copy out the records written since the last read, each with its end position; their
        space stays taken until `release`."""
        head = int(self._counters[_HEAD])
        at = self._read
        cap, data = self.capacity, self._data
        out = []
        while at < head:
            pos = at % cap
            if cap - pos < 4:  # too little room at the end for even a marker: the record is at 0
                at += cap - pos
                continue
            (size,) = _LEN.unpack_from(data, pos)
            if size == WRAP:
                at += cap - pos
                continue
            at += _align(4 + size)
            out.append((bytes(data[pos + 4:pos + 4 + size]), at))
        self._read = at
        return out

    def release(self, upto: int) -> None:
        """Free the space of every record that ends at or before `upto` (a position `read` gave)."""
        if upto > self._counters[_TAIL]:
            self._counters[_TAIL] = upto

    def seek(self, position: int) -> None:
        """Read on from `position` (the end of a record, past the tail): the records before it
        are released unread."""
        if self._counters[_TAIL] < position <= self._counters[_HEAD]:
            self._read = position
            self._counters[_TAIL] = position

    def take(self) -> list[bytes]:
        """Copy out the records written so far and free their space."""
        records = self.read()
        self.release(self._read)
        return [record for record, _ in records]

    @property
    def mark(self) -> int:
        """A position the consumer keeps in the ring itself, so that it outlives the consumer
        (the observer: the end of the last record it forwarded to the challengers)."""
        return int(self._counters[_MARK])

    @mark.setter
    def mark(self, position: int) -> None:
        self._counters[_MARK] = position

    # -- both -------------------------------------------------------------------------------
    @property
    def used(self) -> int:
        return int(self._counters[_HEAD] - self._counters[_TAIL])

    @property
    def dropped(self) -> int:
        return int(self._counters[_DROPPED])

    @property
    def dropped_rows(self) -> int:
        return int(self._counters[_DROPPED_ROWS])

    def close(self) -> None:
        self._counters = None
        self._data.release()
        self._data = None
        release_shm(self._shm, self._owner)


def attach_shm(name: str) -> shared_memory.SharedMemory:
    """A segment the supervisor made. Its children (multiprocessing's spawn) share its resource
    tracker, where registering the name again changes nothing; Python 3.13 can skip the
    registration (track=False), 3.11 and 3.12 register."""
    try:
        return shared_memory.SharedMemory(name=name, track=False)
    except TypeError:
        return shared_memory.SharedMemory(name=name)


def unlink_shm(shm: shared_memory.SharedMemory) -> None:
    """Remove the segment's name now (mappings stay valid until closed): what its owner, the
    supervisor, would have done had it not died."""
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


def release_shm(shm: shared_memory.SharedMemory, owner: bool) -> None:
    """Unmap it; the owner also removes it."""
    try:
        shm.close()
    except BufferError:  # a view still held somewhere; the mapping goes with the process
        pass
    if owner:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass

