"""Several serving processes (`[server] workers = 2`): one port, one /metrics, a supervisor
that restarts what dies, a drain that loses no answered row, shared memory reserved whole.
(test_workers_features.py: drift, Kafka, challengers and reloads with several processes.)"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient

from engine.harness.models import N_FEATURES
from tests.conftest import launch
from tests.integration.kafka_helpers import wait_for
from tests.integration.workers_helpers import base, challenged, infer, launch_workers, metric, pids, ready


def test_two_workers_share_the_port_and_one_metrics_endpoint(model_dir, rng):
    server = launch_workers(model_dir, base(2), "two.toml")
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
    server = launch_workers(model_dir, base(2), "restart.toml")
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
            if metric(server, "scorewire_workers_up") == 2:
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
        wait_for(lambda: metric(server, 'scorewire_process_restarts_total{process="observer"}') == 1, 30,
                 what="the observer to come back")
        wait_for(lambda: ready(server.url), 30, what="ready again")
    finally:
        assert server.stop() == 0


def test_sigterm_under_load_loses_no_answered_row(model_dir, rng):
    config = base(2).add(scorelog={"dir": "drain-log", "max_file_age_s": 60})
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
    config = challenged(2, log="killed-observer-log")
    server = launch_workers(model_dir, config, "killed-observer.toml")
    load = Load(server.url, rng.normal(size=(64, N_FEATURES)).astype(np.float32))
    answered_ok = 'scorewire_requests_total{model="mlp",code="OK"}'
    seen: list[float] = []  # the server's count of answered requests, scraped as it goes

    def scraped(condition) -> bool:
        value = metric(server, answered_ok)
        if value is not None:
            seen.append(value)
        return condition()

    try:
        _, observer = pids(server)
        wait_for(lambda: scraped(lambda: len(load.answered) >= 1500), 60, what="load")
        os.kill(observer, signal.SIGKILL)  # its log files in progress, and what it had read, die with it
        killed_at = len(load.answered)
        wait_for(lambda: metric(server, 'scorewire_process_restarts_total{process="observer"}') == 1, 30,
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


def _shared_memory_of(pids: list[int]) -> set[str]:
    """The /dev/shm segments these processes map (other servers on the machine have their own)."""
    names = set()
    for pid in pids:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            if "/dev/shm/" in line:
                names.add(line.split("/dev/shm/", 1)[1].split()[0])
    return names


def test_a_killed_supervisor_takes_its_processes_and_shared_memory_with_it(model_dir, rng):
    config = base(2).add(scorelog={"dir": "orphans-log", "max_file_age_s": 60})
    server = launch_workers(model_dir, config, "orphans.toml")
    workers, observer = pids(server)
    children = [*workers, observer, int(re.search(r"pids [\d, ]+", next(s for s in server.startup if "pids" in s))
                                            .group(0).split()[-1])]
    x = rng.normal(size=(1, N_FEATURES)).astype(np.float32)
    for i in range(50):
        infer(server.url, x, request_id=f"o-{i}")
    segments = _shared_memory_of([server.proc.pid, *children])
    assert segments, "the server maps its rings and board from /dev/shm"
    server.proc.kill()  # SIGKILL: no drain of its own, nothing it would have cleaned up
    server.proc.wait(10)
    wait_for(lambda: not any(_alive(pid) for pid in children), 10, what="every child to exit")
    wait_for(lambda: not segments & set(os.listdir("/dev/shm")), 10, what="the shared memory to go")
    # the ports are free: a new server takes the same one
    again = launch(model_dir, base(2).with_server(grpc_port=server.grpc_port), "orphans-again.toml")
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
    config = base(2, handoff_ring_bytes=8388608)
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
        wait_for(lambda: metric(server, 'scorewire_requests_total{model="mlp",code="OK"}') == len(answered), 10,
                 what="every answer counted")
        assert metric(server, 'scorewire_process_restarts_total{process="worker"}') == 0
    finally:
        assert server.stop() == 0


def test_a_server_whose_rings_do_not_fit_says_so_in_one_line(model_dir):
    import subprocess

    if subprocess.run([*SMALL_SHM, "true"], capture_output=True).returncode != 0:
        pytest.skip("a mount namespace of its own needs root (unshare, mount)")
    config = base(2, handoff_ring_bytes=33554432).with_server(drain_timeout_s=None).write(model_dir / "no-room.toml")
    done = subprocess.run([*SMALL_SHM, sys.executable, "-m", "engine.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("scorewire: cannot reserve 32.0 MiB of shared memory for"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# One client process: one connection (tritonclient's channel), 3 callers on it, until the time is up;
# prints "<answered> <failed> <first failure>".
_CALLER = r'''
import sys, threading, time
import numpy as np, tritonclient.grpc as g
url, seconds, n_features = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
client = g.InferenceServerClient(url)
x = np.full((1, n_features), 0.5, np.float32)
answered, failed = [0], []
end = time.monotonic() + seconds
def call():
    inp = g.InferInput("float_input", [1, n_features], "FP32")
    inp.set_data_from_numpy(x)
    while time.monotonic() < end:
        try:
            client.infer("mlp", [inp])
            answered[0] += 1
        except Exception as exc:
            failed.append(repr(exc))
threads = [threading.Thread(target=call) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
print(answered[0], len(failed), failed[:1])
'''


def test_two_connections_move_until_both_workers_serve_and_no_call_fails(model_dir):
    """Two clients holding one connection each: the kernel's hash puts both on one worker half
    of the time. max_connection_age_s makes them move (GOAWAY, a new connection hashed afresh)
    every 0.3 s here: both workers answer a fair share, and no call fails across the moves, a
    ModelStreamInfer stream open through all of them included."""
    import subprocess
    import queue

    server = launch_workers(model_dir, base(2, max_connection_age_s=0.3), "moving.toml")
    try:
        seconds = 4.0
        clients = [subprocess.Popen([sys.executable, "-c", _CALLER, server.url, str(seconds), str(N_FEATURES)],
                                    stdout=subprocess.PIPE, text=True) for _ in range(2)]
        # a stream on a connection of its own, open across many ages: it stays where it is
        stream = grpcclient.InferenceServerClient(server.url, channel_args=[("scorewire.test", "stream")])
        answers: queue.Queue = queue.Queue()
        stream.start_stream(callback=lambda result, error: answers.put(error))
        inp = grpcclient.InferInput("float_input", [1, N_FEATURES], "FP32")
        inp.set_data_from_numpy(np.full((1, N_FEATURES), 0.5, np.float32))
        sent = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            stream.async_stream_infer("mlp", [inp])
            sent += 1
            assert answers.get(timeout=10) is None
            time.sleep(0.02)
        stream.stop_stream()
        stream.close()
        outs = [c.communicate(timeout=60)[0].split(maxsplit=2) for c in clients]
        assert all(c.returncode == 0 for c in clients)
        assert [o[1] for o in outs] == ["0", "0"], f"calls failed across the moves: {outs}"
        unary = sum(int(o[0]) for o in outs)
        answered = 'scorewire_requests_total{model="mlp",code="OK"}'
        m = wait_for(lambda: (v := server.metrics()).get(answered) == unary + sent and v, 10,
                     what="every call counted")
        per_worker = [m[f'scorewire_worker_requests_total{{worker="{i}"}}'] for i in range(2)]
        # ~13 ages for each connection, a worker drawn afresh at each: each worker's share is far from 0
        assert min(per_worker) > 0.15 * sum(per_worker), f"one worker did most of the work: {per_worker}"
    finally:
        assert server.stop() == 0


def test_a_server_whose_stdout_closes_serves_on_and_stops_on_sigterm(model_dir, tmp_path):
    """`scorewire serve | head -1`: the pipe closes after the first line. The server's next
    line once raised in the supervisor, which left its workers half started, never ready, and
    the whole server deaf to SIGTERM."""
    import subprocess

    from engine.ready import read

    config = base(2).write(model_dir / "stdout-closes.toml")
    ready_file, stderr = tmp_path / "ready.json", tmp_path / "stderr.txt"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--config", str(config),
                             "--ready-file", str(ready_file)],
                            stdout=subprocess.PIPE, stderr=stderr.open("w"), text=True)
    try:
        assert proc.stdout.readline().startswith("scorewire: ")
        proc.stdout.close()  # the reader goes away
        wait_for(lambda: read(ready_file) is not None or proc.poll() is not None, 90, what="ready")
        assert proc.poll() is None, "the server exited"
        assert infer(f"127.0.0.1:{read(ready_file).grpc_port}", np.full((2, N_FEATURES), 0.5, np.float32)).shape == (2, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        said = stderr.read_text()
        assert "stdout was closed; its lines go to stderr from now on" in said
        assert "scorewire: stopped" in said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
