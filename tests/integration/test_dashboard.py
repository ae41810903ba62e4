"""configs/grafana-dashboard.json reads only what the server really exports: every metric
its queries name, and every label they group by, checked against a running server with
every part on (two workers, drift, a challenger, the scoring log, a Kafka stream)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient

from engine.harness.config import Config, model_table, route_table, server_table
from engine.mock_kafka import MockCluster
from tests.conftest import launch
from tests.integration.kafka_helpers import stream, wait_for

DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana-dashboard.json"

CONFIG = Config(
    server_table(workers=2),
    [model_table("mlp", "models/mlp.onnx", version="1",
                 monitor={"reference": "ref-dashboard.parquet", "window": 100, "every": 50}),
     model_table("mlp", "models/mlp.onnx", version="2")],
    routes=[route_table("mlp", "1", challengers=["2"])],
    scorelog={"dir": "log-dashboard"})


def _exported(text: str) -> dict[str, set[str]]:
    """Metric names the text exposition declares (histograms and counters with their sample
    suffixes), each with the label names its samples carry."""
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.setdefault(name, set())
            if kind == "histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    names.setdefault(name + suffix, set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split()[0]
            labels = set(re.findall(r'(\w+)="', rest)) if rest else set()
            names.setdefault(name, set()).update(labels)
    return names


def test_every_query_of_the_dashboard_reads_exported_metrics(model_dir, rng):
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(queries) >= 20
    x = rng.random((400, 32), dtype=np.float32)
    pq.write_table(pa.table({f"f{i}": x[:200, i] for i in range(32)}), model_dir / "ref-dashboard.parquet")
    with MockCluster() as cluster:
        for topic in ("events", "scores", "scores-dlq"):
            cluster.create_topic(topic, 2)
        config = CONFIG.add(streams=[stream(cluster.bootstrap, group="dash")])
        server = launch(model_dir, config, "dashboard.toml")
        try:
            c = grpcclient.InferenceServerClient(server.url)
            for i in range(0, 200, 10):
                inp = grpcclient.InferInput("float_input", [10, 32], "FP32")
                inp.set_data_from_numpy(x[i:i + 10])
                c.infer("mlp", [inp])
            c.close()
            import urllib.request

            def scrape() -> str:
                url = f"http://127.0.0.1:{server.metrics_port}/metrics"
                return urllib.request.urlopen(url, timeout=5).read().decode()

            # drift evaluated (200 rows, window 100), shadows scored: every family has samples
            wait_for(lambda: "scorewire_drift_pvalue{" in scrape() and "scorewire_latency_recent_us{" in scrape(), 20,
                     what="an evaluation and recent latency")
            exported = _exported(scrape())
        finally:
            assert server.stop() == 0
    for query in queries:
        for name in set(re.findall(r"\bscorewire_[a-z0-9_]+", query)):
            assert name in exported, f"{name} (in {query!r}) is not exported"
            for group in re.findall(r"by \(([^)]*)\)", query):
                for label in (g.strip() for g in group.split(",")):
                    assert label in exported[name], f"{name} has no label {label!r} (in {query!r})"
