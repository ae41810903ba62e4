"""What a window needed to fire, as the report draws it: the statistic (Bonferroni: fixed per
column and window size, DriftMonitor.needed) and the p-value at each evaluation
(rule.needed_level). Checked against the decisions the monitor really takes."""

from __future__ import annotations

import numpy as np
import pytest

from engine.monitor.drift import DriftMonitor
from engine.monitor.rule import corrected_significance, needed_level
from engine.settings import MonitorSettings
from tests.engine.monitor.test_drift import FEATURES, SCHEMA, stream


@pytest.mark.parametrize("method", ["bonferroni", "bh"])
def test_the_level_needed_is_the_line_between_significant_and_not(rng, method):
    for _ in range(200):
        k = int(rng.integers(1, 40))
        p = np.where(rng.random(k) < 0.3, rng.random(k) * 1e-3, rng.random(k))
        level = needed_level(p, 0.05, method)
        assert (corrected_significance(p, 0.05, method) == (p <= level)).all(), (p, level)


def test_a_raise_is_the_first_evaluation_at_or_above_the_statistic_needed(rng):
    """Hysteresis 1: a column raises at its first evaluation whose statistic reaches
    `needed` (for KS: D, with min_effect in it; for chi-squared also PSI >= min_effect)."""
    reference = stream(rng, 5_000)
    settings = MonitorSettings(features=FEATURES, categorical=["f7"], reference="unused.parquet", window=1_000,
                               every=250, alpha=0.001, min_effect=0.05, consecutive=1)
    monitor = DriftMonitor("m:1", settings, SCHEMA, {n: reference[:, i] for i, n in enumerate(FEATURES)})
    monitor.keep_history = True
    x = stream(rng, 8_000, shift_from=4_000, shifted=(2,), shift=0.3)
    x[4_000:, 7] = np.where(rng.random(4_000) < 0.3, 0, x[4_000:, 7])  # more of category 0
    events = []
    for start in range(0, len(x), 500):
        events += monitor.observe({"x": x[start:start + 500]}, {})
    history = monitor.take_history()
    assert np.isfinite(monitor.needed).all()
    for feature in ("f2", "f7"):
        i = FEATURES.index(feature)
        raised = next(e for e in events if e.feature == feature and e.kind == "raise")
        before = [h[2][i, 0] for h in history if h[1] < raised.events]
        at = next(h[2][i, 0] for h in history if h[1] == raised.events)
        assert at >= monitor.needed[i, 0] and at == pytest.approx(raised.statistic)
        if feature == "f2":  # KS: nothing below it fired, so every earlier evaluation was below it
            assert np.nanmax(before) < monitor.needed[i, 0]
    # KS's D needed: the exact critical D at alpha / tests, or min_effect where that is larger
    kernel = monitor.columns[2].kernel
    critical = kernel.critical_statistic(0.001 / monitor.tests, 1_000)
    assert monitor.needed[2, 0] == pytest.approx(max(critical, 0.05), abs=1 / (1_000 * kernel.m))
