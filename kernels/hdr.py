"""HdrHistogram: HdrHistogram's fixed bucket layout, recording whole arrays in one jitted call.

Layout, percentile, mean, min/max and the V2 compressed encoding are HdrHistogram's (as the
`hdrhistogram` package implements them), so histograms interoperate both ways:
`HdrHistogram.decode(hdrh_histogram.encode())` and `hdrh.histogram.HdrHistogram.decode(ours.encode())`.

Values are non-negative integers (e.g. microseconds). A value beyond the last bucket, or a
negative one, is never silently dropped: it is counted in `out_of_range` (and not recorded).
"""

from __future__ import annotations

import base64
import math
import struct
import zlib

import numpy as np

from kernels._jit import jit

V2_ENCODING_COOKIE = 0x1C849303 | 0x10
V2_COMPRESSION_COOKIE = 0x1C849304 | 0x10
_PAYLOAD_HEADER = struct.Struct(">IIIIqqd")  # cookie, payload_len, normalizing offset, sigfigs, lowest, highest, ratio
_EXTERNAL_HEADER = struct.Struct(">II")  # cookie, length of the zlib part

# state slots
TOTAL, MIN, MAX, OUT_OF_RANGE = 0, 1, 2, 3
_NO_MIN = np.iinfo(np.int64).max


@jit
def _bit_length(v):
    if v <= 0:
        return 0
    e = math.frexp(float(v))[1]
    # float(v) may round up to the next power of two for large v: correct it
    if e > 0 and (np.int64(1) << np.int64(e - 1)) > v:
        e -= 1
    elif e < 63 and (np.int64(1) << np.int64(e)) <= v:
        e += 1
    return e


@jit
def _index_of(value, unit_magnitude, sub_bucket_half_count_magnitude, sub_bucket_half_count, sub_bucket_mask):
    bucket_index = _bit_length(value | sub_bucket_mask) - unit_magnitude - (sub_bucket_half_count_magnitude + 1)
    sub_bucket_index = value >> (bucket_index + unit_magnitude)
    return ((bucket_index + 1) << sub_bucket_half_count_magnitude) + (sub_bucket_index - sub_bucket_half_count)


@jit
def _record(counts, state, values, unit_magnitude, half_mag, half_count, mask, expected_interval):
    n = counts.shape[0]
    for i in range(values.shape[0]):
        value = values[i]
        while True:
            if value < 0:
                state[OUT_OF_RANGE] += 1
                break
            index = _index_of(value, unit_magnitude, half_mag, half_count, mask)
            if index < 0 or index >= n:
                state[OUT_OF_RANGE] += 1
                break
            counts[index] += 1
            state[TOTAL] += 1
            if value < state[MIN]:
                state[MIN] = value
            if value > state[MAX]:
                state[MAX] = value
            # coordinated-omission correction: also record the samples that a stalled
            # measurement loop would have taken every expected_interval
            if expected_interval <= 0 or value <= expected_interval:
                break
            value -= expected_interval


@jit
def _value_from_index(index, unit_magnitude, half_mag, half_count):
    bucket_index = (index >> half_mag) - 1
    sub_bucket_index = (index & (half_count - 1)) + half_count
    if bucket_index < 0:
        sub_bucket_index -= half_count
        bucket_index = 0
    return sub_bucket_index << (bucket_index + unit_magnitude)


@jit
def _range_size(value, unit_magnitude, half_mag, sub_bucket_count, mask):
    bucket_index = _bit_length(value | mask) - unit_magnitude - (half_mag + 1)
    sub_bucket_index = value >> (bucket_index + unit_magnitude)
    if sub_bucket_index >= sub_bucket_count:
        bucket_index += 1
    return np.int64(1) << (unit_magnitude + bucket_index)


@jit
def _lowest_equivalent(value, unit_magnitude, half_mag, mask):
    bucket_index = _bit_length(value | mask) - unit_magnitude - (half_mag + 1)
    sub_bucket_index = value >> (bucket_index + unit_magnitude)
    return sub_bucket_index << (bucket_index + unit_magnitude)


@jit
def _percentiles(counts, targets, unit_magnitude, half_mag, half_count, sub_bucket_count, mask, want_lowest, out):
    """One pass over the counts for ascending target counts; out[i] gets the value."""
    total = 0
    t = 0
    n_targets = targets.shape[0]
    for index in range(counts.shape[0]):
        total += counts[index]
        while t < n_targets and total >= targets[t]:
            value = _value_from_index(index, unit_magnitude, half_mag, half_count)
            if want_lowest[t]:
                out[t] = _lowest_equivalent(value, unit_magnitude, half_mag, mask)
            else:
                out[t] = _lowest_equivalent(value, unit_magnitude, half_mag, mask) + _range_size(
                    value, unit_magnitude, half_mag, sub_bucket_count, mask) - 1
            t += 1
        if t == n_targets:
            return


@jit
def _mean(counts, unit_magnitude, half_mag, half_count, sub_bucket_count, mask):
    total = 0.0
    n = 0
    for index in range(counts.shape[0]):
        c = counts[index]
        if c:
            value = _value_from_index(index, unit_magnitude, half_mag, half_count)
            median = _lowest_equivalent(value, unit_magnitude, half_mag, mask) + (
                _range_size(value, unit_magnitude, half_mag, sub_bucket_count, mask) >> 1)
            total += c * float(median)
            n += c
    return total / n if n else 0.0


@jit
def _zigzag_leb128(counts, limit, out):
    """HdrHistogram V2 counts encoding: ZigZag LEB128 varints (9 bytes at most), a run of
    k > 1 zero counts written as -k. Returns the number of bytes written."""
    pos = 0
    i = 0
    while i < limit:
        count = counts[i]
        i += 1
        if count == 0:
            zeros = 1
            while i < limit and counts[i] == 0:
                zeros += 1
                i += 1
            if zeros > 1:
                count = -zeros
        v = np.uint64((count << 1) ^ (count >> 63))
        for _ in range(8):
            if v < 128:
                break
            out[pos] = np.uint8((v & np.uint64(0x7F)) | np.uint64(0x80))
            pos += 1
            v >>= np.uint64(7)
        out[pos] = np.uint8(v & np.uint64(0xFF))
        pos += 1
    return pos


@jit
def _unzigzag_leb128(data, counts):
    """Decode V2 varints into counts; returns (total, min index, max index) or raises."""
    pos = 0
    index = 0
    n = counts.shape[0]
    total = 0
    lo = -1
    hi = -1
    end = data.shape[0]
    while pos < end:
        v = np.uint64(0)
        shift = np.uint64(0)
        for k in range(9):
            if pos >= end:
                raise ValueError("truncated varint in the HdrHistogram payload")
            b = np.uint64(data[pos])
            pos += 1
            if k == 8:
                v |= b << shift
                break
            v |= (b & np.uint64(0x7F)) << shift
            if b < 128:
                break
            shift += np.uint64(7)
        count = np.int64(v >> np.uint64(1)) ^ -np.int64(v & np.uint64(1))
        if count < 0:
            index += -count
        else:
            if count > 0:
                if index >= n:
                    raise ValueError("HdrHistogram payload has counts beyond its own value range")
                counts[index] = count
                total += count
                if lo < 0:
                    lo = index
                hi = index
            index += 1
    return total, lo, hi


class HdrHistogram:
    """A High Dynamic Range histogram of non-negative integer values.

    `lowest` (>= 1) is the smallest value distinguishable from 0, `highest` (>= 2 * lowest)
    the largest tracked, `significant_figures` (1-5) the decimal precision kept everywhere
    in the range.
    """

    def __init__(self, lowest: int, highest: int, significant_figures: int):
        if not 1 <= significant_figures <= 5:
            raise ValueError(f"significant_figures must be 1..5, got {significant_figures}")
        if lowest < 1:
            raise ValueError(f"lowest must be >= 1, got {lowest}")
        if highest < 2 * lowest:
            raise ValueError(f"highest must be >= 2 * lowest ({2 * lowest}), got {highest}")
        self.lowest, self.highest, self.significant_figures = int(lowest), int(highest), int(significant_figures)
        self.unit_magnitude = int(math.floor(math.log(lowest) / math.log(2)))
        single_unit = 2 * math.pow(10, significant_figures)
        count_magnitude = int(math.ceil(math.log(single_unit) / math.log(2)))
        self.half_magnitude = count_magnitude - 1 if count_magnitude > 1 else 0
        self.sub_bucket_count = 2 ** (self.half_magnitude + 1)
        self.half_count = self.sub_bucket_count // 2
        self.mask = (self.sub_bucket_count - 1) << self.unit_magnitude
        smallest_untrackable = self.sub_bucket_count << self.unit_magnitude
        buckets = 1
        while smallest_untrackable <= highest:
            if smallest_untrackable > (2**63 - 1) // 2:
                buckets += 1
                break
            smallest_untrackable <<= 1
            buckets += 1
        self.bucket_count = buckets
        self.counts = np.zeros((buckets + 1) * self.half_count, dtype=np.int64)
        self._state = np.array([0, _NO_MIN, 0, 0], dtype=np.int64)

    # -- recording -------------------------------------------------------------------------
    def _values(self, values) -> np.ndarray:
        array = np.asarray(values)
        if array.ndim == 0:
            array = array.reshape(1)
        if array.ndim != 1:
            raise ValueError(f"record a 1-D array of values, got shape {array.shape}")
        if array.dtype.kind not in "iu":
            raise TypeError(
                f"HdrHistogram records integers, got {array.dtype}: scale and round first, "
                "e.g. np.rint(seconds * 1e6).astype(np.int64) for microseconds"
            )
        if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
            raise ValueError("values above 2**63 - 1 cannot be recorded")
        return np.ascontiguousarray(array, dtype=np.int64)

    def record_values(self, values) -> None:
        """Record every value of an integer array (one jitted call)."""
        _record(self.counts, self._state, self._values(values), self.unit_magnitude, self.half_magnitude,
                self.half_count, self.mask, 0)

    def record_corrected_values(self, values, expected_interval: int) -> None:
        """Record values measured by a loop expected to take one sample every
        `expected_interval`: a value v > interval also records v - interval, v - 2*interval, ...
        (HdrHistogram's coordinated-omission correction)."""
        if expected_interval < 0:
            raise ValueError("expected_interval must be >= 0")
        _record(self.counts, self._state, self._values(values), self.unit_magnitude, self.half_magnitude,
                self.half_count, self.mask, int(expected_interval))

    def _layout(self) -> tuple:
        return (self.unit_magnitude, self.half_magnitude, self.sub_bucket_count, len(self.counts))

    def merge(self, other: "HdrHistogram") -> None:
        """Add another histogram's counts into this one."""
        if other._layout() == self._layout():
            self.counts += other.counts
            self._state[TOTAL] += other._state[TOTAL]
            self._state[MIN] = min(self._state[MIN], other._state[MIN])
            self._state[MAX] = max(self._state[MAX], other._state[MAX])
            self._state[OUT_OF_RANGE] += other._state[OUT_OF_RANGE]
            return
        nonzero = np.flatnonzero(other.counts)
        values = np.array([other._value_from_index(i) for i in nonzero], dtype=np.int64)
        self.record_values(np.repeat(values, other.counts[nonzero]))
        self._state[OUT_OF_RANGE] += other._state[OUT_OF_RANGE]

    def reset(self) -> None:
        self.counts[:] = 0
        self._state[:] = (0, _NO_MIN, 0, 0)

    # -- queries ---------------------------------------------------------------------------
    @property
    def total_count(self) -> int:
        return int(self._state[TOTAL])

    @property
    def out_of_range(self) -> int:
        """Values not recorded because they were negative or beyond the last bucket."""
        return int(self._state[OUT_OF_RANGE])

    def _value_from_index(self, index: int) -> int:
        return int(_value_from_index(index, self.unit_magnitude, self.half_magnitude, self.half_count))

    def lowest_equivalent(self, value: int) -> int:
        return int(_lowest_equivalent(int(value), self.unit_magnitude, self.half_magnitude, self.mask))

    def highest_equivalent(self, value: int) -> int:
        return self.lowest_equivalent(value) + int(
            _range_size(int(value), self.unit_magnitude, self.half_magnitude, self.sub_bucket_count, self.mask)) - 1

    def percentiles(self, percentiles) -> np.ndarray:
        """Values at several percentiles (0-100) in one pass, in the order asked. As in
        HdrHistogram: the highest value equivalent to the bucket reached (the lowest for 0)."""
        p = np.asarray(percentiles, dtype=np.float64).reshape(-1)
        if np.isnan(p).any() or (p < 0).any():
            raise ValueError("percentiles must be numbers in [0, 100]")
        out = np.zeros(p.shape[0], dtype=np.int64)
        total = self.total_count
        if total == 0 or p.size == 0:
            return out
        # target count per percentile, exactly as HdrHistogram computes it
        targets = np.array([max(int((min(x, 100.0) * total / 100) + 0.5), 1) for x in p], dtype=np.int64)
        order = np.argsort(targets, kind="stable")
        sorted_out = np.zeros_like(out)
        _percentiles(self.counts, targets[order], self.unit_magnitude, self.half_magnitude, self.half_count,
                     self.sub_bucket_count, self.mask, (p[order] == 0), sorted_out)
        out[order] = sorted_out
        return out

    def value_at_percentile(self, percentile: float) -> int:
        return int(self.percentiles([percentile])[0])

    def mean(self) -> float:
        """Mean of the bucket midpoints, weighted by count (HdrHistogram's definition)."""
        return float(_mean(self.counts, self.unit_magnitude, self.half_magnitude, self.half_count,
                           self.sub_bucket_count, self.mask))

    def max(self) -> int:
        return 0 if self._state[MAX] == 0 else self.highest_equivalent(int(self._state[MAX]))

    def min(self) -> int:
        if self.total_count == 0 or self.counts[0] > 0:
            return 0
        return self.lowest_equivalent(int(self._state[MIN]))

    # -- encoding --------------------------------------------------------------------------
    def encode(self) -> bytes:
        """HdrHistogram's V2 compressed encoding, base64-wrapped (as `hdrh` encode())."""
        limit = 0
        if self.total_count:
            limit = int(_index_of(int(self._state[MAX]), self.unit_magnitude, self.half_magnitude,
                                  self.half_count, self.mask)) + 1
        buffer = np.empty(limit * 9 + 9, dtype=np.uint8)
        used = _zigzag_leb128(self.counts, limit, buffer)
        header = _PAYLOAD_HEADER.pack(V2_ENCODING_COOKIE, used, 0, self.significant_figures,
                                      self.lowest, self.highest, 1.0)
        compressed = zlib.compress(header + buffer[:used].tobytes())
        return base64.b64encode(_EXTERNAL_HEADER.pack(V2_COMPRESSION_COOKIE, len(compressed)) + compressed)

    @classmethod
    def decode(cls, encoded: bytes | str) -> "HdrHistogram":
        """A histogram from HdrHistogram's base64 V2 compressed encoding."""
        raw = base64.b64decode(encoded)
        if len(raw) < _EXTERNAL_HEADER.size:
            raise ValueError("encoded HdrHistogram is too short")
        cookie, length = _EXTERNAL_HEADER.unpack_from(raw)
        if cookie & ~0xF0 != V2_COMPRESSION_COOKIE & ~0xF0:
            raise ValueError(f"not an HdrHistogram V2 compressed encoding (cookie {cookie:#x})")
        if length != len(raw) - _EXTERNAL_HEADER.size:
            raise ValueError("encoded HdrHistogram length does not match its header")
        payload = zlib.decompress(raw[_EXTERNAL_HEADER.size:])
        if len(payload) < _PAYLOAD_HEADER.size:
            raise ValueError("HdrHistogram payload is too short")
        cookie, used, offset, sigfigs, lowest, highest, _ratio = _PAYLOAD_HEADER.unpack_from(payload)
        if cookie & ~0xF0 != V2_ENCODING_COOKIE & ~0xF0:
            raise ValueError(f"not an HdrHistogram V2 payload (cookie {cookie:#x})")
        if offset != 0:
            raise ValueError("HdrHistogram payloads with a normalizing index offset are not supported")
        histogram = cls(lowest, highest, sigfigs)
        data = np.frombuffer(payload, dtype=np.uint8, count=used, offset=_PAYLOAD_HEADER.size)
        total, lo, hi = _unzigzag_leb128(data, histogram.counts)
        if total:
            histogram._state[TOTAL] = total
            histogram._state[MIN] = histogram._value_from_index(lo)
            # The encoding keeps counts per bucket only: like the reference decoder, take the
            # top of the highest non-empty bucket (a histogram of only 0s in a bucket wider
            # than 1 decodes with that bucket's top as its max).
            histogram._state[MAX] = histogram.highest_equivalent(histogram._value_from_index(hi))
        return histogram
