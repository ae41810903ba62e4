"""Stable 64-bit hashes of byte keys, many at once: sticky routing puts the same key on the
same arm in every process and replica (Python's own `hash` is salted per process).

FNV-1a over the key's bytes, then MurmurHash3's 64-bit finalizer so that keys differing in
one byte land far apart. `unit_interval` maps a hash to [0, 1) with its top 53 bits.
"""

from __future__ import annotations

import numpy as np

from kernels._jit import jit


@jit
def _hash_spans(buf, starts, ends, out):
    for i in range(starts.shape[0]):
        h = np.uint64(0xCBF29CE484222325)
        for p in range(starts[i], ends[i]):
            h = (h ^ np.uint64(buf[p])) * np.uint64(0x100000001B3)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
        out[i] = h


def hash_spans(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash of each key buf[starts[i]:ends[i]] (uint8 buffer, int64 offsets) as uint64."""
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise TypeError(f"buf must be a 1-D uint8 array, got {buf.dtype} with shape {buf.shape}")
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    if starts.shape != ends.shape or starts.ndim != 1:
        raise ValueError(f"starts and ends must be 1-D and of one length, got {starts.shape} and {ends.shape}")
    if len(starts) and (starts.min() < 0 or ends.max() > len(buf) or np.any(ends < starts)):
        raise ValueError("spans must lie inside buf with start <= end")
    out = np.empty(len(starts), dtype=np.uint64)
    _hash_spans(buf, starts, ends, out)
    return out


def hash_keys(keys: list[bytes]) -> np.ndarray:
    """Hash of each key (bytes) as uint64: one join, one kernel call."""
    lengths = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))
    ends = np.cumsum(lengths)
    buf = np.frombuffer(b"".join(keys), dtype=np.uint8)
    return hash_spans(buf, ends - lengths, ends)


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """Hashes -> float64 in [0, 1), uniform when the hashes are."""
    return (hashes >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
