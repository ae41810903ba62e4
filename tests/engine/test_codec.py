from __future__ import annotations

import numpy as np
import pytest

from engine.codec.oip import decode_request, encode_response
from engine.codec.validate import Limits, ModelSchema, TensorSpec, select_outputs, validate_inputs
from engine.errors import EngineError, ErrorCode
from engine.ingress._pb import open_inference_grpc_pb2 as pb

SCHEMA = ModelSchema(
    inputs=(TensorSpec("x", "FP32", np.dtype("<f4"), (-1, 4)), TensorSpec("k", "INT64", np.dtype("<i8"), (-1,))),
    outputs=(TensorSpec("y", "FP32", np.dtype("<f4"), (-1,)), TensorSpec("z", "INT64", np.dtype("<i8"), (-1, 2))),
)
LIMITS = Limits(max_rows=100, allow_non_finite=False)


def raw_request(**arrays: np.ndarray) -> pb.ModelInferRequest:
    from engine.codec.dtypes import NUMPY_TO_OIP

    request = pb.ModelInferRequest(model_name="m", id="r1")
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=NUMPY_TO_OIP[array.dtype], shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def test_raw_decode_is_a_view_on_the_message_bytes(rng):
    x = rng.normal(size=(3, 4)).astype(np.float32)
    decoded = decode_request(raw_request(x=x, k=np.arange(3)))
    np.testing.assert_array_equal(decoded.inputs["x"], x)
    assert not decoded.inputs["x"].flags.owndata  # np.frombuffer: no copy
    assert validate_inputs(SCHEMA, decoded.inputs, LIMITS) == 3


def test_typed_decode_matches_raw(rng):
    x = rng.normal(size=(2, 4)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="m")
    t = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    t.contents.fp32_contents.extend(x.reshape(-1).tolist())
    t = request.inputs.add(name="k", datatype="INT64", shape=[2])
    t.contents.int64_contents.extend([5, -7])
    decoded = decode_request(request)
    np.testing.assert_array_equal(decoded.inputs["x"], x)
    np.testing.assert_array_equal(decoded.inputs["k"], [5, -7])


def test_typed_value_out_of_range_for_int8():
    request = pb.ModelInferRequest(model_name="m")
    t = request.inputs.add(name="b", datatype="INT8", shape=[1])
    t.contents.int_contents.append(300)
    with pytest.raises(EngineError, match="does not fit INT8"):
        decode_request(request)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda r: r.raw_input_contents.pop(), "raw_input_contents has 1 entries for 2 inputs"),
        (lambda r: setattr(r.inputs[0], "datatype", "BYTES"), "datatype 'BYTES' is not supported"),
        (lambda r: r.inputs[1].shape.__setitem__(0, 4), "raw contents are 24 bytes, but shape [4] of INT64 needs 32"),
        (lambda r: setattr(r.inputs[1], "name", "x"), "input 'x' is given twice"),
    ],
)
def test_decode_errors_name_the_input(build, message):
    request = raw_request(x=np.zeros((3, 4), np.float32), k=np.arange(3))
    build(request)
    with pytest.raises(EngineError) as info:
        decode_request(request)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert message in info.value.message


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"x": np.zeros((2, 4), np.float32)}, "missing input 'k'"),
        ({"x": np.zeros((2, 4), np.float32), "k": np.zeros(2, np.int64), "q": np.zeros(2)}, "unexpected input 'q'"),
        ({"x": np.zeros((2, 4), np.float64), "k": np.zeros(2, np.int64)}, "datatype FP64 given, the model expects FP32"),
        ({"x": np.zeros((2, 5), np.float32), "k": np.zeros(2, np.int64)}, "does not match the model's FP32[-1, 4]"),
        ({"x": np.zeros((2, 4), np.float32), "k": np.zeros(3, np.int64)}, "input 'k' has 3 rows but 'x' has 2"),
        ({"x": np.zeros((0, 4), np.float32), "k": np.zeros(0, np.int64)}, "at least one row"),
        ({"x": np.zeros((101, 4), np.float32), "k": np.zeros(101, np.int64)}, "101 rows, more than max_rows_per_request = 100"),
        ({"x": np.full((2, 4), np.nan, np.float32), "k": np.zeros(2, np.int64)}, "non-finite value nan at flat index 0"),
    ],
)
def test_validation_errors(inputs, message):
    with pytest.raises(EngineError) as info:
        validate_inputs(SCHEMA, inputs, LIMITS)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert message in info.value.message


def test_select_outputs():
    assert select_outputs(SCHEMA, ()) == ("y", "z")
    assert select_outputs(SCHEMA, ("z",)) == ("z",)
    with pytest.raises(EngineError, match="requested output 'w' does not exist"):
        select_outputs(SCHEMA, ("w",))


def test_encode_response_raw_little_endian():
    y = np.array([1.5, -2.0], np.float32)
    z = np.arange(4, dtype=np.int64).reshape(2, 2)
    response = encode_response("m", "1", "r9", {"y": y, "z": z})
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("y", "FP32", [2]), ("z", "INT64", [2, 2])]
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[1], "<i8").reshape(2, 2), z)
    assert response.id == "r9"
