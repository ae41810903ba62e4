"""Champion against challenger on the same labelled rows, safe to peek at: an asymptotic
confidence sequence (Waudby-Smith, Arnold, Wu, Howard, Ramdas, "Time-uniform central limit
theory and asymptotic confidence sequences", 2021; the normal mixture boundary of confseq's
normal_mixture_bound in units of the estimated standard deviation) on the mean paired
difference d = challenger's per-row value - champion's (engine/performance/metrics.py
per_row: a loss, or accuracy's 1/0).

After n pairs with mean d and standard deviation s, the sequence is

    d +- s * sqrt(2 (n r^2 + 1) ln(sqrt(n r^2 + 1) / alpha)) / (n r),
    r = sqrt((-2 ln alpha + ln(-2 ln alpha + 1)) / N)

(narrowest near n = N, the tuning size); with probability about 1 - alpha it holds the true
mean difference at every n at once, so it may be read after every row and a decision taken
the first time it leaves 0 (the guarantee is asymptotic: s is estimated). The always-valid
p-value of "no difference" is the running minimum of 1 / the mixture martingale,
min(1, sqrt(n r^2 + 1) exp(-r^2 S^2 / (2 (n r^2 + 1)))), S = n d / s.
"""

from __future__ import annotations

import math

import numpy as np

MIN_PAIRS = 30  # before this many pairs the sequence is not published (its variance is a guess)


def tuning(alpha: float, rows: int) -> float:
    """r of the boundary, narrowest after `rows` pairs."""
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / rows)


def half_width(n: np.ndarray | int, sd: np.ndarray | float, alpha: float, r: float):
    """The sequence's half-width after n pairs of standard deviation sd (vectorised)."""
    n = np.asarray(n, np.float64)
    v = n * r * r + 1
    return np.asarray(sd) * np.sqrt(2 * v * np.log(np.sqrt(v) / alpha)) / (n * r)


class PairedSequence:
    """The running confidence sequence of one challenger's difference from its champion."""

    def __init__(self, alpha: float, rows: int):
        self.alpha = alpha
        self.r = tuning(alpha, rows)
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations (Welford, batch form)
        self.pvalue = 1.0
        self.changed = False

    def add(self, differences: np.ndarray) -> None:
        d = np.asarray(differences, np.float64)
        k = len(d)
        if not k:
            return
        mean_k = float(d.mean())
        m2_k = float(((d - mean_k) ** 2).sum())
        total = self.n + k
        delta = mean_k - self.mean
        self.m2 += m2_k + delta * delta * self.n * k / total
        self.mean += delta * k / total
        self.n = total
        self.changed = True
        if self.n >= MIN_PAIRS:
            self.pvalue = min(self.pvalue, self._pvalue())

    @property
    def sd(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else float("nan")

    def _pvalue(self) -> float:
        sd = self.sd
        if sd == 0:
            return 0.0 if self.mean != 0 else 1.0
        r2 = self.r * self.r
        v = self.n * r2 + 1
        s = self.n * self.mean / sd
        return min(1.0, math.sqrt(v) * math.exp(-r2 * s * s / (2 * v)))

    def bounds(self) -> tuple[float, float, float] | None:
        """(estimate, lower, upper) of the mean difference; None before MIN_PAIRS pairs."""
        if self.n < MIN_PAIRS:
            return None
        w = float(half_width(self.n, self.sd, self.alpha, self.r))
        return self.mean, self.mean - w, self.mean + w


def difference(a: PairedSequence, b: PairedSequence) -> tuple[float, float, float] | None:
    """(estimate, lower, upper) of mean(a) - mean(b), two arms' means each followed by its own
    sequence of one sample's values (different rows, not pairs) at alpha / 2: both hold at
    every moment with probability about 1 - alpha (a union bound), and so does
    [L_a - U_b, U_a - L_b]. None while either has fewer than MIN_PAIRS values."""
    x, y = a.bounds(), b.bounds()
    if x is None or y is None:
        return None
    return x[0] - y[0], x[1] - y[2], x[2] - y[1]


__all__ = ["MIN_PAIRS", "PairedSequence", "difference", "half_width", "tuning"]
