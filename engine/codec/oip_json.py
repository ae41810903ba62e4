"""Open Inference Protocol over HTTP: JSON bodies (and the binary tensor data extension that
Triton and tritonclient.http use) <-> numpy arrays.

A request body is JSON, or -- with the `Inference-Header-Content-Length: N` header -- N bytes
of JSON followed by the raw bytes of the inputs whose `parameters.binary_data_size` says how
many are theirs, in the order of `inputs`. Binary inputs become arrays through
`np.frombuffer` (no copy); JSON `data` (flat or nested, row-major) through one `np.asarray`.
A response carries an output's values as JSON `data`, or as raw bytes after the JSON when the
request asked for them (`parameters.binary_data` of the output, or the request's
`binary_data_output`), with `parameters.binary_data_size` and the same header.
"""

from __future__ import annotations

import numpy as np
import orjson

from engine.codec.dtypes import NUMPY_TO_OIP, OIP_TO_NUMPY
from engine.codec.oip import DecodedRequest, _element_count
from engine.errors import EngineError, ErrorCode, clip

HEADER_LENGTH = "inference-header-content-length"


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise _invalid(f"{what} must be a JSON object")
    return value


def _values(data, dtype: np.dtype, datatype: str, shown: str, count: int) -> np.ndarray:
    """JSON `data` as an array of `dtype`: numbers only, as the Kafka decoder takes them --
    no strings, null or true/false (but for BOOL) -- integers within the type's range, no
    fractions for integer types. One conversion of the whole list (numpy's, in C)."""
    try:
        given = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting
        raise _invalid(f"input '{shown}': 'data' is not a list of {datatype} values") from None
    if given.size != count:
        raise _invalid(f"input '{shown}': 'data' has {given.size} values, but shape needs {count}")
    if not count:
        return np.empty(0, dtype=dtype)
    kind = given.dtype.kind
    if dtype.kind == "b":
        if kind not in "biu":
            raise _invalid(f"input '{shown}': 'data' must hold true/false (or 0/1) for BOOL")
    elif kind == "f" and dtype.kind in "iu":
        raise _invalid(f"input '{shown}': 'data' has fractional values for {datatype}")
    elif kind not in "iuf":
        found = {"b": "true/false", "U": "strings", "S": "strings"}.get(kind, "values that are not numbers (null?)")
        raise _invalid(f"input '{shown}': 'data' must hold numbers only; it has {found}")
    if dtype.kind in "iu" and kind in "iu":
        info = np.iinfo(dtype)
        if given.min() < info.min or given.max() > info.max:
            raise _invalid(f"input '{shown}': 'data' has values outside {datatype}'s range "
                           f"[{info.min}, {info.max}]")
    return given.reshape(-1).astype(dtype)


def decode_json_request(body: bytes, header_length: int | None, model: str, version: str) -> tuple[DecodedRequest, dict]:
    """(the request as arrays, its requested outputs' binary flags: name -> bool, "" for the
    request-wide binary_data_output)."""
    if header_length is None:
        head, tail = body, b""
    else:
        if not 0 <= header_length <= len(body):
            raise _invalid(f"Inference-Header-Content-Length is {header_length}, but the body has {len(body)} bytes")
        head, tail = body[:header_length], memoryview(body)[header_length:]
    try:
        request = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"the request body is not JSON: {clip(exc)}") from None
    request = _object(request, "the request")
    parameters = _object(request.get("parameters") or {}, "parameters")
    tensors = request.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise _invalid("the request has no 'inputs' (a list of {name, shape, datatype, data})")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in tensors:
        tensor = _object(tensor, "each input")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise _invalid("an input has no 'name'")
        if name in inputs:
            raise _invalid(f"input '{clip(name)}' is given twice")
        shown = clip(name)
        datatype = tensor.get("datatype")
        dtype = OIP_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise _invalid(f"input '{shown}': datatype '{clip(datatype)}' is not supported "
                           f"(use one of {', '.join(OIP_TO_NUMPY)})")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise _invalid(f"input '{shown}': 'shape' must be a list of integers")
        count = _element_count(shown, shape, dtype.itemsize)
        size = _object(tensor.get("parameters") or {}, f"input '{shown}': parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _invalid(f"input '{shown}': binary_data_size must be a whole number of bytes, not "
                               f"{clip(orjson.dumps(size).decode())}")
            if header_length is None:
                raise _invalid(f"input '{shown}': binary_data_size without the Inference-Header-Content-Length header")
            expected = count * dtype.itemsize
            if size != expected:
                raise _invalid(f"input '{shown}': binary_data_size is {size}, but shape {shape} of {datatype} "
                               f"needs {expected} bytes")
            if offset + size > len(tail):
                raise _invalid(f"input '{shown}': the body ends {offset + size - len(tail)} bytes short of its "
                               "binary data")
            inputs[name] = np.frombuffer(tail[offset:offset + size], dtype=dtype.newbyteorder("<")).reshape(shape)
            offset += size
            continue
        data = tensor.get("data")
        if data is None:
            raise _invalid(f"input '{shown}': no 'data' (nor parameters.binary_data_size)")
        inputs[name] = _values(data, dtype, datatype, shown, count).reshape(shape)
    if offset != len(tail):
        raise _invalid(f"the body has {len(tail) - offset} bytes of binary data no input claims")
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list):
        raise _invalid("'outputs' must be a list of {name, parameters}")
    binary = {"": bool(parameters.get("binary_data_output", False))}
    requested = []
    for o in outputs:
        o = _object(o, "each output")
        if not isinstance(o.get("name"), str):
            raise _invalid("a requested output has no 'name'")
        requested.append(o["name"])
        flag = _object(o.get("parameters") or {}, "an output's parameters").get("binary_data")
        binary[o["name"]] = binary[""] if flag is None else bool(flag)
    request_id = request.get("id", "")
    return DecodedRequest(model_name=model, model_version=version,
                          request_id=request_id if isinstance(request_id, str) else str(request_id),
                          inputs=inputs, requested_outputs=tuple(requested), parameters=parameters), binary


def encode_json_response(model_name: str, model_version: str, request_id: str, outputs: dict[str, np.ndarray],
                         binary: dict) -> tuple[bytes, int | None]:
    """(the body, the JSON header's length when binary data follows it, else None)."""
    tensors = []
    raws = []
    for name, array in outputs.items():
        array = np.ascontiguousarray(array)
        little = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        datatype = NUMPY_TO_OIP.get(little)
        if datatype is None:
            raise EngineError(ErrorCode.INTERNAL, f"output '{name}' has dtype {array.dtype}, not an OIP tensor type")
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary.get(name, binary[""]):
            raw = array.astype(little, copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        elif datatype == "FP16":  # JSON has no half floats: their values as floats
            entry["data"] = array.astype(np.float32).reshape(-1)
        else:
            entry["data"] = array.reshape(-1)
        tensors.append(entry)
    head = orjson.dumps({"model_name": model_name, "model_version": model_version, "id": request_id,
                         "outputs": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raws:
        return head, None
    return b"".join([head, *raws]), len(head)

