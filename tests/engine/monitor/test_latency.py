"""Recent latency: only what was scored in the last half to whole window."""

from __future__ import annotations

import time

import numpy as np

from engine.monitor.latency import QUANTILES, LatencyMonitor


def test_recent_percentiles_forget_what_is_older_than_the_window():
    latency = LatencyMonitor(recent_s=0.4)
    key = ("m", "1", "direct", "total")
    latency.record(*key, np.full(100, 5_000, dtype=np.int64))  # slow, then fast
    time.sleep(0.25)  # one rotation: the slow values are in the older half, still recent
    latency.record(*key, np.full(100, 100, dtype=np.int64))
    (got, values), = latency.recent()
    assert got == key and values[list(QUANTILES).index(0.99)] >= 4_990
    time.sleep(0.25)  # a second rotation: the slow values are gone
    latency.record(*key, np.full(10, 100, dtype=np.int64))
    (_, values), = latency.recent()
    assert values.max() <= 101
    since_start = latency.histogram(*key)
    assert since_start.total_count == 210  # the histogram since start keeps everything
    time.sleep(0.45)  # nothing scored for a whole window: nothing recent
    assert latency.recent() == []


def test_the_duration_histogram_counts_each_request_at_or_below_each_bound():
    from engine.monitor.latency import DURATION_BUCKETS_S

    rng = np.random.default_rng(5)
    us = np.concatenate([rng.lognormal(7.5, 1.5, 5_000).astype(np.int64),
                         np.array([b * 1_000_000 for b in DURATION_BUCKETS_S], dtype=np.int64)])  # each bound exactly
    m = LatencyMonitor()
    m.record_durations("m", "1", "champion", us[:3_000])
    m.record_durations("m", "1", "champion", us[3_000:])
    cumulative = np.cumsum(m.durations[("m", "1", "champion")])
    expected = [(us <= b * 1_000_000).sum() for b in DURATION_BUCKETS_S] + [len(us)]
    assert cumulative.tolist() == expected
    assert m.durations_sum_us[("m", "1", "champion")] == us.sum()
