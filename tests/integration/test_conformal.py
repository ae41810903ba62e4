"""Conformal sets served with a real server (two workers): over gRPC and REST, equal to the
rule applied to onnxruntime's probabilities with the q of the reference; listed in the
model's metadata; their coverage on labelled rows in /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import math
import urllib.request

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient

from engine.harness.config import Config, model_table, server_table
from engine.harness.models import N_FEATURES
from tests.conftest import launch
from tests.integration.kafka_helpers import wait_for


def test_prediction_sets_over_grpc_and_rest_and_their_coverage(model_dir, rng):
    session = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    probabilities = lambda x: session.run(["probabilities"], {"float_input": x})[0]  # noqa: E731
    x_ref = rng.normal(size=(800, N_FEATURES)).astype(np.float32)
    p_ref = probabilities(x_ref)[:, 1].astype(np.float64)
    y_ref = (rng.random(800) < np.clip(p_ref * 0.8 + 0.1, 0, 1)).astype(int)  # a model not quite right
    pq.write_table(pa.table({"probabilities:1": p_ref, "label": y_ref}), model_dir / "ref-conformal.parquet")
    alpha = 0.1
    s = np.sort(1 - np.where(y_ref == 1, p_ref, 1 - p_ref))
    q = s[math.ceil(801 * (1 - alpha)) - 1]
    performance = {"task": "binary", "score": "probabilities:1", "window": 200, "reference": "ref-conformal.parquet"}
    config = Config(server_table(workers=2, drain_timeout_s=20),
                    [model_table("mlp", "models/mlp.onnx", performance=performance, conformal={"alpha": alpha})])
    server = launch(model_dir, config, "conformal.toml")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        meta = client.get_model_metadata("mlp")
        assert ("prediction_set", "BOOL", [-1, 2]) in [(o.name, o.datatype, list(o.shape)) for o in meta.outputs]
        x = rng.normal(size=(200, N_FEATURES)).astype(np.float32)
        got = []
        for i in range(0, 200, 8):
            inp = grpcclient.InferInput("float_input", [8, N_FEATURES], "FP32")
            inp.set_data_from_numpy(x[i:i + 8])
            got.append(client.infer("mlp", [inp], request_id=f"c{i}").as_numpy("prediction_set"))
        client.close()
        p = probabilities(x)
        np.testing.assert_array_equal(np.concatenate(got), p >= 1 - q)
        body = json.dumps({"inputs": [{"name": "float_input", "shape": [2, N_FEATURES], "datatype": "FP32",
                                       "data": x[:2].ravel().tolist()}],
                           "outputs": [{"name": "prediction_set"}]}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"http://{server.http_url}/v2/models/mlp/infer",
                                                           data=body), timeout=10) as response:
            rest = json.loads(response.read())["outputs"]
        assert [o["name"] for o in rest] == ["prediction_set"]
        assert rest[0]["data"] == (p[:2] >= 1 - q).ravel().tolist()
        y = (rng.random(200) < p[:, 1]).astype(int)
        labels = [{"id": f"c{i}", "labels": y[i:i + 8].tolist()} for i in range(0, 200, 8)]
        request = urllib.request.Request(f"http://{server.http_url}/v2/models/mlp/feedback",
                                         data=json.dumps(labels).encode())
        assert urllib.request.urlopen(request, timeout=10).status == 200
        key = 'scorewire_conformal_coverage{model="mlp",version="1",role="champion"}'
        wait_for(lambda: key in server.metrics(), 20, what="the coverage of the labelled rows")
        m = server.metrics()
        expected = (p >= 1 - q)[np.arange(200), y]
        assert m[key] == pytest.approx(expected.mean())
        assert m['scorewire_conformal_set_size{model="mlp",version="1",role="champion"}'] == pytest.approx(
            (p >= 1 - q).sum(axis=1).mean())
        shown = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--target",
                                f"127.0.0.1:{server.metrics_port}"], capture_output=True, text=True, timeout=60)
        assert any(line.split()[:4] == ["mlp", "1", "champion", f"{expected.mean():.4g}"]
                   for line in shown.stdout.splitlines()), shown.stdout
    finally:
        assert server.stop() == 0
