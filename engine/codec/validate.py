"""Decoded arrays against a model's schema: the one place requests are checked.

The first dimension of every input is the batch (row) dimension; the rest must match the
model's fixed dimensions. A failure is an EngineError(INVALID_ARGUMENT) naming the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from engine.codec.dtypes import NUMPY_TO_OIP
from engine.errors import EngineError, ErrorCode, listed


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # OIP name, e.g. "FP32"
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for a variable dimension; shape[0] is the batch dimension

    def describe(self) -> str:
        return f"{self.datatype}{list(self.shape)}"


@dataclass(frozen=True, slots=True)
class ModelSchema:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_names: tuple[str, ...] = field(init=False, repr=False, compare=False)  # read per request
    output_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_names", tuple(t.name for t in self.inputs))
        object.__setattr__(self, "output_names", tuple(t.name for t in self.outputs))


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int
    allow_non_finite: bool


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


def validate_inputs(schema: ModelSchema, inputs: dict[str, np.ndarray], limits: Limits) -> int:
    """Check `inputs` against `schema`; return the number of rows."""
    missing = [t.name for t in schema.inputs if t.name not in inputs]
    if missing:
        raise _invalid(
            f"missing input {', '.join(repr(n) for n in missing)}; the model takes "
            + ", ".join(f"'{t.name}' {t.describe()}" for t in schema.inputs)
        )
    if len(inputs) != len(schema.inputs):
        extra = [n for n in inputs if n not in schema.input_names]
        raise _invalid(
            f"unexpected input {listed(extra)}; the model takes only "
            + ", ".join(repr(n) for n in schema.input_names)
        )
    rows = None
    for spec in schema.inputs:
        array = inputs[spec.name]
        if array.dtype != spec.dtype:
            got = NUMPY_TO_OIP.get(array.dtype, str(array.dtype))
            raise _invalid(f"input '{spec.name}': datatype {got} given, the model expects {spec.datatype}")
        if array.ndim != len(spec.shape):
            raise _invalid(
                f"input '{spec.name}': shape {list(array.shape)} has {array.ndim} dimensions, "
                f"the model expects {len(spec.shape)} ({spec.describe()}, first dimension = rows)"
            )
        for axis in range(1, array.ndim):
            want = spec.shape[axis]
            if want >= 0 and array.shape[axis] != want:
                raise _invalid(
                    f"input '{spec.name}': shape {list(array.shape)} does not match the model's "
                    f"{spec.describe()} at dimension {axis}"
                )
        n = array.shape[0] if array.ndim else 1
        if rows is None:
            rows = n
        elif n != rows:
            raise _invalid(
                f"input '{spec.name}' has {n} rows but '{schema.inputs[0].name}' has {rows}; "
                "all inputs need the same first dimension"
            )
        # a finite sum means every value is finite (an overflowing sum is checked value by value)
        if (not limits.allow_non_finite and spec.dtype.kind == "f" and array.size
                and not math.isfinite(np.add.reduce(array, axis=None)) and not np.isfinite(array).all()):
            bad = int(np.flatnonzero(~np.isfinite(array.reshape(-1)))[0])
            raise _invalid(
                f"input '{spec.name}': non-finite value {array.reshape(-1)[bad]} at flat index {bad} "
                "(this model is configured with allow_non_finite = false)"
            )
    assert rows is not None
    if rows == 0:
        raise _invalid(f"input '{schema.inputs[0].name}': a request needs at least one row")
    if rows > limits.max_rows:
        raise _invalid(f"request has {rows} rows, more than max_rows_per_request = {limits.max_rows}")
    return rows


def select_outputs(schema: ModelSchema, requested: tuple[str, ...]) -> tuple[str, ...]:
    """Names of the outputs to return: all, or the requested ones (checked)."""
    if not requested:
        return schema.output_names
    unknown = [n for n in requested if n not in schema.output_names]
    if unknown:
        raise _invalid(
            f"requested output {listed(unknown)} does not exist; the model has "
            + ", ".join(repr(n) for n in schema.output_names)
        )
    return requested
