"""Data quality end to end, with a real server (one worker, and two with the observer
process): rows sent over gRPC with values outside the reference's range, NaN and +-inf
(allow_non_finite on) and categories the reference never had show numpy's exact shares in
/metrics and `scorewire status`, raise alerts (log lines, kind=quality events, audit rows,
gauges), and clear them once clean rows fill the window."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

from engine.harness.config import Config, model_table, server_table
from engine.harness.models import save_graph
from engine.harness.server import start_server
from engine.monitor.status import scrape

FEATURES = ["a", "b", "c"]  # a, b continuous; c categorical, codes 0..3 in the reference
WINDOW = 200
THRESHOLDS = {"missing": 0.05, "out_of_range": 0.05, "unseen_category": 0.01}


def scorer(path):
    """score = sigmoid(x @ w): a [N, 3] FP32 input, a [N, 1] output (NaN in, NaN out)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 1], [0.5, -0.25, 0.1])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["score"])]
    graph = helper.make_graph(nodes, "scorer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])], [w])
    return save_graph(graph, path)


def clean(rng, rows: int) -> np.ndarray:
    return np.column_stack([rng.uniform(0.05, 0.95, rows), rng.normal(0, 0.5, rows),
                            rng.integers(0, 4, rows)]).astype(np.float32)


def expected(x: np.ndarray, ref: dict[str, np.ndarray]) -> dict[tuple[str, str], float]:
    """numpy's shares over the last WINDOW rows (the reference's range in FP32, as the rows arrive)."""
    w = x[-WINDOW:].astype(np.float64)
    finite = np.isfinite(w)
    out = {}
    for j, name in enumerate(FEATURES):
        out[(name, "missing")] = float(np.mean(~finite[:, j]))
        if name == "c":
            out[(name, "unseen_category")] = float(np.mean(finite[:, j] & ~np.isin(np.rint(w[:, j]), ref[name])))
        else:
            lo, hi = np.float32(ref[name].min()), np.float32(ref[name].max())
            out[(name, "out_of_range")] = float(np.mean(finite[:, j] & ((w[:, j] < lo) | (w[:, j] > hi))))
    return out


def send(client, x: np.ndarray, batch: int = 25) -> None:
    for start in range(0, len(x), batch):
        rows = np.ascontiguousarray(x[start:start + batch])
        inp = grpcclient.InferInput("x", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        client.infer("q", [inp])


def observed(target: str, rows: int) -> dict[str, list]:
    """/metrics once the monitor has seen `rows` rows (it works off the request path)."""
    deadline = time.monotonic() + 60
    while True:
        families = scrape(target)
        seen = [s.value for s in families.get("scorewire_drift_events_observed", []) if s.labels["model"] == "q"]
        if seen and seen[0] >= rows or time.monotonic() > deadline:
            assert seen == [rows]
            return families


def by_check(families: dict[str, list], name: str) -> dict[tuple[str, str], float]:
    return {(s.labels["feature"], s.labels["check"]): s.value for s in families.get(name, [])
            if s.labels["model"] == "q" and s.labels["version"] == "1"}


@pytest.mark.parametrize("workers", [1, 2])
def test_shares_alerts_and_clearing_end_to_end(tmp_path, rng, workers):
    scorer(tmp_path / "q.onnx")
    ref = {"a": np.append(rng.uniform(0, 1, 998), [0.0, 1.0]), "b": rng.normal(size=1000),
           "c": rng.integers(0, 4, 1000).astype(np.float64)}
    pq.write_table(pa.table(ref), tmp_path / "ref.parquet")
    monitor = {"features": FEATURES, "categorical": ["c"], "reference": "ref.parquet", "window": WINDOW,
               "every": 100, "consecutive": 1,
               "quality": {"max_missing": 0.05, "max_out_of_range": 0.05, "max_unseen_category": 0.01}}
    Config(server_table(workers=workers), [model_table("q", "q.onnx", allow_non_finite=True, monitor=monitor,
                                                       batching={"max_batch_size": 32})],
           monitoring={"events_dir": "events"}).write(tmp_path / "q.toml")
    log = tmp_path / "stderr.log"
    srv = start_server(tmp_path / "q.toml", log_level="INFO", wrapper=("bash", "-c", 'exec "$@" 2>>"$0"', str(log)))
    target = f"127.0.0.1:{srv.metrics_port}"
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        bad = clean(rng, WINDOW)
        # in the window's second half: still all in the window at the evaluation after it (300
        # rows), out of it at the next (400): the alerts clear there, at a share of 0
        rows = WINDOW // 2 + rng.permutation(WINDOW // 2)
        bad[rows[:14], 0] = rng.choice([1.5, -0.2, 1.0001], 14)  # out of range: 14/200
        bad[rows[14:18], 0] = [0.0, 1.0, 0.0, 1.0]  # exactly at the reference's min and max: inside
        bad[rows[18:30], 1] = np.nan  # missing: 12 NaN + 3 inf of b
        bad[rows[30:33], 1] = [np.inf, -np.inf, np.inf]
        bad[rows[33:40], 2] = [7, 9, 4, 4, 12, 5, 6]  # unseen categories: 7/200
        bad[rows[40], 2] = np.nan  # and one missing category
        send(client, bad)
        families = observed(target, WINDOW)
        want = expected(bad, ref)
        assert want[("a", "out_of_range")] == 14 / 200 and want[("b", "missing")] == 15 / 200
        assert want[("c", "unseen_category")] == 7 / 200 and want[("c", "missing")] == 1 / 200
        assert by_check(families, "scorewire_data_quality_share") == want
        assert [s.value for s in families["scorewire_data_quality_window_rows"]] == [WINDOW]
        alerts = by_check(families, "scorewire_data_quality_alert")
        raised = {("a", "out_of_range"), ("b", "missing"), ("c", "unseen_category")}
        assert {k for k, v in alerts.items() if v} == raised
        assert set(alerts) == set(want)  # every check that applies has a threshold here

        shown = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--target", target],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        table = next(block for block in shown.stdout.split("\n\n") if "unseen category" in block)
        lines = {line.split()[2]: line.split() for line in table.splitlines()[2:]}
        assert set(lines) == set(FEATURES) and all(line[3] == f"{WINDOW}" for line in lines.values())
        assert lines["a"][4:7] == ["0", f"{14 / 200:.4g}", "-"] and lines["a"][7:] == ["QUALITY:", "out_of_range"]
        assert lines["b"][4:7] == [f"{15 / 200:.4g}", "0", "-"] and lines["b"][7:] == ["QUALITY:", "missing"]
        assert lines["c"][4:7] == [f"{1 / 200:.4g}", "-", f"{7 / 200:.4g}"]
        assert lines["c"][7:] == ["QUALITY:", "unseen_category"]

        send(client, clean(rng, WINDOW))  # the window fills with clean rows: every alert clears
        families = observed(target, 2 * WINDOW)
        assert set(by_check(families, "scorewire_data_quality_share").values()) == {0.0}
        assert set(by_check(families, "scorewire_data_quality_alert").values()) == {0.0}
        client.close()
    finally:
        srv.stop()

    raised = {("a", "out_of_range"): 14 / 200, ("b", "missing"): 15 / 200, ("c", "unseen_category"): 7 / 200}
    events = pq.read_table(srv.directory / "events" / "kind=quality").to_pylist()
    assert sorted((e["event"], e["feature"], e["check"], e["share"], e["threshold"], e["window"], e["events_observed"])
                  for e in events) == sorted(
        [("raise", f, c, share, THRESHOLDS[c], WINDOW, WINDOW) for (f, c), share in raised.items()]
        + [("clear", f, c, 0.0, THRESHOLDS[c], WINDOW, 2 * WINDOW) for (f, c) in raised])
    audit = pq.read_table(srv.directory / "events" / "kind=audit").to_pylist()
    assert sum(a["event"] == "quality_alert" for a in audit) == 6
    text = log.read_text()
    assert ("data quality raise: model q:1 feature a check out_of_range: share 0.07 of the last 200 rows is above "
            "max_out_of_range 0.05") in text
    assert ("data quality clear: model q:1 feature b check missing: share 0 of the last 200 rows is at or below "
            "max_missing 0.05") in text
