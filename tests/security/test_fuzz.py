"""Fuzzed decoders and hostile requests: no crash, no hang, no allocation beyond the request's
own bytes, and a clear error for each.

A longer run: SCOREWIRE_FUZZ_EXAMPLES=200000 python -m pytest tests/security/test_fuzz.py
(hypothesis draws that many inputs per property; about 10 minutes)."""

from __future__ import annotations

import json
import os

import grpc
import numpy as np
import orjson
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.codec.kafka import StreamCodec
from engine.codec.oip import decode_request
from engine.codec.validate import ModelSchema, TensorSpec
from engine.errors import EngineError, ErrorCode
from engine.ingress._pb import open_inference_grpc_pb2 as pb

EXAMPLES = int(os.environ.get("SCOREWIRE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "fp32", "", "INT128"]
DIMS = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63)]))


@st.composite
def infer_requests(draw) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=draw(st.sampled_from(["mlp", "", "x" * 300])), id="fuzz")
    use_raw = draw(st.booleans())
    for i in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(st.sampled_from(["float_input", "a", "a", ""])),
                                    datatype=draw(st.sampled_from(DATATYPES)),
                                    shape=draw(st.lists(DIMS, max_size=4)))
        if use_raw:
            request.raw_input_contents.append(draw(st.binary(max_size=300)))
        else:
            kind = draw(st.sampled_from(["fp32_contents", "int_contents", "int64_contents", "bool_contents"]))
            values = draw(st.lists(st.integers(-(2**31), 2**31 - 1) if "int" in kind else
                                   st.booleans() if kind == "bool_contents" else st.floats(width=32), max_size=40))
            getattr(tensor.contents, kind).extend(values)
    if use_raw and draw(st.booleans()):
        request.raw_input_contents.append(b"extra")
    return request


@FUZZ
@given(infer_requests())
def test_oip_decoder_errors_clearly_and_never_allocates_beyond_the_request(request):
    size = request.ByteSize()
    try:
        decoded = decode_request(request)
    except EngineError as exc:
        assert exc.code is ErrorCode.INVALID_ARGUMENT and exc.message
        return
    total = sum(a.nbytes for a in decoded.inputs.values())
    # raw: views of the request's bytes; typed: one value per element, at most 8 bytes each from >= 1 byte
    assert total <= 8 * size + 8


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_are_not_a_request_or_decode_cleanly(data):
    try:
        request = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    try:
        decode_request(request)
    except EngineError as exc:
        assert exc.code is ErrorCode.INVALID_ARGUMENT


F32 = np.dtype(np.float32)
SCHEMA = ModelSchema((TensorSpec("float_input", "FP32", F32, (-1, 4)), TensorSpec("n", "INT32", np.dtype(np.int32), (-1,))),
                     (TensorSpec("label", "INT64", np.dtype(np.int64), (-1,)),))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(
        ["float_input", "n", "id", "x"]), children, max_size=4),
    max_leaves=20)


@st.composite
def kafka_messages(draw) -> bytes | None:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return None
    if kind == 2:  # a valid message, perturbed at one byte
        good = bytearray(orjson.dumps({"id": "a", "float_input": [0.5, 1.5, -2, 3e-3], "n": 7}))
        if good:
            i = draw(st.integers(0, len(good) - 1))
            good[i] = draw(st.integers(0, 255))
        return bytes(good)
    # the standard library writes what orjson refuses: huge integers, NaN, Infinity
    if kind == 3:
        return json.dumps(draw(json_values)).encode()
    return json.dumps({"float_input": draw(st.lists(st.one_of(st.floats(), st.integers(), st.text(max_size=3)),
                                                    max_size=6)), "n": draw(st.integers()), "id": draw(json_values)}
                      ).encode()


@FUZZ
@given(st.lists(kafka_messages(), min_size=1, max_size=20), st.sampled_from(["json", "binary"]))
def test_kafka_decoder_accounts_for_every_message(messages, fmt):
    codec = StreamCodec(SCHEMA, fmt, 150, allow_non_finite=False)
    decoded = codec.decode(messages, [None] * len(messages))
    good = decoded.good.tolist()
    bad = [i for i, _ in decoded.errors]
    assert sorted(good + bad) == list(range(len(messages))), "each message is scored or explained, once"
    assert all(why for _, why in decoded.errors)
    for name, array in decoded.inputs.items():
        assert len(array) == len(good)
    if len(good):
        assert np.isfinite(decoded.inputs["float_input"]).all()
        assert len(decoded.ids()) == len(good)


def _raw_call(url: str, method: str, payload: bytes):
    channel = grpc.insecure_channel(url)
    try:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(payload, timeout=10)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    finally:
        channel.close()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_hostile_shapes_get_clear_errors_and_allocate_nothing(server):
    before = _rss_bytes(server.proc.pid)
    hostile = []
    for shape in ([2**62], [2**31, 2**31], [-1, 32], [2**40, 32], [0, 32], [1, -32], [3, 2**61]):
        r = pb.ModelInferRequest(model_name="mlp")
        r.inputs.add(name="float_input", datatype="FP32", shape=shape)
        r.raw_input_contents.append(b"\x00" * 128)
        hostile.append(r)
        t = pb.ModelInferRequest(model_name="mlp")
        t.inputs.add(name="float_input", datatype="FP32", shape=shape).contents.fp32_contents.extend([1.0] * 32)
        hostile.append(t)
    for _ in range(20):
        for request in hostile:
            code, details = _raw_call(server.url, "ModelInfer", request.SerializeToString())
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (request.inputs[0].shape, code, details)
            assert "float_input" in details or "row" in details
    grown = _rss_bytes(server.proc.pid) - before
    assert grown < 64 * 1024 * 1024, f"server grew by {grown / 2**20:.0f} MiB on hostile shapes"


@settings(max_examples=max(30, EXAMPLES // 10), deadline=None)
@given(st.binary(max_size=4000))
def test_random_bytes_to_the_live_server_get_a_status_not_a_crash(server, data):
    code, _ = _raw_call(server.url, "ModelInfer", data)
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert server.proc.poll() is None


def test_server_still_serves_after_the_fuzzing(server):
    import tritonclient.grpc as g

    c = g.InferenceServerClient(server.url)
    x = g.InferInput("float_input", [1, 32], "FP32")
    x.set_data_from_numpy(np.zeros((1, 32), np.float32))
    assert c.infer("mlp", [x]).as_numpy("label").shape == (1,)
    c.close()


@pytest.mark.parametrize("payload", [b"[" * 100_000, b'{"float_input": [' + b"1," * 50_000 + b"1]}",
                                     b'{"float_input": [1e999999999, 1, 1, 1], "n": 1}'])
def test_kafka_decoder_bounded_on_pathological_json(payload):
    codec = StreamCodec(SCHEMA, "json", 10_000_000, allow_non_finite=False)
    decoded = codec.decode([payload], [None])
    assert len(decoded.errors) == 1 and decoded.good.size == 0
