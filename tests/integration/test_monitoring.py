"""Monitoring end to end: `scorewire reference` makes the reference, `scorewire serve`
scores drifted traffic, /metrics (parsed with prometheus_client) and `scorewire status`
show the two shifted features alerting and latency percentiles per stage."""

from __future__ import annotations

import subprocess
import sys
import time

import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient

from engine.harness.config import Config, model_table, route_table, server_table
from engine.harness.models import N_FEATURES, demo_data
from engine.monitor.status import scrape
from tests.conftest import launch

FEATURES = [f"f{i}" for i in range(N_FEATURES)]
SHIFTED = ("f3", "f10")



def monitored_config(windows: list[int], version: str | None = None) -> Config:
    """The mlp with its 32 features and its P(class 1) monitored (outputs), drift events kept."""
    monitor = {"features": FEATURES, "outputs": ["probabilities:1"], "reference": "ref.parquet", "windows": windows,
               "every": 500, "alpha": 0.001, "min_effect": 0.1, "consecutive": 2}
    return Config(server_table(workers=1), [model_table("mlp", "models/mlp.onnx", version=version,
                                                        batching={"max_batch_size": 256}, monitor=monitor)],
                  monitoring={"events_dir": "drift-events"})


CONFIG = monitored_config([500, 2000])


@pytest.fixture(scope="module")
def monitored(model_dir):
    x, _ = demo_data(30_000, seed=0)
    session = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    train = x[:20_000]
    columns = {name: train[:, i] for i, name in enumerate(FEATURES)}
    columns["probabilities:1"] = session.run(["probabilities"], {"float_input": train})[0][:, 1]
    pq.write_table(pa.table(columns), model_dir / "train.parquet")
    made = subprocess.run([sys.executable, "-m", "engine.cli", "reference", "--from", str(model_dir / "train.parquet"),
                           "--out", str(model_dir / "ref.parquet"), "--sample", "5000"],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert pq.read_metadata(model_dir / "ref.parquet").num_rows == 5000
    srv = launch(model_dir, CONFIG, name="monitored.toml")
    live = x[20_000:].copy()
    for name in SHIFTED:
        live[4000:, FEATURES.index(name)] += 2.0  # onset after 4,000 live rows
    yield srv, live
    srv.stop()


def test_drift_alerts_and_latency_in_metrics_and_status(monitored):
    srv, live = monitored
    client = grpcclient.InferenceServerClient(srv.url)
    for start in range(0, len(live), 100):
        rows = live[start : start + 100]
        inp = grpcclient.InferInput("float_input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        client.infer("mlp", [inp])
    client.close()
    target = f"127.0.0.1:{srv.metrics_port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the monitor works off the request path: let it catch up
        families = scrape(target)
        observed = [s.value for s in families["scorewire_drift_events_observed"] if s.labels["model"] == "mlp"]
        if observed and observed[0] >= len(live):
            break
        time.sleep(0.2)
    assert observed[0] == len(live)

    alerts = {s.labels["feature"]: s.value for s in families["scorewire_drift_alert"]}
    assert set(alerts) == set(FEATURES) | {"probabilities:1"}
    assert {f for f in FEATURES if alerts[f] == 1.0} == set(SHIFTED)
    # per window: statistic, p-value and whether it fired, as last computed
    pvalues = {(s.labels["feature"], s.labels["window"]): s.value for s in families["scorewire_drift_pvalue"]}
    fired = {(s.labels["feature"], s.labels["window"]): s.value for s in families["scorewire_drift_window_fired"]}
    assert {w for _, w in pvalues} == {"500", "2000"}
    assert all(pvalues[(f, w)] < 1e-6 and fired[(f, w)] == 1.0 for f in SHIFTED for w in ("500", "2000"))
    assert not any(fired[(f, w)] for f in FEATURES if f not in SHIFTED for w in ("500", "2000"))
    sizes = {s.labels["window"]: s.value for s in families["scorewire_drift_window_size"] if s.labels["model"] == "mlp"}
    assert sizes == {"500": 500.0, "2000": 2000.0}

    quantiles = {(s.labels["stage"], s.labels["quantile"]): s.value for s in families["scorewire_latency_us"]
                 if s.labels["model"] == "mlp" and s.labels["role"] == "champion"}
    for stage in ("queue", "inference", "total"):
        assert quantiles[(stage, "0.5")] <= quantiles[(stage, "0.99")]
    assert quantiles[("total", "0.5")] >= quantiles[("inference", "0.5")]
    batch_rows = {s.name: s.value for s in families["scorewire_batch_rows"] if s.labels.get("model") == "mlp"}
    assert batch_rows["scorewire_batch_rows_sum"] == len(live)

    shown = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--target", target],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    drift_lines = [line for line in shown.stdout.splitlines() if "DRIFT" in line]
    assert {line.split()[2] for line in drift_lines} - {"probabilities:1"} == set(SHIFTED)  # model version feature ...
    assert {(line.split()[2], line.split()[3]) for line in drift_lines if "window fired" in line} >= {
        (f, w) for f in SHIFTED for w in ("500", "2,000")}  # ... window: each window's own row
    assert "p99.9 ms" in shown.stdout and "champion" in shown.stdout

    # drift events as their own kind of Parquet record, readable by DuckDB
    import duckdb

    rows = duckdb.sql(
        f"select kind, model, event, feature, pvalue, \"window\", windows_fired, window_pvalues from "
        f"read_parquet('{srv.directory}/drift-events/kind=drift/**/*.parquet', hive_partitioning = 1) order by time"
    ).fetchall()
    raised = {r[3] for r in rows if r[2] == "raise"}
    for r in rows:  # a raise names the windows that fired, each with its p-value; its own is one of them
        if r[2] == "raise":
            assert r[6] and set(r[6]) <= {500, 2000} and r[5] in r[6] and r[4] == min(r[7])
    assert {r[0] for r in rows} == {"drift"} and {r[1] for r in rows} == {"mlp"}
    assert raised - {"probabilities:1"} == set(SHIFTED)
    assert not list((srv.directory / "drift-events").rglob(".*.tmp"))


def test_metrics_parse_with_prometheus_client(monitored):
    srv, _ = monitored
    families = scrape(f"127.0.0.1:{srv.metrics_port}")
    for name in ("scorewire_requests", "scorewire_batches", "scorewire_rows", "scorewire_queue_rows",
                 "scorewire_model_info", "scorewire_drift_statistic", "scorewire_drift_alert",
                 "scorewire_monitor_dropped_batches", "scorewire_batch_rows"):
        assert name in families, name


def test_shutdown_summary_accounts_for_every_row(monitored):
    """Runs last: SIGTERM, and the server says how many rows its monitor observed (all the
    rows scored), dropped and failed, and how many drift evaluations they made."""
    import re

    srv, _ = monitored
    families = scrape(f"127.0.0.1:{srv.metrics_port}")
    scored = sum(s.value for s in families["scorewire_batch_rows"] if s.name == "scorewire_batch_rows_sum")
    assert srv.stop() == 0
    printed = srv.proc.stdout.read()
    line = re.search(r"monitor: (\d+) rows observed, (\d+) dropped, (\d+) failed \((\d+) drift evaluations\)", printed)
    assert line is not None, printed
    observed, dropped, failed, evaluations = map(int, line.groups())
    assert (observed, dropped, failed) == (scored, 0, 0)
    # windows 500 and 2,000, every 500: the first evaluation at row 500 (the smallest window
    # full), then one per 500 rows
    assert evaluations == (0 if observed < 500 else (observed - 500) // 500 + 1)


def test_a_monitored_challenger_has_drift_metrics_of_its_own(monitored, model_dir):
    """Champion and challenger both monitored: each (model, version, feature) is one sample,
    and each version counts the rows it saw (the challenger's shadow runs included)."""
    config = monitored_config([1000, 2000], version="1")
    config = config.add(models=[{**config.models[0], "version": "2"}],
                        routes=[route_table("mlp", "1", challengers=["2"])])
    srv = launch(model_dir, config, name="monitored-two.toml")
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        _, live = monitored
        for start in range(0, 600, 100):
            inp = grpcclient.InferInput("float_input", [100, len(FEATURES)], "FP32")
            inp.set_data_from_numpy(live[start : start + 100])
            client.infer("mlp", [inp])
        client.close()
        target = f"127.0.0.1:{srv.metrics_port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            families = scrape(target)
            seen = {s.labels["version"]: s.value for s in families["scorewire_drift_events_observed"]}
            if seen == {"1": 600, "2": 600}:
                break
            time.sleep(0.2)
        assert seen == {"1": 600, "2": 600}
        keys = [(s.labels["model"], s.labels["version"], s.labels["feature"])
                for s in families["scorewire_drift_alert"]]
        assert len(keys) == len(set(keys)) == 2 * (len(FEATURES) + 1)
        # 600 rows of windows of 1,000 and 2,000: nothing evaluated, so no statistic or p-value
        # to read as a clean evaluation; the windows' fill says how far they got
        assert not families.get("scorewire_drift_pvalue") and not families.get("scorewire_drift_statistic")
        fill = {(s.labels["version"], s.labels["window"]): s.value for s in families["scorewire_drift_window_rows"]}
        assert fill == {(v, w): 600 for v in ("1", "2") for w in ("1000", "2000")}
        assert {s.labels["version"]: s.value for s in families["scorewire_drift_evaluations"]} == {"1": 0, "2": 0}
    finally:
        srv.stop()
