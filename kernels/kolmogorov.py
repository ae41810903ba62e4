"""The two-sided one-sample Kolmogorov-Smirnov distribution, survival function
`kstwo_sf(d, n)` = P(D_n >= d): what scipy.stats.kstwo.sf computes, and what
scipy.stats.ks_2samp's 'asymp' method evaluates at n = round(n1*n2/(n1+n2)).

Same regions and methods as SciPy (Simard & L'Ecuyer 2011): Ruben-Gambino closed forms at
the ends; 2 * Smirnov's one-sided tail (Birnbaum-Tingey sum) for large d, where small
p-values live; the Durbin matrix (Marsaglia-Tsang-Wang) and Pomeranz recursions or the
Pelz-Good expansion elsewhere. The Smirnov tail is summed in log space in plain doubles
(all its terms are positive), where SciPy uses double-double; agreement is checked to
1e-9 relative in tests/kernels/test_ks.py.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import jit

_E128 = 128
_EP128 = 2.0**128
_EM128 = 2.0**-128
_PI2 = math.pi**2
_PI4 = math.pi**4
_PI6 = math.pi**6
_SQRT2PI = math.sqrt(2 * math.pi)
_SQRT3 = math.sqrt(3.0)
_MIN_LOG = -708.0


@jit
def _log_choose(n, k):
    return math.lgamma(n + 1.0) - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0)


@jit
def smirnov_sf(n, x):
    """One-sided Smirnov tail P(D+_n >= x), Birnbaum-Tingey:
    x * sum_{j=0}^{floor(n(1-x))} C(n, j) (1 - x - j/n)^(n-j) (x + j/n)^(j-1)."""
    if x <= 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    if n == 1:
        return x
    if -2.0 * n * x * x < -745.0:
        return 0.0
    top = int(math.floor(n * (1.0 - x)))
    if 1.0 - x - top / n <= 0.0:  # the last term is 0 (x exactly at a multiple of 1/n)
        top -= 1
    logs = np.empty(top + 1)
    biggest = -np.inf
    for j in range(top + 1):
        a = 1.0 - x - j / n
        b = x + j / n
        value = _log_choose(n, j) + (n - j) * math.log(a) + (j - 1) * math.log(b)
        logs[j] = value
        if value > biggest:
            biggest = value
    total = 0.0
    for j in range(top + 1):
        total += math.exp(logs[j] - biggest)
    result = x * total * math.exp(biggest) if biggest > _MIN_LOG else x * math.exp(math.log(total) + biggest)
    return min(max(result, 0.0), 1.0)


@jit
def _matmul(a, b):
    m = a.shape[0]
    out = np.zeros((m, m))
    for i in range(m):
        for k in range(m):
            aik = a[i, k]
            if aik != 0.0:
                for j in range(m):
                    out[i, j] += aik * b[k, j]
    return out


@jit
def _durbin_cdf(n, d):
    """P(D_n <= d) by the Durbin matrix, Marsaglia-Tsang-Wang's scaling."""
    if d >= 1.0:
        return 1.0
    nd = n * d
    if nd <= 0.5:
        return 0.0
    k = int(math.ceil(nd))
    h = k - nd
    m = 2 * k - 1
    H = np.zeros((m, m))
    v = np.empty(m)
    w = np.empty(m)
    fac = 1.0
    for j in range(1, m + 1):
        w[j - 1] = fac
        fac /= j
        v[j - 1] = (1.0 - h**j) * fac
    tt = max(2.0 * h - 1.0, 0.0) ** m - 2.0 * h**m
    v[m - 1] = (1.0 + tt) * fac
    for i in range(1, m):
        for r in range(i - 1, m):
            H[r, i] = w[r - i + 1]
    for r in range(m):
        H[r, 0] = v[r]
    for c in range(m):
        H[m - 1, c] = v[m - 1 - c]
    power = np.eye(m)
    nn = n
    expnt = 0
    h_expnt = 0
    while nn > 0:
        if nn % 2:
            power = _matmul(power, H)
            expnt += h_expnt
        H = _matmul(H, H)
        h_expnt *= 2
        if abs(H[k - 1, k - 1]) > _EP128:
            H /= _EP128
            h_expnt += _E128
        nn //= 2
    p = power[k - 1, k - 1]
    for i in range(1, n + 1):
        p = i * p / n
        if abs(p) < _EM128:
            p *= _EP128
            expnt -= _E128
    if expnt != 0:
        p = math.ldexp(p, expnt)
    return min(max(p, 0.0), 1.0)


@jit
def _pomeranz_bounds(i, n, ll, ceilf, roundf):
    if i == 0:
        j1, j2 = -ll - ceilf - 1, ll + ceilf - 1
    else:
        half, odd = (i + 1) // 2, (i + 1) % 2
        if odd == 0:
            if half == n + 1:
                j1, j2 = n - ll - ceilf - 1, n + ll + ceilf - 1
            else:
                j1, j2 = half - 1 - ll - roundf - 1, half + ll - 1 + ceilf - 1
        else:
            j1, j2 = half - 1 - ll - 1, half + ll + roundf - 1
    return max(j1 + 2, 0), min(j2, n)


@jit
def _pomeranz_cdf(n, x):
    """P(D_n <= x) by Pomeranz's recursion (used for n <= 140)."""
    t = n * x
    ll = int(math.floor(t))
    f = t - ll
    g = min(f, 1.0 - f)
    ceilf = 1 if f > 0 else 0
    roundf = 1 if f > 0.5 else 0
    npw = 2 * (ll + 1)
    gp = np.empty(npw)
    g2p = np.empty(npw)
    g12p = np.empty(npw)
    gp[0] = g2p[0] = g12p[0] = 1.0
    for m in range(1, npw):
        gp[m] = gp[m - 1] * (g / n) / m
        g2p[m] = g2p[m - 1] * (2 * g / n) / m
        g12p[m] = g12p[m - 1] * ((1 - 2 * g) / n) / m
    V0 = np.zeros(npw)
    V1 = np.zeros(npw)
    V1[0] = 1.0
    s0 = 0
    s1 = 0
    expnt = 0
    j1, j2 = _pomeranz_bounds(0, n, ll, ceilf, roundf)
    for i in range(1, 2 * n + 2):
        k1 = j1
        V0, V1 = V1, V0
        s0, s1 = s1, s0
        V1[:] = 0.0
        j1, j2 = _pomeranz_bounds(i, n, ll, ceilf, roundf)
        if i == 1 or i == 2 * n + 1:
            pw = gp
        elif i % 2:
            pw = g2p
        else:
            pw = g12p
        ln2 = j2 - k1 + 1
        if ln2 > 0:
            start = j1 - k1
            count = j2 - j1 + 1
            for out in range(count):
                idx = start + out  # index into the full convolution of V0[k1-s0:][:ln2] and pw[:ln2]
                acc = 0.0
                for a in range(max(0, idx - ln2 + 1), min(idx, ln2 - 1) + 1):
                    acc += V0[k1 - s0 + a] * pw[idx - a]
                V1[out] = acc
            top = 0.0
            for q in range(npw):
                if V1[q] > top:
                    top = V1[q]
            if 0 < top < _EM128:
                for q in range(npw):
                    V1[q] *= _EP128
                expnt -= _E128
            s1 = s0 + j1 - k1
    ans = V1[n - s1]
    for m in range(1, n + 1):
        if abs(ans) > _EP128:
            ans *= _EM128
            expnt += _E128
        ans *= m
    if expnt != 0:
        ans = math.ldexp(ans, expnt)
    return min(max(ans, 0.0), 1.0)


@jit
def _pelz_good_cdf(n, x):
    """P(D_n <= x), Pelz-Good asymptotic expansion."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    z = math.sqrt(n) * x
    z2, z3, z4, z6 = z * z, z**3, z**4, z**6
    qlog = -_PI2 / 8 / z2
    if qlog < _MIN_LOG:
        return 0.0
    q = math.exp(qlog)
    k1a, k1b = -z2, _PI2 / 4
    k2a = 6 * z6 + 2 * z4
    k2b = (2 * z4 - 5 * z2) * _PI2 / 4
    k2c = _PI4 * (1 - 2 * z2) / 16
    k3d = _PI6 * (5 - 30 * z2) / 64
    k3c = _PI4 * (-60 * z2 + 212 * z4) / 16
    k3b = _PI2 * (135 * z4 - 96 * z6) / 4
    k3a = -30 * z6 - 90 * z**8
    K = np.zeros(4)
    maxk = int(math.ceil(16 * z / math.pi))
    for k in range(maxk, 0, -1):
        m = 2 * k - 1
        m2, m4, m6 = m * m, m**4, m**6
        qp = q ** (8 * k)
        K[0] = K[0] * qp + 1.0
        K[1] = K[1] * qp + (k1a + k1b * m2)
        K[2] = K[2] * qp + (k2a + k2b * m2 + k2c * m4)
        K[3] = K[3] * qp + (k3a + k3b * m2 + k3c * m4 + k3d * m6)
    for i in range(4):
        K[i] *= q * _SQRT2PI
    K[0] /= z
    K[1] /= 6 * z4
    K[2] /= 72 * z**7
    K[3] /= 6480 * z**10
    q = math.exp(-_PI2 / 2 / z2)
    extra2 = 0.0
    extra3 = 0.0
    sqrt3z = _SQRT3 * z
    for k in range(maxk, 0, -1):
        k2 = k * k
        qk = q**k2
        extra2 += k2 * qk
        kpi = math.pi * k
        extra3 += (sqrt3z + kpi) * (sqrt3z - kpi) * k2 * qk
    K[2] += extra2 * _PI2 * _SQRT2PI / (-36 * z3)
    K[3] += extra3 * _PI2 * _SQRT2PI / (216 * z6)
    total = 0.0
    for i in range(4):
        total += K[i] / (n * 1.0) ** (i / 2.0)
    return total


@jit
def _log_nfact_over_npow(n):
    rn = 1.0 / n
    x = rn / n
    poly = ((((((-2.955065359477124183e-2 * x + 6.4102564102564102564e-3) * x - 1.9175269175269175269e-3) * x
               + 8.4175084175084175084e-4) * x - 5.952380952380952381e-4) * x + 7.9365079365079365079e-4) * x
            - 2.7777777777777777778e-3) * x + 8.3333333333333333333e-2
    return math.log(n) / 2 - n + math.log(2 * math.pi) / 2 + rn * poly


@jit
def kstwo_sf(x, n):
    """P(D_n >= x) for the two-sided one-sample KS statistic with n observations."""
    if n <= 0 or x != x:
        return np.nan
    if x >= 1.0:
        return 0.0
    if x <= 0.0:
        return 1.0
    t = n * x
    if t <= 1.0:
        if t <= 0.5:
            return 1.0
        if n <= 140:
            prob = 1.0
            for i in range(1, n + 1):
                prob *= i * (1.0 / n) * (2 * t - 1)
        else:
            prob = math.exp(_log_nfact_over_npow(n) + n * math.log(2 * t - 1))
        return min(max(1.0 - prob, 0.0), 1.0)
    if t >= n - 1:
        return min(max(2 * (1.0 - x) ** n, 0.0), 1.0)
    if x >= 0.5:
        return min(max(2 * smirnov_sf(n, x), 0.0), 1.0)
    nx2 = t * x
    if n <= 140:
        if nx2 <= 0.754693:
            return min(max(1.0 - _durbin_cdf(n, x), 0.0), 1.0)
        if nx2 <= 4:
            return min(max(1.0 - _pomeranz_cdf(n, x), 0.0), 1.0)
        return min(max(2 * smirnov_sf(n, x), 0.0), 1.0)
    if nx2 >= 370.0:
        return 0.0
    if nx2 >= 2.2:
        return min(max(2 * smirnov_sf(n, x), 0.0), 1.0)
    if nx2 >= 18.0:
        cdf = 1.0
    elif n <= 100000 and n * x**1.5 <= 1.4:
        cdf = _durbin_cdf(n, x)
    else:
        cdf = _pelz_good_cdf(n, x)
    return min(max(1.0 - cdf, 0.0), 1.0)
