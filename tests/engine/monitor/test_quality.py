"""QualityMonitor on a version's drift features: the reference's domain, shares equal to
numpy's over the smallest window whatever the batching, alerts raised and cleared at the
drift's evaluation boundaries with hysteresis, events and audit rows, strict settings."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from engine.codec.validate import ModelSchema, TensorSpec
from engine.monitor.drift import DriftMonitor, MonitorConfigError
from engine.monitor.quality import QualityMonitor, said
from engine.settings import MonitorSettings

FEATURES = ["a", "b", "c"]  # a, b continuous; c categorical (codes 0..3)
SCHEMA = ModelSchema(inputs=(TensorSpec("x", "FP32", np.dtype("<f4"), (-1, 3)),), outputs=())


def reference(rng) -> dict[str, np.ndarray]:
    return {"a": rng.uniform(-1, 1, 2000), "b": np.append(rng.normal(size=1999), np.nan),  # NaN left out of its range
            "c": rng.integers(0, 4, 2000).astype(np.float64)}


def make(rng, quality=None, **overrides) -> tuple[QualityMonitor, dict]:
    ref = reference(rng)
    options = dict(windows=[300, 1000], every=100, consecutive=2)
    settings = MonitorSettings(features=FEATURES, categorical=["c"], reference="unused.parquet", quality=quality,
                               **{**options, **overrides})
    return QualityMonitor(DriftMonitor("m:1", settings, SCHEMA, ref), SCHEMA, ref), ref


def clean(rng, rows: int) -> np.ndarray:
    return np.column_stack([rng.uniform(-0.9, 0.9, rows), rng.normal(0, 0.5, rows),
                            rng.integers(0, 4, rows)]).astype(np.float32)


def naive(x: np.ndarray, ref: dict, size: int) -> dict[tuple[str, str], float]:
    w = x[-size:].astype(np.float64)
    finite = np.isfinite(w)
    out = {}
    for j, name in enumerate(FEATURES):
        out[(name, "missing")] = float(np.mean(~finite[:, j]))
        r = ref[name][np.isfinite(ref[name])]
        if name == "c":
            out[(name, "unseen_category")] = float(np.mean(finite[:, j] & ~np.isin(np.rint(w[:, j]), np.rint(r))))
        else:
            lo, hi = np.float32(r.min()), np.float32(r.max())  # the input's precision (FP32)
            out[(name, "out_of_range")] = float(np.mean(finite[:, j] & ((w[:, j] < lo) | (w[:, j] > hi))))
    return out


def shares(q: QualityMonitor) -> dict[tuple[str, str], float]:
    values, _ = q.latest
    return {(f, check): float(values[j, ["missing", "out_of_range", "unseen_category"].index(check)])
            for j, f in enumerate(q.features) for check in q.checks(j)}


def test_the_domain_is_the_references_finite_min_max_and_codes(rng):
    q, ref = make(rng)
    assert q.size == 300  # the smallest window
    # in the input's precision (FP32): the reference's own extremes, sent as FP32, are inside
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    assert q.lo[0] == f32(ref["a"].min()) and q.hi[0] == f32(ref["a"].max())
    assert q.lo[1] == f32(np.nanmin(ref["b"])) and q.hi[1] == f32(np.nanmax(ref["b"]))
    x = np.array([[ref["a"].min(), np.nanmax(ref["b"]), 3], [ref["a"].max() + 1e-3, np.nan, 4]], dtype=np.float32)
    q.observe({"x": x})
    got = shares(q)
    assert got[("a", "out_of_range")] == 0.5 and got[("b", "missing")] == 0.5 and got[("c", "unseen_category")] == 0.5


@pytest.mark.parametrize("batch", [1, 37, 250, 5000])
def test_shares_equal_numpy_over_the_smallest_window_whatever_the_batching(rng, batch):
    q, ref = make(rng)
    x = clean(rng, 2500)
    x[rng.choice(2500, 200, replace=False), 0] = np.nan
    x[rng.choice(2500, 90, replace=False), 1] = np.inf
    x[rng.choice(2500, 150, replace=False), 0] = 1.5
    x[rng.choice(2500, 70, replace=False), 2] = rng.choice([4, 7, np.nan], 70)
    for start in range(0, len(x), batch):
        q.observe({"x": x[start:start + batch]})
        seen = x[:start + batch]
        if start % (batch * 7) == 0 or start + batch >= len(x):
            assert shares(q) == naive(seen, ref, 300)
            assert q.latest[1] == min(300, len(seen))
    assert q.events == 2500


def test_alerts_raise_and_clear_with_hysteresis_at_the_drift_boundaries(rng, caplog):
    q, ref = make(rng, quality={"max_missing": 0.05, "max_out_of_range": 0.1, "max_unseen_category": 0})
    assert np.isnan(q.thresholds[2, 1]) and np.isnan(q.thresholds[0, 2])  # checks that do not apply
    events = []
    x = clean(rng, 3000)
    x[1000:1400, 0] = 5.0  # out of range for 400 rows
    x[1100:1120, 2] = 9  # 20 unseen codes
    for start in range(0, len(x), 64):  # batches across the boundaries
        events += q.observe({"x": x[start:start + 64]})
    got = [(e.kind, e.feature, e.check, e.events) for e in events]
    # window 300, every 100, 2 in a row. a: above 0.1 at the boundaries 1100 (100/300) and 1200
    # -> raised at 1200; at or below from 1700 (the window [1400, 1700) is clean) -> cleared at 1800.
    # c (max 0, any unseen code): in the window at 1200 and 1300 -> raised at 1300; out of it from
    # 1500 ([1200, 1500)) -> cleared at 1600.
    assert got == [("raise", "a", "out_of_range", 1200), ("raise", "c", "unseen_category", 1300),
                   ("clear", "c", "unseen_category", 1600), ("clear", "a", "out_of_range", 1800)]
    assert events[0].share == pytest.approx(200 / 300) and events[0].threshold == 0.1 and events[0].window == 300
    assert events[1].share == 20 / 300 and events[1].threshold == 0
    assert not q.alert.any() and q.evaluations == 28  # boundaries 300..3000
    with caplog.at_level(logging.INFO, logger="scorewire"):
        said(events[:1], 2, None)
    assert ("data quality raise: model m:1 feature a check out_of_range: share 0.6667 of the last 300 rows is above "
            "max_out_of_range 0.1") in caplog.text


def test_events_and_audit_rows_are_written(rng, tmp_path):
    q, _ = make(rng, quality={"max_missing": 0.01}, consecutive=1)
    x = clean(rng, 600)
    x[:, 1] = np.nan
    events = q.observe({"x": x})
    assert [(e.kind, e.feature, e.check, e.share) for e in events] == [("raise", "b", "missing", 1.0)]
    said(events, 1, tmp_path)
    table = pq.read_table(next((tmp_path / "kind=quality").rglob("*.parquet"))).to_pylist()
    assert [(r["event"], r["version"], r["feature"], r["check"], r["share"], r["threshold"], r["window"],
             r["events_observed"]) for r in table] == [("raise", "1", "b", "missing", 1.0, 0.01, 300, 300)]
    audit = pq.read_table(next((tmp_path / "kind=audit").rglob("*.parquet"))).to_pylist()
    assert audit[0]["event"] == "quality_alert" and "feature b check missing share 1" in audit[0]["detail"]


def test_settings_are_strict():
    base = dict(features=FEATURES, categorical=["c"], reference="r.parquet")
    with pytest.raises(ValidationError, match="alerts on nothing"):
        MonitorSettings(**base, quality={})
    with pytest.raises(ValidationError, match="less than 1"):
        MonitorSettings(**base, quality={"max_missing": 1})
    with pytest.raises(ValidationError, match="max_missng"):
        MonitorSettings(**base, quality={"max_missng": 0.1})
    with pytest.raises(ValidationError, match="needs categorical features"):
        MonitorSettings(features=FEATURES, reference="r.parquet", quality={"max_unseen_category": 0.1})


def test_a_reference_column_without_a_finite_value_is_a_config_error(rng):
    ref = reference(rng)
    ref["a"] = np.full(2000, np.nan)
    settings = MonitorSettings(features=FEATURES, categorical=["c"], reference="unused.parquet", window=100)
    with pytest.raises(MonitorConfigError, match="'a' has no finite value"):
        QualityMonitor(DriftMonitor("m:1", settings, SCHEMA, {**ref, "a": np.zeros(2000)}), SCHEMA, ref)
