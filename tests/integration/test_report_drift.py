"""The report's window at a raise is the rows the monitor raised on, under load: a real server
scores a stream faster than its monitor gathers it (the monitor evaluates up to a second of
batches at once, thousands of rows behind the log), a short burst of one class's rows drifts
the inputs and the predictions, and the page's window for each raise -- an input feature's
and `probabilities:1`'s, logged as `out_probabilities_1` -- has SciPy's KS D of exactly the
rows the monitor had observed when it raised (known here from the order they were sent in)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
from scipy import stats

from engine.harness.config import Config, model_table, server_table
from engine.harness.models import N_FEATURES, demo_data
from tests.conftest import REPORT, launch

FEATURES = [f"f{i}" for i in range(N_FEATURES)]
WINDOW, EVERY, BATCH = 1_000, 250, 50


def _read(folder):
    return ds.dataset(folder, partitioning="hive").to_table()


@pytest.mark.parametrize("workers", [1, 2])  # the observer in the server's process, or its own fed by rings
def test_the_window_drawn_is_the_one_the_monitor_raised_on(model_dir, tmp_path, workers):
    x, _ = demo_data(30_000, seed=5)
    reference, pool = x[:3_000], x[3_000:]
    session = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    p_ref = session.run(["probabilities"], {"float_input": reference})[0][:, 1]
    pq.write_table(pa.table({**{n: reference[:, i] for i, n in enumerate(FEATURES)}, "probabilities:1": p_ref}),
                   model_dir / "ref-window.parquet")
    # 8,000 rows as the reference, 600 the model finds most likely class 1 (the inputs and the
    # predictions drift), 8,000 more as the reference; the 600 from the pool's tail, where they
    # leave no hole in the rows around them
    p_pool = session.run(["probabilities"], {"float_input": pool})[0][:, 1]
    tail = 16_000 + np.argsort(-p_pool[16_000:], kind="stable")[:600]
    live = np.concatenate([pool[:8_000], pool[tail], pool[8_000:16_000]])
    config = Config(
        server_table(workers=workers),
        [model_table("mlp", "models/mlp.onnx", monitor={
            "reference": "ref-window.parquet", "features": FEATURES, "outputs": ["probabilities:1"],
            "window": WINDOW, "every": EVERY, "consecutive": 1})],
        scorelog={"dir": f"window-log-{workers}", "max_file_age_s": 1},
        monitoring={"events_dir": f"window-events-{workers}"})
    server = launch(model_dir, config, f"window-{workers}.toml")
    try:
        c = grpcclient.InferenceServerClient(server.url)
        for i in range(0, len(live), BATCH):  # one after another: scored (and observed) in this order
            inp = grpcclient.InferInput("float_input", [BATCH, N_FEATURES], "FP32")
            inp.set_data_from_numpy(live[i:i + BATCH])
            c.infer("mlp", [inp], request_id=f"w{i}")
        c.close()
    finally:
        assert server.stop() == 0
    log_dir, events_dir = model_dir / f"window-log-{workers}", model_dir / f"window-events-{workers}"
    log = _read(log_dir)
    assert log.num_rows == len(live)
    sent = pc.add(pc.cast(pc.utf8_slice_codeunits(log.column("request_id"), 1), pa.int64()),
                  pc.cast(log.column("row"), pa.int64()))  # request w{i}'s row j was sent (i + j)-th
    order = np.argsort(sent.to_numpy())  # the log's rows in the order sent
    served = log.column("out_probabilities_1").to_numpy()[order]
    raises = [r for r in _read(events_dir / "kind=drift").to_pylist() if r["event"] == "raise"]
    by_feature = {}
    for r in sorted(raises, key=lambda r: r["events_observed"]):
        by_feature.setdefault(r["feature"], r)
    assert "probabilities:1" in by_feature and len(by_feature) > 1, sorted(by_feature)
    out = tmp_path / "window.html"
    done = subprocess.run([sys.executable, "-m", "engine.cli", "report", "--log", str(log_dir),
                           "--events", str(events_dir), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    # the page lists features in the order it draws them: the prediction's first
    shown = re.findall(r"<h4 class='(\w+)'>(.+?): (alert raised|no alert)</h4>", page)
    assert shown[0][1] == "probabilities:1" and shown[0][0] == "alerted", shown
    checked = []
    for feature, event in by_feature.items():
        if not any(f == feature for _, f, _ in shown):
            continue  # beyond the features the page draws
        end = event["events_observed"]
        values = served if feature == "probabilities:1" else live[:, FEATURES.index(feature)]
        ref = p_ref if feature == "probabilities:1" else reference[:, FEATURES.index(feature)]
        tested = values[end - WINDOW:end]  # the rows the monitor had observed when it raised
        d = stats.ks_2samp(tested, ref).statistic
        assert event["statistic"] == pytest.approx(d, abs=1e-12)  # the monitor's D: SciPy's on those rows
        assert event["window"] == WINDOW and list(zip(event["seq_from"], event["seq_to"])) == [(end - WINDOW, end)]
        # the page states SciPy's D of the rows it drew for this raise: the same
        section = page[page.index(f"'>{feature}: alert raised</h4>"):]
        drawn = float(re.search(r"KS D of the rows drawn \(SciPy\): ([0-9.e-]+)", section).group(1))
        assert drawn == pytest.approx(d, rel=1e-3), (feature, drawn, d)
        # ... while the rows logged by the time it raised, as the page used to pick them, were others
        by_time = np.sort(log.column("time").to_numpy())
        behind = int(np.searchsorted(by_time, np.datetime64(event["time"].replace(tzinfo=None), "us"), "right")) - end
        stale = stats.ks_2samp(values[max(0, end + behind - WINDOW):end + behind], ref).statistic
        checked.append((feature, end, behind, d, stale))
    assert any(f == "probabilities:1" for f, *_ in checked) and len(checked) >= 2, checked
    assert all(behind > 0 for _, _, behind, _, _ in checked), checked  # the monitor ran behind the log
    for feature, end, behind, d, stale in checked:
        REPORT.append(f"report window, {workers} worker(s), {feature}: raised at row {end:,}, monitor {behind:,} rows "
                      f"behind the log; KS D of the rows tested {d:.4f} (drawn), of those logged by then {stale:.4f}")
