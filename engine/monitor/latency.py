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
    """Recent, and since start. Each key has its past and two half-window histograms, the one
    before and the current; every RECENT_S / 2 the one before joins the past, the current
    becomes the one before and a new one the current. The recent percentiles (both halves) are
    what a load test reads level by level; since start is all three. A batch's values are
    recorded once, into the current half, on the monitor thread; readers (the metrics side)
    take a key's three parts in one read, so a rotation never counts a value twice."""

    def __init__(self, recent_s: float = RECENT_S) -> None:
        self._parts: dict[tuple[str, str, str, str], tuple[HdrHistogram, HdrHistogram, HdrHistogram]] = {}
        self.recent_s = recent_s
        self._rotated = time.monotonic()
        # per (model, version): batches by size, power-of-two buckets
        self.batch_rows: dict[tuple[str, str], np.ndarray] = {}
        self.batch_rows_sum: dict[tuple[str, str], int] = {}
        # per (model, version, role): requests by bucket (the last: above every bound), and the sum in µs
        self.durations: dict[tuple[str, str, str], np.ndarray] = {}
        self.durations_sum_us: dict[tuple[str, str, str], int] = {}

    def histogram(self, model: str, version: str, role: str, stage: str) -> HdrHistogram:
        """Everything recorded for a key since start (a new histogram)."""
        return _merged(self._parts.get((model, version, role, stage), ()))

    @staticmethod
    def warm_up() -> None:
        """Run the histograms' paths once now rather than on the first scored batch."""
        h = _histogram()
        h.record_values(np.array([1, 10, 100], dtype=np.int64))
        h.record_values(np.arange(1, 100, dtype=np.int64))
        h.percentiles(np.array([50.0]))
        h.mean()

    def record(self, model: str, version: str, role: str, stage: str, microseconds: np.ndarray) -> None:
        """On the monitor thread (the only writer)."""
        key = (model, version, role, stage)
        self._rotate()
        parts = self._parts.get(key)
        if parts is None:
            parts = self._parts[key] = (_histogram(), _histogram(), _histogram())
        parts[2].record_values(microseconds)

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
        for key, (past, before, current) in list(self._parts.items()):
            self._parts[key] = ((_merged((past, before, current)), _histogram(), _histogram()) if idle
                                else (_merged((past, before)), current, _histogram()))
        self._rotated = now

    def recent(self) -> list[tuple[tuple[str, str, str, str], np.ndarray]]:
        """(key, values at QUANTILES) over the last RECENT_S / 2 to RECENT_S seconds, for the keys
        with values then. Read by the metrics side: a rotation racing it can only drop a half
        window from one answer."""
        if time.monotonic() - self._rotated >= self.recent_s:  # nothing recorded since: nothing recent
            return []
        out = []
        for key, (_, before, current) in sorted(self._parts.items()):
            merged = _merged((before, current))
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

    def items(self) -> list[tuple[tuple[str, str, str, str], HdrHistogram]]:
        """(key, its histogram since start) for every key, sorted."""
        return [(key, _merged(parts)) for key, parts in sorted(self._parts.items())]


def _histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def _merged(parts) -> HdrHistogram:
    merged = _histogram()
    for part in parts:
        merged.merge(part)
    return merged
