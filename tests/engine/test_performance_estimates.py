"""Performance beyond the realized numbers, against the reference implementations on the same
data: CBPE's estimates against NannyML's and against the realized value; the alert against
its false-alarm rate and delay over many seeds; the champion-vs-challenger confidence
sequence against its coverage under continuous peeking over many seeds."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.isotonic import IsotonicRegression

from engine.batching.batch import Origin, ScoredBatch
from engine.performance.alert import Alerting, BadReference, Reference, load_reference
from engine.performance.estimate import Calibration, Isotonic, estimate
from engine.performance.join import Labels, PerformanceMonitor
from engine.performance.metrics import per_row, realized
from engine.performance.sequence import MIN_PAIRS, PairedSequence, half_width, tuning
from engine.settings import ModelSettings, PerformanceSettings, Settings


def binary(n: int, shift: float, seed: int, flip: float = 0.0):
    """A miscalibrated binary model (score = true probability ** 1.5); `shift` moves the
    feature (covariate shift: CBPE's case), `flip` of the labels are flipped (concept drift:
    the model is worse)."""
    rng = np.random.default_rng(seed)
    f = rng.normal(shift, 1, n)
    p = 1 / (1 + np.exp(-2 * f))
    y = (rng.random(n) < p).astype(int)
    y = np.where(rng.random(n) < flip, 1 - y, y)
    return p ** 1.5, y


def multiclass(n: int, shift: float, seed: int, k: int = 4):
    rng = np.random.default_rng(seed)
    centres = np.linspace(-2, 2, k)
    f = rng.normal(shift, 1.5, n)
    logits = -(f[:, None] - centres[None, :]) ** 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    scores = p ** 0.7
    return scores / scores.sum(axis=1, keepdims=True), y


def nannyml_cbpe(task: str, ref_scores, ref_labels, scores) -> dict[str, float]:
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
    import nannyml
    import pandas as pd

    warnings.filterwarnings("ignore")
    if task == "binary":
        columns = {"y_pred_proba": "p"}
        ref = pd.DataFrame({"p": ref_scores, "y_pred": (ref_scores > 0.5).astype(int), "y_true": ref_labels})
        ana = pd.DataFrame({"p": scores, "y_pred": (scores > 0.5).astype(int)})
        metrics = ["accuracy", "roc_auc"]
    else:
        k = ref_scores.shape[1]
        columns = {"y_pred_proba": {j: f"p{j}" for j in range(k)}}
        ref = pd.DataFrame({f"p{j}": ref_scores[:, j] for j in range(k)}
                           | {"y_pred": ref_scores.argmax(axis=1), "y_true": ref_labels})
        ana = pd.DataFrame({f"p{j}": scores[:, j] for j in range(k)} | {"y_pred": scores.argmax(axis=1)})
        metrics = ["accuracy"]
    cbpe = nannyml.CBPE(**columns, y_pred="y_pred", y_true="y_true", metrics=metrics, chunk_size=len(scores),
                        problem_type=f"classification_{task}")
    cbpe.fit(ref)
    row = cbpe.estimate(ana).to_df().iloc[-1]
    names = {"accuracy": "accuracy", "roc_auc": "auc"}
    return {names[m]: float(row[(m, "value")]) for m in metrics}


def test_isotonic_calibration_is_sklearns():
    rng = np.random.default_rng(3)
    x = rng.random(3000)
    x[:200] = np.round(x[:200], 2)  # ties
    y = (rng.random(3000) < x ** 2).astype(float)
    grid = np.linspace(-0.2, 1.2, 2001)
    expected = IsotonicRegression(out_of_bounds="clip").fit(x, y).predict(grid)
    np.testing.assert_allclose(Isotonic(x, y)(grid), expected, atol=1e-12)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
@pytest.mark.parametrize("shift", [0.0, 0.8])
def test_cbpe_equals_nannymls_and_tracks_the_realized_value(task, shift):
    make = binary if task == "binary" else multiclass
    ref_scores, ref_labels = make(8000, 0.0, seed=1)
    scores, labels = make(3000, shift * (3 if task == "multiclass" else 1), seed=2)
    calibration = Calibration(task, ref_scores, ref_labels)
    ours = estimate(calibration, scores)
    theirs = nannyml_cbpe(task, ref_scores, ref_labels, scores)
    assert ours == pytest.approx(theirs, abs=1e-9)
    truth = realized(task, scores, labels)
    for metric, value in ours.items():  # no concept drift: the estimate is near what the labels say
        assert value == pytest.approx(truth[metric], abs=0.03), metric
    if shift:  # covariate shift moved the realized accuracy: the estimate followed it
        stationary = realized(task, *make(3000, 0.0, seed=4))["accuracy"]
        assert abs(truth["accuracy"] - stationary) > 0.03
        assert abs(ours["accuracy"] - truth["accuracy"]) < abs(truth["accuracy"] - stationary)


def alerting(**overrides) -> Alerting:
    settings = PerformanceSettings(**{"task": "binary", "score": "p:1", "window": 500, "every": 100, **overrides})
    scores, labels = binary(20_000, 0.0, seed=99)
    return Alerting("m", "1", settings, Reference(scores.astype(np.float64), labels.astype(np.float64)))


def run_alerts(alert: Alerting, seed: int, rows: int, flip: float) -> int | None:
    """Labelled rows after which the alert was raised (None: never), evaluating as the join does."""
    scores, labels = binary(rows, 0.0, seed, flip=flip)
    size, every = alert.settings.window, alert.settings.every
    for end in range(size, rows + 1, every):
        events = alert.evaluate("champion", scores[end - size:end], labels[end - size:end], end, 0)
        if any(e.kind == "raise" for e in events):
            return end
    return None


def test_the_alert_rarely_fires_on_a_stationary_model_and_soon_on_a_worse_one():
    seeds = range(120)
    false = sum(run_alerts(alerting(), seed, 5_000, 0.0) is not None for seed in seeds)
    # 46 overlapping evaluations per seed at alpha 0.001, 3 in a row needed: well under 1 seed in 20
    assert false / len(seeds) < 0.05, false
    delays = [run_alerts(alerting(), seed, 5_000, flip=0.1) for seed in range(50)]
    assert all(d is not None for d in delays), delays  # a tenth of the labels flipped
    assert np.median(delays) <= 1500  # measured: 950 (the first full window is 500, 3 evaluations in a row needed)


def test_the_alert_tests_as_scipy_and_needs_the_minimum_effect():
    from scipy.stats import ttest_ind

    alert = alerting(min_effect=0.5, consecutive=1)
    scores, labels = binary(500, 0.0, 7, flip=0.3)
    assert alert.evaluate("champion", scores, labels, 500, 0) == []  # significant, not 0.5 worse
    expected = ttest_ind(per_row("binary", "log_loss", scores, labels),
                         alert._reference["log_loss"], equal_var=False, alternative="greater").pvalue
    assert alert.last[("champion", "log_loss")] == pytest.approx(expected, rel=1e-12)
    assert alert.baseline == realized("binary", *binary(20_000, 0.0, 99))


def test_the_confidence_sequence_covers_under_continuous_peeking():
    """Over 400 seeds of 3,000 paired rows with no true difference, the sequence, read after
    every row from MIN_PAIRS on, excludes 0 at any moment in about alpha of them at most."""
    alpha, tune = 0.05, 1000
    r = tuning(alpha, tune)
    rng = np.random.default_rng(11)
    for kind in ("normal", "bernoulli"):
        if kind == "normal":
            d = rng.normal(0, 1, size=(400, 3000))
        else:  # accuracy differences: -1, 0, 1
            d = (rng.random((400, 3000)) < 0.3).astype(float) - (rng.random((400, 3000)) < 0.3)
        n = np.arange(1, d.shape[1] + 1)
        mean = np.cumsum(d, axis=1) / n
        var = (np.cumsum(d * d, axis=1) - n * mean ** 2) / np.maximum(n - 1, 1)
        width = half_width(n, np.sqrt(np.maximum(var, 0)), alpha, r)
        excluded = (np.abs(mean) > width)[:, MIN_PAIRS - 1:].any(axis=1)
        assert excluded.mean() <= alpha + 0.02, (kind, excluded.mean())
        # a fixed-horizon 95% interval read after every row is fooled far more often
        naive = (np.abs(mean) > 1.96 * np.sqrt(var / n))[:, MIN_PAIRS - 1:].any(axis=1)
        assert naive.mean() > 3 * max(excluded.mean(), 0.01)


def test_the_sequence_is_confseqs_normal_mixture_and_finds_a_real_difference():
    alpha, tune = 0.05, 1000
    sequence = PairedSequence(alpha, tune)
    rng = np.random.default_rng(5)
    d = rng.normal(0.2, 1, 2000)
    for chunk in np.array_split(d, 37):
        sequence.add(chunk)
    estimate_, lower, upper = sequence.bounds()
    assert estimate_ == pytest.approx(d.mean()) and sequence.sd == pytest.approx(d.std(ddof=1))
    # confseq's two-sided normal mixture bound on the sum, in units of sd (v = n, rho = 1 / r^2)
    rho = 1 / tuning(alpha, tune) ** 2
    v = len(d)
    bound = np.sqrt((v + rho) * (np.log(1 + v / rho) + 2 * np.log(1 / alpha)))
    assert upper - estimate_ == pytest.approx(bound * d.std(ddof=1) / v, rel=1e-9)
    assert lower > 0 and sequence.pvalue < alpha


def test_reference_files_are_checked(tmp_path):
    path = tmp_path / "ref.parquet"
    scores, labels = binary(500, 0.0, 1)
    pq.write_table(pa.table({"p:1": scores, "label": labels}), path)
    reference = load_reference(path, "binary", "p:1")
    assert len(reference.labels) == 500
    with pytest.raises(BadReference, match="no 'q:1' column"):
        load_reference(path, "binary", "q:1")
    pq.write_table(pa.table({"p:1": scores, "label": labels + 1}), path)
    with pytest.raises(BadReference, match="binary labels must be 0 or 1"):
        load_reference(path, "binary", "p:1")


def test_the_join_estimates_alerts_and_pairs_champion_with_challenger(tmp_path):
    """A model with a reference: CBPE over its scored rows, the baseline, events when its
    labels turn against it, and the challenger's paired difference over the same rows."""
    ref_scores, ref_labels = binary(5000, 0.0, 1)
    pq.write_table(pa.table({"p:1": ref_scores, "label": ref_labels}), tmp_path / "ref.parquet")
    performance = {"task": "binary", "score": "p:1", "window": 400, "every": 100, "label_ttl_s": 10,
                   "reference": str(tmp_path / "ref.parquet"), "consecutive": 2}
    settings = Settings(models=[ModelSettings(name="m", path="m.onnx", version=v, performance=performance)
                                for v in ("1", "2")], monitoring={"events_dir": str(tmp_path / "events")})
    pm = PerformanceMonitor(settings, thread=False)
    try:
        scores, labels = binary(2000, 0.0, 2, flip=0.2)
        worse = np.clip(scores + 0.2, 0, 1)  # the challenger: overconfident in class 1
        ids = [f"r{i}" for i in range(len(scores))]
        for a in range(0, len(scores), 100):
            for version, role, s in (("1", "champion", scores), ("2", "challenger", worse)):
                p = np.column_stack([1 - s[a:a + 100], s[a:a + 100]])
                pm._batch(ScoredBatch("m", version, role, {}, {"p": p}, np.zeros(100), np.zeros(100), 1, 100,
                                      tuple(range(101)), tuple(Origin(request_id=i) for i in ids[a:a + 100]), 0), 0)
            pm._labels(Labels("m", tuple(ids[a:a + 100]), np.ones(100, np.int64), labels[a:a + 100].astype(float)), 0)
            pm._publish()
        cal = Calibration("binary", ref_scores, ref_labels)
        assert pm.estimated[("m", "1", "champion")] == pytest.approx(estimate(cal, scores[-400:]), abs=1e-12)
        events = pq.read_table(tmp_path / "events" / "kind=performance").to_pylist()
        assert {(e["event"], e["version"], e["role"]) for e in events} >= {("raise", "1", "champion")}
        sequence = pm.models["m"].sequences[("1", "2")]
        d = per_row("binary", "log_loss", worse, labels) - per_row("binary", "log_loss", scores, labels)
        assert sequence.n == 2000 and sequence.mean == pytest.approx(d.mean(), rel=1e-9)
        lines = []
        pm.families(lambda name, kind, help_, samples: lines.extend((name + lab, v) for lab, v in samples),
                    lambda **kv: "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}")
        got = dict(lines)
        assert got['scorewire_performance_alert{model="m",version="1",role="champion",metric="log_loss"}'] == 1
        assert got['scorewire_performance_difference{model="m",champion="1",challenger="2",metric="log_loss",'
                   'bound="lower"}'] > 0  # the challenger's log loss is worse, and the sequence says so
    finally:
        pm.close()
    # what `scorewire report` shows from the folder: performance over time and the alerts
    history = pq.read_table(tmp_path / "events" / "kind=performance_history").to_pylist()
    last = [h for h in history if (h["version"], h["role"], h["metric"]) == ("1", "champion", "accuracy")][-1]
    assert last["realized"] == pytest.approx(realized("binary", scores[-400:], labels[-400:])["accuracy"])
    assert last["estimated"] == pytest.approx(estimate(cal, scores[-400:])["accuracy"])
    from engine.report import performance_section

    page = performance_section(tmp_path / "events", "m")
    assert page.count("<img") == 4  # accuracy, log_loss, brier, auc
    assert "raise 1 (champion)" in page


def test_labels_in_bulk_raise_the_alert_at_once():
    """One evaluation over a window of all-new rows counts for each `every` rows in it: a
    day's labels sent at once raise the alert, not three days later."""
    alert = alerting()  # window 500, every 100, consecutive 3
    scores, labels = binary(500, 0.0, 3, flip=0.3)
    events = alert.evaluate("champion", scores, labels, 500, 0)  # 500 new rows: counts as 5 evaluations
    assert {e.kind for e in events} == {"raise"}
    scores, labels = binary(500, 0.0, 4)  # the next bulk is fine: cleared at once too
    assert {e.kind for e in alert.evaluate("champion", scores, labels, 1000, 0)} == {"clear"}


def test_fairness_figures_equal_a_direct_computation_and_fairlearns(tmp_path):
    """spd and dir over the last window of scored rows, equal to numpy on the same rows and to
    fairlearn's demographic parity (difference: |spd|; ratio: min(dir, 1/dir)); an alert when
    dir leaves its band."""
    from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio

    monitor = {"features": ["f0", "group"], "reference": str(tmp_path / "ref.parquet")}
    fairness = {"protected": "group", "privileged": 1, "window": 400}
    settings = Settings(models=[ModelSettings(name="m", path="m.onnx", version="1", monitor=monitor,
                                              performance={"task": "binary", "score": "p:1"}, fairness=fairness)])
    pm = PerformanceMonitor(settings, thread=False)
    rng = np.random.default_rng(8)
    try:
        x = np.column_stack([rng.normal(size=1000), rng.integers(0, 3, 1000)]).astype(np.float32)
        p = np.clip(0.55 + 0.2 * (x[:, 1] == 1) - 0.1 * (x[:, 1] == 2) + rng.normal(0, 0.2, 1000), 0, 1)
        for a in range(0, 1000, 100):
            rows = slice(a, a + 100)
            pm._batch(ScoredBatch("m", "1", "champion", {"x": x[rows]}, {"p": np.column_stack([1 - p[rows], p[rows]])},
                                  np.zeros(100), np.zeros(100), 1, 100, (0, 100), (None,), 0), 0)
        pm._publish()
        fair = pm.models["m"].fairness["1"][0]
        figures = fair.figures()
        last = slice(600, 1000)
        privileged, favorable = x[last, 1] == 1, p[last] > 0.5
        spd = favorable[~privileged].mean() - favorable[privileged].mean()
        assert figures["spd"] == pytest.approx(spd, abs=1e-12)
        assert figures["dir"] == pytest.approx(favorable[~privileged].mean() / favorable[privileged].mean())
        groups = np.where(privileged, "privileged", "other")
        assert abs(figures["spd"]) == pytest.approx(
            demographic_parity_difference(favorable, favorable, sensitive_features=groups))
        assert min(figures["dir"], 1 / figures["dir"]) == pytest.approx(
            demographic_parity_ratio(favorable, favorable, sensitive_features=groups))
        assert fair.alert == (not 0.8 <= figures["dir"] <= 1.25) and fair.alert  # 0.55 vs 0.9 favourable
    finally:
        pm.close()
