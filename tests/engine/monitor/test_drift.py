"""DriftMonitor on synthetic streams: a known shift is caught within one window, nothing
else alerts; a long stationary stream stays within the family-wise alpha."""

from __future__ import annotations

import numpy as np
import pytest

from engine.codec.validate import ModelSchema, TensorSpec
from engine.monitor.drift import DriftMonitor, MonitorConfigError, corrected_significance
from engine.settings import MonitorSettings

FEATURES = [f"f{i}" for i in range(8)]
SCHEMA = ModelSchema(
    inputs=(TensorSpec("x", "FP32", np.dtype("<f4"), (-1, 8)),),
    outputs=(TensorSpec("label", "INT64", np.dtype("<i8"), (-1,)), TensorSpec("proba", "FP32", np.dtype("<f4"), (-1, 2))),
)


def stream(rng, rows: int, shift_from: int | None = None, shifted=(2, 5), shift=0.25):
    """8 features: 7 continuous N(0,1), f7 categorical 0..4; after `shift_from` the mean of
    the `shifted` columns moves by `shift` standard deviations."""
    x = rng.normal(size=(rows, 8)).astype(np.float32)
    x[:, 7] = rng.integers(0, 5, rows)
    if shift_from is not None:
        for c in shifted:
            x[shift_from:, c] += shift
    return x


def make(rng, **overrides) -> DriftMonitor:
    reference = stream(rng, 10_000)
    ref = {name: reference[:, i] for i, name in enumerate(FEATURES)}
    options = dict(window=10_000, every=1_000, alpha=0.001, min_effect=0.05, consecutive=2)
    settings = MonitorSettings(features=FEATURES, categorical=["f7"], reference="unused.parquet",
                               **{**options, **overrides})
    return DriftMonitor("m:1", settings, SCHEMA, ref)


def feed(monitor: DriftMonitor, x: np.ndarray, batch: int = 256):
    events = []
    for start in range(0, len(x), batch):
        events += monitor.observe({"x": x[start : start + batch]}, {})
    return events


def test_a_mean_shift_in_two_features_alerts_within_one_window(rng):
    monitor = make(rng)
    onset = 30_000
    events = feed(monitor, stream(rng, 60_000, shift_from=onset))
    raised = {e.feature: e for e in events if e.kind == "raise"}
    assert set(raised) == {"f2", "f5"}, [(e.kind, e.feature, e.events) for e in events]
    for e in raised.values():
        assert onset < e.events <= onset + 10_000  # within one window of the onset
        assert e.effect >= 0.05 and e.pvalue <= 0.001 / 8
    assert monitor.state["f2"].alert and monitor.state["f5"].alert
    assert not any(monitor.state[f].alert for f in FEATURES if f not in ("f2", "f5"))


def test_alert_clears_after_the_stream_returns(rng):
    monitor = make(rng)
    x = stream(rng, 60_000, shift_from=20_000)
    x[40_000:, [2, 5]] -= 0.25  # back to the reference distribution
    events = feed(monitor, x)
    kinds = [(e.feature, e.kind) for e in events]
    assert ("f2", "raise") in kinds and ("f2", "clear") in kinds
    assert not monitor.state["f2"].alert


@pytest.mark.slow
def test_stationary_million_events_stay_within_family_wise_alpha(rng):
    """1,000 evaluations at family-wise alpha 0.001 (Bonferroni over 8 columns): about 1
    falsely drifting evaluation is expected, and an alert needs 2 in a row."""
    monitor = make(rng, min_effect=0.0)
    significant = 0
    events = []
    for _ in range(10):
        x = stream(rng, 100_000)
        for start in range(0, len(x), 1000):
            events += monitor.observe({"x": x[start : start + 1000]}, {})
            significant += sum(st.drifting for st in monitor.state.values()) if monitor.full else 0
    assert monitor.events == 1_000_000 and monitor.evaluations == 991
    assert significant <= 991 * 0.001 + 3 * np.sqrt(991 * 0.001) + 1
    assert len([e for e in events if e.kind == "raise"]) <= 1


def test_prediction_drift_on_outputs(rng):
    reference = stream(rng, 10_000)
    ref = {name: reference[:, i] for i, name in enumerate(FEATURES)}
    ref["proba:1"] = rng.uniform(size=10_000)
    settings = MonitorSettings(features=FEATURES, categorical=["f7"], outputs=["proba:1"], reference="r.parquet",
                               window=2_000, every=500, consecutive=1, min_effect=0.05)
    monitor = DriftMonitor("m:1", settings, SCHEMA, ref)
    x = stream(rng, 6_000)
    proba = np.stack([1 - rng.uniform(size=6_000) ** 3, rng.uniform(size=6_000) ** 3], axis=1)  # skewed
    events = monitor.observe({"x": x}, {"proba": proba})
    assert [e.feature for e in events if e.kind == "raise"] == ["proba:1"]


def test_batch_sizes_do_not_change_what_is_seen(rng):
    """The same stream observed in one batch, in batches of 1,000 and in odd sizes (1, 7,
    999, ...) gives the same events, evaluations and statistics; the statistics and p-values
    are SciPy's on the last window, for continuous, categorical and output columns."""
    import scipy.stats

    reference = stream(rng, 4_000)
    ref = {name: reference[:, i] for i, name in enumerate(FEATURES)}
    ref["proba:1"] = rng.uniform(size=4_000)
    settings = MonitorSettings(features=FEATURES, categorical=["f7"], outputs=["proba:1"], reference="r.parquet",
                               window=1_500, every=400, consecutive=1, min_effect=0.05)
    x = stream(rng, 9_000, shift_from=5_000)
    x[::97, 1] = np.nan  # NaNs are skipped by the continuous windows
    proba = np.stack([1 - rng.uniform(size=9_000) ** 2, rng.uniform(size=9_000) ** 2], axis=1).astype(np.float32)
    runs = []
    for sizes in ([9_000], [1_000] * 9, [1, 7, 999, 3, 2_500, 400, 1_590, 3_500]):
        monitor = DriftMonitor("m:1", settings, SCHEMA, ref)
        events, start = [], 0
        for size in sizes:
            events += monitor.observe({"x": x[start : start + size]}, {"proba": proba[start : start + size]})
            start += size
        runs.append(([(e.kind, e.feature, e.events, e.statistic, e.pvalue) for e in events], monitor.evaluations,
                     {name: (st.statistic, st.pvalue) for name, st in monitor.state.items()}))
    assert runs[0] == runs[1] == runs[2]
    events, evaluations, states = runs[0]
    assert evaluations == (9_000 - 1_600) // 400 + 1  # the first window is full at 1,600 (a boundary)
    raised = {(kind, feature) for kind, feature, *_ in events}
    assert raised >= {("raise", "f2"), ("raise", "f5"), ("raise", "proba:1")}
    end = 9_000 // 400 * 400  # the last evaluation
    last = x[end - 1_500 : end]
    for i in (0, 2, 5):
        expected = scipy.stats.ks_2samp(last[:, i], ref[FEATURES[i]])
        assert states[FEATURES[i]] == pytest.approx((expected.statistic, expected.pvalue), rel=1e-9)
    clean = x[:end, 1][~np.isnan(x[:end, 1])][-1_500:]
    assert states["f1"] == pytest.approx(tuple(scipy.stats.ks_2samp(clean, ref["f1"])), rel=1e-9)
    expected = scipy.stats.ks_2samp(proba[end - 1_500 : end, 1], ref["proba:1"])
    assert states["proba:1"][0] == pytest.approx(expected.statistic)


def test_benjamini_hochberg_and_bonferroni():
    p = np.array([0.0001, 0.004, 0.02, 0.3])
    assert corrected_significance(p, 0.05, "bonferroni").tolist() == [True, True, False, False]
    assert corrected_significance(p, 0.05, "bh").tolist() == [True, True, True, False]


def test_config_errors_name_the_problem(rng):
    ref = {name: np.zeros(10) for name in FEATURES}
    with pytest.raises(MonitorConfigError, match="names 3 columns, but input 'x' has shape"):
        DriftMonitor("m:1", MonitorSettings(features=["a", "b", "c"], reference="r"), SCHEMA, ref)
    with pytest.raises(MonitorConfigError, match="reference has no column"):
        DriftMonitor("m:1", MonitorSettings(features=FEATURES, reference="r"), SCHEMA, {"f0": np.zeros(3)})
    with pytest.raises(MonitorConfigError, match="use 'name' for a \\[rows\\] output"):
        DriftMonitor("m:1", MonitorSettings(features=FEATURES, outputs=["proba"], reference="r"), SCHEMA, ref)


def test_warm_up_compiles_the_kernels_and_leaves_the_windows_alone(rng):
    """A server warms its monitors before it says ready: a first compile takes seconds, and
    batches arriving meanwhile would fill the monitor's queue."""
    from kernels.ks_window import _advance_columns
    from kernels.sliding_ks import _gather_columns

    monitor = make(rng)
    monitor.warm_up()
    assert _advance_columns.signatures
    assert any(str(sig[0]).startswith("array(float32") for sig in _gather_columns.signatures)
    assert monitor.events == 0 and monitor.evaluations == 0
    assert all(c.kernel.n == 0 for c in monitor.columns)
    events = feed(monitor, stream(rng, 12_000))  # and it monitors as before
    assert monitor.events == 12_000 and monitor.evaluations == 3 and not events


def test_features_default_to_the_reference_columns_less_the_outputs(rng):
    """Without monitor.features the reference file's columns name the features, in its order,
    and those monitor.outputs names are outputs; a width that does not match says how to fix it."""
    reference = stream(rng, 5_000)
    ref = {name: reference[:, i] for i, name in enumerate(FEATURES)}
    ref["proba:1"] = rng.random(5_000)
    settings = MonitorSettings(outputs=["proba:1"], categorical=["f7"], reference="unused.parquet", window=1_000)
    monitor = DriftMonitor("m:1", settings, SCHEMA, ref)
    assert monitor.features == FEATURES
    assert [c.name for c in monitor.columns] == FEATURES + ["proba:1"]
    assert [c.index for c in monitor.columns if not c.from_output] == list(range(8))
    del ref["f3"]
    with pytest.raises(MonitorConfigError, match="names 7 columns, but input 'x' has shape.*name them in monitor.features"):
        DriftMonitor("m:1", settings, SCHEMA, ref)
    with pytest.raises(MonitorConfigError, match=r"monitor.categorical lists \['f3'\]"):
        DriftMonitor("m:1", MonitorSettings(categorical=["f3"], reference="unused.parquet"), SCHEMA, ref)
