"""The Open Inference Protocol over HTTP/REST, against a real server: tritonclient.http
unchanged, results equal to gRPC's, errors as HTTP statuses with a message, the same counts."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_tritonclient_http_gets_what_grpc_gets(server, rng):
    x = rng.random((5, 32), dtype=np.float32)
    g = grpcclient.InferenceServerClient(server.url)
    h = httpclient.InferenceServerClient(server.http_url)
    try:
        for model in ("mlp", "gbt"):
            gi = grpcclient.InferInput("float_input", [5, 32], "FP32")
            gi.set_data_from_numpy(x)
            expected = g.infer(model, [gi])
            for binary in (True, False):  # the binary tensor extension, and JSON data both ways
                hi = httpclient.InferInput("float_input", [5, 32], "FP32")
                hi.set_data_from_numpy(x, binary_data=binary)
                outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
                got = h.infer(model, [hi], outputs=outputs, request_id=f"r-{model}-{binary}")
                assert got.get_response()["id"] == f"r-{model}-{binary}"
                assert got.get_response()["model_version"] == expected.get_response().model_version
                np.testing.assert_array_equal(got.as_numpy("label"), expected.as_numpy("label"))
                np.testing.assert_allclose(got.as_numpy("probabilities"), expected.as_numpy("probabilities"), rtol=1e-6)
        assert h.is_server_live() and h.is_server_ready() and h.is_model_ready("mlp")
        assert not h.is_model_ready("nope")
        meta = h.get_model_metadata("mlp", "2")
        assert meta["versions"] == ["2"] and meta["inputs"] == [{"name": "float_input", "datatype": "FP32",
                                                                   "shape": [-1, 32]}]
        assert h.get_server_metadata()["name"] == "scorewire"
        assert h.get_server_metadata()["extensions"] == ["model_configuration", "statistics", "parameters", "binary_tensor_data"]
    finally:
        g.close()
        h.close()


def test_triton_config_statistics_and_repository_over_rest_equal_grpcs(server, rng):
    g = grpcclient.InferenceServerClient(server.url)
    h = httpclient.InferenceServerClient(server.http_url)
    try:
        x = rng.random((3, 32), dtype=np.float32)
        hi = httpclient.InferInput("float_input", [3, 32], "FP32")
        hi.set_data_from_numpy(x)
        h.infer("gbt", [hi])
        config = h.get_model_config("gbt")
        expected = g.get_model_config("gbt").config
        assert (config["name"], config["platform"], config["max_batch_size"]) == ("gbt", "onnxruntime_onnx",
                                                                                  expected.max_batch_size)
        assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("float_input", "TYPE_FP32", [32])]
        assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
            ("label", "TYPE_INT64", []), ("probabilities", "TYPE_FP32", [2])]
        assert config["instance_group"][0]["count"] == 2
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == \
            expected.dynamic_batching.max_queue_delay_microseconds
        stats = h.get_inference_statistics("gbt")["model_stats"]
        assert [(s["name"], s["version"]) for s in stats] == [("gbt", "1")]
        assert stats[0]["inference_count"] == g.get_inference_statistics("gbt").model_stats[0].inference_count >= 3
        assert stats[0]["inference_stats"]["success"]["count"] >= 1
        every = h.get_inference_statistics()["model_stats"]
        assert {(s["name"], s["version"]) for s in every} >= {("mlp", "1"), ("mlp", "2"), ("gbt", "1")}
        index = h.get_model_repository_index()
        assert {(m["name"], m["version"], m["state"]) for m in index} >= {("mlp", "1", "READY"), ("mlp", "2", "READY"),
                                                                         ("gbt", "1", "READY")}
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            h.get_model_config("nope")
    finally:
        g.close()
        h.close()


def test_rest_errors_are_http_statuses_with_the_message(server):
    base = f"http://{server.http_url}/v2/models"
    row = {"name": "float_input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}
    cases = [
        (f"{base}/nope/infer", {"inputs": [row]}, 404, "unknown model 'nope'"),
        (f"{base}/mlp/versions/9/infer", {"inputs": [row]}, 404, "version"),
        (f"{base}/mlp/infer", {"inputs": [{**row, "shape": [1, 3], "data": [1, 2, 3]}]}, 400,
         "shape [1, 3] does not match"),
        (f"{base}/mlp/infer", {"inputs": [{**row, "data": [0.5] * 31}]}, 400, "'data' has 31 values"),
        (f"{base}/mlp/infer", {"inputs": [{**row, "datatype": "STRING"}]}, 400, "datatype 'STRING' is not supported"),
        (f"{base}/mlp/infer", {"inputs": []}, 400, "no 'inputs'"),
        (f"{base}/mlp/infer", {"inputs": [row], "outputs": [{"name": "nope"}]}, 400, "nope"),
        # numbers only, as the Kafka decoder takes them
        (f"{base}/mlp/infer", {"inputs": [{**row, "data": ["1.5"] * 32}]}, 400, "numbers only; it has strings"),
        (f"{base}/mlp/infer", {"inputs": [{**row, "data": [True] * 32}]}, 400, "numbers only; it has true/false"),
        (f"{base}/mlp/infer", {"inputs": [{**row, "data": [None] * 32}]}, 400, "numbers only"),
    ]
    for url, body, status, text in cases:
        got_status, got = _post(url, json.dumps(body).encode())
        assert (got_status, text in got["error"]) == (status, True), (url, body, got_status, got)
    # a path not served is 404 whatever the method, naming what is served; a GET path POSTed to is 405
    status, got = _post(f"http://{server.http_url}/v2/repository/nope", b"{}")
    assert status == 404 and "GET /v2" in got["error"] and "use GET" not in got["error"], got
    status, got = _post(f"{base}/mlp", b"{}")
    assert status == 405 and "use GET" in got["error"], got
    status, got = _post(f"{base}/mlp/infer", b"{not json")
    assert status == 400 and "not JSON" in got["error"]
    # binary data that does not add up
    head = json.dumps({"inputs": [{"name": "float_input", "shape": [1, 32], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 128}}]}).encode()
    status, got = _post(f"{base}/mlp/infer", head + b"\0" * 100,
                        {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "28 bytes short" in got["error"]
    head = json.dumps({"inputs": [{"name": "float_input", "shape": [1, 32], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 128.0}}]}).encode()
    status, got = _post(f"{base}/mlp/infer", head + b"\0" * 128, {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "binary_data_size must be a whole number of bytes, not 128.0" in got["error"]
    # a body over max_message_bytes (1 MiB in this server's config) is refused without being parsed
    status, got = _post(f"{base}/mlp/infer", b" " * (2 << 20))
    assert status == 400 and "max_message_bytes" in got["error"]


def test_rest_requests_are_counted_with_grpcs(server):
    before = server.metrics()
    h = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("float_input", [1, 32], "FP32")
    x.set_data_from_numpy(np.zeros((1, 32), np.float32))
    for _ in range(3):
        h.infer("gbt", [x])
    with pytest.raises(InferenceServerException):
        h.infer("gbt", [httpclient.InferInput("float_input", [1, 3], "FP32").set_data_from_numpy(
            np.zeros((1, 3), np.float32))])
    h.close()
    after = server.metrics()
    key = 'scorewire_requests_total{model="gbt",code="%s"}'
    assert after[key % "OK"] - before.get(key % "OK", 0) == 3
    assert after[key % "INVALID_ARGUMENT"] - before.get(key % "INVALID_ARGUMENT", 0) == 1
