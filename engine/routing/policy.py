"""Sticky weighted splits (A/B, canary): which version answers a key.

A key's stable 64-bit hash (kernels.keyhash) maps to a point in [0, 1); the versions own
consecutive slices of [0, 1) in proportion to their weights, in sorted version order (so
reordering the config does not move keys). The same key lands on the same arm in every
process for as long as the weights stay; a request without a key draws its point at random.
"""

from __future__ import annotations

import numpy as np


class Split:
    def __init__(self, weights: dict[str, float], seed: int | None = None):
        if not weights or any(w <= 0 for w in weights.values()):
            raise ValueError(f"a split needs positive weights, got {weights}")
        self.versions = tuple(sorted(weights))
        w = np.array([weights[v] for v in self.versions], dtype=np.float64)
        self.shares = w / w.sum()
        self._upper = np.cumsum(self.shares)
        self._upper[-1] = 1.0
        self._rng = np.random.default_rng(seed)
        # The hash is a Numba kernel: imported by the first split, so that a worker without
        # one never loads Numba and LLVM (about 60 MiB of a process).
        from kernels.keyhash import hash_keys, unit_interval

        self._points = lambda keys: unit_interval(hash_keys(keys))

    def _arms(self, points: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._upper, points, side="right").clip(0, len(self.versions) - 1)

    def pick(self, key: str | bytes | None) -> tuple[str, bool]:
        """The version answering one request, and whether the key decided it (sticky)."""
        if key is None or key == "" or key == b"":
            return self.versions[int(self._arms(self._rng.random(1))[0])], False
        raw = key.encode() if isinstance(key, str) else key
        return self.versions[int(self._arms(self._points([raw]))[0])], True

    def arms(self, keys: list[bytes | None]) -> tuple[np.ndarray, np.ndarray | None]:
        """Index into `versions` of each key's arm, and which rows had no key and drew their
        arm at random (None when every row had one)."""
        missing = np.fromiter((k is None or k == b"" for k in keys), dtype=bool, count=len(keys))
        if missing.any():
            points = self._points([b"" if k is None else k for k in keys])
            points[missing] = self._rng.random(int(missing.sum()))
            return self._arms(points), missing
        return self._arms(self._points(keys)), None
