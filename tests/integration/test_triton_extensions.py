"""Triton's ModelConfig and ModelStatistics over gRPC, read with tritonclient as Triton's
tools (perf_analyzer) read them."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def test_model_config_describes_the_model_as_triton_would(server):
    c = grpcclient.InferenceServerClient(server.url)
    try:
        config = c.get_model_config("gbt", as_json=True)["config"]
    finally:
        c.close()
    assert config["name"] == "gbt" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 65536  # rows per request (max_rows_per_request's default)
    # the batch dimension left out, as Triton does when it batches
    assert config["input"] == [{"name": "float_input", "data_type": "TYPE_FP32", "dims": ["32"]}]
    assert {o["name"]: (o["data_type"], o.get("dims", [])) for o in config["output"]} == {
        "label": ("TYPE_INT64", []), "probabilities": ("TYPE_FP32", ["2"])}
    assert config["instance_group"][0]["count"] == 2 and config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["dynamic_batching"]["preferred_batch_size"] == [64]
    # dispatch = "free_slot": no wait for company when an instance is free, Triton's delay 0
    assert int(config["dynamic_batching"].get("max_queue_delay_microseconds", 0)) == 0


def test_model_config_reports_the_queue_delay_of_a_model_that_waits(server):
    c = grpcclient.InferenceServerClient(server.url)
    try:
        config = c.get_model_config("slow", as_json=True)["config"]  # dispatch = "delay", 1.5 s
    finally:
        c.close()
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 1_500_000


def test_model_statistics_count_requests_rows_and_time(server, rng):
    c = grpcclient.InferenceServerClient(server.url)
    try:
        def stats():
            (s,) = c.get_inference_statistics("gbt", as_json=True)["model_stats"]
            return s

        before = stats()
        for rows in (1, 3, 5):
            x = grpcclient.InferInput("float_input", [rows, 32], "FP32")
            x.set_data_from_numpy(rng.random((rows, 32), dtype=np.float32))
            c.infer("gbt", [x])
        bad = grpcclient.InferInput("float_input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        with pytest.raises(InferenceServerException):
            c.infer("gbt", [bad])
        after = stats()
        n = lambda s, *keys: int(_dig(s, *keys) or 0)  # noqa: E731 - protobuf JSON: uint64 as strings
        assert n(after, "inference_count") - n(before, "inference_count") == 9
        assert n(after, "inference_stats", "success", "count") - n(before, "inference_stats", "success", "count") == 3
        assert n(after, "inference_stats", "fail", "count") - n(before, "inference_stats", "fail", "count") == 1
        assert n(after, "inference_stats", "success", "ns") > n(before, "inference_stats", "success", "ns")
        assert n(after, "inference_stats", "compute_infer", "ns") > n(before, "inference_stats", "compute_infer", "ns")
        assert 1 <= n(after, "execution_count") - n(before, "execution_count") <= 3
        assert n(after, "last_inference") > 1_700_000_000_000  # ms since the epoch
        everything = c.get_inference_statistics(as_json=True)["model_stats"]
        assert {(s["name"], s["version"]) for s in everything} >= {("gbt", "1"), ("mlp", "1"), ("mlp", "2")}
        with pytest.raises(InferenceServerException, match="unknown model"):
            c.get_inference_statistics("nope")
    finally:
        c.close()


def _dig(d: dict, *keys):
    for k in keys:
        d = d.get(k, {}) if isinstance(d, dict) else {}
    return d or None
