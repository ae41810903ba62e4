"""Every RPC, through tritonclient.grpc, against `scorewire serve` on loopback."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.harness.models import N_FEATURES
from engine.ingress._pb import open_inference_grpc_pb2 as pb
from tests.models import DTYPES, WIDTH

DEMO = ("mlp", "gbt")


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.url)
    yield c
    c.close()


def local_run(server, name: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    path = server.directory / "models" / f"{name}.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"float_input": rows})))


def fp32_input(rows: np.ndarray, name: str = "float_input") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return inp


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "scorewire"
    assert meta.version
    # Triton's extensions served whole: ModelConfig, ModelStatistics, request parameters, REST binary data
    assert list(meta.extensions) == ["model_configuration", "statistics", "parameters", "binary_tensor_data"]


@pytest.mark.parametrize("name", DEMO)
def test_model_ready_and_metadata(client, name):
    assert client.is_model_ready(name)
    assert client.is_model_ready(name, "1")
    assert not client.is_model_ready(name, "99")
    assert not client.is_model_ready("no-such-model")
    meta = client.get_model_metadata(name)
    assert meta.name == name
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("float_input", "FP32", [-1, N_FEATURES])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 2]),
    ]


def test_model_metadata_reports_the_provider_and_binding_in_use(server):
    """Provider, IO binding and input staging are in ModelMetadataResponse.parameters (a
    field tritonclient skips) and in /metrics, as onnxruntime runs them here."""
    with grpc.insecure_channel(server.url) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        gbt, identity = call(pb.ModelMetadataRequest(name="gbt")), call(pb.ModelMetadataRequest(name="identity"))
    wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    used = ort.InferenceSession(str(server.directory / "models" / "gbt.onnx"), providers=wanted).get_providers()[0]
    on_cuda = used == "CUDAExecutionProvider"
    assert gbt.parameters["execution_provider"].string_param == used
    assert gbt.parameters["instances"].int64_param == 2
    assert gbt.parameters["max_batch_size"].int64_param == 64
    assert gbt.parameters["dispatch"].string_param == "free_slot"  # the default
    assert gbt.parameters["io_binding"].string_param == ("cuda" if on_cuda else "off")  # "auto": on CUDA only
    assert identity.parameters["io_binding"].string_param == ("cuda" if on_cuda else "cpu")  # "on"
    assert identity.parameters["io_binding_staging"].string_param == ("pageable" if on_cuda else "none")
    info = 'scorewire_model_info{{model="identity",version="1",provider="{}",io_binding="{}",staging="{}"}}'.format(
        used, "cuda" if on_cuda else "cpu", "pageable" if on_cuda else "none")
    assert server.metrics()[info] == 1


def test_versions(client):
    assert client.get_model_metadata("mlp").versions == ["2"]  # highest by default
    assert client.get_model_metadata("mlp", "1").versions == ["1"]
    rows = np.ones((1, N_FEATURES), np.float32)
    assert client.infer("mlp", [fp32_input(rows)], model_version="1").get_response().model_version == "1"
    assert client.infer("mlp", [fp32_input(rows)]).get_response().model_version == "2"


def caught_up(server) -> dict[str, float]:
    """/metrics once the monitor thread has recorded every row the batchers scored."""
    import time

    deadline = time.monotonic() + 10
    while True:
        metrics = server.metrics()
        scored = sum(v for k, v in metrics.items() if k.startswith("scorewire_rows_total{"))
        recorded = sum(v for k, v in metrics.items() if k.startswith("scorewire_batch_rows_sum{"))
        if scored == recorded or time.monotonic() > deadline:
            return metrics
        time.sleep(0.02)


def test_latency_and_batch_sizes_are_kept_per_version(server, client):
    """Two versions of one model have their own latency histograms and batch-size counts."""
    rows = np.ones((3, N_FEATURES), np.float32)

    def count(metrics, version):
        return metrics.get(f'scorewire_batch_rows_sum{{model="mlp",version="{version}"}}', 0)

    before = caught_up(server)
    client.infer("mlp", [fp32_input(rows[:1])], model_version="1")
    for _ in range(2):
        client.infer("mlp", [fp32_input(rows)], model_version="2")
    after = caught_up(server)
    assert (count(after, "1") - count(before, "1"), count(after, "2") - count(before, "2")) == (1, 6)
    for version in ("1", "2"):
        key = f'scorewire_latency_us{{model="mlp",version="{version}",role="champion",stage="total",quantile="0.5"}}'
        assert after[key] > 0


@pytest.mark.parametrize("name", DEMO)
def test_infer_matches_in_process_onnxruntime(server, client, name, rng):
    rows = rng.normal(size=(37, N_FEATURES)).astype(np.float32)
    result = client.infer(name, [fp32_input(rows)], request_id="r-37")
    expected = local_run(server, name, rows)
    assert result.get_response().id == "r-37"
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])


@pytest.mark.parametrize("name", DEMO)
def test_requested_outputs_only(client, name, rng):
    rows = rng.normal(size=(3, N_FEATURES)).astype(np.float32)
    result = client.infer(name, [fp32_input(rows)], outputs=[grpcclient.InferRequestedOutput("label")])
    assert [o.name for o in result.get_response().outputs] == ["label"]
    assert result.as_numpy("probabilities") is None


def test_typed_contents_are_accepted(server, rng):
    """Inputs in InferTensorContents (not raw bytes) give the same answer."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    rows = rng.normal(size=(4, N_FEATURES)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="gbt", id="typed")
    tensor = request.inputs.add(name="float_input", datatype="FP32", shape=[4, N_FEATURES])
    tensor.contents.fp32_contents.extend(rows.reshape(-1).tolist())
    with grpc.insecure_channel(server.url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    result = grpcclient.InferResult(response)
    np.testing.assert_allclose(result.as_numpy("probabilities"), local_run(server, "gbt", rows)["probabilities"], rtol=1e-6)


def _dtype_rows(rng, n: int) -> dict[str, np.ndarray]:
    from tritonclient.utils import triton_to_np_dtype

    arrays = {}
    for name in DTYPES:
        dtype = np.dtype(triton_to_np_dtype(name))
        if dtype.kind == "b":
            arrays[name] = rng.integers(0, 2, size=(n, WIDTH)).astype(bool)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            arrays[name] = rng.integers(info.min, info.max, size=(n, WIDTH), dtype=dtype, endpoint=True)
        else:
            arrays[name] = rng.normal(scale=1000, size=(n, WIDTH)).astype(dtype)
    return arrays


def test_every_numeric_dtype_round_trips(client, rng):
    arrays = _dtype_rows(rng, 5)
    inputs = []
    for name, array in arrays.items():
        inp = grpcclient.InferInput(f"in_{name}", list(array.shape), name)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    result = client.infer("identity", inputs)
    for name, array in arrays.items():
        got = result.as_numpy(f"out_{name}")
        assert got.dtype == array.dtype, name
        np.testing.assert_array_equal(got, array, err_msg=name)
    np.testing.assert_array_equal(result.as_numpy("doubled"), arrays["FP32"] + arrays["FP32"])


def test_stream_infer_both_models_ids_and_errors(server, client, rng):
    """Responses carry their request ids; a bad request is an error message and the stream
    goes on with the requests after it."""
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    sent = {}
    try:
        for i in range(20):
            name = DEMO[i % 2]
            rows = rng.normal(size=(1 + i % 4, N_FEATURES)).astype(np.float32)
            sent[f"s{i}"] = (name, rows)
            client.async_stream_infer(name, [fp32_input(rows)], request_id=f"s{i}")
            if i == 10:
                bad = np.zeros((1, N_FEATURES - 1), np.float32)
                client.async_stream_infer("mlp", [fp32_input(bad)], request_id="bad-one")
        got = [results.get(timeout=30) for _ in range(21)]
    finally:
        client.stop_stream()
    errors = [e for r, e in got if e is not None]
    assert len(errors) == 1
    assert "bad-one" in str(errors[0]) and "INVALID_ARGUMENT" in str(errors[0])
    assert "shape [1, 31]" in str(errors[0])
    ok = {r.get_response().id: r for r, e in got if e is None}
    assert set(ok) == set(sent)
    for rid, (name, rows) in sent.items():
        np.testing.assert_allclose(ok[rid].as_numpy("probabilities"), local_run(server, name, rows)["probabilities"], rtol=1e-6)
        assert ok[rid].get_response().model_name == name


def test_grpc_health_service(server):
    with grpc.insecure_channel(server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "mlp"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_count_requests(server, client):
    before = server.metrics().get('scorewire_requests_total{model="gbt",code="OK"}', 0)
    rows = np.zeros((2, N_FEATURES), np.float32)
    for _ in range(3):
        client.infer("gbt", [fp32_input(rows)])
    after = server.metrics()
    assert after['scorewire_requests_total{model="gbt",code="OK"}'] == before + 3
    info = [k for k in after if k.startswith('scorewire_model_info{model="gbt",version="1",provider=')]
    assert len(info) == 1 and after[info[0]] == 1


def test_a_streams_answer_is_the_bytes_protobuf_writes():
    from engine.ingress._pb import open_inference_grpc_pb2 as pb
    from engine.ingress.grpc import _stream_answer

    for size in (0, 1, 126, 127, 128, 300, 16_383, 16_384, 70_000):  # the length's varint: 1, 2 and 3 bytes
        response = pb.ModelInferResponse(id="x" * size, model_name="m", model_version="1")
        written = _stream_answer(response.SerializeToString())
        assert written == pb.ModelStreamInferResponse(infer_response=response).SerializeToString()
        assert pb.ModelStreamInferResponse.FromString(written).infer_response == response
