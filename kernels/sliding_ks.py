"""Streaming two-sample Kolmogorov-Smirnov: `SlidingKS` (one column) and `KSColumns` (many
columns advanced in one call), exact against a fixed reference. The window state and its
kernels (slot weights, placement, the lazy tree and the bounded scan) are in ks_window.py.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import jit, numba_readable
from kernels.ks import MAX_EXACT_N, _clean, pvalue_block
from kernels.ks_window import SLOT_SHIFT, _advance_columns, _query_h, _reaches, _slide

BLOCK_VALUES = 4096  # values placed per pass (their slots fit in L1 between the two passes)
BUCKETS_PER_VALUE = 2  # bucket table size per distinct reference value (most buckets hold 0-2)
MAX_BUCKETS = 1 << 20


@jit
def _gather_columns(matrix, columns, out, rows):
    """out[rows[j], t] = matrix[t, columns[j]], tile by tile (256 rows of the matrix at a
    time, so that its reads and the block's writes both stay in cache)."""
    n = matrix.shape[0]
    for t0 in range(0, n, 256):
        t1 = min(t0 + 256, n)
        for j in range(columns.shape[0]):
            c = columns[j]
            r = rows[j]
            for t in range(t0, t1):
                out[r, t] = matrix[t, c]


def gather_columns(matrix: np.ndarray, columns, out: np.ndarray, rows) -> None:
    """Copy chosen columns of a [n, k] numeric matrix into chosen rows of a float64
    [rows, n] block (KSColumns.advance's layout) in one pass: no transposed copy of the
    whole matrix in between."""
    columns = np.asarray(columns, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    if matrix.ndim != 2 or matrix.dtype.kind not in "fiub":
        raise TypeError(f"matrix must be a 2-D numeric array, got {matrix.dtype} {matrix.shape}")
    if out.ndim != 2 or out.dtype != np.float64 or out.shape[1] != matrix.shape[0]:
        raise ValueError(f"out must be float64 [rows, {matrix.shape[0]}], got {out.dtype} {out.shape}")
    if columns.shape != rows.shape or (columns.size and (columns.min() < 0 or columns.max() >= matrix.shape[1]
                                                         or rows.min() < 0 or rows.max() >= out.shape[0])):
        raise ValueError("columns and rows must pair up and lie inside the matrix and the block")
    _gather_columns(numba_readable(matrix), columns, out, rows)


def _numeric_vector(values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1 or array.dtype.kind not in "fiub":
        raise TypeError(f"values must be a 1-D numeric array, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float64)


class SlidingKS:
    """Exact two-sample KS of the last `window` values against a fixed reference -- or of
    several windows at once (`window` a list of sizes, e.g. [1000, 2000, 10000]).

    An update costs a placement (a bucket look-up and a short branch-free search), done once
    whatever the number of windows since they share one ring of the largest window's slots,
    and two slot changes per window. A query replays the slots changed since the last one
    through a lazy segment tree when they are few, and otherwise passes over the 2K+1 slots
    (only the blocks of 64 that can hold the answer) and lets the tree go stale, rebuilding
    it only once queries are frequent again (see ks_window._full_h): frequent queries cost
    O(log K) per event, rare ones O(1) per event plus at most O(K) per query.
    The statistic is exact on every route.

    `statistic` and `pvalue()` equal scipy.stats.ks_2samp(window, reference) (with several
    windows, `window=` picks one; the default is the largest). p-values are cached per
    statistic value (D only takes values h/lcm(n, m)), in a cache shared by all instances
    with the same window and reference sizes: the first query at a given D costs what
    SciPy's method costs (tens of microseconds for n == m and for the asymptotic path;
    O(D*n*m) for unequal sizes up to 10,000, where a miss computes the block of 16
    neighbouring values at once, ~14 ms at 1,000 vs 10,000), later ones a dict look-up.
    `significant(alpha)` decides against an exact critical value in O(1).
    An empty window has statistic 0 and p-value 1. NaNs are counted (`nan_count`) and skipped.
    """

    # p-values by (window length, reference size, h): shared by every instance, since a
    # monitor's features usually share their window and reference sizes.
    _pcache: dict[tuple[int, int, int], float] = {}
    _CACHE_LIMIT = 1 << 18

    def __init__(self, reference, window, alphas=()):
        """`window`: a size, or a list of sizes (one window each, sharing the reference).
        `alphas`: significance levels whose exact critical statistics are computed now (for
        every window), so that `significant(alpha)` never computes a p-value on the alarm path."""
        sizes = [window] if np.ndim(window) == 0 else list(window)
        if not sizes or any(int(w) != w or w < 1 for w in sizes):
            raise ValueError(f"window must be >= 1 (or a non-empty list of such sizes), got {window}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"window sizes must differ, got {sizes}")
        ref, self.reference_nan_count = _clean("reference", reference)
        if ref.size == 0:
            raise ValueError("reference needs at least one non-NaN value")
        self.windows = tuple(sorted(int(w) for w in sizes))
        self.window = self.windows[-1]
        self._sizes = np.array(self.windows, dtype=np.int64)
        self.m = int(ref.size)
        uniq, ref_counts = np.unique(ref, return_counts=True)
        self._k = int(uniq.size)
        self._lo, self._hi, self._scale = 1.0, 0.0, 0.0  # lo > hi: no value takes the bucket path
        bstart = np.zeros(2, dtype=np.int32)
        finite = uniq[np.isfinite(uniq)]
        if finite.size >= 2 and np.isfinite(finite[-1] - finite[0]):
            buckets = int(min(BUCKETS_PER_VALUE * finite.size, MAX_BUCKETS))
            self._lo, self._hi = float(finite[0]), float(finite[-1])
            self._scale = buckets / (self._hi - self._lo)
            bstart = np.searchsorted(uniq, self._lo + np.arange(buckets + 1) / self._scale).astype(np.int32)
            bstart[-1] = np.searchsorted(uniq, self._hi, side="right")
        self._bstart = bstart
        fullest = int(np.diff(bstart).max())
        self._steps = 1 << (fullest.bit_length() - 1) if fullest > 0 else 0  # steps + steps/2 + ... >= fullest
        self._uniq = np.concatenate([uniq, np.full(2 * self._steps + 1, np.inf)])
        slots = 2 * self._k + 1
        windows = len(self.windows)
        # w = m*C - window*R per slot and window: int32 while |m*window| fits (half the
        # memory traffic); the trees' sums are bounded by the same, so they share the dtype
        dtype = np.int32 if self.m * self.window < 2**31 else np.int64
        self._ref_slot = np.zeros(slots, dtype=np.int32)
        self._ref_slot[1::2] = ref_counts
        self._w = (-self._sizes[:, None] * self._ref_slot[None, :]).astype(dtype)
        blocks = (slots + (1 << SLOT_SHIFT) - 1) >> SLOT_SHIFT
        self._bcount = np.zeros((windows, blocks), dtype=np.int64)  # window values per block of slots
        self._bref = np.add.reduceat(self._ref_slot.astype(np.int64), np.arange(0, slots, 1 << SLOT_SHIFT))
        self._size = 1 << max(1, (slots - 1).bit_length())
        self._sums = np.zeros((windows, 2 * self._size), dtype=dtype)
        self._maxp = np.zeros((windows, 2 * self._size), dtype=dtype)
        self._minp = np.zeros((windows, 2 * self._size), dtype=dtype)
        self._ring = np.zeros(self.window, dtype=np.int32)
        self._shared = np.zeros(2, dtype=np.int64)  # ring head, NaNs
        self._wstate = np.zeros((windows, 3), dtype=np.int64)  # per window: filled, pending (-1: tree stale), since query
        self._wstate[:, 1] = -1  # no tree yet: the first full-window query builds it
        self._pending = np.zeros((windows, max(64, self._size // 8)), dtype=np.int32)
        self._scratch = np.empty(BLOCK_VALUES, dtype=np.int32)
        self._critical: dict[tuple[float, int], int] = {}
        self._h_now: list[int | None] = [None] * windows
        self._taken = False  # whether a KSColumns' flat arrays hold this one's state (no reference: no cycle)
        for alpha in alphas:
            for size in self.windows:
                self.critical_statistic(alpha, size)

    def update(self, values) -> None:
        """Slide the windows over `values` (a whole array, one jitted call)."""
        array = _numeric_vector(values)
        _slide(array, 0, array.shape[0], self._scratch, self._uniq, self._k, self._bstart, self._lo, self._hi,
               self._scale, self._steps, self._ring, self._shared, self._sizes, self._wstate, self._w, self._bcount,
               self._pending, self.m)
        self._h_now = [None] * len(self.windows)

    def _index(self, window: int | None) -> int:
        if window is None:
            return len(self.windows) - 1
        try:
            return self.windows.index(window)
        except ValueError:
            raise ValueError(f"no window of {window} values (windows: {list(self.windows)})") from None

    def length(self, window: int | None = None) -> int:
        """Values in that window now (default: the largest)."""
        return int(self._wstate[self._index(window), 0])

    @property
    def n(self) -> int:
        """Values in the (largest) window now."""
        return self.length()

    @property
    def nan_count(self) -> int:
        return int(self._shared[1])

    def _h(self, j: int) -> int:
        """Window j's statistic times n*m (an integer); computed once per update."""
        if self._h_now[j] is None:
            self._h_now[j] = int(_query_h(self._wstate[j], self._w[j], self._bcount[j], self._bref, self._ref_slot,
                                          self.m, self._pending[j], self._sums[j], self._maxp[j], self._minp[j],
                                          self._size, self.windows[j]))
        return self._h_now[j]

    def statistic_of(self, window: int | None = None) -> float:
        j = self._index(window)
        n = int(self._wstate[j, 0])
        return 0.0 if n == 0 else self._h(j) / (n * self.m)

    @property
    def statistic(self) -> float:
        """The (largest) window's statistic; statistic_of(window) for another."""
        return self.statistic_of()

    def _p(self, n: int, h: int) -> float:
        """p-value of D = h / lcm(n, m), through the shared cache."""
        cache = SlidingKS._pcache
        key = (n, self.m, h)
        p = cache.get(key)
        if p is None:
            if len(cache) >= self._CACHE_LIMIT:
                cache.clear()
            for hh, pp in pvalue_block(n, self.m, h).items():
                cache[(n, self.m, hh)] = pp
            p = cache[key]
        return p

    def pvalue_at(self, n: int, h: int) -> float:
        """p-value of a window of n values whose statistic times n*m is h."""
        return 1.0 if n == 0 else self._p(n, h // math.gcd(n, self.m))  # h in units of 1/lcm

    def pvalue(self, window: int | None = None) -> float:
        j = self._index(window)
        n = int(self._wstate[j, 0])
        return 1.0 if n == 0 else self.pvalue_at(n, self._h(j))

    def critical_h(self, alpha: float, window: int | None = None) -> int:
        """The smallest statistic times window*m whose p-value is <= alpha for a full window
        of that size (window*m + 1 when none is): exact, by bisection over the values D can
        take; computed once per alpha and size, then remembered."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        size = self.windows[self._index(window)]
        h = self._critical.get((alpha, size))
        if h is None:
            h = self._critical[(alpha, size)] = _critical_h(size, self.m, alpha, lambda x: self._p(size, x))
        return h * math.gcd(size, self.m)

    def critical_statistic(self, alpha: float, window: int | None = None) -> float:
        """The smallest statistic whose p-value is <= alpha for a full window (exact)."""
        size = self.windows[self._index(window)]
        return self.critical_h(alpha, size) / (size * self.m)

    def significant(self, alpha: float, window: int | None = None) -> bool:
        """p-value <= alpha, decided in O(1) against the critical statistic once the
        window is full (by the p-value itself while it fills)."""
        j = self._index(window)
        if self._wstate[j, 0] < self.windows[j]:
            return self.pvalue(self.windows[j]) <= alpha
        threshold = self.critical_h(alpha, self.windows[j])
        if self._h_now[j] is not None:
            return self._h_now[j] >= threshold
        return threshold <= self.windows[j] * self.m and bool(
            _reaches(self._w[j], self._bcount[j], self._bref, self.m, self.windows[j], threshold))


class KSColumns:
    """Several SlidingKS advanced together: `advance(values, ends, boundary)` takes a
    [columns, rows] block and slides every column's windows over its row in one jitted call,
    noting each window's statistic and length at each boundary (KSMarks; p-values on
    request). The per-call cost of Python (a few microseconds per column and piece) is paid
    once per block. The columns share their window sizes (each its own reference)."""

    STATE = ("_uniq", "_bstart", "_ring", "_shared", "_wstate", "_w", "_bcount", "_bref", "_pending", "_ref_slot",
             "_sums", "_maxp", "_minp")

    def __init__(self, kernels: list[SlidingKS]):
        if not kernels:
            raise ValueError("KSColumns needs at least one SlidingKS")
        dtypes = {k._w.dtype for k in kernels}
        if len(dtypes) != 1:
            raise ValueError("KSColumns needs windows whose slot weights share a dtype (one reference size "
                             "and window for all, or sizes on the same side of 2**31 for m*window)")
        if len({k.windows for k in kernels}) != 1:
            raise ValueError(f"KSColumns needs the same window sizes in every column, got "
                             f"{sorted({k.windows for k in kernels})}")
        if any(k._taken for k in kernels) or len({id(k) for k in kernels}) != len(kernels):
            raise ValueError("a SlidingKS can be advanced by one KSColumns only")
        self.kernels = list(kernels)
        self.windows = kernels[0].windows
        # each state array of every column, one after another in one flat array per kind;
        # each column's own attribute becomes a view of its part, so SlidingKS's methods
        # and the kernel share the state (a numba.typed.List of each kind compiled its
        # methods on every start, uncached: ~2 s, and ~20 MiB of the observer's memory)
        self._flat = []
        self._at = np.zeros((len(self.STATE), len(kernels) + 1), dtype=np.int64)
        for i, name in enumerate(self.STATE):
            arrays = [getattr(k, name) for k in kernels]
            self._at[i, 1:] = np.cumsum([a.size for a in arrays])
            flat = np.zeros(self._at[i, -1], dtype=arrays[0].dtype)  # pages untouched until used, as before
            for kernel, array, start in zip(kernels, arrays, self._at[i]):
                part = flat[start:start + array.size].reshape(array.shape)
                if array.any():
                    part[...] = array
                setattr(kernel, name, part)
            self._flat.append(flat)
        for kernel in kernels:
            kernel._taken = True
        self._ks = np.array([k._k for k in kernels], dtype=np.int64)
        self._bounds = np.array([(k._lo, k._hi, k._scale) for k in kernels], dtype=np.float64)
        self._steps = np.array([k._steps for k in kernels], dtype=np.int64)
        self._tree_sizes = np.array([k._size for k in kernels], dtype=np.int64)
        self._ms = np.array([k.m for k in kernels], dtype=np.int64)
        self._scratch = np.empty(BLOCK_VALUES, dtype=np.int32)

    def warm_up(self) -> None:
        """Load (on a fresh machine: compile, seconds) the kernels `advance` and the p-values
        call, without changing any window: an empty block, and p-values of tiny samples on
        each route (equal sizes, unequal sizes, asymptotic)."""
        self.advance(np.zeros((len(self.kernels), 0)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.bool_))
        for n, m in ((4, 4), (3, 5), (MAX_EXACT_N + 1, MAX_EXACT_N + 1)):
            pvalue_block(n, m, 1)

    def advance(self, values: np.ndarray, ends: np.ndarray, boundary: np.ndarray, exact=None,
                thresholds=None) -> "KSMarks":
        """values: float64 [columns, rows]; the rows are taken in pieces ending at `ends`
        (increasing, the last = rows); after each piece whose `boundary` is true, every
        window's statistic and length are noted (p-values on request: see KSMarks).

        `thresholds` (statistic times n*m, [columns, windows]) and `exact` (a flag per
        boundary) make it cheaper: at a boundary whose flag is off, a full window is only
        tested against its threshold (O(K/64), no exact statistic unless it reaches it) and
        noted as -1 below it. By default every statistic is exact."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        ends = np.asarray(ends, dtype=np.int64)
        boundary = np.asarray(boundary, dtype=np.bool_)
        if values.ndim != 2 or values.shape[0] != len(self.kernels):
            raise ValueError(f"values must be [{len(self.kernels)}, rows], got shape {values.shape}")
        if ends.shape != boundary.shape or (ends.size and (ends[-1] != values.shape[1] or np.any(np.diff(ends) < 0)
                                                          or ends[0] < 0)):
            raise ValueError("ends must increase to the number of rows, with one boundary flag each")
        marks = int(boundary.sum())
        exact = np.ones(marks, dtype=np.bool_) if exact is None else np.asarray(exact, dtype=np.bool_)
        if thresholds is None:
            thresholds = np.ones((len(self.kernels), len(self.windows)), dtype=np.int64)
        thresholds = np.asarray(thresholds, dtype=np.int64)
        if exact.shape != (marks,) or thresholds.shape != (len(self.kernels), len(self.windows)) \
                or (thresholds < 1).any():
            raise ValueError(f"exact needs one flag per boundary ({marks}), thresholds [{len(self.kernels)}, "
                             f"{len(self.windows)}] values >= 1")
        shape = (len(self.kernels), len(self.windows), marks)
        h = np.zeros(shape, dtype=np.int64)
        n = np.zeros(shape, dtype=np.int64)
        uniqs, bstarts, rings, shareds, wstates, ws, bcounts, brefs, pendings, ref_slots, sums, maxps, minps = \
            self._flat
        _advance_columns(values, ends, boundary, exact, thresholds, self._scratch, uniqs, self._ks, bstarts,
                         self._bounds, self._steps, rings, shareds, self.kernels[0]._sizes, wstates, ws, bcounts,
                         brefs, pendings, ref_slots, sums, maxps, minps, self._tree_sizes, self._ms, self._at, h, n)
        for kernel in self.kernels:
            kernel._h_now = [None] * len(self.windows)
        return KSMarks(self.kernels, h, n)


class KSMarks:
    """What KSColumns.advance saw at each boundary: `h` (statistic times n*m), `n` (window
    length) and `statistic`, [columns, windows, boundaries] (h -1 and statistic NaN: only
    known to be below its threshold); `pvalues(b)` computes the p-values at boundary b only
    ([columns, windows], NaN where the statistic is not known), since a p-value not yet
    cached can cost milliseconds (unequal exact sizes, while a window fills)."""

    def __init__(self, kernels: list[SlidingKS], h: np.ndarray, n: np.ndarray):
        self._kernels, self.h, self.n = kernels, h, n
        m = np.array([k.m for k in kernels], dtype=np.float64)[:, None, None]
        self.statistic = np.where(h < 0, np.nan, np.where(n > 0, h / np.maximum(n * m, 1.0), 0.0))

    def pvalues(self, b: int) -> np.ndarray:
        return np.array([[k.pvalue_at(int(n), int(h)) if h >= 0 else np.nan for n, h in zip(ns, hs)]
                         for k, ns, hs in zip(self._kernels, self.n[:, :, b], self.h[:, :, b])])


def _critical_h(n: int, m: int, alpha: float, pvalue_of) -> int:
    """Smallest h (in units of 1/lcm) whose p-value is <= alpha; lcm + 1 if none.
    p(h) is non-increasing in h, so a bisection over [1, lcm] finds it."""
    g = math.gcd(n, m)
    lo, hi = 1, (n // g) * m + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if mid <= (n // g) * m and pvalue_of(mid) <= alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo
