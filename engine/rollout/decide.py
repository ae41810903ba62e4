"""The decision of one rollout, from the labelled rows of its two arms and the guards that
need no labels. Pure: no clock, no I/O (the observer feeds it; tests simulate it).

The candidate answers `steps[i]` percent of the route's traffic at step i; the champion the
rest. Each arm's per-row values of the decision metric (engine/performance/metrics.py
per_row: a loss, or accuracy's 1/0) go into an always-valid confidence sequence of that
arm's mean (sequence.py, at alpha / 2 each); together they bound the difference

    candidate - champion  in  [L_cand - U_champ, U_cand - L_champ]

at every moment at once with probability about 1 - alpha (a union bound), however often it
is read and however the split changes. "Worse" is in the metric's direction (a loss higher,
accuracy lower):
- the candidate is worse than the champion by more than `margin` as soon as the whole
  interval says so -> ROLLED_BACK (at any moment, in any step);
- a step ends when both arms have `min_labelled_rows` labelled rows in it and the candidate
  has not been shown worse -> the next step; past the last (or at a step of 100%, where
  the champion has no rows to compare) -> PROMOTED;
- a guard that fails (error rate, p99 latency ratio) -> ROLLED_BACK at once, labels or not.
With a candidate as good as the champion, the chance of a rollback over the whole rollout
is at most about alpha; a fixed-horizon test read at every step is not (tests/engine/
test_rollout.py measures both).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from engine.performance.metrics import LOWER_IS_BETTER
from engine.performance.sequence import MIN_PAIRS, PairedSequence, difference


class State(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[float, ...]  # percent of the route's traffic the candidate answers, per step
    min_labelled_rows: int
    metric: str
    margin: float
    alpha: float
    max_error_rate: float | None = None
    max_p99_ratio: float | None = None
    rollback_on_drift: bool = False
    max_estimated_drop: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    state: State
    step: int
    reason: str
    difference: tuple[float, float, float] | None  # (estimate, lower, upper) of candidate - champion


class Rollout:
    def __init__(self, plan: Plan, step: int = 0, state: State = State.RUNNING, reason: str | None = None):
        self.plan = plan
        self.step = min(step, len(plan.steps) - 1)  # (a reload may have shortened the steps)
        self.state = state
        self.reason = reason or ("started" if step == 0 else f"resumed at step {step + 1}")
        self.arms = {arm: PairedSequence(plan.alpha / 2, max(MIN_PAIRS, plan.min_labelled_rows))
                     for arm in ("candidate", "champion")}
        self.in_step = {"candidate": 0, "champion": 0}  # labelled rows since the step began
        self.sign = 1.0 if plan.metric in LOWER_IS_BETTER else -1.0  # "worse" made "higher"

    @property
    def weight(self) -> float:
        """The candidate's share of the route now (percent)."""
        if self.state is State.PROMOTED:
            return 100.0
        if self.state is State.ROLLED_BACK:
            return 0.0
        return self.plan.steps[self.step]

    def observe(self, arm: str, values: np.ndarray) -> None:
        """Labelled rows of one arm: their per-row values of the decision metric."""
        if len(values):
            self.arms[arm].add(np.asarray(values, np.float64) * self.sign)
            self.in_step[arm] += len(values)

    def difference(self) -> tuple[float, float, float] | None:
        """(estimate, lower, upper) of candidate - champion in "worse is higher" units."""
        return difference(self.arms["candidate"], self.arms["champion"])

    def guard(self, error_rate: float | None = None, p99_ratio: float | None = None, drifted: list[str] | None = None,
              estimated_drop: float | None = None) -> Decision | None:
        """The guards that need no labels (the candidate's error rate, its p99 latency over
        the champion's, drift alerts only it raised, its estimated accuracy below the
        champion's); a failing one rolls back at once."""
        if self.state not in (State.RUNNING, State.PAUSED):
            return None
        plan = self.plan
        if plan.max_error_rate is not None and error_rate is not None and error_rate > plan.max_error_rate:
            return self._end(State.ROLLED_BACK, f"guard: error rate {error_rate:.3g} > max_error_rate "
                                                f"{plan.max_error_rate:g}")
        if plan.max_p99_ratio is not None and p99_ratio is not None and p99_ratio > plan.max_p99_ratio:
            return self._end(State.ROLLED_BACK, f"guard: p99 latency {p99_ratio:.3g}x the champion's > "
                                                f"max_p99_ratio {plan.max_p99_ratio:g}")
        if plan.rollback_on_drift and drifted:
            return self._end(State.ROLLED_BACK, f"guard: drift alert on the candidate only ({', '.join(drifted[:5])})")
        if plan.max_estimated_drop is not None and estimated_drop is not None and estimated_drop > plan.max_estimated_drop:
            return self._end(State.ROLLED_BACK, f"guard: estimated accuracy {estimated_drop:.3g} below the "
                                                f"champion's > max_estimated_drop {plan.max_estimated_drop:g}")
        return None

    def decide(self) -> Decision | None:
        """A change of state or step, or None (the rollout stands where it is)."""
        if self.state is not State.RUNNING:
            return None
        plan = self.plan
        d = self.difference()
        if d is not None and d[1] > plan.margin:
            return self._end(State.ROLLED_BACK, f"{plan.metric}: the candidate is worse than the champion by more "
                                                f"than the margin {plan.margin:g} (difference {d[0] * self.sign:+.4g},"
                                                f" always-valid interval [{d[1]:+.4g}, {d[2]:+.4g}] worse-positive)")
        if min(self.in_step.values()) < plan.min_labelled_rows:
            return None
        if self.step + 1 >= len(plan.steps) or plan.steps[self.step + 1] >= 100:
            return self._end(State.PROMOTED, f"{plan.metric}: not shown worse over {self.step + 1} steps")
        self.step += 1
        self.in_step = {"candidate": 0, "champion": 0}
        self.reason = f"step {self.step + 1}: {plan.steps[self.step]:g}% (the last step's rows showed no harm)"
        return Decision(self.state, self.step, self.reason, d)

    def _end(self, state: State, reason: str) -> Decision:
        self.state, self.reason = state, reason
        return Decision(state, self.step, reason, self.difference())


class Arms:
    """A plain split's arms against its champion, safe to peek at: the rollout's test
    (each version's mean in a sequence at alpha / 2; their difference bounded), without
    deciding anything."""

    def __init__(self, champion: str, metric: str, alpha: float, tuning_rows: int):
        self.champion, self.metric, self.alpha, self.tuning = champion, metric, alpha, max(MIN_PAIRS, tuning_rows)
        self.sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
        self.versions: dict[str, PairedSequence] = {}

    def observe(self, version: str, values: np.ndarray) -> None:
        sequence = self.versions.get(version)
        if sequence is None:
            sequence = self.versions[version] = PairedSequence(self.alpha / 2, self.tuning)
        sequence.add(np.asarray(values, np.float64))

    def difference(self, arm: str) -> tuple[float, float, float] | None:
        """(estimate, lower, upper) of arm - champion in the metric's own units."""
        a, b = self.versions.get(arm), self.versions.get(self.champion)
        return None if a is None or b is None else difference(a, b)


__all__ = ["Arms", "Decision", "Plan", "Rollout", "State"]
