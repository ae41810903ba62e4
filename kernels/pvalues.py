"""p-value kernels: the chi-squared survival function through the regularized upper
incomplete gamma function Q(a, x) (SciPy's chdtrc / gammaincc).

Q is computed as 1 - P by its power series where x < a + 1 (there Q is not small, so no
relative accuracy is lost), and directly by its continued fraction (modified Lentz)
elsewhere, so tiny p-values keep their relative accuracy down to ~1e-300. Agreement with
SciPy, checked by tests/kernels/test_pvalues.py: 1e-10 relative, or 1e-300 absolute where
SciPy's value underflows.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import jit

_EPS = 1e-16
_TINY = 1e-300
_MAX_ITER = 100_000


@jit
def _log1pmx(t):
    """log(1 + t) - t without cancellation for small |t|."""
    if abs(t) >= 0.5:
        return math.log1p(t) - t
    term = t
    total = 0.0
    for k in range(2, 200):
        term *= -t
        piece = term / k
        total += piece
        if abs(piece) <= 1e-17 * abs(total):
            break
    return total


@jit
def _log_prefactor(a, x):
    """log(x^a e^-x / Gamma(a)). For large a, a*log(x) - x - lgamma(a) cancels badly;
    write it as a*log1pmx((x-a)/a) + log(a / 2pi)/2 - (Stirling remainder of lgamma(a))."""
    if a < 10.0:
        return a * math.log(x) - x - math.lgamma(a)
    inv = 1.0 / a
    inv2 = inv * inv
    stirling = inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 * (1.0 / 1260 - inv2 * (1.0 / 1680 - inv2 / 1188))))
    return a * _log1pmx((x - a) / a) + 0.5 * math.log(a / (2.0 * math.pi)) - stirling


@jit
def _lower_series(a, x):
    """P(a, x) by its power series (x < a + 1)."""
    log_ax = _log_prefactor(a, x)
    if log_ax < -745.0:
        return 0.0
    r = a
    c = 1.0
    total = 1.0
    for _ in range(_MAX_ITER):
        r += 1.0
        c *= x / r
        total += c
        if c <= total * _EPS:
            break
    return total * math.exp(log_ax) / a


@jit
def _upper_fraction(a, x):
    """Q(a, x) by its continued fraction, modified Lentz (x >= a + 1)."""
    log_ax = _log_prefactor(a, x)
    if log_ax < -745.0:
        return 0.0
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) <= _EPS:
            break
    return math.exp(log_ax) * h


@jit
def gammaincc(a, x):
    """Regularized upper incomplete gamma Q(a, x), a > 0, x >= 0."""
    if x != x or a != a:
        return np.nan
    if x <= 0.0:
        return 1.0
    if x == np.inf:
        return 0.0
    if x < a + 1.0:
        return 1.0 - _lower_series(a, x)
    return _upper_fraction(a, x)


@jit
def chi2_sf(statistic, df):
    """P(X >= statistic) for X ~ chi-squared with df degrees of freedom."""
    if df <= 0:
        return np.nan
    if statistic != statistic:
        return np.nan
    return gammaincc(0.5 * df, 0.5 * statistic)
