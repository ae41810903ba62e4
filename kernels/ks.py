"""Two-sample Kolmogorov-Smirnov: `ks_2samp` and the streaming `SlidingKS`.

Statistic: exactly scipy.stats.ks_2samp's (two-sided), computed in integers: with
g = gcd(n, m) and lcm = n*m/g, D = h / lcm where h = max |i*(m/g) - j*(n/g)| over the
points of the pooled sample (ties consumed together, as SciPy's searchsorted(side='right')).

p-value: SciPy's method='auto' -- 'exact' when max(n, m) <= 10,000, else 'asymp'
(scipy.stats.kstwo.sf at round(n*m/(n+m)), see kolmogorov.py). One departure, for speed:
with unequal sizes of at least 100 in the exact region (n*m >= 1e6), where the asymptotic
p-value is below 1e-12 it is returned as is (absolute error < ~1e-11; see TAIL). 'exact' counts lattice
paths: the n == m closed form, or the "inside" recursion of Hodges / Viehmann for n != m;
if that fails numerically (a probability outside [0, 1]), 'asymp' is used, as SciPy does.

NaN: counted (`nan_count` / the third value of `ks_2samp_nan`) and excluded; +-inf are
ordinary values. Integer input is converted to float64.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import jit
from kernels.kolmogorov import kstwo_sf

MAX_EXACT_N = 10_000  # SciPy's MAX_AUTO_N


@jit
def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


@jit
def _statistic_h(a, b):
    """max |i*(m/g) - j*(n/g)| over the pooled sorted samples a (n) and b (m)."""
    n = a.shape[0]
    m = b.shape[0]
    g = _gcd(n, m)
    wa = m // g
    wb = n // g
    i = 0
    j = 0
    best = 0
    while i < n or j < m:
        if j >= m or (i < n and a[i] <= b[j]):
            v = a[i]
        else:
            v = b[j]
        while i < n and a[i] == v:
            i += 1
        while j < m and b[j] == v:
            j += 1
        diff = i * wa - j * wb
        if diff < 0:
            diff = -diff
        if diff > best:
            best = diff
    return best


@jit
def _outside_square(n, h):
    """P(D_{n,n} >= h/n), alternating sum evaluated Horner-style (no cancellation)."""
    total = 0.0
    k = n // h
    while k >= 0:
        p = 1.0
        for j in range(h):
            p = (n - k * h - j) * p / (n + k * h + j + 1)
        total = p * (1.0 - total)
        k -= 1
    return 2.0 * total


@jit
def _outside_inside_method(m, n, g, h):
    """P(D_{m,n} >= h/lcm) for m != n: count the paths staying strictly inside
    |x/m - y/n| < h/lcm column by column, as the probability of leaving (Viehmann's form),
    keeping only the sliding window of the column that can be inside."""
    if m < n:
        m, n = n, m
    mg = m // g
    ng = n // g
    minj = 0
    maxj = min(int(math.ceil(h / mg)), n + 1)
    curlen = maxj - minj
    size = min(2 * maxj + 2, n + 1)
    A = np.ones(size)
    A[minj:maxj] = 0.0
    inv = np.empty(m + n + 1)  # 1/(i + j): a multiply in the dependency chain, not a divide
    inv[0] = 0.0
    for q in range(1, m + n + 1):
        inv[q] = 1.0 / q
    for i in range(1, m + 1):
        lastminj = minj
        lastlen = curlen
        minj = max(int(math.floor((ng * i - h) / mg)) + 1, 0)
        minj = min(minj, n)
        maxj = min(int(math.ceil((ng * i + h) / mg)), n + 1)
        if maxj <= minj:
            return 1.0
        val = 0.0 if minj == 0 else 1.0
        for jj in range(maxj - minj):
            j = jj + minj
            val = (A[jj + minj - lastminj] * i + val * j) * inv[i + j]
            A[jj] = val
        curlen = maxj - minj
        if lastlen > curlen:
            A[maxj - minj:maxj - minj + (lastlen - curlen)] = 1.0
    return A[maxj - minj - 1]


@jit
def _outside_inside_block(m, n, g, h0, lanes):
    """P(D >= h/lcm) for h = h0 .. h0+lanes-1 in one pass over the columns (m != n):
    the same recursion as _outside_inside_method (bitwise the same results), lanes side by
    side so their independent chains overlap in the CPU; about 3x cheaper per value.
    Indexing is absolute in j, so cells above a band stay 1 ("outside") by construction."""
    if m < n:
        m, n = n, m
    mg = m // g
    ng = n // g
    out = np.ones(lanes)
    A = np.ones((n + 1, lanes))
    minj = np.zeros(lanes, dtype=np.int64)
    maxj = np.zeros(lanes, dtype=np.int64)
    alive = np.ones(lanes, dtype=np.bool_)
    val = np.zeros(lanes)
    for l in range(lanes):
        h = h0 + l
        if h <= 0:
            alive[l] = False
            continue
        top = min(int(math.ceil(h / mg)), n + 1)
        for j in range(top):
            A[j, l] = 0.0
    inv = np.empty(m + n + 1)
    inv[0] = 0.0
    for q in range(1, m + n + 1):
        inv[q] = 1.0 / q
    for i in range(1, m + 1):
        jlo = n + 1
        jhi = 0
        any_alive = False
        for l in range(lanes):
            if not alive[l]:
                continue
            h = h0 + l
            lo = min(max(int(math.floor((ng * i - h) / mg)) + 1, 0), n)
            hi = min(int(math.ceil((ng * i + h) / mg)), n + 1)
            if hi <= lo:
                alive[l] = False
                out[l] = 1.0
                continue
            any_alive = True
            minj[l] = lo
            maxj[l] = hi
            val[l] = 0.0 if lo == 0 else 1.0
            if lo < jlo:
                jlo = lo
            if hi > jhi:
                jhi = hi
        if not any_alive:
            break
        for j in range(jlo, jhi):
            c = inv[i + j]
            for l in range(lanes):
                if alive[l] and minj[l] <= j and j < maxj[l]:
                    v = (A[j, l] * i + val[l] * j) * c
                    A[j, l] = v
                    val[l] = v
    for l in range(lanes):
        if alive[l]:
            out[l] = A[n, l]
    return out


BLOCK = 16  # p-values computed together on a cache miss (unequal exact sizes)


def pvalue_block(n: int, m: int, h: int) -> dict[int, float]:
    """p-values of the aligned block of statistic values around h (units of 1/lcm), as
    {h: p}; the whole block for unequal sizes in the exact region, else just h."""
    if n != m and max(n, m) <= MAX_EXACT_N and not (_use_tail(n, m) and _asymptotic(n, m, (h // BLOCK) * BLOCK) < TAIL):
        h0 = (h // BLOCK) * BLOCK
        ps = _outside_inside_block(n, m, math.gcd(n, m), h0, BLOCK)
        if np.all((ps >= 0.0) & (ps <= 1.0)):
            return {h0 + i: float(p) if (p >= TAIL or not _use_tail(n, m)) else float(_pvalue(n, m, h0 + i))
                    for i, p in enumerate(ps)}
    return {h: float(_pvalue(n, m, h))}


# Unequal sizes, exact region: below this asymptotic p-value the asymptotic value is
# returned. The exact one is then below ~3e-12 too (measured: their ratio stays within
# 0.35-1.02 down to 1e-133), so the absolute error stays under ~1e-11, while the exact
# path count would cost O(D*n*m) -- seconds for strong drift at n = 2,000, m = 10,000.
TAIL = 1e-12
TAIL_MIN_SIZE = 100  # only for samples this large (and n*m >= 1e6): small ones are cheap and
# there the asymptotic value can be far off (D = 1 with n = 1, m = 2: 0 against 2/3)


@jit
def _use_tail(n, m):
    return n != m and min(n, m) >= TAIL_MIN_SIZE and float(n) * m >= 1e6


@jit
def _asymptotic(n, m, h):
    g = _gcd(n, m)
    lcm = (n // g) * m
    big = float(max(n, m))
    small = float(min(n, m))
    en = np.round(big * small / (big + small))
    return min(max(kstwo_sf(h / lcm, int(en)), 0.0), 1.0)


@jit
def _pvalue(n, m, h):
    """SciPy 'auto' two-sided p-value of D = h / lcm(n, m) (see TAIL for the far tail of
    unequal exact sizes)."""
    if max(n, m) <= MAX_EXACT_N:
        if h == 0:
            return 1.0
        if n == m:
            p = _outside_square(n, h)
        else:
            if _use_tail(n, m):
                tail = _asymptotic(n, m, h)
                if tail < TAIL:
                    return tail
            p = _outside_inside_method(n, m, _gcd(n, m), h)
        if p == p and 0.0 <= p <= 1.0:
            return p
    return _asymptotic(n, m, h)


def _clean(name: str, values) -> tuple[np.ndarray, int]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got {array.dtype}")
    array = array.astype(np.float64, copy=False)
    nan = np.isnan(array)
    nans = int(nan.sum())
    return (array[~nan] if nans else array), nans


def ks_2samp_nan(a, b) -> tuple[float, float, int]:
    """(statistic, p-value, NaNs excluded) of the two-sided two-sample KS test."""
    x, nx = _clean("a", a)
    y, ny = _clean("b", b)
    if x.size == 0 or y.size == 0:
        raise ValueError("ks_2samp needs at least one non-NaN value in each sample")
    x = np.sort(x)
    y = np.sort(y)
    n, m = x.size, y.size
    h = _statistic_h(x, y)
    g = math.gcd(n, m)
    lcm = (n // g) * m
    return h / lcm, float(_pvalue(n, m, h)), nx + ny


def ks_2samp(a, b) -> tuple[float, float]:
    """(statistic, p-value) equal to scipy.stats.ks_2samp(a, b) (two-sided, method 'auto':
    exact when both samples have at most 10,000 values, asymptotic otherwise). NaNs are
    excluded (SciPy would propagate them); `ks_2samp_nan` also returns how many."""
    statistic, pvalue, _ = ks_2samp_nan(a, b)
    return statistic, pvalue


# -- streaming ------------------------------------------------------------------------------
@jit
def _combine(sums, maxp, minp, i):
    """Node i from its children: total, and the max / min over prefixes."""
    left = 2 * i
    right = left + 1
    sums[i] = sums[left] + sums[right]
    a = sums[left] + maxp[right]
    maxp[i] = maxp[left] if maxp[left] > a else a
    b = sums[left] + minp[right]
    minp[i] = minp[left] if minp[left] < b else b


@jit
def _tree_set(sums, maxp, minp, leaf, value, size):
    i = size + leaf
    sums[i] = value
    maxp[i] = value
    minp[i] = value
    i >>= 1
    while i >= 1:
        _combine(sums, maxp, minp, i)
        i >>= 1


@jit
def _position(uniq, v, bstart, lo, scale):
    """np.searchsorted(uniq, v), narrowed by a bucket index over [uniq[0], uniq[-1]]; the
    answer is verified and a full search is the fallback (float rounding at bucket edges)."""
    k = uniq.shape[0]
    nb = bstart.shape[0] - 1
    if nb > 0 and v >= lo and v <= uniq[k - 1]:
        b = int((v - lo) * scale)
        if b >= nb:
            b = nb - 1
        lo_i = bstart[b]
        hi_i = bstart[b + 1]
        while lo_i < hi_i:  # first index in [bstart[b], bstart[b+1]) with uniq >= v
            mid = (lo_i + hi_i) >> 1
            if uniq[mid] < v:
                lo_i = mid + 1
            else:
                hi_i = mid
        pos = lo_i
        if (pos == 0 or uniq[pos - 1] < v) and (pos == k or uniq[pos] >= v):
            return pos
    return np.searchsorted(uniq, v)


@jit
def _slide(values, uniq, ring, state, counts, pending, window, bstart, lo, scale):
    """Insert values (evicting the oldest once full); state = [filled, head, nans, pending].
    Only the slot counts change here; the slots touched are noted in `pending` (or, once it
    overflows, state[3] = -1: rebuild) for the tree to catch up when the statistic is asked."""
    k = uniq.shape[0]
    filled = state[0]
    head = state[1]
    npend = state[3]
    cap = pending.shape[0]
    for t in range(values.shape[0]):
        v = values[t]
        if v != v:
            state[2] += 1
            continue
        pos = _position(uniq, v, bstart, lo, scale)
        slot = 2 * pos + 1 if pos < k and uniq[pos] == v else 2 * pos
        if filled == window:
            old = ring[head]
            if old == slot:
                head = head + 1 if head + 1 < window else 0
                continue
            counts[old] -= 1
            if npend >= 0:
                if npend < cap:
                    pending[npend] = old
                    npend += 1
                else:
                    npend = -1
        else:
            filled += 1
        ring[head] = slot
        counts[slot] += 1
        if npend >= 0:
            if npend < cap:
                pending[npend] = slot
                npend += 1
            else:
                npend = -1
        head = head + 1 if head + 1 < window else 0
    state[0] = filled
    state[1] = head
    state[3] = npend
    state[4] += values.shape[0]


@jit
def _sync_tree(state, counts, ref_slot, pending, sums, maxp, minp, size, m, window):
    """Bring the tree up to date with the counts: replay the pending slots, or rebuild it
    bottom-up in O(slots) when that is cheaper (or the pending list overflowed)."""
    npend = state[3]
    if npend == 0:
        return
    levels = 1
    while (1 << levels) < size:
        levels += 1
    if npend < 0 or npend * levels > size:
        for s in range(counts.shape[0]):
            v = m * counts[s] - window * ref_slot[s]
            sums[size + s] = v
            maxp[size + s] = v
            minp[size + s] = v
        for i in range(size - 1, 0, -1):
            _combine(sums, maxp, minp, i)
    else:
        for q in range(npend):
            s = pending[q]
            _tree_set(sums, maxp, minp, s, m * counts[s] - window * ref_slot[s], size)
    state[3] = 0


@jit
def _full_h(state, counts, ref_slot, pending, sums, maxp, minp, size, m, window):
    """The statistic (times n*m) of a full window, by the cheapest exact route: replay the
    few slots changed since the last query through the tree; or, when many changed, scan
    the counts in O(K) and let the tree go stale -- rebuilding it only once queries are
    frequent again."""
    levels = 1
    while (1 << levels) < size:
        levels += 1
    slots = counts.shape[0]
    since = state[4]
    state[4] = 0
    npend = state[3]
    if npend >= 0 and npend * levels <= slots:
        _sync_tree(state, counts, ref_slot, pending, sums, maxp, minp, size, m, window)
    elif since * levels * 4 <= slots:
        state[3] = -1
        _sync_tree(state, counts, ref_slot, pending, sums, maxp, minp, size, m, window)  # rebuild
    else:
        state[3] = -1
        return _scan_h(counts, ref_slot, m, window)
    a = maxp[1]
    b = -minp[1]
    best = a if a > b else b
    return best if best > 0 else 0


@jit
def _scan_h(counts, ref_slot, m, n):
    """max |m*C(s) - n*R(s)| by a scan over the slots (while the window fills, or when a
    full window's tree is stale)."""
    c = 0
    r = 0
    best = 0
    for s in range(counts.shape[0]):
        c += counts[s]
        r += ref_slot[s]
        d = m * c - n * r
        if d < 0:
            d = -d
        if d > best:
            best = d
    return best


class SlidingKS:
    """Exact two-sample KS of the last `window` values against a fixed reference.

    The reference is sorted once. Each new value is placed among the reference's distinct
    values by binary search -- a value equal to a reference value has a slot of its own,
    one between two of them the gap slot there -- and a segment tree over the 2K+1 slots
    keeps m*C - n*R prefix extremes in integers. The tree is lazy: an update costs a
    bucket-narrowed binary search and two counter changes; a query replays the slots changed
    since the last one through the tree (O(log K) each) when they are few, and otherwise
    scans the counts in O(K) and lets the tree go stale, rebuilding it only once queries are
    frequent again (see _full_h). Frequent queries cost O(log K) per event, rare ones O(1)
    per event plus O(K) per query; the statistic is exact on every route (an O(K) scan
    while the window is still filling).

    `statistic` and `pvalue()` equal scipy.stats.ks_2samp(window, reference). p-values
    are cached per statistic value (D only takes values h/lcm(n, m)), in a cache shared by
    all instances with the same window and reference sizes: the first query at a given D
    costs what SciPy's method costs (tens of microseconds for n == m and for the asymptotic
    path; O(D*n*m) for unequal sizes up to 10,000, where a miss computes the block of 16
    neighbouring values at once, ~14 ms at 1,000 vs 10,000), later ones a dict look-up.
    `significant(alpha)` decides against an exact critical value in O(1).
    An empty window has statistic 0 and p-value 1. NaNs are counted (`nan_count`) and skipped.
    """

    # p-values by (window length, reference size, h): shared by every instance, since a
    # monitor's features usually share their window and reference sizes.
    _pcache: dict[tuple[int, int, int], float] = {}
    _CACHE_LIMIT = 1 << 18

    def __init__(self, reference, window: int, alphas=()):
        """`alphas`: significance levels whose exact critical statistics are computed now,
        so that `significant(alpha)` never computes a p-value on the alarm path."""
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        ref, self.reference_nan_count = _clean("reference", reference)
        if ref.size == 0:
            raise ValueError("reference needs at least one non-NaN value")
        self.window = int(window)
        self.m = int(ref.size)
        uniq, ref_counts = np.unique(ref, return_counts=True)
        self._uniq = uniq
        # bucket index for placing values: ~1 reference value per bucket, on the finite range (int32
        # offsets: finer buckets and a smaller table were 7-11% faster per value than 2 per bucket)
        finite = uniq[np.isfinite(uniq)]
        self._lo, self._scale = 0.0, 0.0
        self._bstart = np.zeros(1, dtype=np.int32)
        if finite.size >= 2 and finite[-1] > finite[0] and np.isfinite(finite[-1] - finite[0]):
            buckets = int(min(max(finite.size, 1), 1 << 18))
            self._lo = float(finite[0])
            self._scale = buckets / float(finite[-1] - finite[0])
            edges = self._lo + np.arange(buckets + 1) / self._scale
            self._bstart = np.searchsorted(uniq, edges).astype(np.int32)
            self._bstart[-1] = uniq.size
        slots = 2 * uniq.size + 1
        # int32 where values stay small (counts, slot indices): half the memory traffic of
        # the per-event path; the tree holds m*C - n*R and stays int64
        self._ref_slot = np.zeros(slots, dtype=np.int32)
        self._ref_slot[1::2] = ref_counts
        self._counts = np.zeros(slots, dtype=np.int32)
        self._size = 1 << max(1, (slots - 1).bit_length())
        self._sums = np.zeros(2 * self._size, dtype=np.int64)
        self._maxp = np.zeros(2 * self._size, dtype=np.int64)
        self._minp = np.zeros(2 * self._size, dtype=np.int64)
        self._ring = np.zeros(self.window, dtype=np.int32)
        self._state = np.zeros(5, dtype=np.int64)  # filled, head, nans, pending (-1: tree stale), since query
        self._state[3] = -1  # no tree yet: the first full-window query builds it from the counts
        self._pending = np.zeros(max(64, self._size // 8), dtype=np.int32)
        self._critical: dict[float, int] = {}
        self._h_now: int | None = None
        for alpha in alphas:
            self.critical_statistic(alpha)

    def update(self, values) -> None:
        """Slide the window over `values` (a whole array, one jitted call)."""
        array = np.asarray(values)
        if array.ndim == 0:
            array = array.reshape(1)
        if array.ndim != 1 or array.dtype.kind not in "fiub":
            raise TypeError(f"values must be a 1-D numeric array, got {array.dtype} {array.shape}")
        _slide(np.ascontiguousarray(array, dtype=np.float64), self._uniq, self._ring, self._state, self._counts,
               self._pending, self.window, self._bstart, self._lo, self._scale)
        self._h_now = None

    @property
    def n(self) -> int:
        return int(self._state[0])

    @property
    def nan_count(self) -> int:
        return int(self._state[2])

    def _h(self) -> int:
        """The statistic times n*m (an integer); computed once per update."""
        if self._h_now is None:
            self._h_now = self._compute_h()
        return self._h_now

    def _compute_h(self) -> int:
        n = self.n
        if n == self.window:
            return int(_full_h(self._state, self._counts, self._ref_slot, self._pending, self._sums, self._maxp,
                               self._minp, self._size, self.m, self.window))
        return int(_scan_h(self._counts, self._ref_slot, self.m, n))

    @property
    def statistic(self) -> float:
        n = self.n
        return 0.0 if n == 0 else self._h() / (n * self.m)

    def _p(self, n: int, h: int) -> float:
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

    def pvalue(self) -> float:
        n = self.n
        if n == 0:
            return 1.0
        return self._p(n, self._h() // math.gcd(n, self.m))  # h in units of 1/lcm

    def critical_statistic(self, alpha: float) -> float:
        """The smallest statistic whose p-value is <= alpha for a full window (exact, by
        bisection over the values D can take; computed once per alpha, then remembered)."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        h = self._critical.get(alpha)
        if h is None:
            h = self._critical[alpha] = _critical_h(self.window, self.m, alpha,
                                                    lambda x: self._p(self.window, x))
        g = math.gcd(self.window, self.m)
        return h / ((self.window // g) * self.m)

    def significant(self, alpha: float) -> bool:
        """p-value <= alpha, decided in O(1) against the critical statistic once the
        window is full (by the p-value itself while it fills)."""
        if self.n < self.window:
            return self.pvalue() <= alpha
        self.critical_statistic(alpha)
        return self._h() // math.gcd(self.window, self.m) >= self._critical[alpha]


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
