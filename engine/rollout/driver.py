"""A route's rollout in the observer, on the join's thread (engine/performance/join.py): the
join hands it the labelled rows of both arms and the scored batches (for the latency
guard); once a tick it checks the guards, lets the decision (decide.py) speak, and when the
rollout changes writes the state file the workers route by (state.py), an event
(events_dir, kind=rollout) and a log line. The decision is made here only: once per server.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from engine.performance.metrics import per_row
from engine.rollout import state as saved_state
from engine.rollout.decide import Decision, Plan, Rollout, State
from engine import audit
from engine.monitor.events import publish
from engine.settings import PerformanceSettings, RouteSettings

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("scorewire")

LATENCY_BATCHES = 200  # each arm's last batches the p99 guard reads
MIN_GUARD_BATCHES = 20  # ... and how many it needs first
MIN_GUARD_REQUESTS = 20  # requests the candidate answered in the step before its error rate counts
GUARD_EVERY_S = 1.0

# (model, version) -> (requests scored, requests the model failed), summed over the workers
Requests = Callable[[str, str], tuple[int, int]]


class Driver:
    def __init__(self, route: RouteSettings, performance: dict[str, PerformanceSettings], events_dir: Path | None,
                 requests: Requests | None = None):
        r = route.rollout
        self.route, self.model, self.champion, self.candidate = route, route.model, route.champion, r.candidate
        settings = performance[r.candidate]
        self.task = settings.task
        self.metric = r.metric or settings.decision
        self.plan = Plan(tuple(r.steps), r.min_labelled_rows, self.metric, r.margin, r.alpha, r.max_error_rate,
                         r.max_p99_ratio, r.rollback_on_drift, r.max_estimated_drop)
        self.drift_alerts: Callable[[str, str], set[str]] | None = None  # (model, version) -> columns alerted
        self.estimated: Callable[[str, str], float | None] | None = None  # (model, version) -> CBPE accuracy
        self.events_dir = events_dir
        self.requests = requests
        saved = saved_state.read(route)
        if saved is None:
            self.rollout = Rollout(self.plan)
            self._save("started")
        else:
            self.rollout = Rollout(self.plan, max(0, saved.step - 1), State(saved.state), saved.reason)
            log.info("rollout of %s:%s resumed: %s, step %d (%g%%)", self.model, self.candidate, saved.state,
                     saved.step, saved.weight)
            if self.rollout.weight != saved.weight:  # the steps changed (a reload): the workers follow the file
                self._save(f"steps changed by a reload: step {self.rollout.step + 1} is now "
                           f"{self.rollout.weight:g}% (was {saved.weight:g}%)")
        self.latency = {"candidate": collections.deque(maxlen=LATENCY_BATCHES),
                        "champion": collections.deque(maxlen=LATENCY_BATCHES)}
        self.rows = {"candidate": 0, "champion": 0}  # labelled rows, ever
        self._guarded = 0.0
        self._step_requests: tuple[int, int] | None = None  # the candidate's (ok, failed) when the step began

    def arm(self, version: str, role: str) -> str | None:
        if role not in ("champion", "arm"):  # challengers' shadow rows and pinned requests are no arm's
            return None
        return "candidate" if version == self.candidate else "champion" if version == self.champion else None

    # -- from the join ---------------------------------------------------------------------
    def scored(self, version: str, role: str, inference_us: int) -> None:
        arm = self.arm(version, role)
        if arm is not None:
            self.latency[arm].append(inference_us)

    def labelled(self, version: str, role: str, scores: np.ndarray, labels: np.ndarray) -> None:
        arm = self.arm(version, role)
        if arm is not None and self.rollout.state in (State.RUNNING, State.PAUSED):  # paused: kept, not decided on
            self.rollout.observe(arm, per_row(self.task, self.metric, scores, labels))
            self.rows[arm] += len(labels)

    # -- once a tick ---------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> Decision | None:
        now = time.monotonic() if now is None else now
        decision = given = None
        if now - self._guarded >= GUARD_EVERY_S:
            self._guarded = now
            given = saved_state.read_command(self.route)
            decision = self._operator(given) or self.rollout.guard(self._error_rate(), self._p99_ratio(),
                                                                   self._drifted(), self._estimated_drop())
        step = self.rollout.step
        decision = decision or self.rollout.decide()
        if decision is not None:
            if decision.step != step:
                self._step_requests = None
            self._save(decision.reason, decision)
        if given is not None:  # only now: `scorewire rollout` reads the state once the command is gone
            saved_state.done_command(self.route)
        return decision

    def _operator(self, given: tuple[str, str] | None) -> Decision | None:
        """A command `scorewire rollout` left: pause, resume or abort."""
        r = self.rollout
        if given is None or r.state in (State.PROMOTED, State.ROLLED_BACK):
            return None
        command, by = given
        if command == "abort":
            r.state, r.reason = State.ROLLED_BACK, f"aborted by the operator {by} (scorewire rollout abort)"
        elif command == "pause" and r.state is State.RUNNING:
            r.state, r.reason = State.PAUSED, f"paused by the operator {by}: the split holds, nothing is decided"
        elif command == "resume" and r.state is State.PAUSED:
            r.state, r.reason = State.RUNNING, f"resumed by the operator {by}"
        else:
            return None
        return Decision(r.state, r.step, r.reason, r.difference())

    def _drifted(self) -> list[str] | None:
        """Columns whose drift alert the candidate's monitor raised and the champion's did not."""
        if self.drift_alerts is None:
            return None
        return sorted(self.drift_alerts(self.model, self.candidate) - self.drift_alerts(self.model, self.champion))

    def _estimated_drop(self) -> float | None:
        if self.estimated is None:
            return None
        mine, theirs = self.estimated(self.model, self.candidate), self.estimated(self.model, self.champion)
        return None if mine is None or theirs is None else theirs - mine

    def _p99_ratio(self) -> float | None:
        a, b = self.latency["candidate"], self.latency["champion"]
        if len(a) < MIN_GUARD_BATCHES or len(b) < MIN_GUARD_BATCHES:
            return None
        return float(np.percentile(a, 99)) / max(1.0, float(np.percentile(b, 99)))

    def _error_rate(self) -> float | None:
        if self.requests is None:
            return None
        try:
            ok, failed = self.requests(self.model, self.candidate)
        except Exception:  # the counters are someone else's: no guard this time
            log.exception("rollout of %s: could not read the candidate's request counts", self.model)
            return None
        if self._step_requests is None:
            self._step_requests = (ok, failed)
        ok, failed = ok - self._step_requests[0], failed - self._step_requests[1]
        return None if ok + failed < MIN_GUARD_REQUESTS else failed / (ok + failed)

    def _save(self, reason: str, decision: Decision | None = None) -> None:
        r = self.rollout
        r.reason = reason
        saved = saved_state.Saved(self.model, self.champion, self.candidate, r.state.value, r.step + 1, r.weight,
                                  reason, time.time())
        try:
            saved_state.write(self.route, saved)
        except OSError:
            log.exception("rollout of %s: could not write its state to %s (the workers keep routing as before)",
                          self.model, self.route.rollout.state_file)
        if decision is None:
            return
        level = logging.WARNING if r.state is State.ROLLED_BACK else logging.INFO
        log.log(level, "rollout of %s:%s: %s, step %d (%g%%): %s", self.model, self.candidate, r.state.value,
                r.step + 1, r.weight, reason)
        if self.events_dir is not None:
            try:
                write_event(self.events_dir, self, decision)
                audit.write(self.events_dir, self.model, [{
                    "event": "rollout", "version": self.candidate,
                    "detail": f"{r.state.value}, step {r.step + 1} ({r.weight:g}%), champion {self.champion}: {reason}"}])
            except OSError:
                log.exception("could not write a rollout event to %s", self.events_dir)

    # -- /metrics --------------------------------------------------------------------------------
    def families(self, family, labels) -> None:
        r = self.rollout
        family("scorewire_rollout_state", "gauge", "1 for the rollout's state now (running, paused, promoted, "
               "rolled_back), 0 for the others.",
               [(labels(model=self.model, candidate=self.candidate, state=s.value), int(r.state is s)) for s in State])
        family("scorewire_rollout_weight", "gauge", "Percent of the route's traffic each version answers now.",
               [(labels(model=self.model, version=self.candidate), r.weight),
                (labels(model=self.model, version=self.champion), 100.0 - r.weight)])
        family("scorewire_rollout_reason", "gauge", "Why the rollout stands where it does (1; the reason in a label).",
               [(labels(model=self.model, candidate=self.candidate, reason=r.reason), 1)])
        family("scorewire_rollout_step", "gauge", "The rollout's step (1 is the first).",
               [(labels(model=self.model, candidate=self.candidate), r.step + 1)])
        family("scorewire_rollout_labelled_rows", "gauge", "Labelled rows of each arm the decision has seen "
               "(ever; the step needs min_labelled_rows of each since it began).",
               [(labels(model=self.model, arm=arm), n) for arm, n in self.rows.items()])
        d = r.difference()  # "worse is higher" units: back to the metric's own
        if d is not None:
            est, lower, upper = d if r.sign > 0 else (-d[0], -d[2], -d[1])
            family("scorewire_rollout_difference", "gauge", "Candidate minus champion on the decision metric "
                   "(its own units), with the always-valid bounds the decision reads.",
                   [(labels(model=self.model, metric=self.metric, bound=name), value)
                    for name, value in (("estimate", est), ("lower", lower), ("upper", upper))])


@functools.cache
def schema() -> pa.Schema:
    """The rollout decisions' columns (pyarrow: imported with the first decision written)."""
    import pyarrow as pa

    return pa.schema([
        ("time", pa.timestamp("ns", tz="UTC")),
        ("state", pa.string()),
        ("step", pa.int64()),  # 1 is the first
        ("weight", pa.float64()),
        ("champion", pa.string()),
        ("candidate", pa.string()),
        ("metric", pa.string()),
        ("difference", pa.float64()),  # candidate - champion ("worse is higher" units), and its bounds
        ("lower", pa.float64()),
        ("upper", pa.float64()),
        ("candidate_rows", pa.int64()),
        ("champion_rows", pa.int64()),
        ("reason", pa.string()),
    ])


def write_event(directory: Path, driver: Driver, decision: Decision) -> Path:
    """EVENTS_DIR/kind=rollout/model=NAME/date=YYYY-MM-DD/part-*.parquet."""
    import pyarrow as pa

    now = time.time_ns()
    d = decision.difference or (float("nan"),) * 3
    table = pa.table({
        "time": pa.array([now], pa.timestamp("ns", tz="UTC")), "state": [decision.state.value],
        "step": [decision.step + 1], "weight": [driver.rollout.weight], "champion": [driver.champion],
        "candidate": [driver.candidate], "metric": [driver.metric], "difference": [d[0]], "lower": [d[1]],
        "upper": [d[2]], "candidate_rows": [driver.rows["candidate"]], "champion_rows": [driver.rows["champion"]],
        "reason": [decision.reason],
    }, schema=schema())
    return publish(directory, "rollout", driver.model, now, table)


__all__ = ["Driver", "write_event"]
