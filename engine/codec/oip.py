"""Open Inference Protocol messages <-> numpy arrays.

Decoding only translates: raw contents become arrays through `np.frombuffer` (no copy),
typed contents through one `np.asarray` per tensor. Whether the arrays fit the model is
`validate.py`'s job. Every failure is an EngineError(INVALID_ARGUMENT) naming the input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.codec.dtypes import CONTENTS_FIELD, NUMPY_TO_OIP, OIP_TO_NUMPY
from engine.errors import EngineError, ErrorCode, clip
from engine.ingress._pb import open_inference_grpc_pb2 as pb

_MAX_ELEMENTS = 1 << 62
_Output = pb.ModelInferResponse.InferOutputTensor
MAX_DIMS = 32  # numpy's own limit is 64; no model input has anywhere near this many


@dataclass(slots=True)  # not frozen: a frozen dataclass costs a microsecond more to make, per request
class DecodedRequest:
    """A ModelInferRequest as arrays (read, never changed)."""

    model_name: str
    model_version: str
    request_id: str
    inputs: dict[str, np.ndarray]
    requested_outputs: tuple[str, ...]  # empty: all
    parameters: dict[str, object] = field(default_factory=dict)


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


def parameter_value(param: pb.InferParameter) -> object:
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else None


def _element_count(name: str, shape, itemsize: int) -> int:
    """Elements of `shape`; refuses negative dimensions and shapes numpy could not even
    describe (a zero dimension does not excuse a huge one: [0, 2**62] is refused too)."""
    if len(shape) > MAX_DIMS:
        raise _invalid(f"input '{name}': shape has {len(shape)} dimensions, more than {MAX_DIMS}")
    count = 1
    nominal = max(itemsize, 8)  # int64 copies are made to range-check small integer types
    for dim in shape:
        if dim < 0:
            raise _invalid(f"input '{name}': shape {list(shape)} has a negative dimension")
        count *= dim
        nominal *= max(dim, 1)
        if nominal > _MAX_ELEMENTS:
            raise _invalid(f"input '{name}': shape {list(shape)} is too large")
    return count


def decode_request(request: pb.ModelInferRequest) -> DecodedRequest:
    """Turn a ModelInferRequest into named numpy arrays (views on the message's bytes)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise _invalid(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in the order of `inputs`"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        key = tensor.name
        if key in inputs:
            raise _invalid(f"input '{clip(key)}' is given twice")
        name = clip(key)  # as messages quote it
        dtype = OIP_TO_NUMPY.get(tensor.datatype)
        if dtype is None:
            raise _invalid(
                f"input '{name}': datatype '{clip(tensor.datatype)}' is not supported "
                f"(use one of {', '.join(OIP_TO_NUMPY)})"
            )
        shape = tuple(tensor.shape)
        count = _element_count(name, shape, dtype.itemsize)
        if raw:
            if tensor.HasField("contents"):
                raise _invalid(f"input '{name}': has typed contents while raw_input_contents is used")
            data = raw[i]
            expected = count * dtype.itemsize
            if len(data) != expected:
                raise _invalid(
                    f"input '{name}': raw contents are {len(data)} bytes, but shape {list(shape)} "
                    f"of {tensor.datatype} needs {expected}"
                )
            array = np.frombuffer(data, dtype=dtype).reshape(shape)
        else:
            field_name = CONTENTS_FIELD.get(tensor.datatype)
            if field_name is None:
                raise _invalid(f"input '{name}': {tensor.datatype} can only be sent in raw_input_contents")
            values = getattr(tensor.contents, field_name)
            if len(values) != count:
                raise _invalid(
                    f"input '{name}': {field_name} has {len(values)} values, but shape {list(shape)} needs {count}"
                )
            try:
                array = np.asarray(values, dtype=dtype).reshape(shape)
            except OverflowError:
                raise _invalid(f"input '{name}': a value in {field_name} does not fit {tensor.datatype}") from None
            if tensor.datatype in ("INT8", "INT16", "UINT8", "UINT16"):
                wide = np.asarray(values, dtype=np.int64)
                if not np.array_equal(wide.reshape(shape), array):
                    raise _invalid(f"input '{name}': a value in {field_name} does not fit {tensor.datatype}")
        inputs[key] = array
    return DecodedRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        request_id=request.id,
        inputs=inputs,
        requested_outputs=tuple(o.name for o in request.outputs) if request.outputs else (),
        parameters={k: parameter_value(v) for k, v in request.parameters.items()} if request.parameters else {},
    )


def encode_response(
    model_name: str, model_version: str, request_id: str, outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    """Build a ModelInferResponse with raw_output_contents, in the order of `outputs`."""
    tensors = []
    raws = []
    for name, array in outputs.items():
        datatype = NUMPY_TO_OIP.get(array.dtype)  # little-endian (or byte-sized): sent as it is
        if datatype is None:
            dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
            datatype = NUMPY_TO_OIP.get(dtype)
            if datatype is None:
                raise EngineError(ErrorCode.INTERNAL, f"output '{name}' has dtype {array.dtype}, not an OIP tensor type")
            array = array.astype(dtype)
        tensors.append(_Output(name=name, datatype=datatype, shape=array.shape))
        raws.append(array.tobytes())  # C order, whatever the array's layout
    return pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id, outputs=tensors, raw_output_contents=raws
    )
