"""Two-sample Kolmogorov-Smirnov: `ks_2samp` and its p-values (the streaming `SlidingKS`, in
sliding_ks.py, shares them).

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
