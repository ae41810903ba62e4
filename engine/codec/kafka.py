"""Kafka payloads <-> numpy, a whole consumed batch at a time.

Input formats (per stream, `format`):
- "json": one JSON object per message mapping each model input to ONE row (a number for a
  [-1] input, a list of numbers for [-1, k], nested lists beyond), plus an optional "id"
  (string or number), e.g. {"id": "a1", "float_input": [0.1, 0.2, ...]}.
  Numbers only (true/false/strings are errors). The batch is scanned by a Numba kernel
  (kernels/jsonrows.py) straight into arrays; a message it is unsure of is parsed alone with
  orjson, which is also how errors are found and explained.
- "binary": the row's inputs as raw little-endian bytes, one input after the other in the
  model's input order (every dimension but the first must be fixed), e.g. 32 float32 = 128
  bytes for the demo. The message key (UTF-8) is the id. No parsing at all: np.frombuffer.

Results are JSON, one per scored message, spliced by a kernel (kernels/jsonrows.py) from a
constant template, the id tokens, the source and the JSON text of whole output arrays
(orjson writes them; float32 values in their shortest round-trip form).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson

from kernels.jsonrows import (HARD, KIND_FLOAT32, KIND_FLOAT64, KIND_INT, SLOT_INT, SLOT_SPAN, RowSchema, element_spans,
                              scan_rows, splice_rows)
from engine.batching.batch import SOURCE_SEP
from engine.codec.validate import ModelSchema, TensorSpec

_NUMBER_TYPES = (int, float)


@dataclass(slots=True)
class Decoded:
    """A consumed batch after decoding: arrays for the good messages, errors for the rest."""

    inputs: dict[str, np.ndarray]  # rows = len(good)
    good: np.ndarray  # int64 indices (into the consumed batch) of the decoded messages
    id_text: bytes  # holds the JSON token of every good message's id ("null" when none)...
    id_spans: np.ndarray  # ...at id_text[id_spans[i, 0]:id_spans[i, 1]], int64 [len(good), 2]
    errors: list[tuple[int, str]] = field(default_factory=list)  # (index, why), index order

    def ids(self) -> list[bytes]:
        return [self.id_text[a:b] for a, b in self.id_spans.tolist()]


class DecodeError(ValueError):
    pass


def _row_shape(spec: TensorSpec) -> tuple[int, ...]:
    return tuple(spec.shape[1:])


class StreamCodec:
    def __init__(self, schema: ModelSchema, fmt: str, max_message_bytes: int, allow_non_finite: bool):
        if fmt not in ("json", "binary"):
            raise ValueError(f"unknown stream format {fmt!r}; use 'json' or 'binary'")
        self.schema = schema
        self.format = fmt
        self.max_message_bytes = max_message_bytes
        self.allow_non_finite = allow_non_finite
        self.inputs = schema.inputs
        fixed = all(all(d >= 0 for d in _row_shape(s)) for s in self.inputs)
        if fmt == "binary":
            if not fixed:
                raise ValueError("the binary format needs every input dimension but the first to be fixed; "
                                 f"the model takes {', '.join(s.describe() for s in self.inputs)}")
            self._record = np.dtype([(s.name, s.dtype.newbyteorder("<"), _row_shape(s)) for s in self.inputs])
        self._row_schema = None
        if fmt == "json" and fixed and all(len(_row_shape(s)) <= 1 for s in self.inputs) and "id" not in schema.input_names:
            kinds = []
            for s in self.inputs:
                if s.dtype == np.float32:
                    kinds.append(KIND_FLOAT32)
                elif s.dtype == np.float64:
                    kinds.append(KIND_FLOAT64)
                elif s.dtype.kind in "iu":
                    kinds.append(KIND_INT)
                else:
                    break
            else:
                sizes = [(_row_shape(s) or (0,))[0] for s in self.inputs]
                if all(size > 0 or not _row_shape(s) for size, s in zip(sizes, self.inputs)):
                    self._row_schema = RowSchema(list(schema.input_names), sizes, kinds)

    def warm_up(self) -> None:
        """Load the decoding and encoding kernels (Numba's cache) before the first batch arrives."""
        self.decode([b"{}"], [None])
        outputs = {"a": np.zeros((1, 2), np.float32), "b": np.zeros(1, np.int64)}
        encode_results(ResultTemplate("m", "1", "t", outputs, {}), b"null", np.array([[0, 4]], np.int64),
                       np.zeros(1, np.int64), np.zeros(1, np.int64), outputs)

    def describe_row(self) -> str:
        return ", ".join(f"'{s.name}' {s.datatype}{list(_row_shape(s))}" for s in self.inputs)

    # -- decoding ----------------------------------------------------------------------------
    def decode(self, values: list[bytes | None], keys: list[bytes | None]) -> Decoded:
        n = len(values)
        if None in values:
            values = [b"" if v is None else v for v in values]
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
        too_big = lengths > self.max_message_bytes
        if self.format == "binary":
            return self._decode_binary(values, keys, lengths, too_big)
        return self._decode_json(values, lengths, too_big)

    def decode_each(self, values: list[bytes | None], keys: list[bytes | None]) -> Decoded:
        """`decode`, one message at a time: for a batch that `decode` itself fails on (a bug,
        not bad input), so that the messages it can decode are scored and only the one that
        breaks it is a dead letter."""
        parts, errors = [], []
        for i, (value, key) in enumerate(zip(values, keys)):
            try:
                one = self.decode([value], [key])
            except Exception as exc:  # noqa: BLE001 -- whatever it is, it is this message's
                errors.append((i, f"cannot decode this message: {exc!r}"[:1000]))
                continue
            errors += [(i, why) for _, why in one.errors]
            if len(one.good):
                parts.append((i, one))
        if not parts:
            return Decoded({s.name: np.zeros((0,) + tuple(max(d, 0) for d in _row_shape(s)), dtype=s.dtype)
                            for s in self.inputs}, np.zeros(0, np.int64), b"", np.zeros((0, 2), np.int64),
                           sorted(errors))
        first = parts[0][1].inputs  # variable dimensions must agree within a batch, as in decode()
        fits = [(i, d) for i, d in parts if all(d.inputs[n].shape[1:] == a.shape[1:] for n, a in first.items())]
        if len(fits) < len(parts):
            kept = {i for i, _ in fits}
            errors += [(i, "a row whose shape does not fit the other rows of this batch")
                       for i, _ in parts if i not in kept]
            parts = fits
        shift = np.cumsum([0] + [len(d.id_text) for _, d in parts[:-1]])
        inputs = {s.name: np.concatenate([d.inputs[s.name] for _, d in parts]) for s in self.inputs}
        return Decoded(inputs, np.array([i for i, _ in parts], dtype=np.int64), b"".join(d.id_text for _, d in parts),
                       np.concatenate([d.id_spans + s for (_, d), s in zip(parts, shift)]), sorted(errors))

    def _oversize(self, length: int) -> str:
        return f"message of {length} bytes is larger than max_message_bytes = {self.max_message_bytes}"

    def _decode_binary(self, values, keys, lengths, too_big) -> Decoded:
        width = self._record.itemsize
        ok = (lengths == width) & ~too_big
        errors: dict[int, str] = {}
        for i in np.flatnonzero(~ok).tolist():
            errors[i] = self._oversize(int(lengths[i])) if too_big[i] else (
                f"binary message of {int(lengths[i])} bytes; this model's row is {width} bytes ({self.describe_row()}, "
                "little-endian, in that order)")
        good = np.flatnonzero(ok)
        joined = b"".join(values) if ok.all() else b"".join([values[i] for i in good.tolist()])
        records = np.frombuffer(joined, dtype=self._record)
        inputs = {s.name: np.ascontiguousarray(records[s.name]).astype(s.dtype, copy=False) for s in self.inputs}
        good, inputs = self._drop_non_finite(good, inputs, errors)
        return Decoded(inputs, good, *_key_ids(keys, good), sorted(errors.items()))

    def _decode_json(self, values, lengths, too_big) -> Decoded:
        n = len(values)
        errors: dict[int, str] = {i: self._oversize(int(lengths[i])) for i in np.flatnonzero(too_big).tolist()}
        joined = b"".join(values)
        bounds = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=bounds[1:])
        columns: dict[str, np.ndarray] = {}
        if self._row_schema is not None:
            matrix, spans, status = scan_rows(np.frombuffer(joined, dtype=np.uint8), bounds, self._row_schema)
            hard = status == HARD
            hard[too_big] = False
            matrix[hard | too_big] = 0
            for spec, start, size in zip(self.inputs, self._row_schema.columns.tolist(), self._row_schema.sizes.tolist()):
                block = matrix[:, start:start + max(size, 1)]
                if not size:
                    block = block[:, 0]
                if spec.dtype.kind in "iu":
                    info = np.iinfo(spec.dtype)
                    bad_rows = ((block < info.min) | (block > info.max)).reshape(n, -1).any(axis=1)
                    for i in np.flatnonzero(bad_rows).tolist():
                        errors.setdefault(i, f"input '{spec.name}': integer out of range for {spec.datatype}")
                    block = np.where(bad_rows.reshape((n,) + (1,) * (block.ndim - 1)), 0, block)
                columns[spec.name] = block.astype(spec.dtype)
        else:
            hard = ~too_big
            spans = None
            for spec in self.inputs:
                columns[spec.name] = np.zeros((n,) + tuple(max(d, 0) for d in _row_shape(spec)), dtype=spec.dtype)
        id_tokens: list[bytes | None] = [None] * n
        for i in np.flatnonzero(hard).tolist():
            try:
                row, id_token = self._decode_one(values[i])
            except DecodeError as exc:
                errors[i] = str(exc)
                continue
            for name, value in row.items():
                column = columns[name]
                if column.shape[1:] != value.shape:  # variable dimensions: widen the column
                    fitted = _fit(column, value.shape)
                    if fitted is None:  # the column stays as it is for the rows that fit it
                        errors[i] = (f"input '{name}': a row of shape {list(value.shape)} does not fit the other "
                                     "rows of this batch")
                        break
                    columns[name] = column = fitted
                column[(i,) + tuple(slice(0, d) for d in value.shape)] = value
            id_tokens[i] = id_token
        ok = np.ones(n, dtype=bool)
        if errors:
            ok[list(errors)] = False
        good = np.flatnonzero(ok)
        inputs = {name: column[good] if len(good) < n else column for name, column in columns.items()}
        good, inputs = self._drop_non_finite(good, inputs, errors)
        # Ids: spans into the joined input, or into tokens appended after it.
        null_at = len(joined)
        extra = [b"null"]
        size = null_at + 4
        id_spans = np.empty((len(good), 2), dtype=np.int64)
        if spans is not None:
            id_spans[:] = spans[good]
            absent = id_spans[:, 0] < 0
            id_spans[absent] = (null_at, null_at + 4)
        else:
            id_spans[:] = (null_at, null_at + 4)
        if hard.any():  # messages parsed alone carry their own token
            for r, i in enumerate(good.tolist()):
                token = id_tokens[i]
                if token is not None:
                    id_spans[r] = (size, size + len(token))
                    extra.append(token)
                    size += len(token)
        id_text = joined + b"".join(extra)
        return Decoded(inputs, good, id_text, id_spans, sorted(errors.items()))

    def _drop_non_finite(self, good, inputs, errors):
        if self.allow_non_finite or not len(good):
            return good, inputs
        bad = np.zeros(len(good), dtype=bool)
        for spec in self.inputs:
            if spec.dtype.kind == "f":
                column = inputs[spec.name]
                row_bad = ~np.isfinite(column.reshape(len(good), -1)).all(axis=1)
                for r in np.flatnonzero(row_bad & ~bad).tolist():
                    errors[int(good[r])] = (f"input '{spec.name}': non-finite value (NaN, infinity, or beyond "
                                            f"{spec.datatype} range); this model has allow_non_finite = false")
                bad |= row_bad
        if not bad.any():
            return good, inputs
        keep = ~bad
        return good[keep], {name: column[keep] for name, column in inputs.items()}

    def _decode_one(self, value: bytes) -> tuple[dict[str, np.ndarray], bytes]:
        """The general path for one JSON message: its row arrays and id token, or DecodeError."""
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise DecodeError(f"a message must be a JSON object mapping input names to one row ({self.describe_row()}); "
                              f"got a JSON {type(doc).__name__}")
        names = self.schema.input_names
        missing = [n for n in names if n not in doc]
        if missing:
            raise DecodeError(f"missing input {', '.join(repr(n) for n in missing)}; the model takes {self.describe_row()}")
        extra = [k for k in doc if k not in names and k != "id"]
        if extra:
            raise DecodeError(f"unexpected key {', '.join(repr(k) for k in extra)}; a message holds "
                              f"{', '.join(repr(n) for n in names)} and optionally 'id'")
        id_value = doc.get("id")
        if id_value is not None and (type(id_value) not in (str, int, float)):
            raise DecodeError(f"'id' must be a string or a number, not a JSON {type(id_value).__name__}")
        row = {spec.name: _row_array(spec, doc[spec.name]) for spec in self.inputs}
        return row, orjson.dumps(id_value)


# -- encoding ----------------------------------------------------------------------------------
class ResultTemplate:
    """The constant text of a batch's results around its slots: id, partition, offset, then
    one per output (a 2-D numeric output's rows are written inside '[' ']')."""

    def __init__(self, model: str, version: str, topic: str, outputs: dict[str, np.ndarray],
                 timings: dict[str, int]):
        self.names = list(outputs)
        self.matrix = [is_matrix(outputs[n]) for n in self.names]
        source = orjson.dumps(f"{topic}{SOURCE_SEP}")[:-1]  # '"topic/' without the closing quote
        fixed = orjson.dumps({"model": model, "version": version})[1:-1]
        pieces = [b'{"id":', b',"source":' + source, SOURCE_SEP.encode(), b'",' + fixed + b',"outputs":{']
        for k, (name, matrix) in enumerate(zip(self.names, self.matrix)):
            key = orjson.dumps(name) + b":" + (b"[" if matrix else b"")
            if k:
                pieces[-1] += b","
            pieces[-1] += key
            pieces.append(b"]" if matrix else b"")
        pieces[-1] += b'},"timings":' + orjson.dumps(timings) + b"}"
        self.pieces = pieces
        self.kinds = [SLOT_SPAN, SLOT_INT, SLOT_INT] + [SLOT_SPAN] * len(self.names)


def encode_results(template: ResultTemplate, id_text: bytes, id_spans: np.ndarray, partitions: np.ndarray,
                   offsets: np.ndarray, outputs: dict[str, np.ndarray]) -> list[bytes]:
    """One JSON result per row, spliced by a kernel from the template, the id tokens, the
    source and the outputs' JSON text (orjson writes whole numpy arrays)."""
    n = len(id_spans)
    texts = [id_text]
    size = len(id_text)
    spans = np.zeros((len(template.kinds), n, 2), dtype=np.int64)
    spans[0] = id_spans
    for k, name in enumerate(template.names):
        text, row_spans = _output_text(outputs[name], template.matrix[k])
        spans[3 + k] = row_spans + size
        texts.append(text)
        size += len(text)
    ints = np.zeros((len(template.kinds), n), dtype=np.int64)
    ints[1] = partitions
    ints[2] = offsets
    out, bounds = splice_rows(template.pieces, template.kinds, np.frombuffer(b"".join(texts), dtype=np.uint8),
                              spans, ints)
    data = out.tobytes()
    b = bounds.tolist()
    return [data[i:j] for i, j in zip(b, b[1:])]


def _output_text(array: np.ndarray, matrix: bool) -> tuple[bytes, np.ndarray]:
    """JSON text of an output and the span of each row in it."""
    rows = array.shape[0]
    if rows and _numeric(array) and (array.ndim == 1 or matrix):
        text = orjson.dumps(np.ascontiguousarray(array), option=orjson.OPT_SERIALIZE_NUMPY)
        return text, element_spans(np.frombuffer(text, dtype=np.uint8), rows, array.ndim)
    dumps = orjson.dumps
    return _token_spans([dumps(row, default=str) for row in array.tolist()])


def _numeric(array: np.ndarray) -> bool:
    """Arrays orjson writes whole (it has no float16)."""
    return array.dtype.kind in "biuf" and array.dtype != np.float16


def is_matrix(array: np.ndarray) -> bool:
    """Outputs whose rows are written as '[' + numbers + ']' (2-D numbers)."""
    return array.ndim == 2 and array.shape[1] > 0 and _numeric(array)


def _token_spans(tokens: list[bytes]) -> tuple[bytes, np.ndarray]:
    """The tokens joined, and the [start, end) span of each in the result."""
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    ends = np.cumsum(lengths)
    return b"".join(tokens), np.stack([ends - lengths, ends], axis=1).reshape(-1, 2)


_PLAIN = np.zeros(256, dtype=bool)
_PLAIN[0x20:0x7F] = True
_PLAIN[[ord('"'), ord("\\")]] = False


def _key_ids(keys: list[bytes | None], good: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The message keys as JSON string tokens (the binary format's ids): text and spans."""
    picked = keys if len(good) == len(keys) else [keys[i] for i in good.tolist()]
    if None not in picked:
        joined = b"".join(picked)
        if _PLAIN[np.frombuffer(joined, dtype=np.uint8)].all():  # printable ASCII, no quotes: JSON as is
            lengths = np.fromiter(map(len, picked), dtype=np.int64, count=len(picked)) + 2
            ends = np.cumsum(lengths)
            return b'"' + b'""'.join(picked) + b'"', np.stack([ends - lengths, ends], axis=1)
    dumps = orjson.dumps
    return _token_spans([b"null" if k is None else dumps(k.decode("utf-8", "replace")) for k in picked])


def _row_array(spec: TensorSpec, value) -> np.ndarray:
    shape = _row_shape(spec)
    flat: list = []
    got_shape = _walk(value, flat, 0)
    if got_shape is None:
        raise DecodeError(f"input '{spec.name}': a row must be {_expect(spec)}; got ragged nested lists")
    if len(got_shape) != len(shape) or any(w >= 0 and w != g for w, g in zip(shape, got_shape)):
        raise DecodeError(f"input '{spec.name}': a row must be {_expect(spec)}; got shape {list(got_shape)}")
    if spec.dtype == np.bool_:
        if not all(type(v) is bool for v in flat):
            raise DecodeError(f"input '{spec.name}': {spec.datatype} values must be true or false")
    else:
        wrong = next((v for v in flat if type(v) not in _NUMBER_TYPES), _MISSING)
        if wrong is not _MISSING:
            raise DecodeError(f"input '{spec.name}': values must be JSON numbers, got {orjson.dumps(wrong).decode()[:40]}")
        if spec.dtype.kind in "iu":
            if any(type(v) is float for v in flat):
                raise DecodeError(f"input '{spec.name}': {spec.datatype} values must be integers")
            info = np.iinfo(spec.dtype)
            if any(v < info.min or v > info.max for v in flat):
                raise DecodeError(f"input '{spec.name}': integer out of range for {spec.datatype}")
    with np.errstate(over="ignore"):
        return np.array(flat, dtype=spec.dtype).reshape(got_shape)


_MISSING = object()


def _walk(value, flat: list, depth: int) -> tuple[int, ...] | None:
    """Shape of nested lists (None when ragged), appending the leaves to `flat`."""
    if type(value) is not list:
        flat.append(value)
        return ()
    if depth > 32:
        return None
    shapes = {_walk(item, flat, depth + 1) for item in value}
    if len(shapes) > 1 or None in shapes:
        return None
    inner = shapes.pop() if shapes else ()
    return (len(value),) + inner


def _expect(spec: TensorSpec) -> str:
    shape = _row_shape(spec)
    if not shape:
        return f"one {spec.datatype} number"
    return f"{spec.datatype} {list(shape)} (nested lists)" if len(shape) > 1 else f"a list of {shape[0]} {spec.datatype} numbers"


def _fit(column: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """Variable row dimensions: rows of one batch must agree; grow a zero column to fit."""
    if len(shape) != column.ndim - 1:
        return None
    if all(c == 0 for c in column.shape[1:]) or column.shape[1:] == shape:
        out = np.zeros((column.shape[0],) + shape, dtype=column.dtype)
        return out
    return None
