"""Which logged rows a drift window held: the monitor's own count of rows observed is no key
to the scoring log. The monitor lags the log (it gathers up to a second of batches), its tap
drops batches when full, a version's batches of two roles (direct and shadow) reach it
regrouped, and a restart counts from 0 again while the log keeps the earlier files. So the
observer stamps every batch with its place among its version's rows that run (ScoredBatch.seq,
logged per row as `seq` beside the run's id), and the monitor keeps this map from its count
to those stamps, back to its largest window's first row: a drift event then names its
window's rows exactly, as seq ranges of one run (engine/monitor/events.py)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class RowMap:
    """(count observed at its first row, its seq, -1 unknown) per stretch of rows stamped
    consecutively; usually one stretch for a whole run."""

    def __init__(self) -> None:
        self._stretches: deque[tuple[int, int]] = deque()

    def __len__(self) -> int:
        return len(self._stretches)

    def add(self, count: int, seqs: Sequence[tuple[int, int]] | None, rows: int) -> None:
        """The rows from the `count`-th on: (seq, rows) per batch, in the order observed
        (None: `rows` rows not stamped)."""
        stretches = self._stretches
        for seq, n in seqs if seqs is not None else [(-1, rows)]:
            if n <= 0:
                continue
            last = stretches[-1] if stretches else None
            if last is None:
                stretches.append((count, seq))
            elif seq < 0 or last[1] < 0:
                if (seq < 0) != (last[1] < 0):  # unknown after known, or known after unknown
                    stretches.append((count, seq))
            elif seq != last[1] + count - last[0]:  # not the next row stamped: a new stretch
                stretches.append((count, seq))
            count += n

    def ranges(self, end: int, size: int) -> tuple[tuple[int, int], ...]:
        """The seq ranges [start, stop) of the `size` rows observed before the `end`-th, in
        the order observed; () when any of them is unknown (not stamped, or forgotten)."""
        start, out = end - size, []
        stretches = list(self._stretches)
        for k, (first, seq) in enumerate(stretches):
            stop = stretches[k + 1][0] if k + 1 < len(stretches) else end
            lo, hi = max(first, start), min(stop, end)
            if lo >= hi:
                continue
            if seq < 0:
                return ()
            out.append((seq + lo - first, seq + hi - first))
        return tuple(out) if sum(b - a for a, b in out) == size else ()

    def forget_before(self, count: int) -> None:
        """Drop the stretches that end at or before the `count`-th row."""
        while len(self._stretches) > 1 and self._stretches[1][0] <= count:
            self._stretches.popleft()
