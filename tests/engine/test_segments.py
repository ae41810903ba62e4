"""Segments and the equal opportunity difference in the label join, without a server: rows
assigned to segments as a per-row reading of the rule says (the kept codes, `other`, bins);
per-segment rows, score drift and realized performance equal to a direct computation (and
sklearn's, scipy's) on the same rows; eod equal to numpy's and to fairlearn's on the window,
with each row's group the one it was scored in."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from scipy.stats import ks_2samp
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

from engine.batching.batch import Origin, ScoredBatch
from engine.performance.join import Labels, PerformanceMonitor
from engine.performance.segments import Segments
from engine.settings import ModelSettings, SegmentSettings, Settings

FEATURES = ["f0", "f1", "f2"]  # f1: a categorical code, f2: continuous (binned)
EDGES = [-1.0, 0.0, 1.0]


def draw(rng, n: int) -> np.ndarray:
    """Rows of f0 (noise), f1 (codes 0..5, skewed: 0 most frequent) and f2 (normal)."""
    f1 = rng.choice(6, size=n, p=[0.35, 0.25, 0.2, 0.1, 0.06, 0.04])
    return np.column_stack([rng.normal(size=n), f1, rng.normal(size=n)]).astype(np.float32)


def score(x: np.ndarray) -> np.ndarray:
    """P(class 1) of a stand-in model."""
    x = x.astype(np.float64)
    return 1 / (1 + np.exp(-(x[:, 0] + 0.5 * x[:, 2] - 0.3 * x[:, 1])))


def written(edge: float) -> str:
    return str(int(edge)) if float(edge).is_integer() else f"{edge:g}"


def naive_segment(value: float, kept: list[float] | None, edges: list[float] | None) -> str:
    """A row's segment of one column, read row by row from the rule in the module's docstring."""
    if edges is not None:
        for a, b in zip(edges, edges[1:]):
            if a <= value < b:
                return f"[{written(a)},{written(b)})"
        return "other"
    if not math.isfinite(value) or round(value) not in kept:
        return "other"
    return str(int(round(value)))


def reference(tmp_path, rng) -> str:
    x = draw(rng, 4000)
    path = tmp_path / "ref.parquet"
    pq.write_table(pa.table({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "p:1": score(x)}), path)
    return str(path)


def test_rows_fall_in_the_most_frequent_codes_their_bins_or_other(tmp_path, rng):
    ref = pq.read_table(reference(tmp_path, rng)).to_pydict()
    settings = SegmentSettings(columns=["f1", "f2"], bins={"f2": EDGES}, max_values=3)
    segments = Segments(settings, FEATURES, None, 100, {k: np.asarray(v) for k, v in ref.items()}, "ref")
    codes, counts = np.unique(ref["f1"], return_counts=True)
    kept = sorted(codes[np.argsort(-counts, kind="stable")[:3]].tolist())
    assert kept == [0, 1, 2]
    assert segments.names == ["f1=0", "f1=1", "f1=2", "f1=other", "f2=[-1,0)", "f2=[0,1)", "f2=other"]
    assert len(segments.names) == 3 + 1 + 2 + 1  # the bound: (max_values + 1) + (bins + 1)
    x = draw(rng, 500)
    x[:5, 1] = [np.nan, np.inf, -3, 2.2, 7]  # not a kept code (2.2 reads as code 2, as drift reads it)
    x[:4, 2] = [np.nan, -1.0, 1.0, -np.inf]  # an edge belongs to the bin it starts
    got = np.array(segments.names)[segments.codes(x)]
    for row, names in zip(x, got):
        assert names[0] == "f1=" + naive_segment(float(row[1]), kept, None)
        assert names[1] == "f2=" + naive_segment(float(row[2]), None, EDGES)
    assert got[3, 0] == "f1=2" and got[1, 1] == "f2=[-1,0)" and got[2, 1] == "f2=other"
    halves = Segments(SegmentSettings(columns=["f2"], bins={"f2": [0, 1.5, np.inf]}), FEATURES, None, 100, {}, "ref")
    assert halves.names == ["f2=[0,1.5)", "f2=[1.5,inf)", "f2=other"]


def test_segment_settings_name_what_is_wrong():
    monitor = {"features": FEATURES, "categorical": ["f1"], "reference": "ref.parquet"}
    performance = {"task": "binary", "score": "p:1"}
    for segments, message in (({"columns": ["f2"]}, "are continuous: give their edges in segments.bins"),
                              ({"columns": ["f9"]}, r"names \['f9'\], which are not in \[models.monitor\] features"),
                              ({"columns": ["f2"], "bins": {"f2": [1, 0]}}, "strictly increasing"),
                              ({"columns": ["f1"], "bins": {"f2": [0, 1]}}, "not in columns"),
                              ({"columns": ["f1"], "max_values": 0}, "greater than 0")):
        with pytest.raises(ValidationError, match=message):
            ModelSettings(name="m", path="m.onnx", monitor=monitor, performance=performance, segments=segments)
    with pytest.raises(ValidationError, match="need \\[models.performance\\]"):
        ModelSettings(name="m", path="m.onnx", monitor=monitor, segments={"columns": ["f1"]})


def settings_with(tmp_path, rng, window: int, fairness_window: int) -> Settings:
    monitor = {"features": FEATURES, "categorical": ["f1"], "reference": reference(tmp_path, rng),
               "outputs": ["p:1"]}
    return Settings(models=[ModelSettings(
        name="m", path="m.onnx", version="1", monitor=monitor,
        performance={"task": "binary", "score": "p:1", "window": window},
        segments={"columns": ["f1", "f2"], "bins": {"f2": EDGES}, "max_values": 3},
        fairness={"protected": "f1", "privileged": 1, "window": fairness_window})])


def monitor_with(tmp_path, rng, window: int, fairness_window: int) -> PerformanceMonitor:
    return PerformanceMonitor(settings_with(tmp_path, rng, window, fairness_window), thread=False)


def test_segment_rows_drift_and_performance_and_eod_equal_a_direct_computation(tmp_path, rng):
    from fairlearn.metrics import MetricFrame, equal_opportunity_difference, true_positive_rate

    pm = monitor_with(tmp_path, rng, window=300, fairness_window=250)
    try:
        n, per_request = 1000, 4
        x = draw(rng, n)
        p = score(x)
        y = (rng.random(n) < np.clip(p + 0.15 * (x[:, 1] == 1), 0, 1)).astype(int)
        scored = x.copy()  # what the rows were scored with
        ids = [f"r{i}" for i in range(n // per_request)]
        for a in range(0, n, 40):  # batches of 10 requests of 4 rows
            rows = slice(a, a + 40)
            members = ids[a // per_request:(a + 40) // per_request]
            batch = ScoredBatch("m", "1", "champion", {"x": x[rows]}, {"p": np.column_stack([1 - p[rows], p[rows]])},
                                np.zeros(10), np.zeros(10), 1, 40, tuple(range(0, 41, per_request)),
                                tuple(Origin(request_id=i) for i in members), 0)
            pm._batch(batch, 0)
            x[rows] = draw(rng, 40)  # the batch's buffer reused: the groups were taken at scoring
        pm._labels(Labels("m", tuple(ids), np.full(len(ids), per_request), y.astype(np.float64)), 1)
        pm._publish()
        segments = pm.models["m"].segments["1"]
        names = np.array(segments.names)[segments.codes(scored)]  # every row's two segments

        expected_rows = {name: int(np.sum(names == name)) for name in segments.names}
        assert dict(zip(segments.names, segments.rows.tolist())) == expected_rows

        window = slice(n - 300, n)  # labels joined in id order: the window is the last 300 rows
        got = pm.segment_results[("m", "1", "champion")]
        assert set(got) == set(names[window].ravel())
        for name, (count, metrics) in got.items():
            mine = (names[window] == name).any(axis=1)
            yy, pp = y[window][mine], p[window][mine]
            assert count == mine.sum()
            assert metrics["accuracy"] == pytest.approx(accuracy_score(yy, pp > 0.5), abs=1e-12), name
            assert metrics["log_loss"] == pytest.approx(log_loss(yy, pp, labels=[0, 1]), rel=1e-9), name
            assert metrics["brier"] == pytest.approx(brier_score_loss(yy, pp, pos_label=1), rel=1e-9), name
            if 0 < yy.sum() < len(yy):
                assert metrics["auc"] == pytest.approx(roc_auc_score(yy, pp), rel=1e-9), name

        # score drift (computed by _publish): the segment's last 300 scored rows against the reference's
        ref = pq.read_table(tmp_path / "ref.parquet").to_pandas()
        ref_names = np.array(segments.names)[segments.codes(ref[FEATURES].to_numpy())]
        assert set(segments.drift) == set(names[window].ravel())
        for name, d in segments.drift.items():
            live = p[window][(names[window] == name).any(axis=1)]
            theirs = ref["p:1"].to_numpy()[(ref_names == name).any(axis=1)]
            assert d == pytest.approx(ks_2samp(live, theirs).statistic, abs=1e-12), name

        figures = pm.models["m"].fairness["1"][0].figures()
        last = slice(n - 250, n)
        privileged, predicted, deserving = scored[last, 1] == 1, p[last] > 0.5, y[last] == 1
        tpr = lambda group: predicted[group & deserving].mean()  # noqa: E731
        eod = tpr(~privileged) - tpr(privileged)
        assert figures["eod"] == pytest.approx(eod, abs=1e-12) and abs(eod) > 0.01
        assert figures["privileged_favourable_labels"] == (privileged & deserving).sum()
        groups = np.where(privileged, "privileged", "unprivileged")
        by_group = MetricFrame(metrics=true_positive_rate, y_true=y[last], y_pred=predicted.astype(int),
                               sensitive_features=groups).by_group
        assert figures["eod"] == pytest.approx(by_group["unprivileged"] - by_group["privileged"], abs=1e-12)
        # fairlearn's difference is max - min over the groups: |eod|
        assert abs(figures["eod"]) == pytest.approx(
            equal_opportunity_difference(y[last], predicted.astype(int), sensitive_features=groups), abs=1e-12)

        lines = {}
        pm.families(lambda name, kind, help_, samples: lines.update((name + lab, v) for lab, v in samples),
                    lambda **kv: "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}")
        assert lines['scorewire_fairness{model="m",version="1",metric="eod"}'] == figures["eod"]
        assert lines['scorewire_segment_rows_total{model="m",version="1",segment="f1=other"}'] == \
            expected_rows["f1=other"]
        name = "f2=[0,1)"
        assert lines[f'scorewire_segment_performance{{model="m",version="1",role="champion",segment="{name}",'
                     'metric="accuracy"}'] == got[name][1]["accuracy"]
        assert lines[f'scorewire_segment_performance_rows{{model="m",version="1",role="champion",'
                     f'segment="{name}"}}'] == got[name][0]
        assert lines[f'scorewire_segment_score_drift{{model="m",version="1",segment="{name}"}}'] == \
            segments.drift[name]
    finally:
        pm.close()


def test_rows_scored_without_the_monitored_input_are_in_no_segment(tmp_path, rng):
    pm = monitor_with(tmp_path, rng, window=50, fairness_window=50)
    try:
        p = np.full(4, 0.7)
        pm._batch(ScoredBatch("m", "1", "champion", {}, {"p": np.column_stack([1 - p, p])}, np.zeros(1),
                              np.zeros(1), 1, 4, (0, 4), (Origin(request_id="a"),), 0), 0)
        pm._labels(Labels("m", ("a",), np.array([4]), np.ones(4)), 1)
        pm._publish()
        assert pm.models["m"].segments["1"].rows.sum() == 0
        assert pm.segment_results[("m", "1", "champion")] == {}
        assert pm.results[("m", "1", "champion")][0] == 4  # the version's own window has them
        assert math.isnan(pm.models["m"].fairness["1"][0].figures()["eod"])
    finally:
        pm.close()


def test_a_reload_keeps_an_unchanged_versions_segments_and_drops_removed_ones(tmp_path, rng):
    settings = settings_with(tmp_path, rng, window=50, fairness_window=50)
    pm = PerformanceMonitor(settings, thread=False)
    try:
        x = draw(rng, 8)
        p = score(x)
        pm._batch(ScoredBatch("m", "1", "champion", {"x": x}, {"p": np.column_stack([1 - p, p])}, np.zeros(1),
                              np.zeros(1), 1, 8, (0, 8), (Origin(request_id="a"),), 0), 0)
        pm._labels(Labels("m", ("a",), np.array([8]), np.ones(8)), 1)
        pm._publish()
        segments = pm.models["m"].segments["1"]
        assert pm.segment_results[("m", "1", "champion")]
        pm.install(Settings.from_snapshot(settings.snapshot()))  # a reload that leaves the version as it was
        assert pm.models["m"].segments["1"] is segments and segments.rows.sum() == 8 * 2  # its counts go on
        pm.install(Settings(models=[settings.models[0].model_copy(update={"segments": None})]))
        assert pm.models["m"].segments == {} and pm.segment_results == {}
    finally:
        pm.close()


def test_pending_rows_keep_their_codes_when_a_wider_version_comes():
    from engine.performance.pending import WAITING, Pending

    pending = Pending(8)
    narrow = pending.add(1, 0, 0, WAITING, np.zeros(2), np.array([[3], [4]], np.int16))
    wide = pending.add(2, 0, 1, WAITING, np.zeros(1), np.array([[5, 6, 7]], np.int16))  # a reload added it
    none = pending.add(3, 0, 2, WAITING, np.zeros(3))  # a version with neither segments nor fairness
    assert pending.group_values(narrow)[:, 0].tolist() == [3, 4]  # (its version reads its own column)
    assert pending.group_values(wide).tolist() == [[5, 6, 7]]
    assert pending.group_values(none).tolist() == [[-1, -1, -1]] * 3
    for _ in range(3):
        pending.pop()
    again = pending.add(4, 0, 0, WAITING, np.zeros(4), np.array([[1], [2], [1], [2]], np.int16))  # wraps around
    assert pending.group_values(again)[:, 0].tolist() == [1, 2, 1, 2]
    assert (pending.group_values(again)[:, 1:] == -1).all()


def test_rows_with_a_missing_feature_are_counted_per_segment(tmp_path, rng):
    """Data quality per segment: rows with a non-finite monitored feature, in the segments
    they were scored in (a NaN in the segment column itself: that column's `other`)."""
    pm = monitor_with(tmp_path, rng, window=300, fairness_window=250)
    try:
        x = draw(rng, 400)
        x[rng.random(400) < 0.1, 0] = np.nan  # f0, not a segment column
        x[:7, 2] = np.inf  # f2, binned: these rows are f2=other
        p = score(np.nan_to_num(x, posinf=0.0))
        batch = ScoredBatch("m", "1", "champion", {"x": x}, {"p": np.column_stack([1 - p, p])}, np.zeros(1),
                            np.zeros(1), 1, 400, (0, 400), (Origin(request_id="q"),), 0)
        pm._batch(batch, 0)
        segments = pm.models["m"].segments["1"]
        names = np.array(segments.names)[segments.codes(x)]
        bad = ~np.isfinite(x).all(axis=1)
        expected = {name: int(np.sum(names[bad] == name)) for name in segments.names}
        assert dict(zip(segments.names, segments.nonfinite.tolist())) == expected
        assert expected["f2=other"] >= 7 and sum(expected.values()) == 2 * bad.sum()  # one segment per column
    finally:
        pm.close()
