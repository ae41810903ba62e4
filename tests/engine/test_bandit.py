"""The bandit split by simulation over many seeds, on the bandit code alone: rows go to the
arms by the weights, their labels come back, the weights move every round. A clearly worse
arm loses most of the traffic but never less than the floor; equal arms stay even on
average; the weights reach the workers through the split's state file."""

from __future__ import annotations

import numpy as np

from engine.rollout import state as saved_state
from engine.rollout.bandit import BanditDriver, Thompson
from engine.settings import BanditSettings, PerformanceSettings, RouteSettings

FLOOR = 5.0


def simulate(seed: int, losses: dict[str, float], rounds: int = 40, per_round: int = 200):
    """Per-row log losses exponential with each arm's mean; returns (rows each arm got, the
    lowest weight any arm had)."""
    rng = np.random.default_rng(seed)
    bandit = Thompson(list(losses), "log_loss", FLOOR, min_rows=50, seed=seed)
    weights = {arm: 100.0 / len(losses) for arm in losses}
    got = dict.fromkeys(losses, 0)
    lowest = 100.0
    for _ in range(rounds):
        counts = rng.multinomial(per_round, [weights[a] / 100 for a in losses])
        for arm, n in zip(losses, counts):
            bandit.observe(arm, rng.exponential(losses[arm], n))
            got[arm] += int(n)
        weights = bandit.weights() or weights
        lowest = min(lowest, *weights.values())
    return got, lowest


def test_a_worse_arm_loses_the_traffic_but_keeps_its_floor():
    shares = []
    for seed in range(100):
        got, lowest = simulate(seed, {"1": 0.3, "2": 0.45})
        shares.append(got["2"] / sum(got.values()))
        assert lowest >= FLOOR - 1e-9
    shares = np.array(shares)
    # a fixed 50/50 split sends it half; the bandit, after its first rounds, about the floor
    assert np.median(shares) < 0.15 and (shares < 0.3).mean() >= 0.95, np.percentile(shares, [50, 95])


def test_equal_arms_stay_even_on_average():
    shares = np.array([simulate(seed, {"1": 0.3, "2": 0.3})[0]["2"] / 8000 for seed in range(100)])
    assert abs(shares.mean() - 0.5) < 0.06, shares.mean()


def test_three_arms_the_best_one_gets_the_most():
    wins = sum(max((got := simulate(seed, {"1": 0.4, "2": 0.3, "3": 0.4})[0]), key=got.get) == "2"
               for seed in range(50))
    assert wins >= 48


def test_accuracy_is_better_when_higher():
    bandit = Thompson(["1", "2"], "accuracy", FLOOR, min_rows=50, seed=0)
    bandit.observe("1", np.ones(200) * (np.arange(200) % 10 != 0))  # 0.9
    bandit.observe("2", np.ones(200) * (np.arange(200) % 2 != 0))  # 0.5
    assert bandit.weights()["1"] > 90


def test_the_driver_writes_the_weights_the_workers_route_by(tmp_path):
    route = RouteSettings(model="m", champion="1", split={"1": 50, "2": 50}, split_policy="thompson",
                          bandit=BanditSettings(every_s=1, min_labelled_rows=50, state_file=tmp_path / "split.json"))
    perf = PerformanceSettings(task="binary", score="probabilities:1")
    driver = BanditDriver(route, {"1": perf, "2": perf})
    assert saved_state.effective(route, None).split == {"1": 50, "2": 50}  # nothing written yet
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    driver.labelled("1", "champion", np.where(labels == 1, 0.8, 0.2), labels)  # the champion is right
    driver.labelled("2", "arm", np.where(labels == 1, 0.3, 0.7), labels)  # the arm is wrong
    driver.labelled("2", "challenger", np.where(labels == 1, 0.9, 0.1), labels)  # a shadow's rows count for no arm
    assert driver.tick(now=0.0) is None  # not yet every_s
    weights = driver.tick(now=driver._next)
    assert weights is not None and weights["2"] == FLOOR and weights["1"] == 100 - FLOOR
    assert saved_state.effective(route, None).split == weights
    # a restarted observer resumes from the file
    assert BanditDriver(route, {"1": perf, "2": perf}).weights == weights
