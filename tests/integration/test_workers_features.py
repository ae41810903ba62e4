"""Several serving processes (`[server] workers`) doing what one does: drift alerts equal to one
process's, Kafka consumer groups spread over the workers, challengers in a process of their own,
and a reload that reaches every process."""

from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient

from engine.harness.config import Config
from engine.harness.models import N_FEATURES, demo_data
from engine.harness.server import Server
from engine.mock_kafka import MockCluster
from tests.conftest import launch
from tests.integration.kafka_helpers import (committed, end_offsets, json_events, produce, read_all,
                                             results_by_source, stream, wait_for)
from tests.integration.workers_helpers import base, challenged, infer, launch_workers, metric, pids, ready

FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def monitored(workers: int, events: str) -> Config:
    """base() with drift on the mlp's features and P(class 1), its events in `events`."""
    config = base(workers)
    monitor = {"features": FEATURES, "outputs": ["probabilities:1"], "reference": "ref-workers.parquet",
               "window": 300, "every": 100, "alpha": 0.001, "min_effect": 0.1, "consecutive": 2}
    return replace(config, models=[{**config.models[0], "monitor": monitor}], monitoring={"events_dir": events})


def _on_threads(function, arguments) -> tuple[dict, dict[object, BaseException]]:
    """function(a) for each a of `arguments`, each on a thread of its own: ({a: result},
    {a: exception raised})."""
    results: dict = {}
    failures: dict[object, BaseException] = {}

    def run(a) -> None:
        try:
            results[a] = function(a)
        except BaseException as exc:
            failures[a] = exc

    threads = [threading.Thread(target=run, args=(a,)) for a in arguments]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, failures


def test_drift_alerts_with_two_workers_equal_those_with_one(model_dir):
    x, _ = demo_data(6_000, seed=3)
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    ref = x[:3000]
    columns = {name: ref[:, i] for i, name in enumerate(FEATURES)}
    columns["probabilities:1"] = session.run(["probabilities"], {"float_input": ref})[0][:, 1]
    pq.write_table(pa.table(columns), model_dir / "ref-workers.parquet")
    live = x[3000:4400].copy()
    live[500:, FEATURES.index("f3")] += 2.0  # onset after 500 rows; alerts raise, then clear once it ends
    live[1000:, FEATURES.index("f3")] -= 2.0
    # the two servers (one process, two workers) side by side, each sent the same rows by a thread of its own
    servers, failures = _on_threads(lambda w: launch(model_dir, monitored(w, f"events-{w}"), f"drift-{w}.toml"),
                                    (1, 2))

    def send(workers: int) -> None:
        # one at a time, the next after the answer, in turn on 8 connections (each accepted
        # by whichever worker the kernel picked; opening one per request costs 10x the time)
        clients = [grpcclient.InferenceServerClient(servers[workers].url) for _ in range(8)]
        try:
            for i in range(len(live)):
                inp = grpcclient.InferInput("float_input", [1, len(FEATURES)], "FP32")
                inp.set_data_from_numpy(live[i:i + 1])
                clients[i % len(clients)].infer("mlp", [inp])
        finally:
            for client in clients:
                client.close()

    try:
        if not failures:
            failures = _on_threads(send, (1, 2))[1]
    finally:
        codes = {w: s.stop() for w, s in servers.items()}
    for exc in failures.values():
        raise exc
    assert codes == {1: 0, 2: 0}
    events = {}
    for workers in (1, 2):
        table = pq.read_table(model_dir / f"events-{workers}" / "kind=drift", partitioning="hive").sort_by(
            [("events_observed", "ascending"), ("feature", "ascending"), ("event", "ascending")])
        events[workers] = table.select(["event", "feature", "statistic", "pvalue", "events_observed"]).to_pylist()
    assert any(e["event"] == "raise" and e["feature"] == "f3" for e in events[1])
    assert any(e["event"] == "clear" and e["feature"] == "f3" for e in events[1])
    assert events[2] == events[1]


@pytest.mark.slow
def test_kafka_with_two_workers_scores_every_event_across_a_worker_restart(model_dir, rng):
    n = 20_000
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    with MockCluster() as cluster:
        for topic in ("events", "scores", "scores-dlq"):
            cluster.create_topic(topic, 8)
        config = base(2).add(streams=[stream(cluster.bootstrap, group="two-workers", linger_ms=5)])
        server = launch_workers(model_dir, config, "kafka-workers.toml")
        key = 'scorewire_stream_assigned_partitions{stream="events->scores",model="mlp"}'
        try:
            workers, _ = pids(server)
            wait_for(lambda: metric(server, key) == 8, 60, what="the workers to hold every partition")
            messages = json_events(x)
            produce(cluster.bootstrap, "events", messages[: n // 2])
            consumed = 'scorewire_stream_consumed_total{stream="events->scores",model="mlp"}'
            wait_for(lambda: (metric(server, consumed) or 0) > 0, 60, what="consuming")
            os.kill(workers[0], signal.SIGKILL)  # mid-stream
            produce(cluster.bootstrap, "events", messages[n // 2:])
            by_source = results_by_source(read_all(cluster.bootstrap, "scores", n, timeout_s=120))
            ids = {r["id"] for results in by_source.values() for r in results}
            assert ids == set(range(n)), f"{n - len(ids)} events have no result"
            wait_for(lambda: metric(server, 'scorewire_process_restarts_total{process="worker"}') == 1, 30,
                     what="the restart to be counted")
            # SIGTERM stops both workers at once: the one that leaves the group last still
            # commits what it delivered (the group moved on: it rejoins), so a restart would
            # consume nothing again
            said = server.stop_and_read()
            assert server.proc.returncode == 0
            assert "commit of" not in said, [line for line in said.splitlines() if "commit of" in line]
            assert committed(cluster.bootstrap, "two-workers", "events", 8) == end_offsets(cluster.bootstrap,
                                                                                             "events", 8)
        finally:
            server.stop()


def test_challengers_run_in_their_own_process_and_their_crash_never_reaches_an_answer(model_dir, rng):
    server = launch_workers(model_dir, challenged(2), "challenged.toml")
    try:
        x = rng.normal(size=(1, N_FEATURES)).astype(np.float32)
        for i in range(100):
            infer(server.url, x, request_id=f"a-{i}")
        scored = 'scorewire_shadow_rows_total{model="mlp",champion="1",version="2",outcome="scored"}'
        wait_for(lambda: metric(server, scored) == 100, 20, what="the challenger to score every champion row")
        challengers = int(re.search(r"pids [\d, ]+", next(s for s in server.startup if "pids" in s)).group(0)
                          .split()[-1])  # the last pid: the challengers process
        os.kill(challengers, signal.SIGKILL)
        for i in range(100, 150):  # answers go on, and the server stays ready
            infer(server.url, x, request_id=f"a-{i}")
            assert ready(server.url) is True
        wait_for(lambda: metric(server, 'scorewire_process_restarts_total{process="challengers"}') == 1, 30,
                 what="the challengers to come back")
        wait_for(lambda: metric(server, 'scorewire_process_up{process="challengers"}') == 1, 30,
                 what="the new challengers process to be ready")
        for i in range(150, 200):
            infer(server.url, x, request_id=f"a-{i}")
    finally:
        assert server.stop() == 0
    out = server.proc.stdout.read()
    table = pq.read_table(model_dir / "challenged-log", partitioning="hive")
    roles = table.group_by("role").aggregate([("request_id", "count")]).to_pydict()
    by_role = dict(zip(roles["role"], roles["request_id_count"]))
    assert by_role["champion"] == 200
    # the champion batches forwarded while the challengers process was down waited in its ring
    # (it was idle when killed: nothing was half done), so the new process shadowed them too
    assert by_role["challenger"] == 200, by_role
    m = re.search(r"challenger mlp:2: (\d+) rows scored, (\d+) dropped", out)
    assert m and int(m.group(1)) == 100 and int(m.group(2)) == 0, out  # the new process's own count


def _lines(server: Server) -> list[str]:
    """The server's stdout lines from now on, collected by a thread as they come."""
    lines: list[str] = []

    def read() -> None:
        for line in server.proc.stdout:
            lines.append(line.strip())

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_a_reload_that_fails_changes_nothing_anywhere_then_one_that_works_reaches_every_process(model_dir, rng):
    from tests.models import raising_classifier

    config = model_dir / "hup.toml"
    raising_classifier(model_dir / "models" / "raising.onnx")
    server = launch_workers(model_dir, base(2), "hup.toml")
    lines = _lines(server)
    try:
        x = rng.normal(size=(1, N_FEATURES)).astype(np.float32)
        expected = infer(server.url, x)
        # a version 2 that fails its warm-up: the reload is refused before any process makes it...
        challenged(2, log="hup-log", v2_path="models/raising.onnx").write(config)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reload failed, nothing changed" in line for line in lines), 60, what="the refusal")
        assert any("mlp:2: warm-up failed" in line for line in lines if "reload failed" in line), lines
        # ...so a worker started after it runs the running config, like its peer (it used to load
        # the broken one, fail, and crash-loop with the whole server not ready)
        workers, _ = pids(server)
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: metric(server, 'scorewire_process_restarts_total{process="worker"}') == 1, 30,
                 what="the restart")
        wait_for(lambda: all(ready(server.url) is True for _ in range(6)), 30, what="ready on every worker again")
        assert metric(server, 'scorewire_process_restarts_total{process="worker"}') == 1, "no crash loop"
        np.testing.assert_array_equal(infer(server.url, x), expected)
        # fixed: version 2 is the demo's mlp again; and version 1's batching changed in the file,
        # which a reload leaves for the next restart (Settings.reloaded, in every process)
        challenged(2, log="hup-log", max_batch_size=8).write(config)
        server.proc.send_signal(signal.SIGHUP)

        def version_2_everywhere() -> bool:  # fresh connections land on either worker
            for _ in range(8):
                client = grpcclient.InferenceServerClient(server.url)
                try:
                    if not client.is_model_ready("mlp", "2"):
                        return False
                finally:
                    client.close()
            return True

        wait_for(version_2_everywhere, 60, what="every worker to load version 2")
        scored = 'scorewire_shadow_rows_total{model="mlp",champion="1",version="2",outcome="scored"}'

        def shadowed() -> bool:
            infer(server.url, x)
            return (metric(server, scored) or 0) > 0

        wait_for(shadowed, 60, what="the challengers process to shadow the new challenger")
        # a worker started after this reload runs it too
        workers, _ = pids(server)
        restarts = metric(server, 'scorewire_process_restarts_total{process="worker"}')
        os.kill(workers[1], signal.SIGKILL)
        wait_for(lambda: metric(server, 'scorewire_process_restarts_total{process="worker"}') == restarts + 1, 30,
                 what="the second restart")
        wait_for(lambda: all(ready(server.url) is True for _ in range(6)), 30, what="ready again")
        wait_for(version_2_everywhere, 30, what="version 2 on the restarted worker")

        def batch_sizes() -> list[int]:  # version 1's max_batch_size, as each worker answers it
            sizes = []
            for _ in range(8):
                client = grpcclient.InferenceServerClient(server.url)
                try:
                    config = client.get_model_config("mlp", "1", as_json=True)["config"]
                    sizes.append(int(config["dynamic_batching"]["preferred_batch_size"][0]))
                finally:
                    client.close()
            return sizes

        assert set(batch_sizes()) == {64}  # the restarted worker runs what its peer runs, not the file
    finally:
        assert server.stop() == 0
