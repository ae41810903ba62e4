"""The GPU benchmark script runs end to end (on CPU here: --provider cpu)."""

from __future__ import annotations

import json

import pytest

from bench.gpu_bench import main


@pytest.mark.slow
def test_gpu_bench_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--provider", "cpu", "--seconds", "0.5", "--batches", "1,16", "--models", "wide",
                 "--concurrency", "2", "--procs", "1", "--json", str(out)]) == 0
    one, batched = json.loads(out.read_text())
    assert (one["rows"], one["batch"]) == (1, 64) and (batched["rows"], batched["batch"]) == (16, 16)
    for row in (one, batched):
        assert row["model"] == "wide" and row["raw"]["provider"] == "CPUExecutionProvider"
        assert row["raw"]["rows_per_s"] > 0 and row["scorewire"]["rows_per_s"] > 0 and row["share"] > 0
        served = row["scorewire"]
        assert "CPUExecutionProvider" in served["loaded"] and "session.run" in served["loaded"]
        assert 0 < served["server_loop"] <= served["server_process"] and served["client_cpu"] > 0
        assert served["limit"] in ("GPU", "server event loop", "server GIL", "client", "machine CPU", "none saturated")
    assert "| wide | 16 | 16 | 2 |" in out.with_suffix(".md").read_text()
