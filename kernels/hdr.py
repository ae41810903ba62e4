"""HdrHistogram: HdrHistogram's fixed bucket layout, recording whole arrays with numpy.

Not a Numba kernel: every server records its latencies here, and a process that loads Numba
pays ~60 MiB for it and its LLVM (~130 MiB once kernels run), which a server that does not
monitor drift need not carry. Short arrays (a batch of one request) are recorded with
Python's ints, longer ones with a few numpy calls per array.

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

V2_ENCODING_COOKIE = 0x1C849303 | 0x10
V2_COMPRESSION_COOKIE = 0x1C849304 | 0x10
_PAYLOAD_HEADER = struct.Struct(">IIIIqqd")  # cookie, payload_len, normalizing offset, sigfigs, lowest, highest, ratio
_EXTERNAL_HEADER = struct.Struct(">II")  # cookie, length of the zlib part

_NO_MIN = np.iinfo(np.int64).max
_FEW = 8  # up to this many values, record in Python (a latency batch is often one request)
_CORRECTED_CHUNK = 1 << 20  # corrected values made at once


def _bit_length(v: np.ndarray) -> np.ndarray:
    """int.bit_length of each positive int64. float64(v) rounds monotonically, so its exponent
    is the bit length or one more (when v rounds up to the next power of two)."""
    e = np.minimum(np.frexp(v.astype(np.float64))[1].astype(np.int64), 63)
    return e - ((np.int64(1) << (e - 1)) > v)


def _value_from_index(index: np.ndarray, unit_magnitude, half_mag, half_count) -> np.ndarray:
    bucket_index = (index >> half_mag) - 1
    sub_bucket_index = (index & (half_count - 1)) + half_count
    first = bucket_index < 0
    sub_bucket_index = np.where(first, sub_bucket_index - half_count, sub_bucket_index)
    bucket_index = np.maximum(bucket_index, 0)
    return sub_bucket_index << (bucket_index + unit_magnitude)


def _lowest_equivalent(values: np.ndarray, unit_magnitude, half_mag, mask) -> np.ndarray:
    shift = _bit_length(values | mask) - (half_mag + 1)  # bucket index + unit magnitude
    return (values >> shift) << shift


def _range_size(values: np.ndarray, unit_magnitude, half_mag, sub_bucket_count, mask) -> np.ndarray:
    bucket_index = _bit_length(values | mask) - unit_magnitude - (half_mag + 1)
    sub_bucket_index = values >> (bucket_index + unit_magnitude)
    bucket_index = bucket_index + (sub_bucket_index >= sub_bucket_count)
    return np.int64(1) << (unit_magnitude + bucket_index)


_BOUNDS: dict[tuple, tuple[np.ndarray, int | None]] = {}  # per layout, shared by its histograms


def _bounds(layout: tuple, unit_magnitude, half_mag, half_count) -> tuple[np.ndarray, int | None]:
    """Each counter's lowest value (ascending: a value's counter is found by searchsorted),
    and the first value beyond the last counter (None: every int64 value >= 0 has one)."""
    bounds = _BOUNDS.get(layout)
    if bounds is None:
        n = layout[-1]
        lower = _value_from_index(np.arange(n, dtype=np.int64), unit_magnitude, half_mag, half_count)
        bucket_index = max((n >> half_mag) - 1, 0)  # the counter after the last, in Python's ints
        beyond = ((n & (half_count - 1)) + half_count) << (bucket_index + unit_magnitude)
        bounds = _BOUNDS[layout] = (lower, beyond if beyond <= np.iinfo(np.int64).max else None)
    return bounds


def _zigzag_leb128(counts: np.ndarray, limit: int) -> bytes:
    """HdrHistogram V2 counts encoding of counts[:limit]: ZigZag LEB128 varints (9 bytes at
    most, the ninth taking 8 bits), a run of k > 1 zero counts written as -k, a lone zero as 0."""
    head = counts[:limit]
    nonzero = np.flatnonzero(head)
    gaps = np.diff(nonzero, prepend=-1) - 1  # zero counts before each non-zero one
    trailing = limit - (int(nonzero[-1]) + 1 if len(nonzero) else 0)
    tokens = np.empty(len(nonzero) + int(np.count_nonzero(gaps)) + (trailing > 0), dtype=np.int64)
    if trailing:
        tokens[-1] = 0 if trailing == 1 else -trailing
    at = np.arange(len(nonzero)) + np.cumsum(gaps > 0)  # where each count goes
    tokens[at] = head[nonzero]
    gap_at = at[gaps > 0] - 1
    gap = gaps[gaps > 0]
    tokens[gap_at] = np.where(gap == 1, 0, -gap)
    v = ((tokens << 1) ^ (tokens >> 63)).view(np.uint64)
    shifted = v[:, None] >> (np.arange(9, dtype=np.uint64) * np.uint64(7))  # [token, byte]
    length = 1 + (shifted[:, :8] >= 128).sum(axis=1)  # the first byte < 128 ends it, or the ninth
    data = np.where(np.arange(9) < (length - 1)[:, None], (shifted & np.uint64(0x7F)) | np.uint64(0x80),
                    shifted & np.uint64(0xFF)).astype(np.uint8)
    return data[np.arange(9) < length[:, None]].tobytes()


def _unzigzag_leb128(data: bytes, counts: np.ndarray) -> tuple[int, int, int]:
    """Decode V2 varints into counts; returns (total, min index, max index) or raises."""
    pos, index, total, lo, hi = 0, 0, 0, -1, -1
    n, end = counts.shape[0], len(data)
    while pos < end:
        v, shift = 0, 0
        for k in range(9):
            if pos >= end:
                raise ValueError("truncated varint in the HdrHistogram payload")
            b = data[pos]
            pos += 1
            if k == 8:
                v |= b << shift
                break
            v |= (b & 0x7F) << shift
            if b < 128:
                break
            shift += 7
        count = (v >> 1) ^ -(v & 1)
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
        if self.unit_magnitude + self.half_magnitude > 61:  # as HdrHistogram's Java: the layout needs 63 bits
            raise ValueError(
                f"lowest {lowest} with {significant_figures} significant figures needs more than 63 bits: "
                f"make lowest at most {2 ** (61 - self.half_magnitude)} or ask for fewer significant figures"
            )
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
        self._total, self._min, self._max, self._out_of_range = 0, _NO_MIN, 0, 0
        self._lower, self._beyond = _bounds(self._layout(), self.unit_magnitude, self.half_magnitude, self.half_count)

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
        """Record every value of an integer array."""
        self._record(self._values(values))

    def record_corrected_values(self, values, expected_interval: int) -> None:
        """Record values measured by a loop expected to take one sample every
        `expected_interval`: a value v > interval also records v - interval, v - 2*interval, ...
        (HdrHistogram's coordinated-omission correction)."""
        if expected_interval < 0:
            raise ValueError("expected_interval must be >= 0")
        values, interval = self._values(values), int(expected_interval)
        if interval == 0:
            self._record(values)
            return
        kept = self._in_range(values)
        self._out_of_range += len(values) - int(np.count_nonzero(kept))  # once per value, as HdrHistogram
        values = values[kept]
        # v > interval: v, v - interval, ... down to the last positive one, ceil(v / interval) values
        reps = np.where(values > interval, -(-values // interval), 1)
        ends = np.cumsum(reps)
        start = 0
        while start < len(values):
            base = int(ends[start - 1]) if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, base + _CORRECTED_CHUNK, side="right")))
            if reps[start] > _CORRECTED_CHUNK:  # one value too far above the interval for one array
                step = interval * _CORRECTED_CHUNK
                for top in range(int(values[start]), 0, -step):
                    self._record(np.arange(top, max(top - step, 0), -interval, dtype=np.int64))
                start += 1
                continue
            r = reps[start:stop]
            offsets = np.arange(int(r.sum()), dtype=np.int64) - np.repeat(ends[start:stop] - r - base, r)
            self._record(np.repeat(values[start:stop], r) - interval * offsets)
            start = stop

    def _record(self, values: np.ndarray) -> None:
        counts, n = self.counts, len(self.counts)
        if len(values) <= _FEW:  # Python's ints: less per call than a few numpy calls
            mask, unit, half_mag, half_count = self.mask, self.unit_magnitude, self.half_magnitude, self.half_count
            for v in values.tolist():
                if v < 0:
                    self._out_of_range += 1
                    continue
                bucket = (v | mask).bit_length() - unit - (half_mag + 1)
                index = ((bucket + 1) << half_mag) + ((v >> (bucket + unit)) - half_count)
                if index >= n:
                    self._out_of_range += 1
                    continue
                counts[index] += 1
                self._total += 1
                if v < self._min:
                    self._min = v
                if v > self._max:
                    self._max = v
            return
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or (self._beyond is not None and hi >= self._beyond):
            kept = self._in_range(values)
            recorded = int(np.count_nonzero(kept))
            self._out_of_range += len(values) - recorded
            if recorded == 0:
                return
            values = values[kept]
            lo, hi = int(values.min()), int(values.max())
        recorded = len(values)
        index = self._index(values)
        if recorded > n // 8:
            counts += np.bincount(index, minlength=n)
        else:
            np.add.at(counts, index, 1)
        self._total += recorded
        self._min, self._max = min(self._min, lo), max(self._max, hi)

    def _in_range(self, values: np.ndarray) -> np.ndarray:
        """Which values have a counter (the others are counted out of range)."""
        kept = values >= 0
        if self._beyond is not None:
            kept &= values < self._beyond
        return kept

    def _index(self, values):
        """The counter of each value in range: the last whose lowest value is <= it."""
        return np.searchsorted(self._lower, values, side="right") - 1

    def _layout(self) -> tuple:
        return (self.unit_magnitude, self.half_magnitude, self.sub_bucket_count, len(self.counts))

    def merge(self, other: "HdrHistogram") -> None:
        """Add another histogram's counts into this one. `other` may be recorded into meanwhile
        (on another thread): its totals are read before its counts, never counting more than they
        hold."""
        if other._layout() == self._layout():
            total, lo, hi, out = other._total, other._min, other._max, other._out_of_range
            self.counts += other.counts
            self._total += total
            self._min = min(self._min, lo)
            self._max = max(self._max, hi)
            self._out_of_range += out
            return
        nonzero = np.flatnonzero(other.counts)
        values = other._lower[nonzero]
        self.record_values(np.repeat(values, other.counts[nonzero]))
        self._out_of_range += other._out_of_range

    def reset(self) -> None:
        self.counts[:] = 0
        self._total, self._min, self._max, self._out_of_range = 0, _NO_MIN, 0, 0

    # -- queries ---------------------------------------------------------------------------
    @property
    def total_count(self) -> int:
        return self._total

    @property
    def out_of_range(self) -> int:
        """Values not recorded because they were negative or beyond the last bucket."""
        return self._out_of_range

    def _value_from_index(self, index: int) -> int:
        return int(self._lower[index])

    def lowest_equivalent(self, value: int) -> int:
        return int(_lowest_equivalent(np.int64(value), self.unit_magnitude, self.half_magnitude, self.mask))

    def _range_size(self, values: np.ndarray) -> np.ndarray:
        return _range_size(values, self.unit_magnitude, self.half_magnitude, self.sub_bucket_count, self.mask)

    def _highest_equivalent(self, values: np.ndarray) -> np.ndarray:
        return _lowest_equivalent(values, self.unit_magnitude, self.half_magnitude, self.mask) + (
            self._range_size(values) - 1)

    def highest_equivalent(self, value: int) -> int:
        return int(self._highest_equivalent(np.int64(value)))

    def percentiles(self, percentiles) -> np.ndarray:
        """Values at several percentiles (0-100) in one pass, in the order asked. As in
        HdrHistogram: the highest value equivalent to the bucket reached (the lowest for 0)."""
        p = np.asarray(percentiles, dtype=np.float64).reshape(-1)
        if np.isnan(p).any() or (p < 0).any():
            raise ValueError("percentiles must be numbers in [0, 100]")
        out = np.zeros(p.shape[0], dtype=np.int64)
        if self.total_count == 0 or p.size == 0:
            return out
        running = np.cumsum(self.counts)
        total = int(running[-1])  # = total_count, unless a merge raced a recording: the counts decide
        if total == 0:
            return out
        # target count per percentile, exactly as HdrHistogram computes it
        targets = np.array([max(int((min(x, 100.0) * total / 100) + 0.5), 1) for x in p], dtype=np.int64)
        # the first bucket whose running count reaches each target (at most the last non-empty one)
        index = np.minimum(np.searchsorted(running, targets, side="left"), np.searchsorted(running, total, side="left"))
        values = self._lower[index]  # each counter's lowest value: its own lowest equivalent
        return np.where(p == 0, values, values + (self._range_size(values) - 1))

    def value_at_percentile(self, percentile: float) -> int:
        return int(self.percentiles([percentile])[0])

    def mean(self) -> float:
        """Mean of the bucket midpoints, weighted by count (HdrHistogram's definition)."""
        nonzero = np.flatnonzero(self.counts)
        if len(nonzero) == 0:
            return 0.0
        values = self._lower[nonzero]  # each counter's lowest value
        medians = values + (self._range_size(values) >> 1)
        counts = self.counts[nonzero]
        return float(np.dot(counts.astype(np.float64), medians.astype(np.float64)) / counts.sum())

    def max(self) -> int:
        return 0 if self._max == 0 else self.highest_equivalent(self._max)

    def min(self) -> int:
        if self.total_count == 0 or self.counts[0] > 0:
            return 0
        return self.lowest_equivalent(self._min)

    # -- encoding --------------------------------------------------------------------------
    def encode(self) -> bytes:
        """HdrHistogram's V2 compressed encoding, base64-wrapped (as `hdrh` encode())."""
        limit = 0
        if self.total_count:
            limit = int(self._index(self._max)) + 1
        payload = _zigzag_leb128(self.counts, limit)
        header = _PAYLOAD_HEADER.pack(V2_ENCODING_COOKIE, len(payload), 0, self.significant_figures,
                                      self.lowest, self.highest, 1.0)
        compressed = zlib.compress(header + payload)
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
        data = payload[_PAYLOAD_HEADER.size:_PAYLOAD_HEADER.size + used]
        if len(data) < used:
            raise ValueError("HdrHistogram payload is shorter than its header says")
        total, lo, hi = _unzigzag_leb128(data, histogram.counts)
        if total:
            histogram._total = total
            histogram._min = histogram._value_from_index(lo)
            # The encoding keeps counts per bucket only: like the reference decoder, take the
            # top of the highest non-empty bucket (a histogram of only 0s in a bucket wider
            # than 1 decodes with that bucket's top as its max).
            histogram._max = histogram.highest_equivalent(histogram._value_from_index(hi))
        return histogram
