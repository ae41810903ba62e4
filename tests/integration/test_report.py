"""`scorewire report` on what a real server wrote: drift evaluations over time with the
raise, the window at the raise against the reference, latency, and the comparison."""

from __future__ import annotations

import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient

from engine.harness.config import Config, model_table, route_table, server_table
from engine.harness.models import N_FEATURES, demo_data
from tests.conftest import launch

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
    assert "<h4>f7</h4>" in page and "Raised at " in page and "challenger 2:" in page
    images = re.findall(r'src="data:image/png;base64,', page)
    assert len(images) >= 1 + 1 + 8  # the raise's window, latency, a plot per feature shown
    # the raise the page shows is the one in the events folder
    raised = ds.dataset(model_dir / "report-events" / "kind=drift", partitioning="hive").to_table().select(
        ["event", "feature", "events_observed"]).to_pylist()
    assert [(r["event"], r["feature"]) for r in raised] == [("raise", "f7")]
    assert f"(event {raised[0]['events_observed']:,})" in page
