"""The drift rule's parts that hold no window: a column's state (its windows' values, its
alert), the events it raises, the correction across columns x windows, and the exact
thresholds a window is decided against (engine/monitor/drift.py moves the windows)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np



@dataclass
class ColumnState:
    """A column's windows at the last evaluation (values where known: see the module's
    "Cost"; NaN elsewhere), and its alert."""
    windows: tuple[int, ...]
    pvalue_of: Callable[[int, int], float] | None = None  # KS: (n, h) -> exact p-value, for those computed on reading
    statistics: np.ndarray = None  # per window: KS D or chi-squared
    effects: np.ndarray = None  # per window: KS D or PSI
    fired: np.ndarray = None  # per window: significant and effect >= min_effect, at the last evaluation
    drifting: bool = False  # any window fired at the last evaluation
    alert: bool = False
    streak: int = 0  # consecutive evaluations disagreeing with the alert state
    # p-values per window (before correction), and those of quiet KS windows still to compute
    # as [(window, n, h)]: set together (one tuple), so a reader never pairs the wrong ones
    _p: tuple = None

    def __post_init__(self):
        k = len(self.windows)
        self.statistics, self.effects = np.full(k, np.nan), np.full(k, np.nan)
        self._p = (np.full(k, np.nan), [])
        self.fired = np.zeros(k, dtype=bool)

    @property
    def pvalues(self) -> np.ndarray:
        """Per window. A quiet KS window's p-value is computed when first read (/metrics,
        `status`): a p-value not yet cached costs 20-50 ms for 1,000 or 2,000 against 10,000,
        which the decisions never need (they compare with exact critical statistics)."""
        values, lazy = self._p
        for j, n, h in lazy:
            if values[j] != values[j]:
                values[j] = self.pvalue_of(n, h)
        return values

    @property
    def lead(self) -> int:
        """The window that speaks for the column: the fired one (else any) with the smallest
        p-value known, else the largest."""
        known = ~np.isnan(self.pvalues)
        for candidates in (known & self.fired, known):
            if candidates.any():
                return int(np.flatnonzero(candidates)[np.argmin(self.pvalues[candidates])])
        return len(self.windows) - 1

    @property
    def statistic(self) -> float:
        return float(self.statistics[self.lead])

    @property
    def pvalue(self) -> float:
        return float(self.pvalues[self.lead])

    @property
    def effect(self) -> float:
        return float(self.effects[self.lead])


@dataclass(frozen=True)
class DriftEvent:
    kind: str  # "raise" or "clear"
    model: str
    feature: str
    statistic: float  # the lead window's (see ColumnState.lead)
    pvalue: float
    effect: float
    events: int  # rows observed by the monitor when it happened
    window: int = 0  # the lead window's size
    windows: tuple[int, ...] = ()  # those that fired (none for a clear)
    statistics: tuple[float, ...] = ()  # theirs, in the same order
    pvalues: tuple[float, ...] = ()
    # the lead window's rows as the observer stamped them (ScoredBatch.seq): [start, stop)
    # ranges, in the order observed; empty when unknown (batches not stamped)
    rows: tuple[tuple[int, int], ...] = ()
    time_ns: int = field(default_factory=time.time_ns)


def event_line(event: DriftEvent, min_effect: float, consecutive: int, several_windows: bool) -> str:
    """The log line of a raise or a clear. A clear says why: a large window can still find a
    small shift significant (p 1e-9) while its effect is below min_effect, and such a line
    must not read like drift."""
    where = (f"model {event.model} feature {event.feature} statistic {event.statistic:.4g} p-value "
             f"{event.pvalue:.3g} effect {event.effect:.4g} (window {event.window}")
    if event.kind == "raise":
        each = zip(event.windows, event.statistics, event.pvalues)
        fired = (f"; fired: {', '.join(f'{w} (D/chi2 {st:.4g}, p {p:.3g})' for w, st, p in each)}"
                 if several_windows and event.windows else "")
        return f"drift raise: {where}{fired}) after {event.events} events"
    reason = (f"effect {event.effect:.4g} is below min_effect {min_effect:g}, however small the p-value"
              if event.effect < min_effect else "not significant after the correction")
    return (f"drift clear: {where}) after {event.events} events: no window fired for {consecutive} evaluations "
            f"in a row ({reason})")


def corrected_significance(pvalues: np.ndarray, alpha: float, method: str) -> np.ndarray:
    """Which p-values are significant at family-wise (Bonferroni) or false-discovery (BH) level alpha."""
    k = len(pvalues)
    if method == "bonferroni":
        return pvalues <= alpha / k
    order = np.argsort(pvalues, kind="stable")
    thresholds = alpha * np.arange(1, k + 1) / k
    passed = np.flatnonzero(pvalues[order] <= thresholds)
    significant = np.zeros(k, dtype=bool)
    if passed.size:
        significant[order[: passed[-1] + 1]] = True
    return significant


def needed_level(pvalues: np.ndarray, alpha: float, method: str) -> float:
    """The p-value a test had to reach to be significant among these (corrected_significance):
    Bonferroni's alpha / tests; BH's the largest of its passing bounds, or (none passing)
    alpha / tests, what a lone test would need."""
    k = len(pvalues)
    if method == "bonferroni":
        return alpha / k
    bounds = alpha * np.arange(1, k + 1) / k
    passed = np.flatnonzero(np.sort(pvalues, kind="stable") <= bounds)
    return float(bounds[passed[-1]]) if passed.size else alpha / k


def effect_h(min_effect: float, window: int, m: int) -> int:
    """The smallest statistic times window*m whose D = h / (window*m) is >= min_effect as
    the floats compare it (at least 1)."""
    h = max(1, math.ceil(min_effect * window * m))
    while h > 1 and (h - 1) / (window * m) >= min_effect:
        h -= 1
    while h / (window * m) < min_effect:
        h += 1
    return h


def chi2_critical(level: float, df: int) -> float:
    """The smallest chi-squared statistic with p-value <= level (df degrees of freedom), by
    bisection on the survival function (to float precision)."""
    from kernels.pvalues import chi2_sf  # Numba: loaded by a drift monitor, not by every importer of its rule

    lo, hi = 0.0, 1.0
    while chi2_sf(hi, df) > level:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (lo, mid) if chi2_sf(mid, df) <= level else (mid, hi)
    return hi
