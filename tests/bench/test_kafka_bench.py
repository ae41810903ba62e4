"""The Kafka benchmark runs end to end on a small data set and reports every contender."""

from __future__ import annotations

import tempfile

import pytest

from bench.kafka_bench import check, markdown, run


@pytest.mark.slow
def test_kafka_bench_runs_small(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # its scratch folder goes there, and is gone after
    tempfile.tempdir = None
    try:
        results = run(events=3000, partitions=4, timeout_s=120, skip_naive=True)
    finally:
        tempfile.tempdir = None
    assert not list(tmp_path.glob("scorewire-kafka-bench-*"))
    assert set(results["rows"]) == {"batched", "scorewire-json", "scorewire-binary"}
    for r in results["rows"].values():
        assert r["events"] == 3000 and r["events_per_s"] > 0
    text = markdown(results)
    assert "| scorewire-json |" in text and "rows/s" in text
    assert isinstance(check(results), list)
