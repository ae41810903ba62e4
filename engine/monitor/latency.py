"""Latency HDR histograms per model, role and stage (kernels.HdrHistogram, microseconds)."""

from __future__ import annotations

import numpy as np

from kernels import HdrHistogram

STAGES = ("queue", "inference", "total")  # waiting to be batched; the batch's run; both
LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES = 1, 3_600_000_000, 3
QUANTILES = (0.5, 0.9, 0.99, 0.999)


class LatencyMonitor:
    def __init__(self) -> None:
        self._histograms: dict[tuple[str, str, str], HdrHistogram] = {}
        self.batch_rows: dict[str, np.ndarray] = {}  # per model: batches by size, power-of-two buckets
        self.batch_rows_sum: dict[str, int] = {}

    def histogram(self, model: str, role: str, stage: str) -> HdrHistogram:
        key = (model, role, stage)
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

    def record(self, model: str, role: str, stage: str, microseconds: np.ndarray) -> None:
        self.histogram(model, role, stage).record_values(microseconds)

    def record_batch(self, model: str, rows: int) -> None:
        counts = self.batch_rows.get(model)
        if counts is None:
            counts = self.batch_rows[model] = np.zeros(32, dtype=np.int64)
        counts[min(int(rows - 1).bit_length(), 31)] += 1  # bucket b holds sizes (2^(b-1), 2^b]
        self.batch_rows_sum[model] = self.batch_rows_sum.get(model, 0) + int(rows)

    def items(self):
        return sorted(self._histograms.items())
