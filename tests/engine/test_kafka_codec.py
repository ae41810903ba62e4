"""Kafka payloads <-> arrays: the batch decoder agrees with the one-message parser, errors
name what is wrong, results are JSON a consumer can read back exactly."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from engine.codec.kafka import ResultTemplate, StreamCodec, encode_results
from engine.codec.validate import ModelSchema, TensorSpec

F32, F64, I64, I32 = (np.dtype(t) for t in (np.float32, np.float64, np.int64, np.int32))
OUTPUTS = (TensorSpec("label", "INT64", I64, (-1,)), TensorSpec("probabilities", "FP32", F32, (-1, 2)))
MLP = ModelSchema((TensorSpec("float_input", "FP32", F32, (-1, 4)),), OUTPUTS)
MIXED = ModelSchema((TensorSpec("dense", "FP64", F64, (-1, 2)), TensorSpec("count", "INT32", I32, (-1,)),
                     TensorSpec("small", "FP32", F32, (-1, 1))), OUTPUTS)


def codec(schema=MLP, fmt="json", limit=1000, allow_non_finite=False) -> StreamCodec:
    return StreamCodec(schema, fmt, limit, allow_non_finite)


def test_batch_decode_equals_decoding_each_message_alone(rng):
    c = codec(MIXED)
    messages = []
    for i in range(300):
        doc = {"dense": rng.normal(size=2).tolist(), "count": int(rng.integers(-1000, 1000)),
               "small": [float(np.float32(rng.normal()))]}
        if i % 3:
            doc["id"] = f"m{i}" if i % 2 else i
        messages.append(orjson.dumps(doc) if i % 5 else orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    decoded = c.decode(messages, [None] * len(messages))
    assert decoded.errors == [] and decoded.good.tolist() == list(range(300))
    for i, message in enumerate(messages):
        row, id_token = c._decode_one(message)
        for name, value in row.items():
            np.testing.assert_array_equal(decoded.inputs[name][i], value)
            assert decoded.inputs[name].dtype == value.dtype
        assert decoded.ids()[i] == id_token or orjson.loads(decoded.ids()[i]) == orjson.loads(id_token)


@pytest.mark.parametrize("message, error", [
    (b"{", "invalid JSON"),
    (b'"text"', "must be a JSON object"),
    (b'{"float_input": [1, 2, 3, 4], "extra": 1}', "unexpected key 'extra'"),
    (b'{"id": 1}', "missing input 'float_input'"),
    (b'{"float_input": [1, 2, 3]}', "a list of 4 FP32 numbers; got shape [3]"),
    (b'{"float_input": [[1, 2], [3, 4]]}', "got shape [2, 2]"),
    (b'{"float_input": [1, 2, [3], 4]}', "ragged"),
    (b'{"float_input": [1, 2, 3, null]}', "values must be JSON numbers, got null"),
    (b'{"float_input": [1, 2, 3, false]}', "values must be JSON numbers, got false"),
    (b'{"float_input": 5}', "got shape []"),
    (b'{"float_input": [1, 2, 3, 4], "id": {"a": 1}}', "'id' must be a string or a number"),
    (b'{"float_input": [1, 2, 3, 1e39]}', "non-finite value"),
    (b'{"float_input": [1, 2, 3, 4], "pad": "' + b"x" * 1000 + b'"}', "larger than max_message_bytes = 1000"),
])
def test_each_bad_message_gets_its_reason_and_its_neighbours_are_decoded(message, error):
    good = b'{"id": "ok", "float_input": [0.5, 1.5, 2.5, 3.5]}'
    decoded = codec().decode([good, message, good], [None, None, None])
    assert decoded.good.tolist() == [0, 2]
    ((index, reason),) = decoded.errors
    assert index == 1 and error in reason, reason
    np.testing.assert_array_equal(decoded.inputs["float_input"], [[0.5, 1.5, 2.5, 3.5]] * 2)
    assert decoded.ids() == [b'"ok"', b'"ok"']


def test_integers_are_range_checked_for_their_type():
    c = codec(MIXED)
    row = b'"dense": [0.1, 0.2], "small": [1]'
    decoded = c.decode([b'{"count": 2147483647, ' + row + b"}", b'{"count": 2147483648, ' + row + b"}",
                        b'{"count": 1.5, ' + row + b"}"], [None] * 3)
    assert decoded.inputs["count"].tolist() == [2147483647]
    assert [e for _, e in decoded.errors] == ["input 'count': integer out of range for INT32",
                                              "input 'count': INT32 values must be integers"]


def test_non_finite_values_pass_when_the_model_allows_them():
    decoded = codec(allow_non_finite=True).decode([b'{"float_input": [1, 2, 3, 1e39]}'], [None])
    assert decoded.errors == [] and np.isinf(decoded.inputs["float_input"][0, 3])


def test_binary_rows_in_input_order_little_endian():
    schema = ModelSchema((TensorSpec("a", "FP32", F32, (-1, 3)), TensorSpec("b", "INT64", I64, (-1, 2))), OUTPUTS)
    c = codec(schema, "binary")
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype="<f4")
    b = np.array([[7, 8], [9, 10]], dtype="<i8")
    messages = [a[i].tobytes() + b[i].tobytes() for i in range(2)] + [b"\x00" * 27]
    decoded = c.decode(messages, [b"first", None, b"bad"])
    np.testing.assert_array_equal(decoded.inputs["a"], a)
    np.testing.assert_array_equal(decoded.inputs["b"], b)
    assert decoded.ids() == [b'"first"', b"null"]
    assert decoded.errors == [(2, "binary message of 27 bytes; this model's row is 28 bytes ('a' FP32[3], "
                                  "'b' INT64[2], little-endian, in that order)")]


def test_rows_of_unequal_length_for_a_variable_input_fail_alone():
    """An input of shape [-1, -1]: the rows of one batch must agree; a row that does not fit is
    that message's error and its neighbours decode (the column once became None, and the
    next row killed the stream's reader)."""
    schema = ModelSchema((TensorSpec("a", "FP32", F32, (-1, -1)),), OUTPUTS)
    messages = [b'{"a": [1, 2, 3]}', b'{"a": [1, 2, 3, 4, 5]}', b'{"a": [4, 5, 6]}', b'{"a": [7]}', b'{"a": [0, 0, 1]}']
    for decode in (codec(schema).decode, codec(schema).decode_each):
        decoded = decode(messages, [None] * 5)
        assert decoded.good.tolist() == [0, 2, 4]
        assert [i for i, _ in decoded.errors] == [1, 3]
        assert all("does not fit the other rows" in why for _, why in decoded.errors)
        np.testing.assert_array_equal(decoded.inputs["a"], [[1, 2, 3], [4, 5, 6], [0, 0, 1]])


def test_decoding_message_by_message_equals_the_batch_decoder(rng):
    """The fallback for a batch the batch decoder fails on gives what the batch decoder gives."""
    c = codec()
    messages = [orjson.dumps({"float_input": rng.normal(size=4).tolist(), "id": i}) for i in range(20)]
    messages[3], messages[11] = b"{", b'{"float_input": [1, 2]}'
    whole, each = c.decode(messages, [None] * 20), c.decode_each(messages, [None] * 20)
    assert each.good.tolist() == whole.good.tolist() and each.ids() == whole.ids()
    assert [i for i, _ in each.errors] == [i for i, _ in whole.errors] == [3, 11]
    np.testing.assert_array_equal(each.inputs["float_input"], whole.inputs["float_input"])


def test_binary_needs_fixed_row_shapes():
    schema = ModelSchema((TensorSpec("a", "FP32", F32, (-1, -1)),), OUTPUTS)
    with pytest.raises(ValueError, match="fixed"):
        codec(schema, "binary")


def spans_of(tokens: list[bytes]) -> tuple[bytes, np.ndarray]:
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    ends = np.cumsum(lengths)
    return b"".join(tokens), np.stack([ends - lengths, ends], axis=1)


def test_results_are_json_with_exact_float32_values(rng):
    outputs = {"label": rng.integers(0, 2, 50), "probabilities": rng.random((50, 2)).astype(np.float32)}
    template = ResultTemplate("mlp", "3", "events", outputs, {"wait_us": 12, "score_us": 34})
    id_text, id_spans = spans_of([b'"a\\"b"', b"7"] + [b"null"] * 48)
    out = encode_results(template, id_text, id_spans, np.full(50, 3), np.arange(100, 150), outputs)
    docs = [orjson.loads(m) for m in out]
    assert docs[0]["id"] == 'a"b' and docs[1]["id"] == 7 and docs[2]["id"] is None
    assert docs[3]["source"] == "events/3/103"
    assert {d["model"] for d in docs} == {"mlp"} and {d["version"] for d in docs} == {"3"}
    assert docs[0]["timings"] == {"wait_us": 12, "score_us": 34}
    assert [d["outputs"]["label"] for d in docs] == outputs["label"].tolist()
    np.testing.assert_array_equal(np.array([d["outputs"]["probabilities"] for d in docs], dtype=np.float32),
                                  outputs["probabilities"])


def test_outputs_of_any_shape_and_type_encode():
    outputs = {"c": np.arange(12, dtype=np.float32).reshape(2, 3, 2), "s": np.array(["x", "y"], dtype=object),
               "h": np.array([0.5, 1.5], dtype=np.float16), "e": np.zeros((2, 0), dtype=np.float32),
               "n": np.array([-3, 12], dtype=np.int64), "q": np.array([[np.nan, 1], [2, 3]], dtype=np.float32)}
    template = ResultTemplate("m", "1", "t", outputs, {})
    id_text, id_spans = spans_of([b"1", b"2"])
    out = [orjson.loads(m) for m in encode_results(template, id_text, id_spans, np.zeros(2), np.array([0, 1]), outputs)]
    assert out[1]["outputs"] == {"c": outputs["c"][1].tolist(), "s": "y", "h": 1.5, "e": [], "n": 12, "q": [2, 3]}
    assert out[0]["outputs"]["q"] == [None, 1]  # NaN is null in JSON
