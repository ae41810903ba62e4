"""The JSON rows kernel against Python's own parser: every number it accepts converts exactly as
`float32(float(text))` (or float(text), int(text)) would; everything else is HARD."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.jsonrows import HARD, KIND_FLOAT32, KIND_FLOAT64, KIND_INT, OK, RowSchema, scan_rows


def scan(texts: list[bytes], schema: RowSchema):
    buf = np.frombuffer(b"".join(texts), dtype=np.uint8)
    bounds = np.cumsum([0] + [len(t) for t in texts]).astype(np.int64)
    return scan_rows(buf, bounds, schema), b"".join(texts)


ONE_F32 = RowSchema(["x"], [1], [KIND_FLOAT32])
ONE_F64 = RowSchema(["x"], [1], [KIND_FLOAT64])
ONE_INT = RowSchema(["x"], [0], [KIND_INT])


def number_texts(values: np.ndarray, rng) -> list[str]:
    """The same numbers written the ways producers write them."""
    out = []
    for v in values.tolist():
        style = rng.integers(0, 6)
        if style == 0:
            out.append(repr(v))  # Python float64 repr, up to 17 digits
        elif style == 1:
            out.append(repr(float(np.float32(v))))  # float32 value printed as float64
        elif style == 2:
            out.append(f"{np.float32(v)!r}".replace("np.float32(", "").rstrip(")"))  # shortest float32
        elif style == 3:
            out.append(f"{v:.9g}")
        elif style == 4:
            out.append(f"{v:.3e}".replace("e+", "E+"))
        else:
            out.append(f"{v:.20f}".rstrip("0") + "0")  # many digits: beyond the kernel, HARD
    return out


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_float32_numbers_convert_exactly_like_python(rng):
    values = rng.normal(size=20_000) * 10.0 ** rng.integers(-40, 40, 20_000)
    texts = number_texts(values, rng)
    (got, _, status), _ = scan([b'{"x":[' + t.encode() + b"]}" for t in texts], ONE_F32)
    want = np.array([np.float32(float(t)) for t in texts])
    ok = status == OK
    assert ok.mean() > 0.75  # the styles the kernel is for
    np.testing.assert_array_equal(got[ok, 0].astype(np.float32), want[ok])


def test_float64_numbers_are_exact_or_hard(rng):
    values = rng.normal(size=5_000) * 10.0 ** rng.integers(-30, 30, 5_000)
    texts = number_texts(values, rng) + ["0.1", "-12.5", "1e22", "123456789012345", "0", "-0.0"]
    (got, _, status), _ = scan([b'{"x":[' + t.encode() + b"]}" for t in texts], ONE_F64)
    ok = status == OK
    np.testing.assert_array_equal(got[ok, 0], np.array([float(t) for t in texts])[ok])
    assert ok[-6:].all()


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, width=32), st.sampled_from(["repr", "9g", "e"]))
def test_any_float32_round_trips(value, style):
    text = {"repr": repr(value), "9g": f"{value:.9g}", "e": f"{value:.8e}"}[style]
    (got, _, status), _ = scan([b'{"x":[' + text.encode() + b"]}"], ONE_F32)
    if status[0] == OK:
        assert np.float32(got[0, 0]) == np.float32(float(text))
        assert math.copysign(1, got[0, 0]) == math.copysign(1, float(text))
    else:  # 9 significant digits never sit near a rounding boundary: only the range's ends are left
        info = np.finfo(np.float32)
        assert not 2 * info.tiny < abs(float(text)) < 0.999 * info.max or style != "9g"


def test_integers_exact_and_non_integers_hard():
    texts = [b'{"x":0}', b'{"x":-17}', b'{"x":9007199254740992}', b'{"x":9007199254740993}', b'{"x":1.0}',
             b'{"x":1e3}', b'{"x":true}']
    (got, _, status), _ = scan(texts, ONE_INT)
    assert status.tolist() == [OK, OK, OK, HARD, HARD, HARD, HARD]
    assert got[:3, 0].tolist() == [0, -17, 2**53]


SCHEMA = RowSchema(["a", "b"], [3, 0], [KIND_FLOAT32, KIND_INT])


@pytest.mark.parametrize("text", [
    b'{"a":[1,2,3],"b":4}',
    b'{"b":4,"a":[1,2,3]}',
    b' {\n "a" : [ 1 , 2 , 3 ] ,\t"b":4 , "id" : "x-1" } \r\n',
    b'{"id":17,"a":[1,2,3],"b":4}',
    b'{"a":[1,2,3],"id":-2.5e3,"b":4}',
])
def test_accepted_layouts(text):
    (got, ids, status), buf = scan([text], SCHEMA)
    assert status[0] == OK
    assert got[0].tolist() == [1, 2, 3, 4]
    if b'"id"' in text:
        token = buf[ids[0, 0]:ids[0, 1]]
        assert token in (b'"x-1"', b"17", b"-2.5e3")
    else:
        assert ids[0].tolist() == [-1, -1]


@pytest.mark.parametrize("text", [
    b"",
    b"[1,2,3]",
    b'{"a":[1,2,3]}',  # missing b
    b'{"a":[1,2,3],"b":4,"c":5}',  # unknown key
    b'{"a":[1,2,3],"b":4,"b":4}',  # key twice
    b'{"a":[1,2],"b":4}',  # short row
    b'{"a":[1,2,3,4],"b":4}',  # long row
    b'{"a":[1,2,"3"],"b":4}',  # a string
    b'{"a":[1,2,true],"b":4}',
    b'{"a":[1,2,NaN],"b":4}',
    b'{"a":[1,2,01],"b":4}',  # leading zero
    b'{"a":[1,2,3.],"b":4}',
    b'{"a":[1,2,.5],"b":4}',
    b'{"a":[1,2,+3],"b":4}',
    b'{"a":[1,2,3],"b":4}}',  # trailing garbage
    b'{"a":[1,2,3],"b":4',  # truncated
    b'{"\\u0061":[1,2,3],"b":4}',  # escaped key: orjson decides
    b'{"a":[1,2,3],"b":4,"id":"q\\"x"}',  # escaped id: orjson decides
    b'{"a":[1,2,3],"b":4,"id":[1]}',
    b'{"a":[1,2,3],"b":4,"id":null}',
    b'{"a":[1,2,3],"b":4.5}',
    b'{"a":[1,2,1e39],"b":4}',  # beyond float32: orjson and the validator decide
    b'{"a":[1,2,12345678901234567890],"b":4}',  # 20 digits
])
def test_everything_else_is_hard(text):
    (_, _, status), _ = scan([text], SCHEMA)
    assert status[0] == HARD


def test_a_batch_mixes_ok_and_hard_rows_independently():
    texts = [b'{"a":[1,2,3],"b":1}', b"garbage", b'{"a":[4,5,6],"b":2}', b'{"a":[7,8,9],"b":3,"z":0}',
             b'{"a":[0.5,0.25,0.125],"b":-1}']
    (got, _, status), _ = scan(texts, SCHEMA)
    assert status.tolist() == [OK, HARD, OK, HARD, OK]
    assert got[status == OK].tolist() == [[1, 2, 3, 1], [4, 5, 6, 2], [0.5, 0.25, 0.125, -1]]


def test_checked_wrapper_says_how_to_call_it():
    with pytest.raises(TypeError, match="uint8"):
        scan_rows(np.zeros(3, dtype=np.int64), np.array([0, 3], dtype=np.int64), SCHEMA)
    with pytest.raises(TypeError, match="int64"):
        scan_rows(np.zeros(3, dtype=np.uint8), np.array([0, 3], dtype=np.int32), SCHEMA)
    with pytest.raises(ValueError, match="non-decreasing"):
        scan_rows(np.zeros(3, dtype=np.uint8), np.array([0, 5], dtype=np.int64), SCHEMA)
    with pytest.raises(ValueError, match="'id'"):
        RowSchema(["id"], [1], [KIND_FLOAT32])


def test_splice_rows_builds_each_row_from_pieces_spans_and_integers():
    from kernels.jsonrows import SLOT_INT, SLOT_SPAN, splice_rows

    text = np.frombuffer(b"alphabetagamma", dtype=np.uint8)
    spans = np.array([[[0, 5], [5, 9], [9, 14]], [[0, 0], [0, 0], [0, 0]]], dtype=np.int64)
    ints = np.array([[0, 0, 0], [0, -7, 1234567890123]], dtype=np.int64)
    out, bounds = splice_rows([b"<", b"|", b">"], [SLOT_SPAN, SLOT_INT], text, spans, ints)
    data = out.tobytes()
    assert [data[a:b] for a, b in zip(bounds[:-1], bounds[1:])] == [b"<alpha|0>", b"<beta|-7>",
                                                                    b"<gamma|1234567890123>"]
    with pytest.raises(ValueError, match="inside text"):
        splice_rows([b"", b""], [SLOT_SPAN], text, np.array([[[0, 99]]], dtype=np.int64), np.zeros((1, 1), np.int64))


@settings(deadline=None)  # the first example loads (or compiles) the kernel
@given(st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=4),
                min_size=1, max_size=30))
def test_element_spans_find_the_rows_orjson_wrote(rows):
    import orjson

    from kernels.jsonrows import element_spans

    width = len(rows[0])
    matrix = np.array([r[:width] + [0.0] * (width - len(r)) for r in rows], dtype=np.float32)
    for array, depth in ((matrix, 2), (matrix[:, 0].copy(), 1)):
        text = orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)
        spans = element_spans(np.frombuffer(text, dtype=np.uint8), len(array), depth)
        parsed = [orjson.loads(b"[" + text[a:b] + b"]") for a, b in spans.tolist()]
        assert np.array(parsed, dtype=np.float32).reshape(array.shape).tolist() == array.tolist()
