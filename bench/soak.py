"""Soak: mixed load on a `scorewire serve` with several workers while its processes are killed
(SIGKILL) at random, then the scoring log checked against every answer.

    python -m bench.soak --minutes 10 --out bench/results/soak

The server: `workers = 2`, the demo's MLP as champion with its second version shadowing it as
a challenger, a Kafka stream (librdkafka's built-in broker, `python -m engine.mock_kafka`), the
scoring log rotating every 10 s. The load, each caller one request at a time: two gRPC callers
and one REST caller of one-row requests, one gRPC caller of 16-row requests, and events
produced to the stream's input topic at --events-per-s. Every 20-40 s a worker, the observer or
the challengers process (chosen at random; their pids come from /metrics) gets SIGKILL.

At the end (load stopped, the stream's results all read back, SIGTERM): every answered request
id (gRPC, REST) and every Kafka result's source must be a champion row of the log, exactly
once; challenger rows are counted, and their duplicates (none expected). Writes NAME.json and
NAME.md; exits 1 when an answered row is missing or logged twice. (A Kafka event scored twice, at-least-once, may be
logged twice: only requests are held to once.) Uses only what a user has: the `scorewire`
command (started by engine/harness/server.py, which reads its --ready-file), tritonclient,
confluent-kafka and pyarrow.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from engine.harness.server import scrape
from engine.harness.config import Config, model_table, route_table, server_table, stream_table
from engine.harness.server import start_server



def soak_config(bootstrap: str) -> Config:
    """Two workers; the demo's MLP, its second version shadowing it; the scoring log rotating
    every 10 s; a stream from `bootstrap`."""
    return Config(
        server_table(workers=2, drain_timeout_s=30),
        [model_table("mlp", "models/mlp.onnx", batching={"max_batch_size": 64, "max_queue_delay_us": 500}),
         model_table("mlp", "models/mlp-v2.onnx", version="2")],
        routes=[route_table("mlp", "1", challengers=["2"])],
        scorelog={"dir": "scorelog", "max_file_age_s": 10},
        streams=[stream_table("mlp", bootstrap, "events", "scores", "scores-dlq", group_id="soak",
                              consumer={"session.timeout.ms": 6000})])


def _metrics(port: int) -> dict[str, float]:
    return scrape(f"http://127.0.0.1:{port}/metrics", timeout_s=5)


class Server:
    def __init__(self, config: Path):
        served = start_server(config)
        self.proc = served.proc
        self.grpc, self.http, self.metrics = served.grpc_port, served.http_port, served.metrics_port
        self.tail = threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True)
        self.tail.start()

    def pids(self) -> dict[str, list[int]]:
        """process kind -> its pids now, from /metrics (scorewire_process_pid)."""
        found: dict[str, list[int]] = {}
        for key, value in _metrics(self.metrics).items():
            if key.startswith("scorewire_process_pid{") and value:
                kind = re.search(r'process="(\w+)"', key).group(1)
                found.setdefault(kind, []).append(int(value))
        return found


class Callers:
    """The load: callers on threads, each recording the ids answered OK."""

    def __init__(self, server: Server, bootstrap: str, events_per_s: float, seed: int):
        self.server, self.bootstrap, self.events_per_s = server, bootstrap, events_per_s
        self.rng = np.random.default_rng(seed)
        self.rows = self.rng.normal(size=(4096, 32)).astype(np.float32)
        self.answered: dict[str, list[str]] = {"grpc": [], "rest": [], "grpc16": []}
        self.failed: Counter = Counter()
        self.produced = 0
        self.stop = threading.Event()
        targets = [(self._grpc, "g0", 1), (self._grpc, "g1", 1), (self._rest, "h", 1), (self._grpc, "b", 16)]
        self.threads = [threading.Thread(target=t, args=(tag, n), daemon=True) for t, tag, n in targets]
        self.threads.append(threading.Thread(target=self._events, daemon=True))
        for t in self.threads:
            t.start()

    def _x(self, i: int, n: int) -> np.ndarray:
        at = (i * n) % (len(self.rows) - n)
        return self.rows[at:at + n]

    def _grpc(self, tag: str, n: int) -> None:
        import tritonclient.grpc as g

        client = g.InferenceServerClient(f"127.0.0.1:{self.server.grpc}")
        kind = "grpc" if n == 1 else "grpc16"
        i = 0
        while not self.stop.is_set():
            rid = f"{tag}-{i}"
            x = g.InferInput("float_input", [n, 32], "FP32")
            x.set_data_from_numpy(self._x(i, n))
            try:
                client.infer("mlp", [x], request_id=rid, client_timeout=10)
                self.answered[kind].append(rid)
            except Exception as exc:  # a worker killed under it, or not ready: not answered
                self.failed[f"{kind}: {str(exc)[:60]}"] += 1
                time.sleep(0.05)
            i += 1

    def _rest(self, tag: str, n: int) -> None:
        import tritonclient.http as h

        client = h.InferenceServerClient(f"127.0.0.1:{self.server.http}", connection_timeout=10,
                                         network_timeout=10)
        i = 0
        while not self.stop.is_set():
            rid = f"{tag}-{i}"
            x = h.InferInput("float_input", [n, 32], "FP32")
            x.set_data_from_numpy(self._x(i, n))
            try:
                client.infer("mlp", [x], request_id=rid)
                self.answered["rest"].append(rid)
            except Exception as exc:
                self.failed[f"rest: {str(exc)[:60]}"] += 1
                time.sleep(0.05)
                client = h.InferenceServerClient(f"127.0.0.1:{self.server.http}", connection_timeout=10,
                                                 network_timeout=10)
            i += 1

    def _events(self) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        start = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - start) * self.events_per_s)
            while self.produced < due:
                row = self._x(self.produced, 1)[0]
                body = json.dumps({"id": f"k-{self.produced}", "float_input": [float(v) for v in row]})
                producer.produce("events", body.encode(), key=str(self.produced).encode())
                self.produced += 1
            producer.poll(0)
            time.sleep(0.01)
        producer.flush(30)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


class Results:
    """The stream's results, read on a thread from the start (the built-in broker keeps at
    most 5 MiB per partition: read at the end, the first results could be gone): source ->
    times seen, and the ids that have a result (at-least-once: a source may come twice)."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self.sources: Counter = Counter()
        self.ids: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"soak-read-{os.getpid()}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe(["scores"])
        while not self.stop.is_set():
            for msg in consumer.consume(10_000, 0.5):
                if msg.error() is None:
                    result = json.loads(msg.value())
                    self.sources[result["source"]] += 1
                    self.ids.add(result["id"])
        consumer.close()

    def wait_for(self, produced: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.ids) < produced and time.monotonic() < deadline:
            time.sleep(0.5)
        self.stop.set()
        self.thread.join(30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--kill-every", default="20,40", help="seconds between kills: from,to")
    ap.add_argument("--events-per-s", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=28)
    ap.add_argument("--out", default="bench/results/soak", help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    low, high = (float(v) for v in args.kill_every.split(","))
    rnd = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="scorewire-soak-"))
    subprocess.run([sys.executable, "-m", "engine.cli", "demo", "--dir", str(work), "--prepare-only"], check=True,
                   stdout=subprocess.DEVNULL)
    broker = subprocess.Popen([sys.executable, "-m", "engine.mock_kafka", "--topic", "events:8", "--topic",
                               "scores:16", "--topic", "scores-dlq:8"], stdout=subprocess.PIPE, text=True)
    bootstrap = broker.stdout.readline().strip().split("=")[-1]  # "bootstrap.servers=HOST:PORT"
    server = Server(soak_config(bootstrap).write(work / "soak.toml"))
    print(f"soak: {args.minutes} min, server pid {server.proc.pid}, log in {work / 'scorelog'}", flush=True)
    results = Results(bootstrap)
    callers = Callers(server, bootstrap, args.events_per_s, args.seed)
    kills: list[dict] = []
    end = time.monotonic() + args.minutes * 60
    try:
        while True:
            pause = rnd.uniform(low, high)
            if time.monotonic() + pause >= end:
                time.sleep(max(0.0, end - time.monotonic()))
                break
            time.sleep(pause)
            try:
                pids = server.pids()
            except OSError:  # the observer (and /metrics) is down: wait for it
                continue
            kind = rnd.choice(["worker", "worker", "observer", "challengers"])
            pid = rnd.choice(pids[kind])
            os.kill(pid, signal.SIGKILL)
            kills.append({"at_s": round(args.minutes * 60 - (end - time.monotonic()), 1), "process": kind,
                          "pid": pid})
            print(f"soak: killed the {kind} (pid {pid}); answered so far "
                  f"{sum(len(v) for v in callers.answered.values()):,}", flush=True)
    finally:
        callers.finish()
    results.wait_for(callers.produced, 120)
    sources, result_ids = results.sources, results.ids
    before_stop = _metrics(server.metrics)
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(120)
    broker.terminate()
    table = pq.read_table(work / "scorelog", partitioning="hive", columns=["request_id", "row", "role"])
    rows = list(zip(table.column("request_id").to_pylist(), table.column("row").to_pylist(),
                    table.column("role").to_pylist()))
    champion = Counter((rid, row) for rid, row, role in rows if role == "champion")
    challenger = Counter((rid, row) for rid, row, role in rows if role == "challenger")
    logged = {rid for rid, _ in champion}
    requests = [rid for ids in callers.answered.values() for rid in ids]
    missing = [rid for rid in [*requests, *sources] if rid not in logged]
    # a Kafka event may be scored twice (at-least-once: a worker killed after scoring it, before
    # its result was acknowledged), so it may be logged twice; a request's row never
    answered_ids = set(requests)
    twice = sorted({rid for (rid, _), n in champion.items() if n > 1 and rid in answered_ids})
    report = {
        "minutes": args.minutes, "seed": args.seed, "kill_every_s": [low, high], "exit_code": code,
        "kills": Counter(k["process"] for k in kills), "kill_log": kills,
        "answered": {k: len(v) for k, v in callers.answered.items()} | {"kafka results": len(sources)},
        "failed_calls": dict(callers.failed.most_common(8)),
        "kafka": {"produced": callers.produced, "with a result": len(result_ids),
                  "without a result (examples)": sorted(f"k-{i}" for i in range(callers.produced)
                                                        if f"k-{i}" not in result_ids)[:10],
                  "duplicate results (at-least-once)": sum(n - 1 for n in sources.values())},
        "log": {"champion rows": sum(champion.values()), "answered missing": len(missing),
                "answered logged twice": len(twice), "challenger rows": sum(challenger.values()),
                "challenger rows of requests logged twice": sum(
                    n - 1 for (rid, _), n in challenger.items() if n > 1 and rid in answered_ids),
                "challenger rows of Kafka events scored twice": sum(
                    n - 1 for (rid, _), n in challenger.items() if n > 1 and rid not in answered_ids)},
        "server counts before the stop": {k: v for k, v in before_stop.items() if re.match(
            r"scorewire_(process_restarts_total|scorelog_rows_total|handoff_dropped_rows_total|"
            r"shadow_rows_total)", k)},
        "missing examples": missing[:10], "twice examples": twice[:10],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=list) + "\n")
    out.with_suffix(".md").write_text(_markdown(report))
    print(out.with_suffix(".md").read_text())
    return 0 if not missing and not twice and code == 0 and len(result_ids) == callers.produced else 1


def _markdown(r: dict) -> str:
    kills = ", ".join(f"{n} {k}" for k, n in sorted(r["kills"].items()))
    every = "-".join(f"{v:g}" for v in r.get("kill_every_s", (20, 40)))  # older reports: the default
    lines = [
        f"# Soak: {r['minutes']:g} minutes, SIGKILL every {every} s ({kills}), seed {r['seed']}",
        "",
        "`python -m bench.soak` (workers = 2, a challenger, a Kafka stream on librdkafka's built-in broker, the "
        "scoring log rotating every 10 s; one-row gRPC x2, one-row REST, 16-row gRPC, 200 events/s).",
        "",
        "| answered | count | in the log | missing | logged twice |",
        "|---|---|---|---|---|",
    ]
    total = sum(r["answered"].values())
    for kind, n in r["answered"].items():
        lines.append(f"| {kind} | {n:,} | | | |")
    log = r["log"]
    lines.append(f"| **all** | **{total:,}** | {total - log['answered missing']:,} | {log['answered missing']} | "
                 f"{log['answered logged twice']} |")
    lines += ["", f"Kafka: {r['kafka']['produced']:,} events produced, {r['kafka']['with a result']:,} with a result, "
              f"{r['kafka']['duplicate results (at-least-once)']:,} duplicate results (at-least-once).",
              f"Challenger rows: {log['challenger rows']:,}; of requests, logged twice: "
              f"{log['challenger rows of requests logged twice']}; of Kafka events the champion scored twice "
              f"(at-least-once), twice: {log['challenger rows of Kafka events scored twice']}.",
              f"Calls that failed (not answered, so not owed to the log): {sum(r['failed_calls'].values()):,}.",
              f"Server exit code after SIGTERM: {r['exit_code']}.", "",
              "Counts the server kept (before the stop):", ""]
    lines += [f"- `{k}` {v:,.0f}" for k, v in sorted(r["server counts before the stop"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
