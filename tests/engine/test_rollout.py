"""The rollout's decisions by simulation over many seeds, on the decision code alone: the
rollback rate when the candidate is as good as the champion (read after every batch of
labels), beside what a fixed-horizon test read the same way does; how soon a worse one is
rolled back; that a better one is promoted; guards."""

from __future__ import annotations

import numpy as np
from scipy.stats import t as student_t

from engine.rollout.decide import Plan, Rollout, State

PLAN = Plan(steps=(5, 25, 50, 100), min_labelled_rows=300, metric="log_loss", margin=0.0, alpha=0.05)


def simulate(seed: int, candidate_loss: float, plan: Plan = PLAN, batch: int = 100, limit: int = 40_000,
             fixed: bool = False):
    """Labelled rows arrive in batches of `batch`, split by the current weight; per-row log
    losses are exponential (mean 0.3 for the champion, `candidate_loss` for the candidate).
    Returns (final state, candidate rows seen, whether a fixed-horizon Welch test read after
    every batch was ever significant: only when `fixed`)."""
    rng = np.random.default_rng(seed)
    rollout = Rollout(plan)
    sums = {"candidate": np.zeros(3), "champion": np.zeros(3)}  # n, sum, sum of squares
    fixed_fired = False
    rows = 0
    while rollout.state is State.RUNNING and rows < limit:
        share = rollout.weight / 100
        n_candidate = rng.binomial(batch, share)
        for arm, n, mean in (("candidate", n_candidate, candidate_loss), ("champion", batch - n_candidate, 0.3)):
            losses = rng.exponential(mean, n)
            rollout.observe(arm, losses)
            sums[arm] += (n, losses.sum(), (losses ** 2).sum())
        rows += batch
        rollout.decide()
        (n1, s1, q1), (n2, s2, q2) = sums["candidate"], sums["champion"]
        if fixed and not fixed_fired and n1 > 30 and n2 > 30:  # Welch's t from the running sums
            v1, v2 = (q1 - s1 * s1 / n1) / (n1 - 1) / n1, (q2 - s2 * s2 / n2) / (n2 - 1) / n2
            t = (s1 / n1 - s2 / n2) / np.sqrt(v1 + v2)
            df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
            fixed_fired = student_t.sf(t, df) < plan.alpha / 2
    return rollout.state, int(sums["candidate"][0]), fixed_fired


def test_an_equal_candidate_is_rarely_rolled_back_and_peeking_at_a_fixed_test_would_be():
    runs = [simulate(seed, 0.3, fixed=True) for seed in range(300)]
    rolled_back = sum(state is State.ROLLED_BACK for state, _, _ in runs) / len(runs)
    fixed = sum(fired for _, _, fired in runs) / len(runs)
    assert rolled_back <= PLAN.alpha / 2 + 0.015, rolled_back  # one-sided: "worse" only
    assert fixed > 2 * max(rolled_back, 0.01), (fixed, rolled_back)
    assert sum(state is State.PROMOTED for state, _, _ in runs) / len(runs) >= 0.95


def test_a_worse_candidate_is_rolled_back_in_its_first_step():
    runs = [simulate(seed, 0.6) for seed in range(200)]
    assert all(state is State.ROLLED_BACK for state, _, _ in runs)
    # the first step's share (5%) of traffic: 300 labelled rows would end the step
    first_step = sum(seen <= PLAN.min_labelled_rows for _, seen, _ in runs) / len(runs)
    assert first_step >= 0.95, first_step


def test_a_better_candidate_is_promoted():
    runs = [simulate(seed, 0.2) for seed in range(200)]
    assert all(state is State.PROMOTED for state, _, _ in runs)


def test_accuracy_is_worse_when_lower():
    plan = Plan(steps=(10, 50), min_labelled_rows=200, metric="accuracy", margin=0.0, alpha=0.05)
    rollout = Rollout(plan)
    rng = np.random.default_rng(1)
    while rollout.state is State.RUNNING:
        rollout.observe("candidate", (rng.random(50) < 0.7).astype(float))
        rollout.observe("champion", (rng.random(50) < 0.9).astype(float))
        rollout.decide()
    assert rollout.state is State.ROLLED_BACK and "accuracy" in rollout.reason


def test_a_failing_guard_rolls_back_without_labels():
    plan = Plan(steps=(5, 100), min_labelled_rows=100, metric="log_loss", margin=0.0, alpha=0.05,
                max_error_rate=0.01, max_p99_ratio=3.0)
    assert Rollout(plan).guard(error_rate=0.0, p99_ratio=1.2) is None
    decision = Rollout(plan).guard(error_rate=0.0, p99_ratio=3.5)
    assert decision.state is State.ROLLED_BACK and "p99" in decision.reason
    decision = Rollout(plan).guard(error_rate=0.2)
    assert decision.state is State.ROLLED_BACK and "error rate" in decision.reason
    rollout = Rollout(plan)
    rollout.observe("candidate", np.full(100, 0.3))
    rollout.observe("champion", np.full(100, 0.3))
    assert rollout.decide().state is State.PROMOTED and rollout.weight == 100  # the next step is 100%


def test_the_operator_aborts_and_the_state_file_says_so(tmp_path):
    from engine.rollout import state
    from engine.rollout.driver import Driver
    from engine.settings import PerformanceSettings, RouteSettings

    route = RouteSettings(model="m", champion="1", rollout={"candidate": "2", "state_file": str(tmp_path / "s.json")})
    performance = {v: PerformanceSettings(task="binary", score="p:1") for v in ("1", "2")}
    driver = Driver(route, performance, tmp_path / "events")
    assert state.read(route).state == "running" and state.read(route).weight == 5
    state.give_command(route, "pause")
    assert driver.tick(now=10.0).state is State.PAUSED and state.read(route).state == "paused"
    state.give_command(route, "abort")
    assert driver.tick(now=20.0).state is State.ROLLED_BACK
    saved = state.read(route)
    assert saved.state == "rolled_back" and "operator" in saved.reason and not state.command_file(route).exists()
    import getpass

    import pyarrow.parquet as pq

    assert f"operator {getpass.getuser()}@" in saved.reason  # who gave it, in the state and the audit trail
    audit = pq.read_table(tmp_path / "events" / "kind=audit").to_pylist()
    assert any(a["event"] == "rollout" and f"aborted by the operator {getpass.getuser()}@" in a["detail"]
               for a in audit), audit
    assert state.effective(route, saved).split == {}
    resumed = Driver(route, performance, None)  # a restarted observer: where it stood
    assert resumed.rollout.state is State.ROLLED_BACK and resumed.rollout.weight == 0


def test_drift_only_the_candidate_raised_and_an_estimated_drop_roll_back():
    plan = Plan(steps=(5, 100), min_labelled_rows=100, metric="log_loss", margin=0.0, alpha=0.05,
                rollback_on_drift=True, max_estimated_drop=0.05)
    assert Rollout(plan).guard(drifted=[], estimated_drop=0.01) is None
    decision = Rollout(plan).guard(drifted=["probabilities:1"])
    assert decision.state is State.ROLLED_BACK and "probabilities:1" in decision.reason
    decision = Rollout(plan).guard(estimated_drop=0.08)
    assert decision.state is State.ROLLED_BACK and "estimated accuracy" in decision.reason


def test_a_command_is_removed_only_once_the_state_says_what_it_did(tmp_path, monkeypatch):
    """`scorewire rollout` reads the state as soon as its command file is gone: the state must
    be written first (a resume that read the old "paused" failed an integration test)."""
    from engine.rollout import state
    from engine.rollout.driver import Driver
    from engine.settings import PerformanceSettings, RouteSettings

    route = RouteSettings(model="m", champion="1", rollout={"candidate": "2", "state_file": str(tmp_path / "s.json")})
    driver = Driver(route, {v: PerformanceSettings(task="binary", score="p:1") for v in ("1", "2")}, None)
    written, write = [], state.write
    monkeypatch.setattr(state, "write", lambda r, saved: (written.append((saved.state, state.command_file(r).exists())),
                                                         write(r, saved)))
    for when, command, after in ((10.0, "pause", "paused"), (20.0, "resume", "running"), (30.0, "resume", "running")):
        state.give_command(route, command)
        driver.tick(now=when)
        assert state.read(route).state == after and not state.command_file(route).exists()
    # each state was written while its command still waited; the resume of a running rollout
    # wrote nothing, and its command is gone all the same (the CLI stops waiting)
    assert written == [("paused", True), ("running", True)]
