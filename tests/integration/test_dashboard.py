"""configs/grafana-dashboard.json and configs/alerts.yml read only what the server really
exports: every metric their queries name, and every label they group by or match on (besides
the scrape's instance and job), checked against a running server with
every part on (two workers, drift, a challenger, the scoring log, a Kafka stream, labels sent
back to versions with a performance reference, guards that flag (with their alert), conformal
sets, fairness, segments, data quality with an alert)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient
import yaml

from engine.harness.config import Config, model_table, route_table, server_table
from engine.mock_kafka import MockCluster
from tests.conftest import launch
from tests.integration.kafka_helpers import stream, wait_for

DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana-dashboard.json"
ALERTS = Path(__file__).resolve().parents[2] / "configs" / "alerts.yml"
SCRAPE_LABELS = {"instance", "job"}  # Prometheus adds them to every series it scrapes

FEATURES = [f"f{i}" for i in range(32)]
PERFORMANCE = {"task": "binary", "score": "probabilities:1", "window": 50, "every": 50,
               "reference": "ref-dashboard-labelled.parquet"}
CONFIG = Config(
    server_table(workers=2),
    [model_table("mlp", "models/mlp.onnx", version="1", performance=PERFORMANCE,
                 monitor={"reference": "ref-dashboard.parquet", "window": 100, "every": 50, "features": FEATURES,
                          "categorical": ["f0"], "quality": {"max_out_of_range": 0.5}},
                 guards={"input_domain": "reference", "min_confidence": 0.9, "action": "flag", "alert_share": 0.5},
                 conformal={"alpha": 0.1}, fairness={"protected": "f0", "privileged": 1, "window": 100},
                 segments={"columns": ["f0", "f1"], "bins": {"f1": [0, 0.5, 1]}}),
     model_table("mlp", "models/mlp.onnx", version="2", performance=PERFORMANCE)],
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


def _closing(text: str, at: int) -> int:
    """The index of the parenthesis closing the one at `at`."""
    depth = 0
    for i in range(at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def _groupings(query: str) -> list[tuple[list[str], set[str]]]:
    """(labels, metric names they must be on): `by (...)` groups the expression it applies to
    (the parenthesis after it), `on (...)` matches both sides: every name of the query."""
    names = lambda text: set(re.findall(r"\bscorewire_[a-z0-9_]+", text))  # noqa: E731
    found = []
    for m in re.finditer(r"\b(by|on) \(([^)]*)\)", query):
        labels = [g.strip() for g in m.group(2).split(",")]
        if m.group(1) == "on":
            found.append((labels, names(query)))
        else:
            rest = query[m.end():].lstrip()
            inner = rest[:_closing(rest, 0) + 1] if rest.startswith("(") else query[:m.start()]
            found.append((labels, names(inner)))
    return found


def _alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_every_query_of_the_dashboard_and_the_alerts_reads_exported_metrics(model_dir, rng):
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(queries) >= 20
    rules = _alert_rules()
    assert len(rules) >= 15
    queries += [rule["expr"] for rule in rules]
    x = rng.random((400, 32), dtype=np.float32)
    x[:, 0] = rng.integers(0, 2, 400)  # the protected feature: two groups
    pq.write_table(pa.table({f"f{i}": x[:200, i] for i in range(32)}), model_dir / "ref-dashboard.parquet")
    session = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    p = session.run(["probabilities"], {"float_input": x})[0][:, 1]
    labels = (rng.random(len(x)) < p).astype(int)
    pq.write_table(pa.table({"probabilities:1": p[:200], "label": labels[:200]}),
                   model_dir / "ref-dashboard-labelled.parquet")
    with MockCluster() as cluster:
        for topic in ("events", "scores", "scores-dlq"):
            cluster.create_topic(topic, 2)
        config = CONFIG.add(streams=[stream(cluster.bootstrap, group="dash")])
        server = launch(model_dir, config, "dashboard.toml")
        try:
            c = grpcclient.InferenceServerClient(server.url)
            for i in range(200, 400, 10):
                inp = grpcclient.InferInput("float_input", [10, 32], "FP32")
                inp.set_data_from_numpy(x[i:i + 10])
                c.infer("mlp", [inp], request_id=f"d{i}")
            c.close()
            import urllib.request

            body = json.dumps([{"id": f"d{i}", "labels": labels[i:i + 10].tolist()} for i in range(200, 400, 10)])
            request = urllib.request.Request(f"http://{server.http_url}/v2/models/mlp/feedback", data=body.encode(),
                                             method="POST")
            assert urllib.request.urlopen(request, timeout=10).status == 200

            def scrape() -> str:
                url = f"http://127.0.0.1:{server.metrics_port}/metrics"
                return urllib.request.urlopen(url, timeout=5).read().decode()

            # drift evaluated (200 rows, window 100), shadows scored: every family has samples
            wait_for(lambda: all(f"{name}{{" in scrape() for name in ("scorewire_request_duration_seconds_bucket",
                "scorewire_drift_pvalue", "scorewire_latency_recent_us", "scorewire_performance_alert",
                "scorewire_performance_estimated", "scorewire_performance_difference", "scorewire_guard_rows_total",
                "scorewire_conformal_coverage", "scorewire_fairness", "scorewire_segment_performance",
                "scorewire_guard_share", "scorewire_data_quality_share")), 20,
                what="an evaluation, recent latency, performance alerts evaluated, estimates, the paired difference, "
                     "guarded rows, coverage and fairness")
            exported = _exported(scrape())
        finally:
            assert server.stop() == 0
    for query in queries:
        for name in set(re.findall(r"\bscorewire_[a-z0-9_]+", query)):
            assert name in exported, f"{name} (in {query!r}) is not exported"
        for labels, names in _groupings(query):
            for name in names:
                for label in set(labels) - SCRAPE_LABELS:
                    assert label in exported[name], f"{name} has no label {label!r} (in {query!r})"
        for name, matchers in re.findall(r"\b(scorewire_[a-z0-9_]+)\{([^}]*)\}", query):
            for label in set(re.findall(r"(\w+)\s*[=!~]", matchers)) - SCRAPE_LABELS:
                assert label in exported[name], f"{name} has no label {label!r} (in {query!r})"


def test_the_alerts_annotations_name_labels_their_expression_keeps():
    for rule in _alert_rules():
        kept = set().union(*(labels for labels, _ in _groupings(rule["expr"]))) if " by (" in rule["expr"] else None
        for text in rule.get("annotations", {}).values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert kept is None or label in kept, f"{rule['alert']}: $labels.{label} is aggregated away"


def test_groupings_name_the_metrics_they_apply_to():
    query = ("sum by (model, version, guard) (rate(scorewire_guard_rows_total[5m])) / on (model, version) "
             "group_left sum by (model, version) (rate(scorewire_rows_total[5m]))")
    assert _groupings(query) == [(["model", "version", "guard"], {"scorewire_guard_rows_total"}),
                                 (["model", "version"], {"scorewire_guard_rows_total", "scorewire_rows_total"}),
                                 (["model", "version"], {"scorewire_rows_total"})]
