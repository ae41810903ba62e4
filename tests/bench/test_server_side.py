"""The server's side of a load run, against real servers: a 2-worker scorewire (each worker's
share of the requests, the server's CPU over its process tree, one connection per worker at
least), and a null server of known capacity (the sweep halves below --start until a level
meets the SLO, instead of reporting nothing)."""

from __future__ import annotations

import json

import pytest

from bench.cli import main as bench_main
from bench.servers import start_null_server, stop
from tests.integration.workers_helpers import base, launch_workers


@pytest.fixture(scope="module")
def two_workers(model_dir):
    # connections move every ~0.3 s (the server's own balancing), so a short run's few
    # connections do not all stay on the worker the kernel first drew
    server = launch_workers(model_dir, base(2, max_connection_age_s=0.3), "bench-two-workers.toml")
    yield server
    server.stop()


def test_grpc_run_prints_each_workers_share_and_the_servers_cpu(two_workers, tmp_path, capsys):
    out = tmp_path / "run.json"
    assert bench_main(["grpc", "--target", two_workers.url, "--model", "mlp", "--rate", "200", "--duration", "1.5",
                       "--warmup", "0.3", "--connections", "1", "--metrics", f"127.0.0.1:{two_workers.metrics_port}",
                       "--json", str(out)]) == 0
    printed = capsys.readouterr()
    assert "2 workers serve" in printed.err and "2 connections instead of --connections 1" in printed.err
    data = json.loads(out.read_text())
    assert data["load"]["connections"] == 2
    workers = data["workers"]
    assert set(workers) == {"0", "1"} and all(w["requests"] > 0 for w in workers.values()), workers
    assert sum(w["requests"] for w in workers.values()) >= data["ok"]  # the warm-up's too
    line = next(s for s in printed.out.splitlines() if s.startswith("each worker's share"))
    for w, v in workers.items():
        assert f"worker {w} {v['share']:.0%} ({v['requests']:,})" in line
    # supervisor, 2 workers, observer, challengers (and multiprocessing's resource tracker)
    assert data["cpu"]["processes"] >= 5 and data["cpu"]["cores"] > 0
    assert data["limit"]["kind"] in ("server", "client", "machine", "neither")
    assert "CPU cores over the measured window: server " in printed.out and "limit: " in printed.out


@pytest.mark.slow
def test_sweep_levels_carry_the_server_side_and_the_headline_its_capacity(two_workers, tmp_path):
    out = tmp_path / "sweep"
    assert bench_main(["sweep", "--target", two_workers.url, "--model", "mlp", "--slo", "p99<250ms", "--start",
                       "100", "--factor", "2", "--max-rate", "200", "--refine", "0", "--duration", "1", "--warmup",
                       "0.3", "--no-ceiling", "--metrics", f"127.0.0.1:{two_workers.metrics_port}",
                       "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [lv["offered_rps"] for lv in data["levels"]] == [100, 200]
    for lv in data["levels"]:
        assert lv["server_passed"] is True and lv["server_us"]["total"]["p99"] < 250_000
        assert set(lv["workers"]) == {"0", "1"} and lv["cpu"]["cores"] > 0 and lv["limit"]["why"]
    assert data["server_best_rps"] == 200 and data["server_slo"] == "p99<250ms"
    assert "server capacity: its own latency met p99<250ms up to 200 requests/s offered" in data["headline"]
    md = out.with_suffix(".md").read_text()
    assert "What limited each level" in md and "worker 0 " in md and "- server capacity: " in md


@pytest.mark.slow
def test_a_first_level_over_capacity_halves_until_one_meets_the_slo(tmp_path):
    """One answer at a time, 10 ms each: 100/s at most. 400/s and 200/s queue up past 100 ms;
    halving reaches a rate the server meets."""
    proc, url = start_null_server("--service-ms", "10")
    try:
        out = tmp_path / "halved"
        bench_main(["sweep", "--target", url, "--model", "null", "--slo", "p99<100ms", "--start", "400",
                    "--min-rate", "25", "--refine", "0", "--duration", "0.5", "--warmup", "0.1", "--no-ceiling",
                    "--out", str(out)])
    finally:
        stop(proc)
    data = json.loads(out.with_suffix(".json").read_text())
    rates = [lv["offered_rps"] for lv in data["levels"]]
    assert rates[:2] == [400, 200] and not any(lv["passed"] for lv in data["levels"][:2])
    assert rates == [400 / 2 ** i for i in range(len(rates))], "halved from --start"
    assert data["best_rps"] is not None and 25 <= data["best_rps"] <= 100 and data["best_rps"] == rates[-1]
    # what was answered is counted over the time the answers took, not the offered rate's window
    for lv in data["levels"][:2]:
        assert lv["achieved_rps"] <= 1.3 * 100, lv  # 10 ms each: no more than 100/s, whatever was offered
