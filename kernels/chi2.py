"""Chi-squared goodness of fit, streaming over a sliding window of categories, and PSI.

`chisquare(observed, expected)` is scipy.stats.chisquare (ddof 0, the same statistic and
p-value). `SlidingChi2` keeps the counts of the last `window` category codes and answers
the chi-squared statistic against reference frequencies in O(1) per event.

Categories are integer codes 0..K-1, K taken from the reference. A code outside 0..K-1
(a category the reference never saw) goes to one extra "other" bin. Every bin's reference
count gets `pseudo_count` (default 0.5) added before frequencies are formed, so no
expected count is ever zero: the statistic is finite and equals
scipy.stats.chisquare(window_counts, expected_frequencies * window_length). PSI uses the
same bins and the same pseudo-count on both sides.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import jit
from kernels.pvalues import chi2_sf

_RECOMPUTE_EVERY = 1 << 16  # exact re-summation of the running sum, against float drift


def _as_float_vector(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    return array


def chisquare(observed, expected=None) -> tuple[float, float]:
    """(statistic, p-value) of Pearson's chi-squared test, as scipy.stats.chisquare.

    `expected` defaults to the uniform distribution over the observed total; when given,
    its total must equal the observed total (relative 1e-8), as SciPy requires.
    """
    obs = _as_float_vector("observed", observed)
    if expected is None:
        exp = np.full_like(obs, obs.mean())
    else:
        exp = _as_float_vector("expected", expected)
        if exp.shape != obs.shape:
            raise ValueError(f"expected has shape {exp.shape}, observed {obs.shape}")
        total_obs, total_exp = obs.sum(), exp.sum()
        if abs(total_obs - total_exp) > 1e-8 * max(total_obs, total_exp):
            raise ValueError(
                f"observed and expected totals differ ({total_obs} vs {total_exp}); "
                "scale the expected frequencies to the observed total"
            )
    return _chisquare(obs, exp)


@jit
def _chisquare(obs, exp):
    stat = 0.0
    for i in range(obs.shape[0]):
        diff = obs[i] - exp[i]
        stat += diff * diff / exp[i]
    return stat, chi2_sf(stat, obs.shape[0] - 1)


def psi(expected_counts, actual_counts, pseudo_count: float = 0.5) -> float:
    """Population stability index sum((a - e) * ln(a / e)) over proportions of the same bins;
    `pseudo_count` is added to every bin of both sides first, so empty bins stay finite."""
    e = _as_float_vector("expected_counts", expected_counts)
    a = _as_float_vector("actual_counts", actual_counts)
    if e.shape != a.shape:
        raise ValueError(f"expected_counts has shape {e.shape}, actual_counts {a.shape}")
    if pseudo_count < 0 or (pseudo_count == 0 and ((e == 0).any() or (a == 0).any())):
        raise ValueError("empty bins need pseudo_count > 0")
    return float(_psi(e + pseudo_count, a + pseudo_count))


@jit
def _psi(e, a):
    e_total = e.sum()
    a_total = a.sum()
    value = 0.0
    for i in range(e.shape[0]):
        pe = e[i] / e_total
        pa = a[i] / a_total
        value += (pa - pe) * math.log(pa / pe)
    return value


@jit
def _update(codes, ring, state, counts, inv_freq, window, k):
    """state: [filled, head, updates, nan-free]; running sum in counts' companion slot."""
    filled = state[0]
    head = state[1]
    s = inv_freq[k + 1]  # running sum of counts[i]^2 / freq[i], kept in the spare slot
    for j in range(codes.shape[0]):
        code = codes[j]
        b = code if 0 <= code < k else k
        if filled == window:
            old = ring[head]
            counts[old] -= 1
            s -= (2.0 * counts[old] + 1.0) * inv_freq[old]
        else:
            filled += 1
        ring[head] = b
        s += (2.0 * counts[b] + 1.0) * inv_freq[b]
        counts[b] += 1
        head += 1
        if head == window:
            head = 0
        state[2] += 1
        if state[2] % 65536 == 0:
            s = 0.0
            for i in range(k + 1):
                s += counts[i] * counts[i] * inv_freq[i]
    state[0] = filled
    state[1] = head
    inv_freq[k + 1] = s


class SlidingChi2:
    """Chi-squared of the last `window` category codes against reference frequencies.

    `reference` is a sample of category codes (integers 0..K-1; K = its max + 1), or, with
    `reference_is_counts=True`, the count of each category. `update(codes)` takes a whole
    array in one jitted call; `statistic`, `pvalue()` and `psi()` are exact for the window
    as it is, also while it is still filling. An empty window has statistic 0 and p-value 1.
    """

    def __init__(self, reference, window: int, *, reference_is_counts: bool = False, pseudo_count: float = 0.5):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if pseudo_count <= 0:
            raise ValueError("pseudo_count must be > 0 (it keeps every expected count non-zero)")
        ref = np.asarray(reference)
        if reference_is_counts:
            counts = _as_float_vector("reference counts", ref)
            if (counts < 0).any():
                raise ValueError("reference counts must be >= 0")
        else:
            if ref.ndim != 1 or ref.size == 0 or ref.dtype.kind not in "iu":
                raise TypeError("reference must be a non-empty 1-D array of integer category codes "
                                "(or pass reference_is_counts=True with counts per category)")
            if ref.min() < 0:
                raise ValueError("category codes must be >= 0")
            counts = np.bincount(ref).astype(np.float64)
        self.k = counts.shape[0]
        self.window = int(window)
        self.pseudo_count = float(pseudo_count)
        self.reference_counts = np.append(counts, 0.0)  # the "other" bin: never seen in the reference
        smoothed = self.reference_counts + pseudo_count
        self.frequencies = smoothed / smoothed.sum()
        self._inv = np.append(1.0 / self.frequencies, 0.0)  # last slot: the running sum
        self._counts = np.zeros(self.k + 1, dtype=np.int64)
        self._ring = np.zeros(self.window, dtype=np.int64)
        self._state = np.zeros(3, dtype=np.int64)

    def update(self, codes) -> None:
        array = np.asarray(codes)
        if array.ndim == 0:
            array = array.reshape(1)
        if array.dtype.kind not in "iu":
            raise TypeError(f"category codes must be integers, got {array.dtype}")
        _update(np.ascontiguousarray(array, dtype=np.int64), self._ring, self._state, self._counts,
                self._inv, self.window, self.k)

    @property
    def n(self) -> int:
        """Events in the window now."""
        return int(self._state[0])

    @property
    def counts(self) -> np.ndarray:
        """Window counts per bin (K categories, then "other")."""
        return self._counts.copy()

    @property
    def statistic(self) -> float:
        n = self.n
        if n == 0:
            return 0.0
        # sum (o - n f)^2 / (n f) = sum(o^2 / f) / n - n
        return max(float(self._inv[self.k + 1]) / n - n, 0.0)

    def pvalue(self) -> float:
        if self.n == 0:
            return 1.0
        return float(chi2_sf(self.statistic, self.k))  # K + 1 bins, df = K

    def expected(self) -> np.ndarray:
        """Expected window counts per bin now (frequencies x window length)."""
        return self.frequencies * self.n

    def psi(self) -> float:
        """PSI of the window against the reference on the same bins (effect size)."""
        return psi(self.reference_counts, self._counts, self.pseudo_count)
