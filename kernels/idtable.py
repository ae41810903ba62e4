"""An open-addressing table from 64-bit id hashes to int64 values: the label join's index
(engine/performance/pending.py), 16 bytes a slot, linear probing, deletions as tombstones,
rebuilt in place when used and deleted slots pass 3/4 of it."""

from __future__ import annotations

import numpy as np

from kernels._jit import jit

EMPTY, GONE = 0, 1  # key values of a free slot and of a deleted one (real keys are moved off them)


@jit
def _find(keys: np.ndarray, key: int) -> int:
    mask = len(keys) - 1
    i = key & mask
    while True:
        k = keys[i]
        if k == key:
            return i
        if k == EMPTY:
            return -1
        i = (i + 1) & mask


@jit
def _put(keys: np.ndarray, values: np.ndarray, key: int, value: int) -> int:
    """Set key's value; returns 1 when a free slot was taken, else 0."""
    mask = len(keys) - 1
    i = key & mask
    free = -1
    while True:
        k = keys[i]
        if k == key:
            values[i] = value
            return 0
        if k == GONE and free < 0:
            free = i
        if k == EMPTY:
            break
        i = (i + 1) & mask
    if free >= 0:  # a tombstone reused: no new slot used
        keys[free] = key
        values[free] = value
        return 0
    keys[i] = key
    values[i] = value
    return 1


@jit
def _swap(keys: np.ndarray, values: np.ndarray, key: int, value: int) -> tuple:
    """Set key's value; returns (its previous value or -1, free slots taken 0/1)."""
    i = _find(keys, key)
    if i >= 0:
        old = values[i]
        values[i] = value
        return old, 0
    return -1, _put(keys, values, key, value)


@jit
def _remove_if(keys: np.ndarray, values: np.ndarray, key: int, value: int) -> int:
    """Remove key when its value is `value`; returns 1 when removed."""
    i = _find(keys, key)
    if i >= 0 and values[i] == value:
        keys[i] = GONE
        return 1
    return 0


@jit
def _rebuild(keys: np.ndarray, values: np.ndarray, new_keys: np.ndarray, new_values: np.ndarray) -> int:
    n = 0
    for i in range(len(keys)):
        if keys[i] > GONE or keys[i] < 0:
            n += _put(new_keys, new_values, keys[i], values[i])
    return n


def id_key(text: str) -> int:
    """The table key of an id: its 64-bit hash, moved off the two reserved values."""
    h = hash(text)
    return h + 2 if 0 <= h < 2 else h


class IdTable:
    def __init__(self, capacity: int):
        size = 8
        while size < 2 * capacity:
            size *= 2
        self.keys = np.zeros(size, np.int64)
        self.values = np.zeros(size, np.int64)
        self.used = 0  # slots not EMPTY (live or GONE)
        self.live = 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def get(self, key: int) -> int:
        """The key's value, -1 when it has none."""
        i = _find(self.keys, key)
        return -1 if i < 0 else int(self.values[i])

    def put(self, key: int, value: int) -> int:
        """Set key's value; returns the value it had, -1 when none."""
        old, taken = _swap(self.keys, self.values, key, value)
        if old < 0:
            self.live += 1
            self.used += taken
            if 4 * self.used > 3 * len(self.keys):
                self._rebuild()
        return old

    def remove_if(self, key: int, value: int) -> None:
        """Remove key if its value is `value`."""
        self.live -= _remove_if(self.keys, self.values, key, value)

    def _rebuild(self) -> None:
        size = len(self.keys)
        if 2 * self.live > size:  # more than half live: grow (the join bounds what it holds: rarely)
            size *= 2
        keys, values = np.zeros(size, np.int64), np.zeros(size, np.int64)
        self.used = _rebuild(self.keys, self.values, keys, values)
        self.keys, self.values = keys, values
