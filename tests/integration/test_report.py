"""`scorewire report` on what a real server wrote: drift evaluations over time with the
raise, the window at the raise against the reference, latency, and the comparison; the rows
guards flagged, conformal coverage and fairness."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import urllib.request
from html.parser import HTMLParser

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient

from engine.harness.config import Config, model_table, route_table, server_table
from engine.harness.models import N_FEATURES, demo_data
from tests.conftest import launch
from tests.integration.kafka_helpers import wait_for

FEATURES = [f"f{i}" for i in range(N_FEATURES)]

CONFIG = Config(
    server_table(workers=1),
    [model_table("mlp", "models/mlp.onnx", version="1",
                 monitor={"reference": "ref-report.parquet", "window": 300, "every": 100, "consecutive": 2}),
     model_table("mlp", "models/gbt.onnx", version="2")],
    routes=[route_table("mlp", "1", challengers=["2"])],
    scorelog={"dir": "report-log", "max_file_age_s": 1},
    monitoring={"events_dir": "report-events"})


def test_report_shows_the_drift_the_server_saw(model_dir, tmp_path):
    x, _ = demo_data(4_000, seed=5)
    pq.write_table(pa.table({name: x[:2000, i] for i, name in enumerate(FEATURES)}), model_dir / "ref-report.parquet")
    live = x[2000:3200].copy()
    live[600:, FEATURES.index("f7")] += 1.5  # a mean shift after 600 rows
    server = launch(model_dir, CONFIG, "report.toml")
    try:
        c = grpcclient.InferenceServerClient(server.url)
        for i in range(0, len(live), 20):
            inp = grpcclient.InferInput("float_input", [20, N_FEATURES], "FP32")
            inp.set_data_from_numpy(live[i:i + 20])
            c.infer("mlp", [inp])
        c.close()
    finally:
        assert server.stop() == 0
    evaluations = ds.dataset(model_dir / "report-events" / "kind=evaluation", partitioning="hive").to_table()
    # one row per feature per evaluation: 1,200 rows, window 300, every 100 -> evaluations at 300..1200
    assert sorted(set(evaluations.column("events_observed").to_pylist())) == list(range(300, 1201, 100))
    assert evaluations.num_rows == 10 * N_FEATURES
    f7 = evaluations.filter(ds.field("feature") == "f7").sort_by("events_observed").column("statistic").to_numpy()
    assert f7[-1] > 3 * f7[0]  # the shift shows in the statistic over time
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "engine.cli", "report", "--log", str(model_dir / "report-log"),
                           "--events", str(model_dir / "report-events"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert "<h1>Model mlp</h1>" in page and "<h2>Drift</h2>" in page and "<h2>Latency over time</h2>" in page
    assert re.search(r"mlp:1: 1 feature\(s\) alerted, 1 raise\(s\); 10 evaluations", page), page[:3000]
    assert "<h4 class='alerted'>f7: alert raised</h4>" in page and "Raised at " in page
    # where the curves end, said: the last evaluation written (a running server writes them once a minute)
    assert "The curves end at the last evaluation written, at 1,200 rows observed" in page
    assert "<h3>Challenger 2</h3>" in page and "<pre>" not in page  # the comparison: tables, not a text block
    images = re.findall(r'src="data:image/png;base64,', page)
    assert len(images) >= 1 + 1 + 8  # the raise's window, latency, a plot per feature shown
    # the raise the page shows is the one in the events folder
    raised = ds.dataset(model_dir / "report-events" / "kind=drift", partitioning="hive").to_table().select(
        ["event", "feature", "events_observed"]).to_pylist()
    assert [(r["event"], r["feature"]) for r in raised] == [("raise", "f7")]
    assert f"(event {raised[0]['events_observed']:,})" in page


def test_report_shows_guards_coverage_and_fairness(model_dir, rng, tmp_path):
    """A version with flagging guards, conformal sets and fairness, labels sent back: the page's
    guard counts equal numpy's bits on onnxruntime's probabilities, its last coverage and
    fairness figures equal numpy on the same windows (the snapshot taken as the server stops)."""
    session = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    probabilities = lambda x: session.run(["probabilities"], {"float_input": x})[0].astype(np.float64)  # noqa: E731
    x_ref = rng.normal(size=(600, N_FEATURES)).astype(np.float32)
    x_ref[:, 0] = rng.integers(0, 2, len(x_ref))  # the protected feature: codes 0 and 1
    pq.write_table(pa.table({name: x_ref[:, i] for i, name in enumerate(FEATURES)}), model_dir / "ref-quality.parquet")
    p_ref = probabilities(x_ref)[:, 1]
    y_ref = (rng.random(len(x_ref)) < p_ref).astype(int)
    pq.write_table(pa.table({"probabilities:1": p_ref, "label": y_ref}), model_dir / "ref-quality-labelled.parquet")
    alpha, window, min_confidence = 0.1, 200, 0.9
    config = Config(
        server_table(workers=1),
        [model_table("mlp", "models/mlp.onnx",
                     monitor={"reference": "ref-quality.parquet", "features": FEATURES, "categorical": ["f0"]},
                     performance={"task": "binary", "score": "probabilities:1", "window": window,
                                  "reference": "ref-quality-labelled.parquet"},
                     guards={"input_domain": "reference", "min_confidence": min_confidence, "action": "flag"},
                     conformal={"alpha": alpha}, fairness={"protected": "f0", "privileged": 1, "window": window})],
        scorelog={"dir": "quality-log", "max_file_age_s": 1}, monitoring={"events_dir": "quality-events"})
    x = rng.normal(size=(400, N_FEATURES)).astype(np.float32)
    x[:, 0] = rng.integers(0, 2, len(x))
    x[rng.choice(len(x), 30, replace=False), 5] = x_ref[:, 5].max() + 1  # outside the reference's range of f5
    p = probabilities(x)
    y = (rng.random(len(x)) < p[:, 1]).astype(int)
    server = launch(model_dir, config, "quality.toml")
    try:
        c = grpcclient.InferenceServerClient(server.url)
        for i in range(0, len(x), 20):  # one after another: scored (and logged) in this order
            inp = grpcclient.InferInput("float_input", [20, N_FEATURES], "FP32")
            inp.set_data_from_numpy(x[i:i + 20])
            c.infer("mlp", [inp], request_id=f"q{i}")
        c.close()
        body = json.dumps([{"id": f"q{i}", "labels": y[i:i + 20].tolist()} for i in range(0, len(x), 20)])
        request = urllib.request.Request(f"http://{server.http_url}/v2/models/mlp/feedback", data=body.encode())
        assert urllib.request.urlopen(request, timeout=10).status == 200
        key = 'scorewire_conformal_coverage{model="mlp",version="1",role="champion"}'
        wait_for(lambda: key in server.metrics(), 20, what="the coverage of the labelled rows")
        served_coverage = server.metrics()[key]
    finally:
        assert server.stop() == 0
    out = tmp_path / "quality.html"
    done = subprocess.run([sys.executable, "-m", "engine.cli", "report", "--log", str(model_dir / "quality-log"),
                           "--events", str(model_dir / "quality-events"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    HTMLParser().feed(page)
    assert "<h2>Guards</h2>" in page and "<h2>Conformal sets</h2>" in page and "<h2>Fairness</h2>" in page
    # guards: bit 1 outside the reference's range (f0's codes all seen), bit 2 unconfident
    domain = ((x < x_ref.min(axis=0)) | (x > x_ref.max(axis=0))).any(axis=1)
    unsure = p.max(axis=1) < min_confidence
    flagged = domain | unsure
    row = f"<tr><td>1</td><td>champion</td><td>400</td><td>{domain.sum():,}</td><td>{unsure.sum():,}</td><td>0</td>"
    assert row + f"<td>{flagged.sum():,} ({100 * flagged.mean():.2f}%)</td></tr>" in page, _tables(page)
    # coverage of the last `window` labelled rows against 1 - alpha
    s = np.sort(1 - np.where(y_ref == 1, p_ref, 1 - p_ref))
    q = s[math.ceil((len(s) + 1) * (1 - alpha)) - 1]
    sets = probabilities(x) >= 1 - q
    coverage = sets[np.arange(len(x)), y][-window:].mean()
    assert served_coverage == pytest.approx(coverage)
    shown = f"<tr><td>1</td><td>champion</td><td>{coverage:.4g}</td><td>{1 - alpha:.4g}</td><td>{window}</td></tr>"
    assert shown in page, _tables(page)
    # fairness over the last `window` scored rows: favourable = P(class 1) > 0.5
    favorable, privileged = (p[:, 1] > 0.5)[-window:], (x[:, 0] == 1)[-window:]
    spd = favorable[~privileged].mean() - favorable[privileged].mean()
    ratio = favorable[~privileged].mean() / favorable[privileged].mean()
    alert = "ok" if 0.8 <= ratio <= 1.25 else "OUTSIDE its band"
    assert f"<tr><td>1</td><td>{spd:+.4g}</td><td>{ratio:.4g}</td><td>{window}</td><td>{alert}</td></tr>" in page, (
        _tables(page))
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 3 + 1  # guards, sets, fairness, latency


def _tables(page: str) -> str:
    return "\n".join(re.findall(r"<table>.*?</table>", page))
