"""A bandit split (`split_policy = "thompson"`): the arms' weights follow the labels.

Each arm's labelled rows give per-row values of the decision metric; its mean has the normal
posterior N(mean, variance / n) (flat prior; a 0/1 metric such as accuracy by its normal
approximation, fine past `min_labelled_rows`). Every `every_s` the observer draws DRAWS
joint samples of the arms' means and gives each arm the share of draws in which it is the
best, squeezed into [floor, 100 - floor * (arms - 1)] percent: Thompson sampling, by the
probability of being best rather than one draw per request, so the workers route by plain
weights (engine/routing/policy.py, sticky keys as with a fixed split). The floor keeps every
arm measured (no arm starves, and one that was unlucky early can come back).

What it optimises: the metric over the traffic while it runs (fewer rows sent to the worse
arm), not a test. For a decision with a false-alarm rate, use a rollout ([routes.rollout]);
the split's arms are compared beside it all the same (`scorewire_split_difference`).

The decision is made once per server, in the observer, on the join's thread
(engine/performance/join.py); the weights go to the split's state file, which every worker
follows (engine/rollout/state.py), so a restart resumes them.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from engine.performance.metrics import LOWER_IS_BETTER, per_row
from engine.rollout import state as saved_state
from engine.settings import PerformanceSettings, RouteSettings

log = logging.getLogger("scorewire")

DRAWS = 4000
MOVE_PCT = 0.5  # weights that move less than this (each) are not written: the workers' routes stay


class Thompson:
    """Arms' running sums of a per-row metric, and the weights they earn (pure, no I/O)."""

    def __init__(self, arms: list[str], metric: str, floor: float, min_rows: int, seed: int | None = None):
        self.arms, self.metric, self.floor, self.min_rows = list(arms), metric, floor, min_rows
        self.sign = 1.0 if metric in LOWER_IS_BETTER else -1.0  # "worse" made "higher"
        k = len(self.arms)
        self.n, self.sum, self.sumsq = np.zeros(k), np.zeros(k), np.zeros(k)
        self.rng = np.random.default_rng(seed)

    def observe(self, arm: str, values: np.ndarray) -> None:
        i = self.arms.index(arm)
        v = np.asarray(values, np.float64) * self.sign
        self.n[i] += len(v)
        self.sum[i] += v.sum()
        self.sumsq[i] += (v * v).sum()

    def best(self) -> np.ndarray | None:
        """Each arm's posterior probability of the lowest "worse is higher" mean; None until
        every arm has min_rows."""
        if (self.n < self.min_rows).any():
            return None
        mean = self.sum / self.n
        var = np.maximum(self.sumsq / self.n - mean * mean, 1e-12) * self.n / (self.n - 1)
        draws = self.rng.normal(mean, np.sqrt(var / self.n), size=(DRAWS, len(self.arms)))
        return np.bincount(np.argmin(draws, axis=1), minlength=len(self.arms)) / DRAWS

    def weights(self, p: np.ndarray | None = None) -> dict[str, float] | None:
        """Percent per arm: floor + the rest in proportion to each arm's chance of being best
        (`p`: best()'s, drawn now when not given)."""
        p = self.best() if p is None else p
        if p is None:
            return None
        rest = 100.0 - self.floor * len(self.arms)
        return {arm: float(self.floor + rest * share) for arm, share in zip(self.arms, p)}


class BanditDriver:
    """A bandit split in the observer: fed by the join, it moves the weights every `every_s`
    (the same interface as the rollout's Driver: scored, labelled, tick, families)."""

    def __init__(self, route: RouteSettings, performance: dict[str, PerformanceSettings]):
        b = route.bandit
        self.route, self.model, self.bandit = route, route.model, b
        champion = performance[route.champion]
        self.task, self.metric = champion.task, b.metric or champion.decision
        self.thompson = Thompson(list(route.split), self.metric, b.floor, b.min_labelled_rows)
        self.weights = saved_state.read_split(route) or dict(route.split)
        total = sum(self.weights.values())
        self.weights = {v: 100.0 * w / total for v, w in self.weights.items()}
        self.best: dict[str, float] = {}
        self.reason = "the split's weights: each arm needs min_labelled_rows first"
        self._next = time.monotonic() + b.every_s

    # -- from the join ---------------------------------------------------------------------
    def scored(self, version: str, role: str, inference_us: int) -> None:
        pass

    def labelled(self, version: str, role: str, scores: np.ndarray, labels: np.ndarray) -> None:
        if role in ("champion", "arm") and version in self.route.split:
            self.thompson.observe(version, per_row(self.task, self.metric, scores, labels))

    # -- once a tick ---------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> dict[str, float] | None:
        """The new weights when they moved (written to the state file the workers follow)."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return None
        self._next = now + self.bandit.every_s
        p = self.thompson.best()
        if p is None:
            return None
        weights = self.thompson.weights(p)  # from the same draws as the probabilities shown
        self.best = dict(zip(self.thompson.arms, p.tolist()))
        if all(abs(weights[v] - self.weights.get(v, 0.0)) < MOVE_PCT for v in weights):
            return None
        leader = max(self.best, key=self.best.get)
        self.reason = (f"{leader} best with probability {self.best[leader]:.2f} on {self.metric} "
                       f"({', '.join(f'{v}: {int(n)} rows' for v, n in zip(self.thompson.arms, self.thompson.n))})")
        self.weights = weights
        try:
            saved_state.write_split(self.route, weights, self.reason, time.time())
        except OSError:
            log.exception("bandit split of %s: could not write its weights to %s (the workers keep routing as "
                          "before)", self.model, self.bandit.state_file)
            return None
        log.info("bandit split of %s: weights %s: %s", self.model,
                 ", ".join(f"{v} {w:.1f}%" for v, w in weights.items()), self.reason)
        return weights

    # -- /metrics --------------------------------------------------------------------------------
    def families(self, family, labels) -> None:
        family("scorewire_split_weight", "gauge", "Percent of the route's traffic each arm of a bandit split "
               "answers now.", [(labels(model=self.model, version=v), w) for v, w in self.weights.items()])
        family("scorewire_split_best_probability", "gauge", "Each arm's posterior probability of being the best "
               "on the bandit's metric (what its weight follows).",
               [(labels(model=self.model, version=v, metric=self.metric), p) for v, p in self.best.items()])


__all__ = ["BanditDriver", "Thompson"]
