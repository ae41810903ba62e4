"""The Kafka benchmark runs end to end on a small data set and reports every contender."""

from __future__ import annotations

import pytest

from bench.kafka_bench import check, markdown, run


@pytest.mark.slow
def test_kafka_bench_runs_small():
    results = run(events=3000, partitions=4, timeout_s=120, skip_naive=True)
    assert set(results["rows"]) == {"batched", "scorewire-json", "scorewire-binary"}
    for r in results["rows"].values():
        assert r["events"] == 3000 and r["events_per_s"] > 0
    text = markdown(results)
    assert "| scorewire-json |" in text and "rows/s" in text
    assert isinstance(check(results), list)
