"""A drift event names its window's rows by the observer's stamps (engine/monitor/rowmap.py):
the rows those stamps pick out of the whole stream are the ones the monitor tested -- SciPy's
KS D on them equals the event's -- though batches were dropped on the way to the monitor and
two roles' batches reached it regrouped."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from engine.monitor.drift import DriftMonitor
from engine.monitor.rowmap import RowMap
from engine.settings import MonitorSettings
from tests.engine.monitor.test_drift import FEATURES, SCHEMA, stream


def test_stretches_ranges_and_forgetting():
    rows = RowMap()
    rows.add(0, [(0, 10), (10, 5)], 15)  # consecutive stamps: one stretch
    assert len(rows) == 1 and rows.ranges(15, 15) == ((0, 15),)
    rows.add(15, [(40, 5), (20, 5)], 10)  # rows 15..19 never came (dropped), then out of order
    assert len(rows) == 3 and rows.ranges(25, 12) == ((13, 15), (40, 45), (20, 25))
    rows.add(25, None, 3)  # unstamped rows: a window holding any cannot be placed
    assert rows.ranges(28, 4) == () and rows.ranges(25, 4) == ((21, 25),)
    assert rows.ranges(25, 7) == ((43, 45), (20, 25))
    rows.forget_before(22)  # the stretches before the one holding the 22nd row
    assert rows.ranges(25, 3) == ((22, 25),) and rows.ranges(25, 12) == ()  # forgotten: not known


def test_the_event_names_the_rows_the_monitor_tested(rng):
    reference = stream(rng, 5_000)
    settings = MonitorSettings(features=FEATURES, categorical=["f7"], reference="unused.parquet", window=2_000,
                               every=500, alpha=0.001, min_effect=0.05, consecutive=1)
    monitor = DriftMonitor("m:1", settings, SCHEMA, {n: reference[:, i] for i, n in enumerate(FEATURES)})
    x = stream(rng, 12_000, shift_from=6_000, shift=0.4)
    batches = [(start, x[start:start + 100]) for start in range(0, len(x), 100)]  # (seq, rows): the observer's stamps
    # the monitor gets them with every seventh dropped (its tap full), and pairs swapped (two roles regrouped)
    kept = [b for k, b in enumerate(batches) if k % 7 != 3]
    for k in range(0, len(kept) - 1, 2):
        kept[k], kept[k + 1] = kept[k + 1], kept[k]
    events = []
    for k in range(0, len(kept), 3):  # three batches per call, as the tap gathers them
        group = kept[k:k + 3]
        events += monitor.observe({"x": np.concatenate([p for _, p in group])}, {}, [(s, len(p)) for s, p in group])
    raised = [e for e in events if e.kind == "raise"]
    assert {e.feature for e in raised} == {"f2", "f5"}, [(e.feature, e.events) for e in raised]
    for e in raised:
        picked = np.concatenate([x[a:b] for a, b in e.rows])
        assert len(picked) == e.window == 2_000 and len(e.rows) > 1  # it spans dropped and swapped batches
        column = FEATURES.index(e.feature)
        d = stats.ks_2samp(picked[:, column], reference[:, column]).statistic
        assert e.statistic == pytest.approx(d, abs=1e-12), (e.feature, e.events)
        # the window by the monitor's count alone (its rows as if none were dropped) is another
        stale = x[e.events - e.window:e.events, column]
        assert stats.ks_2samp(stale, reference[:, column]).statistic != pytest.approx(d, abs=1e-6)


def test_unstamped_batches_leave_the_rows_unknown(rng):
    reference = stream(rng, 5_000)
    settings = MonitorSettings(features=FEATURES, categorical=["f7"], reference="unused.parquet", window=1_000,
                               every=500, alpha=0.001, min_effect=0.05, consecutive=1)
    monitor = DriftMonitor("m:1", settings, SCHEMA, {n: reference[:, i] for i, n in enumerate(FEATURES)})
    events = monitor.observe({"x": stream(rng, 3_000, shift_from=0, shift=1.0)}, {})
    assert events and all(e.rows == () for e in events)
