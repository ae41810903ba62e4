"""The GPU benchmark script runs end to end (on CPU here: --provider cpu)."""

from __future__ import annotations

import json

import pytest

from bench.gpu_bench import main


@pytest.mark.slow
def test_gpu_bench_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--provider", "cpu", "--seconds", "0.5", "--batches", "16", "--models", "wide",
                 "--concurrency", "2", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["model"] == "wide" and row["raw"]["provider"] == "CPUExecutionProvider"
    assert row["raw"]["rows_per_s"] > 0 and row["scorewire"]["rows_per_s"] > 0 and row["share"] > 0
    assert "| wide | 16 |" in out.with_suffix(".md").read_text()
