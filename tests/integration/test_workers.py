"""Several serving processes (`[server] workers = 2`): one port, one /metrics, a supervisor
that restarts what dies, a drain that loses no answered row, drift equal to one process's,
and Kafka consumer groups spread over the workers."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient

from engine.harness.models import N_FEATURES, demo_data
from engine.mock_kafka import MockCluster
from tests.conftest import Server, launch
from tests.integration.kafka_helpers import STREAM, json_events, produce, read_all, results_by_source, wait_for

FEATURES = [f"f{i}" for i in range(N_FEATURES)]

BASE = """\
[server]
workers = {workers}
host = "127.0.0.1"
grpc_port = 0
metrics_port = 0
http_port = 0
drain_timeout_s = 20

[[models]]
name = "mlp"
path = "models/mlp.onnx"
[models.batching]
max_batch_size = 64
max_queue_delay_us = 500
"""


def infer(url: str, x: np.ndarray, request_id: str = "") -> np.ndarray:
    """One request on a connection of its own (so that the kernel picks a worker for it)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("float_input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer("mlp", [inp], request_id=request_id).as_numpy("probabilities")
    finally:
        client.close()


def ready(url: str) -> bool | None:
    """ServerReady on a fresh connection; None when it did not answer."""
    client = grpcclient.InferenceServerClient(url)
    try:
        return client.is_server_ready()
    except Exception:
        return None
    finally:
        client.close()


def pids(server: Server) -> tuple[list[int], int]:
    """(worker pids by slot, observer pid), from the supervisor's start-up line."""
    line = next(s for s in server.startup if "workers on the gRPC port" in s)
    numbers = [int(n) for n in re.search(r"pids ([\d, ]+)", line).group(1).split(", ")]
    return numbers[:-2], numbers[-2]


def launch_workers(directory: Path, text: str, name: str) -> Server:
    server = launch(directory, text, name)
    assert server.startup is not None
    return server


def test_two_workers_share_the_port_and_one_metrics_endpoint(model_dir, rng):
    server = launch_workers(model_dir, BASE.format(workers=2), "two.toml")
    try:
        workers, observer = pids(server)
        assert len(workers) == 2 and len(set(workers + [observer, server.proc.pid])) == 4
        x = rng.normal(size=(120, N_FEATURES)).astype(np.float32)
        for i in range(len(x)):
            infer(server.url, x[i:i + 1])
        answered = 'scorewire_requests_total{model="mlp",code="OK"}'
        m = wait_for(lambda: (v := server.metrics()).get(answered) == 120 and v, 10, what="counters to arrive")
        per_worker = [m[f'scorewire_worker_requests_total{{worker="{i}"}}'] for i in range(2)]
        assert sum(per_worker) == 120 and min(per_worker) > 0, f"the kernel spread connections: {per_worker}"
        assert m['scorewire_rows_total{model="mlp",version="1"}'] == 120
        # every scored batch reached the observer's latency histograms, none dropped on the way
        batches = m['scorewire_batches_total{model="mlp",version="1"}']
        wait_for(lambda: server.metrics().get('scorewire_batch_rows_count{model="mlp",version="1"}') == batches, 10,
                 what="every batch in the observer")
        assert m['scorewire_workers_up'] == 2
        assert m['scorewire_handoff_dropped_batches_total{worker="0"}'] == 0
        # the REST port is shared the same way: one connection per request lands on both workers
        import tritonclient.http as httpclient

        before = [m[f'scorewire_worker_requests_total{{worker="{i}"}}'] for i in range(2)]
        for i in range(40):
            h = httpclient.InferenceServerClient(server.http_url)
            inp = httpclient.InferInput("float_input", [1, N_FEATURES], "FP32")
            inp.set_data_from_numpy(x[i:i + 1])
            np.testing.assert_array_equal(h.infer("mlp", [inp]).as_numpy("probabilities"), infer(server.url, x[i:i + 1]))
            h.close()
        m = wait_for(lambda: (v := server.metrics()).get(answered) == 200 and v, 10, what="REST counted")
        added = [m[f'scorewire_worker_requests_total{{worker="{i}"}}'] - before[i] for i in range(2)]
        assert sum(added) == 80 and min(added) > 0, added
    finally:
        assert server.stop() == 0


def test_a_killed_worker_or_observer_is_restarted_while_the_others_answer(model_dir, rng):
    server = launch_workers(model_dir, BASE.format(workers=2), "restart.toml")
    try:
        workers, observer = pids(server)
        x = rng.normal(size=(1, N_FEATURES)).astype(np.float32)
        expected = infer(server.url, x)
        os.kill(workers[1], signal.SIGKILL)
        wait_for(lambda: ready(server.url) is False, 10, what="ServerReady to say not ready while a worker is down")
        answered = failed = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the other worker answers meanwhile (a retry at most)
            try:
                got = infer(server.url, x)
            except Exception:
                failed += 1
                got = infer(server.url, x)
            np.testing.assert_array_equal(got, expected)
            answered += 1
            if _metric(server, "scorewire_workers_up") == 2:
                break
        # each worker sees its peers every 0.25 s: ready everywhere soon after
        wait_for(lambda: all(ready(server.url) is True for _ in range(6)), 5, what="ready on every worker again")
        assert failed <= 1 and answered > 0
        m = server.metrics()
        assert m['scorewire_process_restarts_total{process="worker"}'] == 1
        assert m['scorewire_workers_up'] == 2
        # the observer next: scoring goes on without it, and it comes back on the same port
        os.kill(observer, signal.SIGKILL)
        for _ in range(20):
            np.testing.assert_array_equal(infer(server.url, x), expected)
        wait_for(lambda: _metric(server, 'scorewire_process_restarts_total{process="observer"}') == 1, 30,
                 what="the observer to come back")
        wait_for(lambda: ready(server.url), 30, what="ready again")
    finally:
        assert server.stop() == 0


def _metric(server: Server, key: str) -> float | None:
    try:
        return server.metrics().get(key)
    except OSError:
        return None


def test_sigterm_under_load_loses_no_answered_row(model_dir, rng):
    config = BASE.format(workers=2) + '\n[scorelog]\ndir = "drain-log"\nmax_file_age_s = 60\n'
    server = launch_workers(model_dir, config, "drain.toml")
    x = rng.normal(size=(64, N_FEATURES)).astype(np.float32)
    answered: list[str] = []
    stop = threading.Event()

    def caller(k: int) -> None:
        client = grpcclient.InferenceServerClient(server.url)
        i = 0
        while not stop.is_set():
            rid = f"c{k}-{i}"
            inp = grpcclient.InferInput("float_input", [1, N_FEATURES], "FP32")
            inp.set_data_from_numpy(x[i % 64:i % 64 + 1])
            try:
                client.infer("mlp", [inp], request_id=rid)
                answered.append(rid)
            except Exception:  # refused while draining: not answered, so not owed to the log
                pass
            i += 1
        client.close()

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    wait_for(lambda: len(answered) >= 300, 60, what="load")
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = server.proc.wait(90)
    took = time.monotonic() - signalled  # under constant load it used to wait out half of drain_timeout_s
    stop.set()
    for t in threads:
        t.join(30)
    assert code == 0
    out = server.proc.stdout.read()
    assert "scorewire: stopped" in out
    table = pq.read_table(model_dir / "drain-log", partitioning="hive")
    logged = set(table.column("request_id").to_pylist())
    missing = [rid for rid in answered if rid not in logged]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not in the scoring log"
    assert len(answered) >= 300
    assert took < 8, f"the drain under load took {took:.1f} s (drain_grace_s = 1, drain_timeout_s = 20)"


class Load:
    """Callers sending one-row requests with ids on their own connections until stopped;
    `answered` holds the ids of the requests answered OK."""

    def __init__(self, url: str, x: np.ndarray, callers: int = 4):
        self.url, self.x = url, x
        self.answered: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._call, args=(k,), daemon=True) for k in range(callers)]
        for t in self.threads:
            t.start()

    def _call(self, k: int) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        i = 0
        while not self.stop.is_set():
            rid = f"c{k}-{i}"
            inp = grpcclient.InferInput("float_input", [1, N_FEATURES], "FP32")
            inp.set_data_from_numpy(self.x[i % len(self.x):i % len(self.x) + 1])
            try:
                client.infer("mlp", [inp], request_id=rid)
                self.answered.append(rid)
            except Exception:  # refused while draining: not answered, so not owed to the log
                time.sleep(0.01)
            i += 1
        client.close()

    def finish(self) -> list[str]:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        return self.answered


def test_an_observer_killed_under_load_loses_no_answered_row_and_logs_none_twice(model_dir, rng):
    config = CHALLENGED.format(workers=2).replace("challenged-log", "killed-observer-log")
    server = launch_workers(model_dir, config, "killed-observer.toml")
    load = Load(server.url, rng.normal(size=(64, N_FEATURES)).astype(np.float32))
    answered_ok = 'scorewire_requests_total{model="mlp",code="OK"}'
    seen: list[float] = []  # the server's count of answered requests, scraped as it goes

    def scraped(condition) -> bool:
        value = _metric(server, answered_ok)
        if value is not None:
            seen.append(value)
        return condition()

    try:
        _, observer = pids(server)
        wait_for(lambda: scraped(lambda: len(load.answered) >= 1500), 60, what="load")
        os.kill(observer, signal.SIGKILL)  # its log files in progress, and what it had read, die with it
        killed_at = len(load.answered)
        wait_for(lambda: _metric(server, 'scorewire_process_restarts_total{process="observer"}') == 1, 30,
                 what="the observer to come back")
        wait_for(lambda: scraped(lambda: len(load.answered) >= killed_at + 1500), 60, what="load after the restart")
    finally:
        answered = load.finish()
        assert server.stop() == 0
    table = pq.read_table(model_dir / "killed-observer-log", partitioning="hive")
    rows = table.select(["role", "request_id"]).to_pylist()
    champion = [r["request_id"] for r in rows if r["role"] == "champion"]
    missing = set(answered) - set(champion)
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not in the scoring log"
    assert len(champion) == len(set(champion)), "rows logged twice"
    shadowed = [r["request_id"] for r in rows if r["role"] == "challenger"]
    assert len(shadowed) == len(set(shadowed)), "challenger rows logged twice"
    assert len(seen) >= 4 and seen == sorted(seen), f"a counter went back: {seen}"


def _alive(pid: int) -> bool:
    """Not exited (a zombie, which nobody reaped yet since its parent died, has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def test_a_killed_supervisor_takes_its_processes_and_shared_memory_with_it(model_dir, rng):
    before = set(os.listdir("/dev/shm"))
    config = BASE.format(workers=2) + '\n[scorelog]\ndir = "orphans-log"\nmax_file_age_s = 60\n'
    server = launch_workers(model_dir, config, "orphans.toml")
    workers, observer = pids(server)
    children = [*workers, observer, int(re.search(r"pids [\d, ]+", next(s for s in server.startup if "pids" in s))
                                            .group(0).split()[-1])]
    x = rng.normal(size=(1, N_FEATURES)).astype(np.float32)
    for i in range(50):
        infer(server.url, x, request_id=f"o-{i}")
    server.proc.kill()  # SIGKILL: no drain of its own, nothing it would have cleaned up
    server.proc.wait(10)
    wait_for(lambda: not any(_alive(pid) for pid in children), 10, what="every child to exit")
    wait_for(lambda: not set(os.listdir("/dev/shm")) - before, 10, what="the shared memory to go")
    # the ports are free: a new server takes the same one
    again = launch(model_dir, BASE.format(workers=2).replace("grpc_port = 0", f"grpc_port = {server.grpc_port}"),
                   "orphans-again.toml")
    try:
        assert again.grpc_port == server.grpc_port
    finally:
        assert again.stop() == 0
    # the orphaned workers drained into the observer, which wrote the log out before it went
    logged = set(pq.read_table(model_dir / "orphans-log", partitioning="hive").column("request_id").to_pylist())
    assert {f"o-{i}" for i in range(50)} <= logged


SMALL_SHM = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs -o size=48m tmpfs /dev/shm && exec "$@"', "sh")


def test_shared_memory_filling_up_after_start_kills_no_worker(model_dir, rng):
    """/dev/shm (a 48 MiB one of the server's own) filled to the last byte once the server is
    up: its rings were reserved whole at start, so writing them cannot fault (SIGBUS), and
    every request is answered."""
    import subprocess

    if subprocess.run([*SMALL_SHM, "true"], capture_output=True).returncode != 0:
        pytest.skip("a mount namespace of its own needs root (unshare, mount)")
    config = BASE.format(workers=2).replace("drain_timeout_s = 20", "drain_timeout_s = 20\nhandoff_ring_bytes = 8388608")
    server = launch(model_dir, config, "small-shm.toml", wrapper=SMALL_SHM)
    try:
        shm = Path(f"/proc/{server.proc.pid}/root/dev/shm")  # the server's /dev/shm, seen from here
        free = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize
        with open(shm / "filler", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, free)
        assert os.statvfs(shm).f_bavail == 0
        load = Load(server.url, rng.normal(size=(64, N_FEATURES)).astype(np.float32))
        try:
            wait_for(lambda: len(load.answered) >= 3000, 60, what="3,000 answers")  # ~1.5 MiB through each ring
        finally:
            answered = load.finish()
        wait_for(lambda: _metric(server, 'scorewire_requests_total{model="mlp",code="OK"}') == len(answered), 10,
                 what="every answer counted")
        assert _metric(server, 'scorewire_process_restarts_total{process="worker"}') == 0
    finally:
        assert server.stop() == 0


def test_a_server_whose_rings_do_not_fit_says_so_in_one_line(model_dir):
    import subprocess

    if subprocess.run([*SMALL_SHM, "true"], capture_output=True).returncode != 0:
        pytest.skip("a mount namespace of its own needs root (unshare, mount)")
    config = model_dir / "no-room.toml"
    config.write_text(BASE.format(workers=2).replace("drain_timeout_s = 20", "handoff_ring_bytes = 33554432"))
    done = subprocess.run([*SMALL_SHM, sys.executable, "-m", "engine.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("scorewire: cannot reserve 32.0 MiB of shared memory for"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


MONITORED = BASE + """
[monitoring]
events_dir = "{events}"
[models.monitor]
features = [{features}]
outputs = ["probabilities:1"]
reference = "ref-workers.parquet"
window = 300
every = 100
alpha = 0.001
min_effect = 0.1
consecutive = 2
"""


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
    features = ", ".join(f'"{f}"' for f in FEATURES)
    events = {}
    for workers in (1, 2):
        server = launch(model_dir, MONITORED.format(workers=workers, events=f"events-{workers}", features=features),
                        f"drift-{workers}.toml")
        # one at a time, the next after the answer, in turn on 8 connections (each accepted
        # by whichever worker the kernel picked; opening one per request costs 10x the time)
        clients = [grpcclient.InferenceServerClient(server.url) for _ in range(8)]
        try:
            for i in range(len(live)):
                inp = grpcclient.InferInput("float_input", [1, len(FEATURES)], "FP32")
                inp.set_data_from_numpy(live[i:i + 1])
                clients[i % len(clients)].infer("mlp", [inp])
        finally:
            for client in clients:
                client.close()
            assert server.stop() == 0
        table = pq.read_table(model_dir / f"events-{workers}", partitioning="hive").sort_by(
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
        stream = STREAM.format(bootstrap=cluster.bootstrap, group="two-workers", topic="events", output="scores",
                               dlq="scores-dlq", fmt="json", linger_ms=5)
        server = launch_workers(model_dir, BASE.format(workers=2) + stream, "kafka-workers.toml")
        key = 'scorewire_stream_assigned_partitions{stream="events->scores",model="mlp"}'
        try:
            workers, _ = pids(server)
            wait_for(lambda: _metric(server, key) == 8, 60, what="the workers to hold every partition")
            messages = json_events(x)
            produce(cluster.bootstrap, "events", messages[: n // 2])
            consumed = 'scorewire_stream_consumed_total{stream="events->scores",model="mlp"}'
            wait_for(lambda: (_metric(server, consumed) or 0) > 0, 60, what="consuming")
            os.kill(workers[0], signal.SIGKILL)  # mid-stream
            produce(cluster.bootstrap, "events", messages[n // 2:])
            by_source = results_by_source(read_all(cluster.bootstrap, "scores", n, timeout_s=120))
            ids = {r["id"] for results in by_source.values() for r in results}
            assert ids == set(range(n)), f"{n - len(ids)} events have no result"
            wait_for(lambda: _metric(server, 'scorewire_process_restarts_total{process="worker"}') == 1, 30,
                     what="the restart to be counted")
        finally:
            assert server.stop() == 0


CHALLENGED = BASE + """
[[models]]
name = "mlp"
path = "models/mlp.onnx"
version = "2"

[[routes]]
model = "mlp"
champion = "1"
challengers = ["2"]

[scorelog]
dir = "challenged-log"
max_file_age_s = 60
"""


def test_challengers_run_in_their_own_process_and_their_crash_never_reaches_an_answer(model_dir, rng):
    server = launch_workers(model_dir, CHALLENGED.format(workers=2), "challenged.toml")
    try:
        x = rng.normal(size=(1, N_FEATURES)).astype(np.float32)
        for i in range(100):
            infer(server.url, x, request_id=f"a-{i}")
        scored = 'scorewire_shadow_rows_total{model="mlp",champion="1",version="2",outcome="scored"}'
        wait_for(lambda: _metric(server, scored) == 100, 20, what="the challenger to score every champion row")
        challengers = int(re.search(r"pids [\d, ]+", next(s for s in server.startup if "pids" in s)).group(0)
                          .split()[-1])  # the last pid: the challengers process
        os.kill(challengers, signal.SIGKILL)
        for i in range(100, 150):  # answers go on, and the server stays ready
            infer(server.url, x, request_id=f"a-{i}")
            assert ready(server.url) is True
        wait_for(lambda: _metric(server, 'scorewire_process_restarts_total{process="challengers"}') == 1, 30,
                 what="the challengers to come back")
        wait_for(lambda: _metric(server, 'scorewire_process_up{process="challengers"}') == 1, 30,
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
    server = launch_workers(model_dir, BASE.format(workers=2), "hup.toml")
    lines = _lines(server)
    try:
        x = rng.normal(size=(1, N_FEATURES)).astype(np.float32)
        expected = infer(server.url, x)
        # a version 2 that fails its warm-up: the reload is refused before any process makes it...
        broken = CHALLENGED.format(workers=2).replace("challenged-log", "hup-log")
        config.write_text(broken.replace('path = "models/mlp.onnx"\nversion = "2"',
                                         'path = "models/raising.onnx"\nversion = "2"'))
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reload failed, nothing changed" in line for line in lines), 60, what="the refusal")
        assert any("mlp:2: warm-up failed" in line for line in lines if "reload failed" in line), lines
        # ...so a worker started after it runs the running config, like its peer (it used to load
        # the broken one, fail, and crash-loop with the whole server not ready)
        workers, _ = pids(server)
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: _metric(server, 'scorewire_process_restarts_total{process="worker"}') == 1, 30,
                 what="the restart")
        wait_for(lambda: all(ready(server.url) is True for _ in range(6)), 30, what="ready on every worker again")
        assert _metric(server, 'scorewire_process_restarts_total{process="worker"}') == 1, "no crash loop"
        np.testing.assert_array_equal(infer(server.url, x), expected)
        config.write_text(broken)  # fixed: version 2 is the demo's mlp again
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
            return (_metric(server, scored) or 0) > 0

        wait_for(shadowed, 60, what="the challengers process to shadow the new challenger")
        # a worker started after this reload runs it too
        workers, _ = pids(server)
        restarts = _metric(server, 'scorewire_process_restarts_total{process="worker"}')
        os.kill(workers[1], signal.SIGKILL)
        wait_for(lambda: _metric(server, 'scorewire_process_restarts_total{process="worker"}') == restarts + 1, 30,
                 what="the second restart")
        wait_for(lambda: all(ready(server.url) is True for _ in range(6)), 30, what="ready again")
        wait_for(version_2_everywhere, 30, what="version 2 on the restarted worker")
    finally:
        assert server.stop() == 0
