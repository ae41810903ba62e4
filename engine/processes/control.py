"""The supervisor's shared table of its children: one row per process slot (workers
0..N-1, the observer N, the challengers N+1), and a last row for the server (column 0:
every process was ready once), written by the supervisor, read by the others. Workers read
it to say not-ready while a worker or the observer is down (not the challengers: they never
touch an answer); the observer reads it for /metrics."""

from __future__ import annotations

from multiprocessing import shared_memory

import numpy as np

from engine.handoff.ring import attach_shm, create_shm, release_shm

UP, RESTARTS, PID = 0, 1, 2  # columns
_COLUMNS = 3


class Control:
    def __init__(self, shm: shared_memory.SharedMemory, owner: bool):
        self._shm = shm
        self._owner = owner
        self.name = shm.name
        self.table = np.ndarray((shm.size // (8 * _COLUMNS), _COLUMNS), dtype=np.int64, buffer=shm.buf)

    @classmethod
    def create(cls, workers: int) -> "Control":
        shm = create_shm(8 * _COLUMNS * (workers + 3), "the supervisor's table")
        control = cls(shm, owner=True)
        control.table[:] = 0
        return control

    @classmethod
    def attach(cls, name: str) -> "Control":
        return cls(attach_shm(name), owner=False)

    @property
    def workers(self) -> int:
        return self.table.shape[0] - 3

    @property
    def observer(self) -> int:
        """The observer's slot."""
        return self.workers

    @property
    def challengers(self) -> int:
        """The challengers' slot."""
        return self.workers + 1

    @property
    def started(self) -> bool:
        return bool(self.table[-1, 0])

    @started.setter
    def started(self, value: bool) -> None:
        self.table[-1, 0] = int(value)

    def workers_up(self) -> int:
        return int(self.table[:self.workers, UP].sum())

    def all_up(self) -> bool:
        """Every worker and the observer are up, and all were ready once. While the server
        starts no worker says ready: a client waiting for ServerReady would connect while only
        the first worker listens on the port, and its connections would all stay on it."""
        return self.started and bool(self.table[:self.workers + 1, UP].all())

    def pids(self, slots) -> list[int]:
        """The process ids the supervisor last started in those slots (0: none yet)."""
        return [int(self.table[slot, PID]) for slot in slots]

    def close(self) -> None:
        self.table = None
        release_shm(self._shm, self._owner)
