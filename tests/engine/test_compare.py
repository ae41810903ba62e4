"""`scorewire compare --task` on scoring logs the engine's writer wrote: each task's metrics
and paired tests equal scikit-learn's and SciPy's on the same rows, and a verdict that never
contradicts its own tests (a 4-class challenger with better log-loss and significantly worse
accuracy is "mixed", not BETTER); a binary comparison of what is not binary is refused."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import binomtest, ttest_rel
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from engine import cli
from engine.scorelog.compare import compare
from engine.scorelog.paired import paired_t
from tests.conftest import SEED
from tests.engine.logged import LogBuilder

EPS = np.finfo(np.float64).eps


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--log-level", "WARNING", *args])
    out, err = capsys.readouterr()
    return code, out, err


def logged(tmp_path, outputs: dict, y: np.ndarray):
    """Champion 1 and challenger 2 on the same one-row requests, every row labelled."""
    b = LogBuilder()
    ids = [f"q{i}" for i in range(len(y))]
    for version, role in (("1", "champion"), ("2", "challenger")):
        b.requests(version, role, ids, [1] * len(y), outputs[version])
    pq.write_table(pa.table({"request_id": ids, "label": y}), tmp_path / "labels.parquet")
    return str(b.write(tmp_path / "log")), str(tmp_path / "labels.parquet")


def mcnemar(right_champion, right_challenger) -> float:
    b, c = int(np.sum(right_champion & ~right_challenger)), int(np.sum(~right_champion & right_challenger))
    return binomtest(b, b + c).pvalue


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory):
    """A sharp champion, right on 85% of the rows and near-certain when wrong, and a soft
    challenger, right on 75%: lower log-loss, significantly lower accuracy."""
    rng = np.random.default_rng(SEED)
    n, k = 2000, 4
    y = rng.integers(0, k, n)
    outputs, matrices = {}, {}
    for version, right, top in (("1", 0.85, 0.9997), ("2", 0.75, 0.7)):
        picked = np.where(rng.random(n) < right, y, (y + rng.integers(1, k, n)) % k)
        p = np.full((n, k), (1 - top) / (k - 1))
        p[np.arange(n), picked] = top
        matrices[version] = p.astype(np.float32)
        outputs[version] = {"label": picked.astype(np.int64), "probabilities": matrices[version]}
    log, labels = logged(tmp_path_factory.mktemp("four"), outputs, y)
    return {"log": log, "labels": labels, "y": y, "p": {v: m.astype(np.float64) for v, m in matrices.items()}}


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # float32 rows, as models give them
def test_a_four_class_challenger_better_in_log_loss_worse_in_accuracy_is_mixed(four_classes, capsys):
    args = ["compare", "--log", four_classes["log"], "--model", "m", "--labels", four_classes["labels"]]
    code, out, err = run(capsys, *args, "--task", "multiclass", "--score", "probabilities", "--json")
    assert code == 0, err
    (ch,) = json.loads(out)["challengers"]
    lab, y = ch["labelled"], four_classes["y"]
    assert lab["rows"] == len(y) and lab["columns"] == [f"out_probabilities_{j}" for j in range(4)]
    assert "auc" not in lab["champion"] and "paired_t_abs_error" not in lab
    losses = {}
    for side, version in (("champion", "1"), ("challenger", "2")):
        p = four_classes["p"][version]
        assert lab[side]["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(axis=1)), rel=1e-12)
        assert lab[side]["log_loss"] == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-9)
        losses[side] = -np.log(np.clip(p[np.arange(len(y)), y], EPS, 1 - EPS))
    right = {v: four_classes["p"][v].argmax(axis=1) == y for v in ("1", "2")}
    assert lab["mcnemar"]["pvalue"] == pytest.approx(mcnemar(right["1"], right["2"]), rel=1e-9)
    t = ttest_rel(losses["champion"], losses["challenger"])
    assert lab["paired_t_log_loss"]["pvalue"] == pytest.approx(t.pvalue, rel=1e-6, abs=1e-300)
    assert lab["paired_t_log_loss"]["statistic"] == pytest.approx(t.statistic, rel=1e-9)
    # the premise: better log-loss, worse accuracy, both significant
    assert lab["challenger"]["log_loss"] < lab["champion"]["log_loss"] and t.pvalue < 0.05
    assert lab["challenger"]["accuracy"] < lab["champion"]["accuracy"] and lab["mcnemar"]["pvalue"] < 0.05
    assert "BETTER" not in ch["verdict"] and "WORSE" not in ch["verdict"]
    assert ch["verdict"].startswith("challenger 2: mixed at 0.05"), ch["verdict"]
    assert "paired t-test on per-row log-loss favours the challenger (0." in ch["verdict"]
    assert "McNemar's exact test on accuracy favours the champion (0." in ch["verdict"]
    # what compare said before --task: a binary reading of column 1, now refused
    code, out, err = run(capsys, *args, "--score", "out_probabilities_1")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "--task binary takes labels 0 or 1; the labels file has 2, 3 too" in err and "--task multiclass" in err
    code, _, err = run(capsys, *args)
    assert code == 2 and "a probability matrix of 3 or more columns: --task multiclass" in err, err
    code, table, _ = run(capsys, *args, "--task", "multiclass")  # the one float matrix, by default
    assert code == 0 and "--task multiclass, score probabilities, predicted the argmax of probabilities" in table
    assert "  verdict: challenger 2: mixed at 0.05" in table


def test_regression_errors_and_their_paired_tests(tmp_path, capsys):
    rng = np.random.default_rng(SEED + 1)
    n = 500
    y = rng.normal(size=n) * 3
    predictions = {"1": y + rng.normal(scale=1.0, size=n), "2": y + rng.normal(scale=0.7, size=n)}
    outputs = {v: {"variable": p.astype(np.float32)} for v, p in predictions.items()}
    log, labels = logged(tmp_path, outputs, y)
    code, out, err = run(capsys, "compare", "--log", log, "--model", "m", "--labels", labels, "--task", "regression",
                         "--json")
    assert code == 0, err
    (ch,) = json.loads(out)["challengers"]
    lab = ch["labelled"]
    assert lab["score"] == "variable" and "mcnemar" not in lab and "accuracy" not in lab["champion"]
    errors = {}
    for side, version in (("champion", "1"), ("challenger", "2")):
        s = outputs[version]["variable"].astype(np.float64)
        assert lab[side]["mae"] == pytest.approx(mean_absolute_error(y, s), rel=1e-9)
        assert lab[side]["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, s)), rel=1e-9)
        errors[side] = s - y
    for test, f in (("paired_t_abs_error", np.abs), ("paired_t_squared_error", np.square)):
        t = ttest_rel(f(errors["champion"]), f(errors["challenger"]))
        assert lab[test]["statistic"] == pytest.approx(t.statistic, rel=1e-9)
        assert lab[test]["pvalue"] == pytest.approx(t.pvalue, rel=1e-6, abs=1e-300)
        assert t.pvalue < 0.05 and lab[test]["favours"] == "challenger"
    assert ch["verdict"].startswith("challenger 2 is BETTER at 0.05: paired t-test on per-row absolute error (MAE)")
    # a prediction read as a probability: refused, naming the task
    code, out, err = run(capsys, "compare", "--log", log, "--model", "m", "--labels", labels, "--score", "variable")
    assert code == 2 and "out_variable holds values from" in err and "not probabilities" in err
    assert "--task regression" in err
    code, _, err = run(capsys, "compare", "--log", log, "--model", "m", "--task", "regression", "--predicted", "x")
    assert code == 2 and "--predicted is for --task binary" in err


def test_binary_numbers_and_a_verdict_that_names_every_test(tmp_path):
    rng = np.random.default_rng(SEED + 2)
    n = 1500
    truth = rng.random(n)
    y = (rng.random(n) < truth).astype(np.int64)
    p = {v: np.clip(truth + rng.normal(scale=noise, size=n), 0, 1) for v, noise in (("1", 0.25), ("2", 0.05))}
    outputs = {v: {"probabilities": np.c_[1 - q, q].astype(np.float32)} for v, q in p.items()}
    log, labels = logged(tmp_path, outputs, y)
    (ch,) = compare(log, "m", labels)["challengers"]
    lab = ch["labelled"]
    assert lab["score"] == "probabilities:1" and lab["predicted"] == "out_probabilities_1 > 0.5"
    right, losses = {}, {}
    for side, version in (("champion", "1"), ("challenger", "2")):
        s = outputs[version]["probabilities"][:, 1].astype(np.float64)
        right[side] = (s > 0.5) == y
        assert lab[side]["accuracy"] == pytest.approx(accuracy_score(y, s > 0.5), rel=1e-12)
        assert lab[side]["log_loss"] == pytest.approx(log_loss(y, s, labels=[0, 1]), rel=1e-9)
        assert lab[side]["auc"] == pytest.approx(roc_auc_score(y, s), rel=1e-9)
        q = np.clip(s, EPS, 1 - EPS)
        losses[side] = -(y * np.log(q) + (1 - y) * np.log(1 - q))
    assert lab["mcnemar"]["pvalue"] == pytest.approx(mcnemar(right["champion"], right["challenger"]), rel=1e-9)
    t = ttest_rel(losses["champion"], losses["challenger"])
    assert lab["paired_t_log_loss"]["pvalue"] == pytest.approx(t.pvalue, rel=1e-6, abs=1e-300)
    significant = [p < 0.05 for p in (t.pvalue, lab["mcnemar"]["pvalue"])]
    assert significant[0] and ch["verdict"].startswith("challenger 2 is BETTER at 0.05: paired t-test on per-row "
                                                       "log-loss: "), ch["verdict"]
    assert "McNemar's exact test on accuracy: " in ch["verdict"]
    assert ch["verdict"].endswith("(not significant)") != significant[1]


def test_the_paired_t_test_at_its_edges():
    a = np.array([1.0, 2.0, 3.0])
    assert paired_t(a, a) == {"statistic": 0.0, "pvalue": 1.0}  # the same losses: no difference
    assert paired_t(a + 1, a) == {"statistic": np.inf, "pvalue": 0.0}  # the challenger 1 lower on every row
    assert paired_t(a[:1], a[:1] + 1) == {"statistic": 0.0, "pvalue": 1.0}  # one row tells nothing
