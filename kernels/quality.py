"""Data quality per column over a sliding window of the last `size` rows: the share of
missing values (non-finite: NaN, +-inf), of values outside the reference's [lo, hi]
(continuous columns) and of categories the reference never had (categorical columns).

Each value gets a flag (1 missing, 2 out of range, 4 unseen category; at most one: a missing
value is neither of the others), kept in a ring of `size` rows per column, with running
counts per column and check: a row entering adds its flags, the row it replaces subtracts
its own, so the shares are exact over the window at any row, in one pass over the batch and
without a second look at older rows. The batch is read as it came ([rows, columns], any
numeric dtype): no transposed or float64 copy.

A categorical value's category is its integer code, rint(value) -- what the chi-squared
drift test counts (engine/monitor/drift.py) -- so 2.0 and 2.2 are both category 2.
"""

from __future__ import annotations

import numpy as np

from kernels._jit import jit, numba_readable

MISSING, OUT_OF_RANGE, UNSEEN = 1, 2, 4
CHECKS = 3  # counts' columns: missing, out of range, unseen category


@jit
def _advance(x, lo, hi, categorical, codes, offsets, ring, counts, state, ends, counts_at, length_at):
    """Rows of `x` [rows, k] into the ring [size, k]; counts [k, 3] kept running; state
    [position, length]; the counts and window length after each row ends[b] - 1 into
    counts_at[b] and length_at[b] (ends ascending)."""
    size, k = ring.shape
    position, length = state[0], state[1]
    b = 0
    for r in range(x.shape[0]):
        full = length == size
        for j in range(k):
            v = np.float64(x[r, j])
            flag = 0
            if not np.isfinite(v):
                flag = MISSING
            elif categorical[j]:
                code = np.rint(v)
                a, z = offsets[j], offsets[j + 1]
                i = a + np.searchsorted(codes[a:z], code)
                if i == z or codes[i] != code:
                    flag = UNSEEN
            elif v < lo[j] or v > hi[j]:
                flag = OUT_OF_RANGE
            if full:
                old = ring[position, j]
                counts[j, 0] -= old & 1
                counts[j, 1] -= (old >> 1) & 1
                counts[j, 2] -= (old >> 2) & 1
            ring[position, j] = flag
            counts[j, 0] += flag & 1
            counts[j, 1] += (flag >> 1) & 1
            counts[j, 2] += (flag >> 2) & 1
        position += 1
        if position == size:
            position = 0
        if not full:
            length += 1
        while b < ends.shape[0] and ends[b] == r + 1:
            counts_at[b] = counts
            length_at[b] = length
            b += 1
    state[0], state[1] = position, length


class QualityWindow:
    """The last `size` rows of k columns: counts per column of missing values, values outside
    [lo, hi] (continuous columns) and unseen categories (categorical columns)."""

    def __init__(self, size: int, lo, hi, categories: list[np.ndarray | None]):
        """`lo`, `hi`: per column, the reference's range (ignored for a categorical column);
        `categories`: per column, the reference's category codes, or None for a continuous one."""
        if not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.lo = np.ascontiguousarray(lo, dtype=np.float64)
        self.hi = np.ascontiguousarray(hi, dtype=np.float64)
        k = len(categories)
        if self.lo.shape != (k,) or self.hi.shape != (k,):
            raise ValueError(f"lo and hi need one value per column ({k}), got shapes {self.lo.shape} and "
                             f"{self.hi.shape}")
        self.categorical = np.array([c is not None for c in categories], dtype=np.bool_)
        sets = [np.unique(np.rint(np.asarray(c, dtype=np.float64))) if c is not None else np.empty(0)
                for c in categories]
        if any(not np.isfinite(s).all() for s in sets):
            raise ValueError("categories must be finite codes (leave NaN out of a reference's categories)")
        self.codes = np.concatenate(sets) if sets else np.empty(0)
        self.offsets = np.zeros(k + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum([len(s) for s in sets])
        self.size = int(size)
        self.ring = np.zeros((self.size, k), dtype=np.uint8)
        self.counts = np.zeros((k, CHECKS), dtype=np.int64)
        self._state = np.zeros(2, dtype=np.int64)

    @property
    def columns(self) -> int:
        return len(self.categorical)

    @property
    def length(self) -> int:
        """Rows in the window now (at most `size`)."""
        return int(self._state[1])

    def shares(self) -> np.ndarray:
        """[columns, 3]: the share of the window's rows missing, out of range, unseen (NaN while empty)."""
        return self.counts / self.length if self.length else np.full(self.counts.shape, np.nan)

    def advance(self, x: np.ndarray, ends=None) -> tuple[np.ndarray, np.ndarray]:
        """Rows of `x` ([rows, columns], or [rows] for one column; any numeric dtype) into the
        window. Returns the counts [len(ends), columns, 3] and the window's length
        [len(ends)] after each row count in `ends` (ascending, 1..rows; default: the batch's end)."""
        x = np.asarray(x)
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if x.ndim != 2 or x.shape[1] != self.columns:
            raise ValueError(f"x must be [rows, {self.columns}], got shape {x.shape}")
        if x.dtype.kind not in "fiub":
            raise TypeError(f"x must be numeric, got {x.dtype}")
        x = numba_readable(x)
        ends = np.array([len(x)] if ends is None else ends, dtype=np.int64)
        if ends.ndim != 1 or (ends.size and (ends.min() < 1 or ends.max() > len(x) or (np.diff(ends) < 0).any())):
            raise ValueError(f"ends must be ascending row counts in 1..{len(x)}, got {ends}")
        counts_at = np.zeros((len(ends), self.columns, CHECKS), dtype=np.int64)
        length_at = np.zeros(len(ends), dtype=np.int64)
        if len(x):
            _advance(x, self.lo, self.hi, self.categorical, self.codes, self.offsets, self.ring, self.counts,
                     self._state, ends, counts_at, length_at)
        return counts_at, length_at
