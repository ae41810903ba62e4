"""The capacity-planning harness against real servers: a short SLO sweep with its report,
coordinated omission shown by the open loop and hidden by the closed loop, Kafka end to end."""

from __future__ import annotations

import json

import pytest

from bench.cli import main as bench_main
from bench.loadgen import Load, run
from bench.servers import start_null_server, stop
from engine.mock_kafka import MockCluster


@pytest.mark.slow
def test_short_sweep_writes_json_markdown_and_png(server, tmp_path):
    import matplotlib.image

    out = tmp_path / "sweep"
    code = bench_main(["sweep", "--target", server.url, "--model", "mlp", "--slo", "p99<250ms", "--start", "100",
                       "--factor", "2", "--max-rate", "300", "--refine", "0", "--duration", "1", "--warmup", "0.3",
                       "--out", str(out)])
    assert code == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [lv["offered_rps"] for lv in data["levels"]] == [100, 200, 300]
    assert data["best_rps"] == 300 and all(lv["passed"] for lv in data["levels"])
    assert data["generator_ceiling_rps"] > 300
    assert data["levels"][0]["server"].startswith("scorewire")
    for lv in data["levels"]:
        assert lv["errors"] == {} and lv["achieved_rps"] >= 0.95 * lv["offered_rps"]
        assert 0 < lv["latency_us"]["p50"] <= lv["latency_us"]["p99"] <= lv["latency_us"]["max"]
    md = out.with_suffix(".md").read_text()
    assert "Highest offered rate meeting the SLO: 300 requests/s" in md and "python -m bench sweep" in md
    image = matplotlib.image.imread(out.with_suffix(".png"))
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_slo_that_cannot_be_met_reports_no_answer(server, tmp_path):
    out = tmp_path / "impossible"
    bench_main(["sweep", "--target", server.url, "--model", "mlp", "--slo", "p50<1us", "--start", "50",
                "--min-rate", "25", "--duration", "0.5", "--warmup", "0.2", "--no-ceiling", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["best_rps"] is None and [lv["offered_rps"] for lv in data["levels"]] == [50, 25]  # halved, then gave up
    assert all(lv["verdict"].startswith("p50 = ") for lv in data["levels"])
    assert "No level met the SLO" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_open_loop_shows_a_one_second_stall_that_closed_loop_hides():
    measured = {}
    for closed in (False, True):
        proc, url = start_null_server("--stall-after-s", "1.5", "--stall-s", "1")
        try:
            measured[closed] = run(Load(url=url, model="null", rate=500, duration_s=4, warmup_s=0.5,
                                        closed_loop=closed, concurrency=2, connections=2)).latency_us
        finally:
            stop(proc)
    open_loop, closed_loop = measured[False], measured[True]
    # Open loop: every request scheduled during the stall waited for it.
    assert open_loop["p99"] >= 500_000 and open_loop["p99.9"] >= 900_000
    # Closed loop: the 2 callers were stuck once each; thousands of fast requests hide it.
    assert closed_loop["max"] >= 900_000, "the stall happened"
    assert closed_loop["p99.9"] < 100_000


def test_a_closed_loop_with_stream_sends_over_modelstreaminfer(server):
    """The null server answers unary ModelInfer only: a closed loop that made unary calls
    (as `--closed-loop --stream` did before) would be answered there."""
    proc, url = start_null_server()
    try:
        on_null = run(Load(url=url, model="null", duration_s=1, warmup_s=0.2, closed_loop=True, stream=True,
                           concurrency=4, connections=1))
    finally:
        stop(proc)
    assert on_null.ok == 0 and sum(on_null.errors.values()) >= 1
    on_scorewire = run(Load(url=server.url, model="mlp", duration_s=1, warmup_s=0.2, closed_loop=True, stream=True,
                            concurrency=4, connections=1))
    assert on_scorewire.ok > 100 and not on_scorewire.errors


def test_grpc_command_prints_and_writes_a_run(server, tmp_path, capsys):
    out = tmp_path / "run.json"
    assert bench_main(["grpc", "--target", server.url, "--model", "mlp", "--rate", "200", "--duration", "1",
                       "--warmup", "0.2", "--arrival", "poisson", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ok"] == data["requests"] > 100 and data["load"]["arrival"] == "poisson"
    assert "latency ms: p50" in capsys.readouterr().out


@pytest.mark.slow
def test_kafka_load_measures_end_to_end_latency_of_a_stream(model_dir, tmp_path, capsys):
    from tests.integration.kafka_helpers import start_worker

    with MockCluster() as cluster:
        for topic in ("events", "scores", "scores-dlq"):
            cluster.create_topic(topic, 4)
        worker = start_worker(model_dir, cluster.bootstrap)
        try:
            out = tmp_path / "kafka.json"
            assert bench_main(["kafka", "--bootstrap", cluster.bootstrap, "--input-topic", "events",
                               "--output-topic", "scores", "--rate", "1000", "--duration", "2", "--warmup", "0.5",
                               "--json", str(out)]) == 0
        finally:
            worker.stop()
    data = json.loads(out.read_text())
    assert data["produced"] == 2500 and data["missing"] == 0 and data["results"] == 2000
    assert data["achieved_rps"] == 1000
    assert 0 < data["latency_us"]["p50"] <= data["latency_us"]["p99"] < 5_000_000
    assert data["latency_us"]["p50"] < 200_000, "a lightly loaded stream answers within a few fetches"
    assert "end-to-end latency ms" in capsys.readouterr().out


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_writes_the_levels_that_finished(server, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "partial"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "bench", "sweep", "--target", server.url, "--model",
                             "mlp", "--slo", "p99<1s", "--start", "100", "--duration", "1.5", "--warmup", "0.2",
                             "--no-ceiling", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True,
                            # Ctrl-C as in a terminal, even when this suite runs as a background job
                            # (which starts with SIGINT ignored, and a child would inherit that)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not out.with_suffix(".json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
        if proc.poll() is not None:
            break
        # after two levels (about 3.5 s each), interrupt the third
        if time.monotonic() > deadline - 60 + 9:
            proc.send_signal(signal.SIGINT)
            break
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["interrupted"] is True
    finished = [lv for lv in data["levels"] if not lv["interrupted"]]
    assert finished and all(lv["passed"] for lv in finished)
    assert data["best_rps"] == max(lv["offered_rps"] for lv in finished)
    assert "(interrupted)" in stdout and out.with_suffix(".png").exists()


def test_data_replays_the_files_rows_in_order(tmp_path):
    """--data: a drift reference as it is (its output column left out), consecutive rows from a
    seeded start; a file of the wrong width stops with one line naming both widths."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.loadgen import _rows

    x = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
    columns = {f"f{i}": x[:, i] for i in range(4)} | {"probabilities:1": np.zeros(50)}
    pq.write_table(pa.table(columns), tmp_path / "ref.parquet")
    pool = _rows("FP32", [-1, 4], 3, 5, seed=1, data=str(tmp_path / "ref.parquet"), name="x")
    assert len(pool) == 16 and all(p.shape == (3, 4) and p.dtype == np.float32 for p in pool)  # 50 // 3 requests
    flat = np.concatenate(pool)
    start = int(flat[0, 0]) // 4
    assert (flat == x[(start + np.arange(len(flat))) % 50]).all()
    with pytest.raises(SystemExit, match="--data has 4 values per row; input 'x' \\[-1, 6\\] takes 6"):
        _rows("FP32", [-1, 6], 1, 5, seed=1, data=str(tmp_path / "ref.parquet"), name="x")


def test_grpc_command_shows_the_servers_own_percentiles(server, tmp_path, capsys):
    assert bench_main(["grpc", "--target", server.url, "--model", "mlp", "--rate", "200", "--duration", "1",
                       "--warmup", "0.2", "--metrics", f"127.0.0.1:{server.metrics_port}"]) == 0
    out = capsys.readouterr().out
    for stage in ("queue", "inference", "total"):
        assert f"server's own {stage} ms (last 5-10 s): p50 " in out, out


def test_small_samples_get_honest_percentile_labels():
    from bench.report import percentile_label, sweep_markdown

    assert percentile_label("p99.9", 200) == "p99.9 (~max: 200 samples)"
    assert percentile_label("p99.9", 5_000) == "p99.9" and percentile_label("p99", 200) == "p99"
    level = {"offered_rps": 100.0, "achieved_rps": 100.0, "ok": 200, "errors": {}, "passed": True, "verdict": "ok",
             "latency_us": {"p50": 1000, "p90": 2000, "p99": 3000, "p99.9": 9000, "max": 9000},
             "lag_us": {"p99": 1500}, "server_us": {"total": {"p99": 500}},
             "notes": ["the generator's own schedule lag ..."], "server": "scorewire"}
    data = {"load": {"model": "m", "stream": False, "arrival": "constant", "rows": 1, "connections": 1, "procs": 1,
                     "duration_s": 2, "warmup_s": 1, "url": "x"}, "slo": "p99<10ms", "best_rps": 100.0,
            "levels": [level]}
    md = sweep_markdown(data, "s.png")
    assert "| 100 | 100 | 1.00 | 2.00 | 3.00 | 9.00* | 9.00 | 0 | 1.50 | - | - | 0.50 | pass: ok |" in md, md
    assert "the value is about the level's maximum" in md and "- 100/s: the generator's own schedule lag" in md


@pytest.mark.slow
def test_kafka_bench_reports_dead_letters_and_fails_when_nothing_comes_back(model_dir, tmp_path, capsys):
    """30 values per event for a 32-feature model: every event is dead-lettered; the bench says
    why, from the dead letters, and exits 1 without waiting out its drain time."""
    import time

    from tests.integration.kafka_helpers import start_worker

    with MockCluster() as cluster:
        for topic in ("events", "scores", "scores-dlq"):
            cluster.create_topic(topic, 4)
        worker = start_worker(model_dir, cluster.bootstrap)
        try:
            start = time.monotonic()
            code = bench_main(["kafka", "--bootstrap", cluster.bootstrap, "--input-topic", "events",
                               "--output-topic", "scores", "--rate", "200", "--duration", "1", "--warmup", "0.2",
                               "--features", "30"])
            took = time.monotonic() - start
        finally:
            worker.stop()
    captured = capsys.readouterr()
    assert code == 1 and took < 20, took
    assert "0 results for 240 events" in captured.out and "200 dead-lettered" in captured.out, captured.out
    assert "dead-lettered 200: " in captured.out and "float_input" in captured.out
    assert "every measured event was dead-lettered" in captured.err


def test_sweep_grpc_and_kafka_take_a_users_model_and_its_reference(tmp_path, capsys):
    """A model not shaped like the demo's (10 features, input 'X') and its drift reference
    (with a plain-name output column, 'label', and 'probabilities:1') as --data: the sweep's
    ceiling probe and `grpc` send those rows; `kafka` reads the input name and width from it."""
    import argparse

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx

    from bench.cli import _kafka_input
    from tests.conftest import launch

    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 10)).astype(np.float32)
    clf = LogisticRegression().fit(x, (x[:, 0] > 0).astype(np.int64))
    (tmp_path / "rf.onnx").write_bytes(to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}).SerializeToString())
    pq.write_table(pa.table({**{f"f{i}": x[:, i] for i in range(10)}, "probabilities:1": clf.predict_proba(x)[:, 1],
                             "label": clf.predict(x)}), tmp_path / "ref.parquet")
    srv = launch(tmp_path, '[server]\ngrpc_port = 0\nmetrics_port = 0\nhttp_port = 0\nworkers = 1\n'
                           '[[models]]\nname = "rf"\npath = "rf.onnx"\n')
    try:
        out = tmp_path / "sweep"
        assert bench_main(["sweep", "--target", srv.url, "--model", "rf", "--data", str(tmp_path / "ref.parquet"),
                           "--slo", "p99<1s", "--start", "50", "--max-rate", "50", "--duration", "0.5",
                           "--warmup", "0.2", "--out", str(out)]) == 0
        data = json.loads(out.with_suffix(".json").read_text())
        assert data["generator_ceiling_rps"] > 50 and data["best_rps"] == 50
        run_json = tmp_path / "run.json"
        assert bench_main(["grpc", "--target", srv.url, "--model", "rf", "--data", str(tmp_path / "ref.parquet"),
                           "--rate", "50", "--duration", "0.5", "--warmup", "0.2", "--json", str(run_json)]) == 0
        assert json.loads(run_json.read_text())["ok"] > 0
        assert "note: --data gives" not in capsys.readouterr().err  # 500 rows, about 35 sent
        assert bench_main(["grpc", "--target", srv.url, "--model", "rf", "--data", str(tmp_path / "ref.parquet"),
                           "--rate", "1000", "--duration", "0.5", "--warmup", "0.2"]) == 0
        assert "note: --data gives 500 distinct rows and this run sends about 700: rows are sent again" in (
            capsys.readouterr().err)
        args = argparse.Namespace(target=srv.url, model="rf", input_name=None, features=None,
                                  data=str(tmp_path / "ref.parquet"))
        assert _kafka_input(args) == ("X", 10, ("label", "probabilities"))
        assert _kafka_input(argparse.Namespace(target=None, model=None, input_name=None, features=None,
                                               data=str(tmp_path / "ref.parquet")))[1] == 11  # no model: 'label' kept
    finally:
        srv.stop()


def test_each_connection_of_the_load_is_a_tcp_connection_of_its_own():
    """gRPC shares one TCP connection between a process's channels to one target: the load's
    clients must not, or `--connections` overstates what the server's workers are spread over
    (with plain clients this sees one peer)."""
    import asyncio

    import grpc
    from tritonclient.grpc import service_pb2

    from bench.loadgen import own_connection

    peers: set[str] = set()

    async def live(request, context):
        peers.add(context.peer())  # ipv4:127.0.0.1:PORT: one per connection
        return service_pb2.ServerLiveResponse(live=True)

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
            "ServerLive": grpc.unary_unary_rpc_method_handler(
                live, request_deserializer=service_pb2.ServerLiveRequest.FromString,
                response_serializer=service_pb2.ServerLiveResponse.SerializeToString)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        clients = [own_connection(f"127.0.0.1:{port}") for _ in range(4)]
        for c in clients:
            assert await c.is_server_live()
        for c in clients:
            await c.close()
        await server.stop(None)

    asyncio.run(main())
    assert len(peers) == 4, peers
