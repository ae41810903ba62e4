"""`scorewire compare` on a split's arms, from scoring logs the engine's writer wrote: each
arm against the champion on the labelled rows of each (different requests, nothing paired).
The numbers equal scikit-learn's, SciPy's Welch test and the sequences the rollout keeps
(engine/rollout/decide.py) on the same rows; a clearly worse arm is "arm worse", an equal
one "no difference shown yet", and a fixed-horizon test read where the always-valid
interval says nothing is named as disagreeing."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import ttest_ind
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, roc_auc_score

from engine import cli
from engine.performance.sequence import PairedSequence
from engine.rollout.decide import Plan, Rollout
from engine.scorelog.arms import ALWAYS_VALID, FIXED_HORIZON, shows
from tests.conftest import SEED
from tests.engine.logged import LogBuilder

EPS = np.finfo(np.float64).eps


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--log-level", "WARNING", *args])
    out, err = capsys.readouterr()
    return code, out, err


def logged(tmp_path, sides: list[tuple[str, str, dict, np.ndarray, bool]], unlabelled: set[str] = frozenset()):
    """Each side (version, role, outputs, labels, routed): one-row requests of its own; routed
    ones carry a routing key (the split chose them: "sticky"), the others none ("default",
    as before a split). Every row labelled but those whose id is in `unlabelled`."""
    b = LogBuilder()
    ids, ys = [], []
    for version, role, outputs, y, routed in sides:
        mine = [f"{version}-{'k' if routed else 'd'}{i}" for i in range(len(y))]
        b.requests(version, role, mine, [1] * len(y), outputs, keys=mine if routed else None)
        kept = [i for i, rid in enumerate(mine) if rid not in unlabelled]
        ids += [mine[i] for i in kept]
        ys += [y[i] for i in kept]
    pq.write_table(pa.table({"request_id": ids, "label": np.asarray(ys)}), tmp_path / "labels.parquet")
    return str(b.write(tmp_path / "log")), str(tmp_path / "labels.parquet")


def binary(probability: np.ndarray) -> dict:
    return {"probabilities": np.c_[1 - probability, probability].astype(np.float32)}


def losses(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    q = np.clip(s, EPS, 1 - EPS)
    return -(y * np.log(q) + (1 - y) * np.log(1 - q))


@pytest.fixture(scope="module")
def ab(tmp_path_factory):
    """Champion 1 (1200 rows routed by the split, 100 from before it), arm 2 clearly worse
    (its scores turned around: 1 - truth), arm 3 drawn as the champion is; 20 of arm 2's
    rows have no label."""
    rng = np.random.default_rng(SEED + 10)
    made: dict = {}
    sides = []
    for version, role, n, routed, turned in (("1", "champion", 1200, True, False), ("1", "champion", 100, False, True),
                                             ("2", "arm", 600, True, True), ("3", "arm", 600, True, False)):
        truth = rng.random(n)
        y = (rng.random(n) < truth).astype(np.int64)
        p = np.clip(truth + rng.normal(scale=0.1, size=n), 0, 1)
        p = 1 - p if turned else p
        outputs = binary(p)
        sides.append((version, role, outputs, y, routed))
        if routed:
            made[version] = {"s": outputs["probabilities"][:, 1].astype(np.float64), "y": y}
    unlabelled = {f"2-k{i}" for i in range(20)}
    log, labels = logged(tmp_path_factory.mktemp("ab"), sides, unlabelled)
    made["2"] = {k: v[20:] for k, v in made["2"].items()}
    return {"log": log, "labels": labels, "made": made}


def test_each_arm_against_the_champion_equals_a_direct_computation(ab, capsys):
    code, out, err = run(capsys, "compare", "--log", ab["log"], "--model", "m", "--labels", ab["labels"], "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["challengers"] == [] and [a["version"] for a in report["arms"]] == ["2", "3"]
    made, c = ab["made"], ab["made"]["1"]
    for arm in report["arms"]:
        a = made[arm["version"]]
        assert arm["rows"] == {"champion": 1200, "arm": 600}  # the champion's 100 rows from before the split: out
        assert arm["left_out"] == {"champion": 100, "arm": 0} and arm["champion_versions"] == ["1"]
        lab = arm["labelled"]
        assert lab["rows"] == {"champion": 1200, "arm": len(a["y"])} and lab["metric"] == "log_loss"
        assert lab["score"] == "probabilities:1" and lab["alpha"] == 0.05 and lab["tuning_rows"] == 1000
        for side, d in (("champion", c), ("arm", a)):
            m = lab["metrics"][side]
            assert m["accuracy"] == pytest.approx(accuracy_score(d["y"], d["s"] > 0.5), rel=1e-12)
            assert m["log_loss"] == pytest.approx(log_loss(d["y"], d["s"], labels=[0, 1]), rel=1e-9)
            assert m["auc"] == pytest.approx(roc_auc_score(d["y"], d["s"]), rel=1e-9)
        arm_values, champion_values = losses(a["s"], a["y"]), losses(c["s"], c["y"])
        # (a) the sequences of each side at alpha / 2, their bounds subtracted ...
        x, y = PairedSequence(0.025, 1000), PairedSequence(0.025, 1000)
        x.add(arm_values)
        y.add(champion_values)
        (ea, la, ua), (ec, lc, uc) = x.bounds(), y.bounds()
        av = lab["always_valid"]
        assert av["label"] == ALWAYS_VALID == "always-valid (safe to read at any time)"
        assert [av["estimate"], av["lower"], av["upper"]] == pytest.approx([ea - ec, la - uc, ua - lc], rel=1e-12)
        # ... which is what the rollout's decision computes for a candidate and its champion
        rollout = Rollout(Plan(steps=(50.0,), min_labelled_rows=1000, metric="log_loss", margin=0.0, alpha=0.05))
        rollout.observe("candidate", arm_values)
        rollout.observe("champion", champion_values)
        assert [av["estimate"], av["lower"], av["upper"]] == pytest.approx(list(rollout.difference()), rel=1e-12)
        # (b) Welch's t-test
        t = ttest_ind(arm_values, champion_values, equal_var=False)
        w = lab["welch"]
        assert w["label"] == FIXED_HORIZON == "fixed-horizon: valid only if this is the one look planned in advance"
        assert w["statistic"] == pytest.approx(t.statistic, rel=1e-9)
        assert w["pvalue"] == pytest.approx(t.pvalue, rel=1e-6, abs=1e-300)
        interval = t.confidence_interval(0.95)
        assert [w["lower"], w["upper"]] == pytest.approx([interval.low, interval.high], rel=1e-9)
    worse, equal = report["arms"]
    assert worse["labelled"]["always_valid"]["lower"] > 0 and worse["decision"] == "arm worse"
    assert worse["verdict"].startswith("arm worse: log-loss "), worse["verdict"]
    assert "fixed-horizon" not in worse["verdict"]  # Welch's test agrees: not mentioned
    av = equal["labelled"]["always_valid"]
    assert av["lower"] < 0 < av["upper"] and equal["decision"] == "no difference shown yet"
    assert equal["verdict"].startswith("no difference shown yet: log-loss "), equal["verdict"]
    # the table says the same, each test under its label
    code, table, _ = run(capsys, "compare", "--log", ab["log"], "--model", "m", "--labels", ab["labels"])
    assert code == 0
    assert "arm 2 (a split: other requests than the champion's, nothing paired): 600 rows; champion 1: 1,200" in table
    assert "labelled rows: arm 580, champion 1,200" in table
    assert "  not routed by the split, left out: arm 0, champion 100 rows" in table
    assert table.count(f"    {ALWAYS_VALID}: 95% interval [") == 2
    assert table.count(f"    {FIXED_HORIZON}: Welch's t = ") == 2
    assert "  verdict: arm worse: " in table and "  verdict: no difference shown yet: " in table


def test_accuracy_is_worse_when_lower_and_without_labels_only_rows(ab, capsys):
    args = ["compare", "--log", ab["log"], "--model", "m", "--json"]
    code, out, err = run(capsys, *args, "--labels", ab["labels"], "--metric", "accuracy", "--alpha", "0.01",
                         "--tuning-rows", "500")
    assert code == 0, err
    worse = json.loads(out)["arms"][0]
    lab, a, c = worse["labelled"], ab["made"]["2"], ab["made"]["1"]
    assert lab["metric"] == "accuracy" and lab["alpha"] == 0.01 and lab["tuning_rows"] == 500
    right = {side: ((d["s"] > 0.5) == (d["y"] == 1)).astype(np.float64) for side, d in (("arm", a), ("champion", c))}
    x, y = PairedSequence(0.005, 500), PairedSequence(0.005, 500)
    x.add(right["arm"])
    y.add(right["champion"])
    (ea, la, ua), (ec, lc, uc) = x.bounds(), y.bounds()
    av = lab["always_valid"]
    assert [av["estimate"], av["lower"], av["upper"]] == pytest.approx([ea - ec, la - uc, ua - lc], rel=1e-12)
    assert av["upper"] < 0 and worse["decision"] == "arm worse" and worse["verdict"].startswith("arm worse: accuracy")
    t = ttest_ind(right["arm"], right["champion"], equal_var=False)
    assert lab["welch"]["lower"] == pytest.approx(t.confidence_interval(0.99).low, rel=1e-9)
    # without labels: the rows of each arm, nothing else
    code, out, err = run(capsys, *args)
    assert code == 0, err
    for arm in json.loads(out)["arms"]:
        assert arm["rows"] == {"champion": 1200, "arm": 600} and "labelled" not in arm and arm["decision"] is None
    code, out, _ = run(capsys, *args[:-1])
    assert "  verdict: no verdict without labels (--labels adds the tests)" in out and "Welch" not in out


def errors(mean: float, n: int, seed: int) -> np.ndarray:
    """n absolute errors of exactly this mean and standard deviation 0.3 (a fixed grid, shuffled)."""
    z = np.linspace(-1.7, 1.7, n)
    return mean + 0.3 * np.random.default_rng(seed).permutation((z - z.mean()) / z.std(ddof=1))


def test_regression_arms_better_worse_too_few_and_a_fixed_horizon_test_that_disagrees(tmp_path, capsys):
    """MAE per row, built so that every verdict is the same for any seed: arm 2 0.5 worse,
    arm 3 0.3 better, arm 4 0.06 worse (Welch's p about 0.002; the always-valid interval
    holds 0), arm 5 with 10 rows."""
    y = {"1": 500, "2": 500, "3": 500, "4": 500, "5": 10}
    mean = {"1": 1.0, "2": 1.5, "3": 0.7, "4": 1.06, "5": 1.0}
    sides, made = [], {}
    for i, (version, n) in enumerate(y.items()):
        labels = np.random.default_rng(SEED + i).normal(size=n) * 3
        prediction = (labels + errors(mean[version], n, SEED + 20 + i)).astype(np.float32)
        sides.append((version, "champion" if version == "1" else "arm", {"variable": prediction}, labels, True))
        made[version] = (prediction.astype(np.float64), labels)
    log, labels = logged(tmp_path, sides)
    code, out, err = run(capsys, "compare", "--log", log, "--model", "m", "--labels", labels, "--task", "regression",
                         "--json")
    assert code == 0, err
    arms = {a["version"]: a for a in json.loads(out)["arms"]}
    for version, arm in arms.items():
        lab = arm["labelled"]
        assert lab["metric"] == "mae" and lab["score"] == "variable"
        assert lab["metrics"]["arm"]["mae"] == pytest.approx(mean_absolute_error(made[version][1], made[version][0]),
                                                             rel=1e-9)
    assert arms["2"]["decision"] == "arm worse" and arms["3"]["decision"] == "arm better"
    assert arms["3"]["verdict"].startswith("arm better: MAE 0.7"), arms["3"]["verdict"]
    four = arms["4"]
    assert four["decision"] == "no difference shown yet" and four["labelled"]["welch"]["pvalue"] < 0.01
    assert four["labelled"]["welch"]["shows"] == "arm worse" and four["labelled"]["always_valid"]["shows"] is None
    assert "; the fixed-horizon test (Welch's t, p = 0.00" in four["verdict"], four["verdict"]
    assert four["verdict"].endswith("says arm worse, valid only if this is the one look planned in advance")
    five = arms["5"]
    assert five["labelled"]["always_valid"]["estimate"] is None and five["labelled"]["welch"]["pvalue"] is not None
    assert five["decision"] == "no difference shown yet"
    assert five["verdict"].startswith("no difference shown yet: 10 and 500 labelled rows (published from 30 "
                                      "labelled rows on each side)"), five["verdict"]
    # a metric of another task, and a log with neither challengers nor arms: refused
    code, out, err = run(capsys, "compare", "--log", log, "--model", "m", "--task", "regression", "--metric",
                         "accuracy")
    assert code == 2 and out == "" and "--metric accuracy: not a per-row metric of --task regression" in err
    b = LogBuilder()
    b.requests("1", "champion", ["a", "b"], [1, 1], {"variable": np.zeros(2, np.float32)})
    code, _, err = run(capsys, "compare", "--log", str(b.write(tmp_path / "alone")), "--model", "m")
    assert code == 2 and "model 'm' has no challenger or arm rows in" in err


def test_worse_is_in_the_metric_direction():
    assert shows("log_loss", 0.01, 0.2) == "arm worse" and shows("mae", -0.2, -0.01) == "arm better"
    assert shows("accuracy", 0.01, 0.2) == "arm better" and shows("accuracy", -0.2, -0.01) == "arm worse"
    assert shows("brier", -0.01, 0.2) is None and shows("rmse", None, None) is None
