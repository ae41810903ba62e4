"""Each bad input: status code and a message naming the input and the problem. A bad
request never fails the good requests batched with it."""

from __future__ import annotations

import concurrent.futures

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from engine.harness.models import N_FEATURES


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(
        server.url, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    ) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def make_input(name: str, array: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def rows(n: int = 2, width: int = N_FEATURES, dtype=np.float32) -> np.ndarray:
    return np.arange(n * width, dtype=dtype).reshape(n, width) / 100


def test_unknown_model(client):
    err = refused(lambda: client.infer("nope", [make_input("float_input", rows())]))
    assert err.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in err.message() and "mlp" in err.message()


def test_unknown_version(client):
    err = refused(lambda: client.infer("gbt", [make_input("float_input", rows())], model_version="7"))
    assert err.status() == "StatusCode.NOT_FOUND"
    assert "no version '7'" in err.message()


def test_client_text_in_errors_is_clipped(server, client):
    """A 17,000-character model name is NOT_FOUND with a short message (not a transport
    error about metadata size); so are long version, input and output names."""
    long_name = "m" * 17_000
    err = refused(lambda: client.infer(long_name, [make_input("float_input", rows())]))
    assert err.status() == "StatusCode.NOT_FOUND" and "(17000 characters)" in err.message()
    assert len(err.message()) < 1000
    err = refused(lambda: client.infer("gbt", [make_input("float_input", rows())], model_version="7" * 5000))
    assert err.status() == "StatusCode.NOT_FOUND" and len(err.message()) < 1000
    extra = [make_input("float_input", rows())] + [make_input(f"{k:03d}" + "x" * 400, rows()) for k in range(200)]
    err = refused(lambda: client.infer("gbt", extra))
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "and 195 more" in err.message()
    assert len(err.message()) < 2100
    wanted = [grpcclient.InferRequestedOutput("p" * 20_000)]
    err = refused(lambda: client.infer("gbt", [make_input("float_input", rows())], outputs=wanted))
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "(20000 characters)" in err.message()


def test_too_many_dimensions_is_invalid_and_counted(server, stub):
    """65 dimensions (more than numpy allows) is the client's error, counted like any other."""
    before = server.metrics().get('scorewire_requests_total{model="gbt",code="INVALID_ARGUMENT"}', 0)
    request = service_pb2.ModelInferRequest(model_name="gbt")
    request.inputs.add(name="float_input", datatype="FP32", shape=[1] * 65)
    request.raw_input_contents.append(np.zeros(1, np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "65 dimensions, more than 32" in info.value.details()
    after = server.metrics()['scorewire_requests_total{model="gbt",code="INVALID_ARGUMENT"}']
    assert after == before + 1


def test_missing_input(client):
    err = refused(lambda: client.infer("gather", [make_input("data", rows(2, 4))]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "missing input 'idx'" in err.message()


def test_extra_input(client):
    extra = [make_input("float_input", rows()), make_input("bonus", rows())]
    err = refused(lambda: client.infer("gbt", extra))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unexpected input 'bonus'" in err.message()


def test_wrong_datatype(client):
    err = refused(lambda: client.infer("gbt", [make_input("float_input", rows(dtype=np.float64), "FP64")]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'float_input': datatype FP64 given, the model expects FP32" in err.message()


def test_shape_mismatch(client):
    err = refused(lambda: client.infer("gbt", [make_input("float_input", rows(2, N_FEATURES + 1))]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'float_input': shape [2, 33]" in err.message() and "FP32[-1, 32]" in err.message()


def test_wrong_rank(client):
    err = refused(lambda: client.infer("gbt", [make_input("float_input", np.zeros(N_FEATURES, np.float32))]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'float_input'" in err.message() and "1 dimensions" in err.message()


def test_raw_length_does_not_match_shape(stub):
    request = service_pb2.ModelInferRequest(model_name="gbt")
    request.inputs.add(name="float_input", datatype="FP32", shape=[2, N_FEATURES])
    request.raw_input_contents.append(b"\0" * (2 * N_FEATURES * 4 - 4))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'float_input': raw contents are 252 bytes, but shape [2, 32] of FP32 needs 256" in info.value.details()


def test_typed_contents_count_mismatch(stub):
    request = service_pb2.ModelInferRequest(model_name="gbt")
    tensor = request.inputs.add(name="float_input", datatype="FP32", shape=[1, N_FEATURES])
    tensor.contents.fp32_contents.extend([0.5] * 5)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'float_input': fp32_contents has 5 values, but shape [1, 32] needs 32" in info.value.details()


def test_negative_and_huge_dimensions(stub):
    for shape, text in (
        ([-1, N_FEATURES], "negative dimension"),
        ([2**40, 2**40], "is too large"),
        ([2**20, 2**20], "raw contents are 128 bytes, but shape [1048576, 1048576]"),
    ):
        request = service_pb2.ModelInferRequest(model_name="gbt")
        request.inputs.add(name="float_input", datatype="FP32", shape=shape)
        request.raw_input_contents.append(b"\0" * 128)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert text in info.value.details()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_refused(client, value):
    data = rows()
    data[1, 5] = value
    err = refused(lambda: client.infer("gbt", [make_input("float_input", data)]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'float_input': non-finite value" in err.message() and "allow_non_finite" in err.message()
    assert f"flat index {N_FEATURES + 5}" in err.message()


def test_non_finite_allowed_where_configured(client):
    data = np.array([[np.nan, np.inf, -np.inf]], np.float32)
    result = client.infer("identity", [make_input("in_FP32", data)] + _identity_zeros(exclude="FP32"))
    np.testing.assert_array_equal(result.as_numpy("out_FP32"), data)


def _identity_zeros(exclude: str) -> list[grpcclient.InferInput]:
    from tests.models import DTYPES, WIDTH
    from tritonclient.utils import triton_to_np_dtype

    return [
        make_input(f"in_{dt}", np.zeros((1, WIDTH), triton_to_np_dtype(dt)), dt) for dt in DTYPES if dt != exclude
    ]


def test_too_many_rows(client):
    err = refused(lambda: client.infer("mlp", [make_input("float_input", rows(1025))], model_version="1"))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "1025 rows, more than max_rows_per_request = 1024" in err.message()


def test_unknown_requested_output(client):
    err = refused(
        lambda: client.infer("gbt", [make_input("float_input", rows())], outputs=[grpcclient.InferRequestedOutput("logits")])
    )
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "requested output 'logits' does not exist" in err.message()


def test_oversize_message(stub):
    """Over max_message_bytes (1 MiB here): INVALID_ARGUMENT naming the limit; over twice
    the limit the transport refuses before reading (RESOURCE_EXHAUSTED)."""
    for n_rows, code, text in (
        (12_000, grpc.StatusCode.INVALID_ARGUMENT, "more than server.max_message_bytes = 1048576"),
        (20_000, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ):
        request = service_pb2.ModelInferRequest(model_name="gbt")
        request.inputs.add(name="float_input", datatype="FP32", shape=[n_rows, N_FEATURES])
        request.raw_input_contents.append(rows(n_rows).tobytes())
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() == code
        assert text in info.value.details()


def test_bad_request_does_not_fail_its_batch_mates(server, client):
    """Requests sent together to `gather` (300 ms queue delay) share one batch. A request
    with an out-of-range index passes validation but makes onnxruntime fail; its
    batch-mates still get their answers, and it gets an error naming the model."""
    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    good_idx = np.array([[i % 4] for i in range(10)], np.int64)
    bad_idx = np.full((10, 1), 9, np.int64)
    batches_before = server.metrics()['scorewire_batches_total{model="gather",version="1"}']

    def call(idx):
        c = grpcclient.InferenceServerClient(server.url)
        try:
            return c.infer("gather", [make_input("data", data), make_input("idx", idx, "INT64")]).as_numpy("out")
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call, idx) for idx in (good_idx, bad_idx, good_idx, good_idx)]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=30))
            except InferenceServerException as exc:
                outcomes.append(exc)
    expected = np.take_along_axis(data, good_idx, axis=1)
    for i in (0, 2, 3):
        np.testing.assert_array_equal(outcomes[i], expected)
    assert isinstance(outcomes[1], InferenceServerException)
    assert outcomes[1].status() == "StatusCode.INTERNAL"
    assert "gather:1 failed" in outcomes[1].message()
    # One shared (failed) batch, then each member alone: the good ones were batched with the bad.
    batches_after = server.metrics()['scorewire_batches_total{model="gather",version="1"}']
    assert batches_after - batches_before == 3


def test_validation_error_does_not_disturb_concurrent_good_requests(server):
    """A malformed request and good ones sent at once to the same model: the good ones
    succeed (validation happens before batching)."""

    def call(width):
        c = grpcclient.InferenceServerClient(server.url)
        try:
            return c.infer("mlp", [make_input("float_input", rows(3, width))], model_version="1")
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(call, w) for w in (N_FEATURES, N_FEATURES - 2, N_FEATURES)]
    assert futures[0].result().as_numpy("probabilities").shape == (3, 2)
    assert futures[2].result().as_numpy("probabilities").shape == (3, 2)
    with pytest.raises(InferenceServerException):
        futures[1].result()


def test_metadata_requests_that_do_not_parse_are_invalid_arguments(server):
    """Bytes that are not the method's request message: INVALID_ARGUMENT naming the message,
    for every method (the transport's own answer would be UNKNOWN)."""
    with grpc.insecure_channel(server.url) as channel:
        for method in ("ModelMetadata", "ModelConfig", "ModelReady", "ModelStatistics"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as info:
                call(b"\xff\xff\xff", timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, info.value)
            assert f"not a valid inference.{method}Request" in info.value.details()
