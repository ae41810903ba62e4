"""Scan many small JSON objects of one known shape into a numeric matrix, in one call.

The Kafka ingress receives messages like `{"id": "a1", "float_input": [0.1, 0.2, ...]}`:
one object per message, mapping each model input to one row. Parsing them one by one with
a general JSON library costs microseconds per message, mostly in building Python floats and
lists that are thrown away at once. This kernel reads the bytes of a whole batch of messages
and writes the numbers straight into a preallocated matrix.

It is a fast path, not a validator: a message it is not sure about gets status HARD and the
caller parses that one message with a general JSON library (which also finds the error to
report). HARD means any of: not exactly one object; a key with an escape; a key that is not
an input or "id"; a key given twice; a missing input; a value of the wrong structure or
length; an `id` that is not a plain string or a number; a number the kernel cannot convert
exactly as `float32(float(text))` (or `float(text)` for float64 inputs) would.

Numbers. A JSON number is read as an integer mantissa m (at most 19 significant digits) and
a power of ten e. When m < 2**53 and |e| <= 22, m * 10**e is one correctly rounded operation
on exact operands: the result is the correctly rounded double. Otherwise the double is
computed to within a few units in the last place. For float32 inputs that is enough when the
value is not within that error of a point half way between two float32 values: both it and
the correctly rounded double then round to the same float32. Numbers near such a point, and
inexact numbers for float64 inputs, are HARD. Integer inputs take integers below 2**53 only.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import jit

OK = 0
HARD = 1

KIND_FLOAT32 = 0
KIND_FLOAT64 = 1
KIND_INT = 2

_POW10 = np.array([float(f"1e{k}") for k in range(309)], dtype=np.float64)
_EXACT_MANTISSA = 2**53
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)
_F64_TINY = float(np.finfo(np.float64).tiny)

_SPACE, _TAB, _LF, _CR = 32, 9, 10, 13
_QUOTE, _BACKSLASH, _COLON, _COMMA = 34, 92, 58, 44
_LBRACE, _RBRACE, _LBRACKET, _RBRACKET = 123, 125, 91, 93
_MINUS, _PLUS, _DOT, _ZERO, _NINE = 45, 43, 46, 48, 57
_LOWER_E, _UPPER_E = 101, 69


@jit
def _skip_ws(buf, p, end):
    while p < end:
        c = buf[p]
        if c != _SPACE and c != _TAB and c != _LF and c != _CR:
            break
        p += 1
    return p


@jit
def _number(buf, p, end, kind, pow10):
    """Parse a JSON number at p. Returns (value, new p, ok)."""
    negative = False
    if p < end and buf[p] == _MINUS:
        negative = True
        p += 1
    if p >= end or buf[p] < _ZERO or buf[p] > _NINE:
        return 0.0, p, False
    mantissa = np.uint64(0)
    digits = 0  # significant digits kept in mantissa
    exponent = 0
    if buf[p] == _ZERO:
        p += 1
        if p < end and _ZERO <= buf[p] <= _NINE:  # JSON forbids leading zeros
            return 0.0, p, False
    else:
        while p < end and _ZERO <= buf[p] <= _NINE:
            if digits >= 19:
                return 0.0, p, False
            mantissa = mantissa * np.uint64(10) + np.uint64(buf[p] - _ZERO)
            digits += 1
            p += 1
    fraction = False
    if p < end and buf[p] == _DOT:
        fraction = True
        p += 1
        if p >= end or buf[p] < _ZERO or buf[p] > _NINE:
            return 0.0, p, False
        while p < end and _ZERO <= buf[p] <= _NINE:
            d = buf[p] - _ZERO
            if mantissa == 0 and d == 0:
                exponent -= 1  # leading zeros of the fraction are not significant
            else:
                if digits >= 19:
                    return 0.0, p, False
                mantissa = mantissa * np.uint64(10) + np.uint64(d)
                digits += 1
                exponent -= 1
            p += 1
    if p < end and (buf[p] == _LOWER_E or buf[p] == _UPPER_E):
        fraction = True
        p += 1
        exp_negative = False
        if p < end and (buf[p] == _MINUS or buf[p] == _PLUS):
            exp_negative = buf[p] == _MINUS
            p += 1
        if p >= end or buf[p] < _ZERO or buf[p] > _NINE:
            return 0.0, p, False
        e = 0
        while p < end and _ZERO <= buf[p] <= _NINE:
            if e < 100_000:
                e = e * 10 + int(buf[p] - _ZERO)
            p += 1
        exponent += -e if exp_negative else e
    if kind == KIND_INT:
        if fraction or mantissa > np.uint64(_EXACT_MANTISSA):
            return 0.0, p, False
        value = float(mantissa)
        return (-value if negative else value), p, True
    if mantissa == 0:
        return (-0.0 if negative else 0.0), p, True
    if mantissa <= np.uint64(_EXACT_MANTISSA) and -22 <= exponent <= 22:
        value = float(mantissa) * pow10[exponent] if exponent >= 0 else float(mantissa) / pow10[-exponent]
        if kind == KIND_FLOAT32 and (value > _F32_MAX or value < _F32_TINY):
            return 0.0, p, False  # overflow / subnormal: let the general parser decide
        return (-value if negative else value), p, True
    if kind != KIND_FLOAT32 or exponent > 308 or exponent < -308:
        return 0.0, p, False
    value = float(mantissa) * pow10[exponent] if exponent >= 0 else float(mantissa) / pow10[-exponent]
    if not (_F32_TINY <= value <= _F32_MAX):
        return 0.0, p, False
    # value is within ~2 ulp (double) of the decimal. Safe when the float32 it rounds to is
    # unambiguous: the distance to the nearest float32 rounding boundary exceeds the error.
    rounded = float(np.float32(value))
    frac, exp2 = math.frexp(rounded)
    gap = math.ldexp(1.0, exp2 - 24)  # float32 spacing above |rounded|
    if frac == 0.5:
        gap *= 0.5  # below a power of two the spacing halves
    if abs(value - rounded) + value * 2.0**-49 >= gap * 0.5:
        return 0.0, p, False
    return (-value if negative else value), p, True


@jit
def _match(buf, start, stop, names, name_bounds):
    """Index of the name equal to buf[start:stop], -1 if none."""
    length = stop - start
    for j in range(name_bounds.shape[0] - 1):
        a, b = name_bounds[j], name_bounds[j + 1]
        if b - a != length:
            continue
        same = True
        for t in range(length):
            if buf[start + t] != names[a + t]:
                same = False
                break
        if same:
            return j
    return -1


@jit
def _scan_one(buf, p, end, names, name_bounds, sizes, kinds, columns, row, values, ids, pow10, seen):
    n_inputs = sizes.shape[0]
    id_index = n_inputs  # names holds the inputs, then "id"
    for j in range(n_inputs + 1):
        seen[j] = False
    p = _skip_ws(buf, p, end)
    if p >= end or buf[p] != _LBRACE:
        return HARD
    p = _skip_ws(buf, p + 1, end)
    if p < end and buf[p] == _RBRACE:
        return HARD  # no inputs at all
    while True:
        if p >= end or buf[p] != _QUOTE:
            return HARD
        key_start = p + 1
        p = key_start
        while p < end and buf[p] != _QUOTE:
            if buf[p] == _BACKSLASH:
                return HARD
            p += 1
        if p >= end:
            return HARD
        j = _match(buf, key_start, p, names, name_bounds)
        if j < 0 or seen[j]:
            return HARD
        seen[j] = True
        p = _skip_ws(buf, p + 1, end)
        if p >= end or buf[p] != _COLON:
            return HARD
        p = _skip_ws(buf, p + 1, end)
        if p >= end:
            return HARD
        if j == id_index:
            if buf[p] == _QUOTE:
                id_start = p
                p += 1
                while p < end and buf[p] != _QUOTE:
                    if buf[p] == _BACKSLASH or buf[p] < 32:
                        return HARD
                    p += 1
                if p >= end:
                    return HARD
                p += 1
            else:
                id_start = p
                _, p, ok = _number(buf, p, end, KIND_FLOAT64, pow10)
                if not ok:
                    return HARD
            ids[row, 0] = id_start
            ids[row, 1] = p
        else:
            size = sizes[j]
            column = columns[j]
            kind = kinds[j]
            if size == 0:  # a scalar per row
                value, p, ok = _number(buf, p, end, kind, pow10)
                if not ok:
                    return HARD
                values[row, column] = value
            else:
                if buf[p] != _LBRACKET:
                    return HARD
                p += 1
                for t in range(size):
                    p = _skip_ws(buf, p, end)
                    value, p, ok = _number(buf, p, end, kind, pow10)
                    if not ok:
                        return HARD
                    values[row, column + t] = value
                    p = _skip_ws(buf, p, end)
                    if t + 1 < size:
                        if p >= end or buf[p] != _COMMA:
                            return HARD
                        p += 1
                if p >= end or buf[p] != _RBRACKET:
                    return HARD
                p += 1
        p = _skip_ws(buf, p, end)
        if p < end and buf[p] == _COMMA:
            p = _skip_ws(buf, p + 1, end)
            continue
        if p < end and buf[p] == _RBRACE:
            p += 1
            break
        return HARD
    if _skip_ws(buf, p, end) != end:
        return HARD
    for j in range(n_inputs):
        if not seen[j]:
            return HARD
    return OK


@jit
def _scan(buf, bounds, names, name_bounds, sizes, kinds, columns, values, ids, status, pow10):
    seen = np.zeros(sizes.shape[0] + 1, dtype=np.bool_)
    for row in range(bounds.shape[0] - 1):
        ids[row, 0] = -1
        ids[row, 1] = -1
        status[row] = _scan_one(buf, bounds[row], bounds[row + 1], names, name_bounds, sizes, kinds, columns,
                                row, values, ids, pow10, seen)


class RowSchema:
    """What the messages look like: input names (plus "id"), values per row, number kinds."""

    def __init__(self, names: list[str], sizes: list[int], kinds: list[int]):
        if not (len(names) == len(sizes) == len(kinds)) or not names:
            raise ValueError("RowSchema needs one size and one kind per input name, and at least one input")
        if "id" in names:
            raise ValueError("an input may not be called 'id': that key carries the message id")
        encoded = [n.encode() for n in names] + [b"id"]
        self.names = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        self.name_bounds = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.kinds = np.asarray(kinds, dtype=np.int64)
        self.columns = np.cumsum([0] + [max(s, 1) for s in sizes[:-1]]).astype(np.int64)
        self.width = int(sum(max(s, 1) for s in sizes))


def scan_rows(buf: np.ndarray, bounds: np.ndarray, schema: RowSchema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse messages buf[bounds[i]:bounds[i+1]].

    Returns (values float64[n, schema.width], ids int64[n, 2] byte span of the raw JSON id
    token or -1, status int8[n] OK/HARD). Rows with status HARD hold garbage.
    """
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise TypeError("buf must be a 1-D uint8 array (np.frombuffer(b''.join(values), np.uint8))")
    if bounds.dtype != np.int64 or bounds.ndim != 1 or bounds.shape[0] < 1:
        raise TypeError("bounds must be a 1-D int64 array of n+1 message offsets")
    n = bounds.shape[0] - 1
    if n and (bounds[0] < 0 or bounds[-1] > buf.shape[0] or np.any(np.diff(bounds) < 0)):
        raise ValueError("bounds must be non-decreasing offsets into buf")
    values = np.empty((n, schema.width), dtype=np.float64)
    ids = np.empty((n, 2), dtype=np.int64)
    status = np.empty(n, dtype=np.int8)
    _scan(buf, bounds, schema.names, schema.name_bounds, schema.sizes, schema.kinds, schema.columns, values, ids,
          status, _POW10)
    return values, ids, status


# -- writing: one JSON text per row, spliced from constant pieces, byte spans and integers --------

SLOT_SPAN = 0  # copy text[spans[slot, row, 0]:spans[slot, row, 1]]
SLOT_INT = 1  # write ints[slot, row] in decimal


@jit
def _int_length(v):
    if v == 0:
        return 1
    n = 1 if v < 0 else 0
    while v != 0:
        v = v // 10 if v > 0 else -(v // -10)
        n += 1
    return n


@jit
def _write_int(out, p, v):
    n = _int_length(v)
    if v < 0:
        out[p] = _MINUS
        v = -v
    q = p + n - 1
    if v == 0:
        out[q] = _ZERO
    while v > 0:
        out[q] = _ZERO + v % 10
        v //= 10
        q -= 1
    return p + n


@jit
def _splice(pieces, piece_bounds, kinds, text, spans, ints, out, bounds, measure):
    slots = kinds.shape[0]
    p = 0
    for row in range(bounds.shape[0] - 1):
        bounds[row] = p
        for s in range(slots + 1):
            a, b = piece_bounds[s], piece_bounds[s + 1]
            if not measure:
                out[p:p + b - a] = pieces[a:b]
            p += b - a
            if s == slots:
                break
            if kinds[s] == SLOT_SPAN:
                a, b = spans[s, row, 0], spans[s, row, 1]
                if not measure:
                    out[p:p + b - a] = text[a:b]
                p += b - a
            elif measure:
                p += _int_length(ints[s, row])
            else:
                p = _write_int(out, p, ints[s, row])
    bounds[bounds.shape[0] - 1] = p
    return p


def splice_rows(pieces: list[bytes], kinds: list[int], text: np.ndarray, spans: np.ndarray,
                ints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row i's text is pieces[0] slot[0] pieces[1] ... slot[m-1] pieces[m], where slot s is
    text[spans[s, i, 0]:spans[s, i, 1]] (kind SLOT_SPAN) or ints[s, i] in decimal (SLOT_INT).
    Returns (bytes as uint8, int64 row offsets [n+1])."""
    m = len(kinds)
    if len(pieces) != m + 1:
        raise ValueError(f"{m} slots need {m + 1} pieces, got {len(pieces)}")
    if text.dtype != np.uint8 or spans.dtype != np.int64 or ints.dtype != np.int64:
        raise TypeError("text must be uint8, spans and ints int64")
    if spans.ndim != 3 or spans.shape[0] != m or spans.shape[2] != 2 or ints.shape[:1] != (m,):
        raise ValueError("spans must be [slots, rows, 2] and ints [slots, rows]")
    n = spans.shape[1]
    if ints.shape[1] != n:
        raise ValueError("spans and ints must have the same rows")
    used = spans[np.asarray(kinds) == SLOT_SPAN]
    if used.size and (used.min() < 0 or used.max() > text.shape[0] or (used[..., 1] < used[..., 0]).any()):
        raise ValueError("spans must lie inside text")
    constant = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    piece_bounds = np.cumsum([0] + [len(p) for p in pieces]).astype(np.int64)
    kind_array = np.asarray(kinds, dtype=np.int64)
    bounds = np.empty(n + 1, dtype=np.int64)
    size = _splice(constant, piece_bounds, kind_array, text, spans, ints, np.empty(0, np.uint8), bounds, True)
    out = np.empty(size, dtype=np.uint8)
    _splice(constant, piece_bounds, kind_array, text, spans, ints, out, bounds, False)
    return out, bounds


@jit
def _element_spans(text, rows, depth, spans):
    """Spans of the rows of a JSON array of numbers (depth 1: elements; depth 2: the inside of
    each inner list). Returns the rows found."""
    level = 0
    row = 0
    start = 0
    for p in range(text.shape[0]):
        c = text[p]
        if c == _LBRACKET:
            level += 1
            if level == depth:
                start = p + 1
        elif c == _RBRACKET:
            if level == depth and depth == 2:
                if row < rows:
                    spans[row, 0] = start
                    spans[row, 1] = p
                row += 1
            elif level == 1 and depth == 1 and p > start:
                if row < rows:
                    spans[row, 0] = start
                    spans[row, 1] = p
                row += 1
            level -= 1
        elif c == _COMMA and level == 1 and depth == 1:
            if row < rows:
                spans[row, 0] = start
                spans[row, 1] = p
            row += 1
            start = p + 1
    return row


def element_spans(text: np.ndarray, rows: int, depth: int) -> np.ndarray:
    """Row spans in the JSON text of a 1-D (depth 1) or 2-D (depth 2) array of numbers."""
    if depth not in (1, 2):
        raise ValueError("depth must be 1 or 2")
    spans = np.zeros((rows, 2), dtype=np.int64)
    found = _element_spans(text, rows, depth, spans)
    if found != rows:
        raise ValueError(f"expected {rows} rows, found {found}")
    return spans
