"""The supervisor's board: each process's latest metric families, in shared memory.

One slot per process slot (workers 0..N-1, the observer N, the challengers N+1). Its process
rewrites it every STATS_INTERVAL_S and once more when it stops; the observer reads the slots
to serve the one /metrics. A slot outlives its process: a restarted process starts its
counters from what its predecessor last wrote (`carried`), so a counter of the server never
goes back when a process dies, and a restarted observer finds every process's counters where
they were (nothing of them lived only in its memory).

A slot is a sequence number (odd while its process writes) and a length, then the families as
JSON. A reader copies the bytes between two reads of the sequence and tries again when it
changed (a seqlock): the writer never waits for a reader. Stores of the aligned 8-byte
numbers are atomic on x86-64 and seen in program order by other cores.
"""

from __future__ import annotations

import logging

import numpy as np
import orjson

from engine.handoff.ring import attach_shm, create_shm, release_shm
from engine.monitor.export import Family, merge

log = logging.getLogger("scorewire")

SLOT_BYTES = 1 << 20
_HEAD = 16  # sequence, length
CARRIED = ("counter", "histogram")  # kinds that only grow: carried over a restart


class Board:
    def __init__(self, shm, owner: bool):
        self._shm = shm
        self._owner = owner
        self.name = shm.name
        self.slots = shm.size // SLOT_BYTES
        self._buf = shm.buf
        self._heads = [np.ndarray((2,), dtype=np.int64, buffer=shm.buf[i * SLOT_BYTES:i * SLOT_BYTES + _HEAD])
                       for i in range(self.slots)]
        self.too_large = 0  # writes refused: the families did not fit the slot (logged)

    @classmethod
    def create(cls, slots: int) -> "Board":
        return cls(create_shm(slots * SLOT_BYTES, "the processes' counters"), owner=True)

    @classmethod
    def attach(cls, name: str) -> "Board":
        return cls(attach_shm(name), owner=False)

    def write(self, slot: int, families: list[Family]) -> bool:
        """The slot's process: its families now (False, logged, when they do not fit)."""
        data = orjson.dumps(families)
        if len(data) > SLOT_BYTES - _HEAD:
            self.too_large += 1
            if self.too_large == 1:
                log.error("slot %d's metrics take %d bytes, more than the %d a slot holds; /metrics keeps showing "
                          "the last that fit", slot, len(data), SLOT_BYTES - _HEAD)
            return False
        head = self._heads[slot]
        at = slot * SLOT_BYTES + _HEAD
        head[0] += 1  # odd: being written
        self._buf[at:at + len(data)] = data
        head[1] = len(data)
        head[0] += 1
        return True

    def read(self, slot: int) -> list[Family]:
        """What the slot's process wrote last ([] when nothing yet)."""
        head = self._heads[slot]
        at = slot * SLOT_BYTES + _HEAD
        for _ in range(1000):
            before = int(head[0])
            if before % 2:
                continue
            data = bytes(self._buf[at:at + int(head[1])])
            if int(head[0]) == before:
                return orjson.loads(data) if data else []
        return []  # written without a pause for a long while: next time

    def carried(self, slot: int) -> list[Family]:
        """The counters a new process of the slot starts from: its predecessor's last."""
        return [f for f in self.read(slot) if f[1] in CARRIED]

    def close(self) -> None:
        self._heads = None
        self._buf = None
        release_shm(self._shm, self._owner)


class Counts:
    """A process's families for its slot: its own, with its predecessors' counters added."""

    def __init__(self, board: Board, slot: int):
        self.board, self.slot = board, slot
        self.base = board.carried(slot)
        self.left = {f[0]: f for f in board.read(slot) if f[1] not in CARRIED}  # the predecessor's last gauges

    def publish(self, families: list[Family]) -> bool:
        return self.board.write(self.slot, merge([self.base, families]) if self.base else families)
