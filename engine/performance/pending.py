"""What the join holds for one model, in flat arrays: a few dozen bytes a row.

Every set of scored rows (one request's rows of one version and role) and every set of labels
is an entry of one ring, in arrival order, which is also the order they expire in. An entry
holds its id's 64-bit hash, its time, its version-role code (-1: labels), its state (waiting,
joined, dropped), where its values are and how many, and the previous entry of the same id:
a chain, newest first, that an open-addressing table (kernels/idtable.py) enters by the
id's hash. Scores wait in a ring of rows x score width, labels in a ring of their own; a
model with segments or fairness also keeps each row's group codes (segments.py; int16 per
column, computed at scoring) in a ring beside the scores, so a row is judged in the groups it
was scored in when its label comes.

Per one-row request of a binary model: about 40 bytes of entry, 8 of score, 8 of label
and 16 to 32 of table (its slots are twice the entries, rounded up to a power of two); a
multiclass model's score takes 8 bytes a class, and group codes 2 bytes a column. The arrays
are sized for `capacity` rows at start; the operating system maps their pages as the rings
first pass over them, so memory grows to the full size once `capacity` rows have gone
through, and stays there.
Two ids whose 64-bit hashes are equal would be taken for one (one chance in about 10^13
for a million ids held at once).
"""

from __future__ import annotations

import numpy as np

from kernels.idtable import IdTable

WAITING, JOINED, DROPPED = 0, 1, 2
LABELS = -1  # the code of a labels entry


class Pending:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.key = np.zeros(capacity, np.int64)
        self.time = np.zeros(capacity, np.int64)
        self.prev = np.zeros(capacity, np.int64)
        self.start = np.zeros(capacity, np.int64)  # position of its first value in its kind's ring
        self.length = np.zeros(capacity, np.int32)
        self.code = np.zeros(capacity, np.int16)
        self.state = np.zeros(capacity, np.int8)
        self.paired = np.zeros(capacity, np.int8)  # a challenger's rows already compared with a champion's
        self.table = IdTable(capacity)
        self.scores: np.ndarray | None = None  # capacity x width, made with the first rows
        self.groups: np.ndarray | None = None  # capacity x columns (int16, -1: none), made with the first codes
        self.labels = np.zeros(capacity, np.float64)
        self.head = self.tail = 0  # entry sequence numbers: next, oldest held
        self.ends = [0, 0]  # values written (labels, rows), ever
        self.starts = [0, 0]  # values let go (labels, rows), ever
        self.waiting = [0, 0]  # values waiting to be joined (labels, rows)

    @property
    def held(self) -> int:
        """Rows and labels held (waiting, or joined and kept for the TTL)."""
        return self.ends[0] - self.starts[0] + self.ends[1] - self.starts[1]

    @property
    def nbytes(self) -> int:
        arrays = (self.key, self.time, self.prev, self.start, self.length, self.code, self.state, self.paired,
                  self.labels)
        return (sum(a.nbytes for a in arrays) + self.table.nbytes + (0 if self.scores is None else self.scores.nbytes)
                + (0 if self.groups is None else self.groups.nbytes))

    def chain(self, key: int):
        """The held entries of `key`, newest first."""
        seq = self.table.get(key)
        while seq >= self.tail:
            yield seq
            seq = int(self.prev[seq % self.capacity])

    def values(self, seq: int) -> np.ndarray:
        """An entry's scores (rows x width, or a vector) or labels."""
        at = seq % self.capacity
        kind = int(self.code[at] >= 0)
        ring = self.scores if kind else self.labels
        start, n = int(self.start[at]), int(self.length[at])
        if n == 1:
            return ring[start % self.capacity: start % self.capacity + 1]
        return ring[(start + np.arange(n)) % self.capacity]

    def group_values(self, seq: int) -> np.ndarray | None:
        """A rows entry's group codes (rows x columns), None when none are kept."""
        if self.groups is None:
            return None
        at = seq % self.capacity
        start, n = int(self.start[at]), int(self.length[at])
        return self.groups[(start + np.arange(n)) % self.capacity]

    def _put_groups(self, end: int, n: int, groups: np.ndarray | None) -> None:
        """Rows end..end+n's group codes (-1 where not given), the ring made or widened as needed.
        Made with zeros, so that its pages are mapped as it is written: a row written before
        it was made has none, but it is of a version without codes, which never reads them."""
        if groups is None and self.groups is None:
            return
        width = 0 if groups is None else groups.shape[1]
        if self.groups is None or width > self.groups.shape[1]:  # widened: a reload added wider versions
            grown = np.zeros((self.capacity, width), np.int16)
            if self.groups is not None:
                grown[:, :self.groups.shape[1]] = self.groups
            self.groups = grown
        at = (end + np.arange(n)) % self.capacity
        self.groups[at] = -1
        if width:
            self.groups[at, :width] = groups

    def room(self, rows: int) -> bool:
        return rows <= self.capacity

    def full(self, rows: int, kind: int) -> bool:
        """Whether adding `rows` values of `kind` needs the oldest entry let go first."""
        return (self.head - self.tail >= self.capacity or self.held + rows > self.capacity
                or self.ends[kind] + rows - self.starts[kind] > self.capacity)

    def add(self, key: int, now: int, code: int, state: int, values: np.ndarray,
            groups: np.ndarray | None = None) -> int:
        """A new entry (the caller made room); returns its sequence number. `groups`: rows'
        group codes (rows x columns), kept beside their scores."""
        kind = 1 if code >= 0 else 0
        n = len(values)
        if kind and self.scores is None:
            self.scores = np.zeros((self.capacity, *values.shape[1:]), np.float64)
        ring = self.scores if kind else self.labels
        end = self.ends[kind]
        if n == 1:
            ring[end % self.capacity] = values[0]
        else:
            ring[(end + np.arange(n)) % self.capacity] = values
        if kind:
            self._put_groups(end, n, groups)
        seq = self.head
        at = seq % self.capacity
        self.key[at] = key
        self.time[at] = now
        self.code[at] = code
        self.state[at] = state
        self.paired[at] = 0
        self.start[at] = end
        self.length[at] = n
        self.prev[at] = self.table.put(key, seq)
        self.ends[kind] = end + n
        if state == WAITING:
            self.waiting[kind] += n
        self.head += 1
        return seq

    def settle(self, seq: int, state: int) -> None:
        """A waiting entry joined (or dropped)."""
        at = seq % self.capacity
        if self.state[at] == WAITING:
            self.waiting[int(self.code[at] >= 0)] -= int(self.length[at])
        self.state[at] = state

    def oldest(self) -> tuple[int, int, int, int] | None:
        """(time, code, state, length) of the oldest entry held, None when none."""
        if self.tail == self.head:
            return None
        at = self.tail % self.capacity
        return int(self.time[at]), int(self.code[at]), int(self.state[at]), int(self.length[at])

    def pop(self) -> None:
        """Let the oldest entry go."""
        at = self.tail % self.capacity
        kind = int(self.code[at] >= 0)
        if self.state[at] == WAITING:
            self.waiting[kind] -= int(self.length[at])
        self.starts[kind] = int(self.start[at]) + int(self.length[at])
        self.table.remove_if(int(self.key[at]), self.tail)
        self.tail += 1


__all__ = ["DROPPED", "JOINED", "LABELS", "Pending", "WAITING"]
