"""Latency HDR histograms per model version, role and stage (kernels.HdrHistogram,
microseconds). Keyed by version: two challengers, or two A/B arms, never share one."""

from __future__ import annotations

import numpy as np

from kernels import HdrHistogram

STAGES = ("queue", "inference", "total")  # waiting to be batched; the batch's run; both
LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES = 1, 3_600_000_000, 3
QUANTILES = (0.5, 0.9, 0.99, 0.999)


class LatencyMonitor:
    def __init__(self) -> None:
        self._histograms: dict[tuple[str, str, str, str], HdrHistogram] = {}
        # per (model, version): batches by size, power-of-two buckets
        self.batch_rows: dict[tuple[str, str], np.ndarray] = {}
        self.batch_rows_sum: dict[tuple[str, str], int] = {}

    def histogram(self, model: str, version: str, role: str, stage: str) -> HdrHistogram:
        key = (model, version, role, stage)
        h = self._histograms.get(key)
        if h is None:
            h = self._histograms[key] = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        return h

    @staticmethod
    def warm_up() -> None:
        """Load the histogram kernels (Numba's cache) now rather than on the first scored batch."""
        h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        h.record_values(np.array([1, 10, 100], dtype=np.int64))
        h.percentiles(np.array([50.0]))
        h.mean()

    def record(self, model: str, version: str, role: str, stage: str, microseconds: np.ndarray) -> None:
        self.histogram(model, version, role, stage).record_values(microseconds)

    def record_batch(self, model: str, version: str, rows: int) -> None:
        key = (model, version)
        counts = self.batch_rows.get(key)
        if counts is None:
            counts = self.batch_rows[key] = np.zeros(32, dtype=np.int64)
        counts[min(int(rows - 1).bit_length(), 31)] += 1  # bucket b holds sizes (2^(b-1), 2^b]
        self.batch_rows_sum[key] = self.batch_rows_sum.get(key, 0) + int(rows)

    def items(self):
        return sorted(self._histograms.items())
