"""Segments and the equal opportunity difference with a real server (two workers, labels over
REST): per segment, the rows scored, the realized performance equal to sklearn's on that
segment's rows as the client got them, and the score drift equal to scipy's KS statistic
against the reference's rows of the segment; eod equal to numpy on the labelled rows; both
in `scorewire status`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

from engine.harness.config import Config, model_table, server_table
from engine.harness.models import N_FEATURES
from tests.conftest import launch
from tests.integration.kafka_helpers import wait_for
from tests.integration.workers_helpers import infer

FEATURES = [f"f{i}" for i in range(N_FEATURES)]
CODES = [0.4, 0.3, 0.2, 0.1]  # f7 is a group code: 0 most frequent


def segment_of(x: np.ndarray) -> np.ndarray:
    """Each row's two segments (rows x 2), read from the config below: f7's two most frequent
    codes (0, 1) or other; f2's bins [-1, 0) and [0, 1), or other."""
    f7 = np.where(np.isin(x[:, 7], [0, 1]), np.char.add("f7=", x[:, 7].astype(int).astype(str)), "f7=other")
    f2 = np.select([(x[:, 2] >= -1) & (x[:, 2] < 0), (x[:, 2] >= 0) & (x[:, 2] < 1)], ["f2=[-1,0)", "f2=[0,1)"],
                   "f2=other")
    return np.column_stack([f7, f2])


def test_segment_performance_and_eod_equal_sklearn_and_numpy_on_the_rows_served(model_dir, rng):
    session = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    x_ref = rng.normal(size=(2000, N_FEATURES)).astype(np.float32)
    x_ref[:, 7] = rng.choice(4, size=2000, p=CODES)
    p_ref = session.run(["probabilities"], {"float_input": x_ref})[0][:, 1]
    pq.write_table(pa.table({**{f: x_ref[:, i] for i, f in enumerate(FEATURES)}, "probabilities:1": p_ref}),
                   model_dir / "ref-segments.parquet")
    monitor = {"features": FEATURES, "categorical": ["f7"], "outputs": ["probabilities:1"],
               "reference": "ref-segments.parquet", "window": 500}
    performance = {"task": "binary", "score": "probabilities:1", "window": 1000}
    segments = {"columns": ["f7", "f2"], "bins": {"f2": [-1.0, 0.0, 1.0]}, "max_values": 2}
    fairness = {"protected": "f7", "privileged": 1, "window": 1000}
    config = Config(server_table(workers=2, drain_timeout_s=20),
                    [model_table("mlp", "models/mlp.onnx", monitor=monitor, performance=performance,
                                 segments=segments, fairness=fairness)])
    server = launch(model_dir, config, "segments.toml")
    try:
        n, per_request = 240, 8
        x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
        x[:, 7] = rng.choice(4, size=n, p=CODES)
        p = np.concatenate([infer(server.url, x[a:a + per_request], f"s{a}")[:, 1]
                            for a in range(0, n, per_request)]).astype(np.float64)
        y = (rng.random(n) < np.clip(p + 0.2 * (x[:, 7] == 1), 0, 1)).astype(int)  # group 1 labelled kinder
        labels = [{"id": f"s{a}", "labels": y[a:a + per_request].tolist()} for a in range(0, n, per_request)]
        request = urllib.request.Request(f"http://{server.http_url}/v2/models/mlp/feedback",
                                         data=json.dumps(labels).encode(), headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(request, timeout=10).status == 200

        names = segment_of(x)
        segs = sorted(set(names.ravel()))
        key = '{model="mlp",version="1",segment="%s"}'
        drift = {}
        ref_names = segment_of(x_ref)
        for s in segs:
            drift[s] = ks_2samp(p[(names == s).any(axis=1)], p_ref[(ref_names == s).any(axis=1)]).statistic
        # the drift is recomputed at most once a second: wait for the one over every row
        wait_for(lambda: all(abs(server.metrics().get("scorewire_segment_score_drift" + key % s, -1) - drift[s]) < 1e-6
                             for s in segs), 30, what="every segment's score drift over the rows served")
        wait_for(lambda: server.metrics().get('scorewire_performance_rows{model="mlp",version="1",role="champion"}')
                 == n, 30, what="every labelled row joined")
        m = server.metrics()
        for s in ("f7=0", "f7=1", "f7=other", "f2=[-1,0)", "f2=[0,1)", "f2=other"):
            assert m["scorewire_segment_rows_total" + key % s] == (names == s).sum(), s
        where = '{model="mlp",version="1",role="champion",segment="%s"%s}'
        for s in segs:
            mine = (names == s).any(axis=1)
            yy, pp = y[mine], p[mine]
            assert m["scorewire_segment_performance_rows" + where % (s, "")] == mine.sum()
            want = {"accuracy": accuracy_score(yy, pp > 0.5), "log_loss": log_loss(yy, pp, labels=[0, 1]),
                    "brier": brier_score_loss(yy, pp, pos_label=1)}
            if 0 < yy.sum() < len(yy):
                want["auc"] = roc_auc_score(yy, pp)
            for metric, value in want.items():
                got = m["scorewire_segment_performance" + where % (s, f',metric="{metric}"')]
                assert got == pytest.approx(value, rel=1e-6, abs=1e-9), (s, metric)

        privileged, predicted, deserving = x[:, 7] == 1, p > 0.5, y == 1
        tpr = lambda group: predicted[group & deserving].mean()  # noqa: E731
        eod = tpr(~privileged) - tpr(privileged)
        assert m['scorewire_fairness{model="mlp",version="1",metric="eod"}'] == pytest.approx(eod, abs=1e-9)
        assert m['scorewire_fairness_favourable_labels{model="mlp",version="1",group="privileged"}'] == \
            (privileged & deserving).sum()

        shown = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--target",
                                f"127.0.0.1:{server.metrics_port}"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        lines = [line.split() for line in shown.stdout.splitlines()]
        mine = (names == "f7=other").any(axis=1)
        assert ["mlp", "1", "f7=other", f"{mine.sum():,}", f"{drift['f7=other']:.3f}", "champion",
                f"{mine.sum():,}", f"{accuracy_score(y[mine], p[mine] > 0.5):.4g}"] in [ln[:8] for ln in lines], \
            shown.stdout
        assert any(ln[:2] == ["mlp", "1"] and ln[-1] == f"{eod:+.4g}" for ln in lines), shown.stdout
    finally:
        assert server.stop() == 0
