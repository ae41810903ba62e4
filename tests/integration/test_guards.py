"""Guards with a real server (two workers): rows outside the reference's domain refused over
gRPC (their batch-mates answered exactly as onnxruntime does), REST (400) and Kafka (dead
letters, the other events scored); flagged instead, with the confidence guard, as an output
equal to a numpy computation of its bits."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient

from engine.harness.config import Config, model_table, route_table, server_table
from engine.harness.models import N_FEATURES
from engine.mock_kafka import MockCluster
from tests.conftest import launch
from tests.integration.kafka_helpers import produce, read_all, stream, wait_for

FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def reference(model_dir, rng) -> np.ndarray:
    x = rng.normal(size=(2000, N_FEATURES)).astype(np.float32)
    pq.write_table(pa.table({f: x[:, i] for i, f in enumerate(FEATURES)}), model_dir / "ref-guards.parquet")
    return x


def rest_infer(server, x: np.ndarray) -> dict:
    """One REST infer of the rows `x`: its outputs by name."""
    body = json.dumps({"inputs": [{"name": "float_input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"http://{server.http_url}/v2/models/mlp/infer", data=body),
                                timeout=10) as response:
        return {o["name"]: o for o in json.loads(response.read())["outputs"]}


def config(guards: dict, **extra) -> Config:
    monitor = {"features": FEATURES, "reference": "ref-guards.parquet"}
    return Config(server_table(workers=2, drain_timeout_s=20),
                  [model_table("mlp", "models/mlp.onnx", monitor=monitor, guards=guards,
                               # "delay": concurrent requests wait 20 ms for company, so a refused row has batch-mates
                               batching={"max_batch_size": 64, "max_queue_delay_us": 20_000, "dispatch": "delay"},
                               performance={"task": "binary", "score": "probabilities:1"})], **extra)


def test_out_of_domain_rows_are_refused_alone_over_grpc_rest_and_kafka(model_dir, rng):
    x_ref = reference(model_dir, rng)
    session = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(40, N_FEATURES)).astype(np.float32) * 0.5
    outside = [3, 17, 29]
    x[outside, 5] = x_ref[:, 5].max() + 1.0  # past the reference's range of f5
    with MockCluster() as cluster:
        for topic in ("events", "scores", "scores-dlq"):
            cluster.create_topic(topic, 2)
        server = launch(model_dir, config({"input_domain": "reference"},
                                          streams=[stream(cluster.bootstrap, group="guards")]), "guards.toml")
        try:
            answers: dict[int, object] = {}

            def call(i: int) -> None:  # concurrent one-row requests: they share batches
                client = grpcclient.InferenceServerClient(server.url)
                inp = grpcclient.InferInput("float_input", [1, N_FEATURES], "FP32")
                inp.set_data_from_numpy(x[i:i + 1])
                try:
                    answers[i] = client.infer("mlp", [inp]).as_numpy("probabilities")
                except Exception as exc:
                    answers[i] = exc
                client.close()

            threads = [threading.Thread(target=call, args=(i,)) for i in range(len(x))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            expected = session.run(["probabilities"], {"float_input": x})[0]
            for i in range(len(x)):
                if i in outside:
                    assert "feature f5" in str(answers[i]) and "input domain" in str(answers[i]), answers[i]
                else:
                    np.testing.assert_array_equal(answers[i], expected[i:i + 1])
            body = json.dumps({"inputs": [{"name": "float_input", "shape": [2, N_FEATURES], "datatype": "FP32",
                                           "data": x[[0, 3]].ravel().tolist()}]}).encode()
            try:
                urllib.request.urlopen(urllib.request.Request(f"http://{server.http_url}/v2/models/mlp/infer",
                                                              data=body), timeout=10)
                raise AssertionError("the REST request with an out-of-domain row was answered")
            except urllib.error.HTTPError as exc:
                assert exc.code == 400 and "row 1: feature f5" in exc.read().decode()
            events = [(b"k%d" % i, orjson.dumps({"id": i, "float_input": x[i]}, option=orjson.OPT_SERIALIZE_NUMPY))
                      for i in range(len(x))]
            produce(cluster.bootstrap, "events", events)
            results = read_all(cluster.bootstrap, "scores", len(x) - len(outside))
            dead = read_all(cluster.bootstrap, "scores-dlq", len(outside))
            assert sorted(orjson.loads(m.value())["id"] for m in results) == [i for i in range(len(x)) if i not in outside]
            assert sorted(int(m.key()[1:]) for m in dead) == outside
            assert all(b"input domain" in dict(m.headers())["scorewire.error"] for m in dead)
            m = server.metrics()
            assert m['scorewire_guard_rows_total{model="mlp",version="1",guard="input_domain",action="reject"}'] == \
                len(outside) * 2 + 1  # gRPC, Kafka, and the REST request's row
            shown = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--target",
                                    f"127.0.0.1:{server.metrics_port}"], capture_output=True, text=True, timeout=60)
            assert any(line.split() == ["mlp", "1", "input_domain", "reject", str(len(outside) * 2 + 1)]
                       for line in shown.stdout.splitlines()), shown.stdout
        finally:
            assert server.stop() == 0


def test_flagged_rows_are_answered_with_their_bits_and_their_share_alerts(model_dir, rng):
    reference(model_dir, rng)
    cfg = config({"input_domain": "reference", "min_confidence": 0.9, "action": "flag", "alert_share": 0.2},
                 monitoring={"events_dir": "events-guards"})
    cfg.models[0]["monitor"]["window"] = 500
    server = launch(model_dir, cfg, "guards-flag.toml")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        outputs = [o.name for o in client.get_model_metadata("mlp").outputs]
        assert "scorewire_guard" in outputs
        x = rng.normal(size=(64, N_FEATURES)).astype(np.float32)
        x[:4, 0] = 1e3
        inp = grpcclient.InferInput("float_input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("mlp", [inp])
        client.close()
        p = result.as_numpy("probabilities")
        bits = (np.arange(64) < 4).astype(np.uint8) | (p.max(axis=1) < 0.9).astype(np.uint8) * 2
        np.testing.assert_array_equal(result.as_numpy("scorewire_guard"), bits)
        outputs = rest_infer(server, x)
        assert outputs["scorewire_guard"]["datatype"] == "UINT8"
        np.testing.assert_array_equal(np.array(outputs["scorewire_guard"]["data"]), bits)  # the same over REST
        # a third of the rows outside the domain, over more than the monitor's window: the alert
        alert = 'scorewire_guard_alert{model="mlp",version="1",guard="input_domain"}'
        share = 'scorewire_guard_share{model="mlp",version="1",guard="input_domain"}'

        def rows(n: int, outside: float) -> None:
            client = grpcclient.InferenceServerClient(server.url)
            for _ in range(n // 100):
                x = rng.normal(size=(100, N_FEATURES)).astype(np.float32) * 0.5
                x[: int(100 * outside), 3] = 1e3
                inp = grpcclient.InferInput("float_input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                client.infer("mlp", [inp])
            client.close()

        rows(1200, 1 / 3)
        wait_for(lambda: server.metrics().get(alert) == 1, 20, what="the guard's alert")
        assert 0.3 <= server.metrics()[share] <= 0.45  # the stretch read may hold the first request's rows too
        rows(1200, 0.0)
        wait_for(lambda: server.metrics().get(alert) == 0, 20, what="the alert cleared")
        events = sorted(pq.read_table(model_dir / "events-guards" / "kind=guard").to_pylist(), key=lambda e: e["time"])
        assert [e["state"] for e in events if e["guard"] == "input_domain"] == ["raised", "cleared"]
        audit = pq.read_table(model_dir / "events-guards" / "kind=audit").to_pylist()
        assert sum(a["event"] == "guard_alert" and "input_domain" in a["detail"] for a in audit) == 2
    finally:
        assert server.stop() == 0


def test_violating_rows_fall_back_to_another_version_over_grpc_rest_and_kafka(model_dir, rng):
    """action = "fallback": rows outside the domain are answered by version 2 alone, rows
    version 1 scored unconfident by version 2 again; every other row is version 1's, all equal
    to onnxruntime's, and `scorewire_guard` says which fell back."""
    reference(model_dir, rng)
    mlp = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    gbt = ort.InferenceSession(str(model_dir / "models" / "gbt.onnx"), providers=["CPUExecutionProvider"])
    guards = {"input_domain": "reference", "min_confidence": 0.9, "score": "probabilities", "action": "fallback",
              "fallback_version": "2"}
    monitor = {"features": FEATURES, "reference": "ref-guards.parquet"}
    x = rng.normal(size=(64, N_FEATURES)).astype(np.float32)
    x[:4, 0] = 1e3
    p1 = mlp.run(["probabilities"], {"float_input": x})[0]
    p2 = gbt.run(["probabilities"], {"float_input": x})[0]
    bits = (np.arange(64) < 4).astype(np.uint8)
    bits[4:] |= (p1[4:].max(axis=1) < 0.9).astype(np.uint8) * 2
    assert 0 < (bits == 2).sum() < 60  # some rows fall back for confidence, most do not
    expected = np.where(bits[:, None] > 0, p2, p1)
    with MockCluster() as cluster:
        for topic in ("events", "scores", "scores-dlq"):
            cluster.create_topic(topic, 2)
        cfg = Config(server_table(workers=2, drain_timeout_s=20),
                     [model_table("mlp", "models/mlp.onnx", version="1", monitor=monitor, guards=guards),
                      model_table("mlp", "models/gbt.onnx", version="2")],
                     routes=[route_table("mlp", "1")], streams=[stream(cluster.bootstrap, group="fallback")])
        server = launch(model_dir, cfg, "guards-fallback.toml")
        try:
            client = grpcclient.InferenceServerClient(server.url)
            inp = grpcclient.InferInput("float_input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = client.infer("mlp", [inp])
            client.close()
            assert result.get_response().model_version == "1"
            np.testing.assert_array_equal(result.as_numpy("scorewire_guard"), bits)
            np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
            outputs = rest_infer(server, x)
            np.testing.assert_array_equal(np.array(outputs["scorewire_guard"]["data"]), bits)
            np.testing.assert_allclose(np.array(outputs["probabilities"]["data"]).reshape(64, 2), expected, rtol=1e-6)
            events = [(b"k%d" % i, orjson.dumps({"id": i, "float_input": x[i]}, option=orjson.OPT_SERIALIZE_NUMPY))
                      for i in range(len(x))]
            produce(cluster.bootstrap, "events", events)
            results = {(e := orjson.loads(m.value()))["id"]: e for m in read_all(cluster.bootstrap, "scores", len(x))}
            assert sorted(results) == list(range(len(x)))
            assert [results[i]["version"] for i in range(len(x))] == ["2" if b else "1" for b in bits]
            got = np.array([results[i]["outputs"]["probabilities"] for i in range(len(x))], np.float32)
            np.testing.assert_array_equal(got, expected)
            m = server.metrics()
            key = 'scorewire_guard_rows_total{model="mlp",version="1",guard="%s",action="fallback"}'
            assert m[key % "input_domain"] == 4 * 3 and m[key % "confidence"] == (bits == 2).sum() * 3
        finally:
            assert server.stop() == 0
