"""Latency HDR histograms per model version, role and stage (kernels.HdrHistogram,
microseconds). Keyed by version: two challengers, or two A/B arms, never share one."""

from __future__ import annotations

import time

import numpy as np

from kernels import HdrHistogram

STAGES = ("queue", "inference", "total")  # waiting to be batched; the batch's run; both
LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES = 1, 3_600_000_000, 3
QUANTILES = (0.5, 0.9, 0.99, 0.999)
RECENT_S = 10.0  # the recent percentiles cover the last 5 to 10 s
# A Prometheus histogram of each request's total time (seconds), for what percentiles cannot
# give: a share of requests over an SLO, summed across replicas and over any range (the alert
# rules' burn rate: configs/alerts.yml). Buckets: Prometheus's defaults, with finer ones below.
DURATION_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DURATION_EDGES_US = np.array([b * 1e6 for b in DURATION_BUCKETS_S])


class LatencyMonitor:
    """Since start, and recent: each key also has two half-window histograms, the current one
    and the one before; every RECENT_S / 2 the older is cleared and becomes the current. The
    recent percentiles (both together) are what a load test reads level by level."""

    def __init__(self, recent_s: float = RECENT_S) -> None:
        self._histograms: dict[tuple[str, str, str, str], HdrHistogram] = {}
        self.recent_s = recent_s
        self._recent: dict[tuple[str, str, str, str], list[HdrHistogram]] = {}  # [older, current]
        self._rotated = time.monotonic()
        # per (model, version): batches by size, power-of-two buckets
        self.batch_rows: dict[tuple[str, str], np.ndarray] = {}
        self.batch_rows_sum: dict[tuple[str, str], int] = {}
        # per (model, version, role): requests by bucket (the last: above every bound), and the sum in µs
        self.durations: dict[tuple[str, str, str], np.ndarray] = {}
        self.durations_sum_us: dict[tuple[str, str, str], int] = {}

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
        """On the monitor thread (the only writer)."""
        key = (model, version, role, stage)
        self.histogram(*key).record_values(microseconds)
        self._rotate()
        pair = self._recent.get(key)
        if pair is None:
            pair = self._recent[key] = [HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES),
                                        HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)]
        pair[1].record_values(microseconds)

    def record_durations(self, model: str, version: str, role: str, total_us: np.ndarray) -> None:
        """Each request's total time into the duration histogram (on the monitor thread)."""
        key = (model, version, role)
        counts = self.durations.get(key)
        if counts is None:
            counts = self.durations[key] = np.zeros(len(DURATION_BUCKETS_S) + 1, dtype=np.int64)
        # a request of exactly a bound belongs to it (Prometheus's le): side="left"
        counts += np.bincount(np.searchsorted(_DURATION_EDGES_US, total_us, side="left"), minlength=len(counts))
        self.durations_sum_us[key] = self.durations_sum_us.get(key, 0) + int(total_us.sum())

    def _rotate(self) -> None:
        now = time.monotonic()
        half = self.recent_s / 2
        if now - self._rotated < half:
            return
        idle = now - self._rotated >= self.recent_s  # nothing recorded for a whole window: both are old
        for pair in self._recent.values():
            pair[0].reset()
            if idle:
                pair[1].reset()
            pair[0], pair[1] = pair[1], pair[0]
        self._rotated = now

    def recent(self) -> list[tuple[tuple[str, str, str, str], np.ndarray]]:
        """(key, values at QUANTILES) over the last RECENT_S / 2 to RECENT_S seconds, for the keys
        with values then. Read by the metrics side: a rotation racing it can only drop a half
        window from one answer."""
        if time.monotonic() - self._rotated >= self.recent_s:  # nothing recorded since: nothing recent
            return []
        out = []
        for key, (older, current) in sorted(self._recent.items()):
            merged = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
            merged.merge(older)
            merged.merge(current)
            if merged.total_count:
                out.append((key, merged.percentiles(np.array([q * 100 for q in QUANTILES]))))
        return out

    def record_batch(self, model: str, version: str, rows: int) -> None:
        key = (model, version)
        counts = self.batch_rows.get(key)
        if counts is None:
            counts = self.batch_rows[key] = np.zeros(32, dtype=np.int64)
        counts[min(int(rows - 1).bit_length(), 31)] += 1  # bucket b holds sizes (2^(b-1), 2^b]
        self.batch_rows_sum[key] = self.batch_rows_sum.get(key, 0) + int(rows)

    def items(self):
        return sorted(self._histograms.items())
