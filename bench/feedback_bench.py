"""Scoring with live performance and a label stream on vs off, one-row requests, one run; and
how many labels per second the join takes.

    python -m bench.feedback_bench [--duration S] [--rounds N] [--json FILE] [--check]

Part 1: two `scorewire serve` configs on the demo MLP (workers = "auto"): "off" the MLP alone;
"on" the MLP with [models.performance] (binary, probabilities:1) while a thread posts labels
to POST /v2/models/mlp/feedback, 500 per request, for the ids the load's requests carry
(about 1,000 labels/s: most join, some come before their row). The same closed-loop load (32
callers, one row per request, tritonclient.grpc.aio in 2 processes) runs against each in
turns. Reported: requests/s of each and their ratio, and what the "on" server counted
(labels joined, unmatched, rows and batches the join dropped), from /metrics before it stops.

Part 2: the join alone (engine/performance/join.py, in this process, no server): 100,000
one-row scored requests and their 100,000 labels, in batches of 64 rows and of 500 labels;
rows + labels per second of its thread's work.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.grpc_bench import run_load
from bench.onoff import BASE, parse_args
from bench.proctree import cpu_s, tree
from bench.servers import prepare_demo, serve
from engine.harness.config import Config, model_table, server_table

PERFORMANCE = {"task": "binary", "score": "probabilities:1", "window": 10_000, "label_ttl_s": 60}
LOAD = "closed loop, 32 callers, 1 row/request, tritonclient.grpc.aio in 2 processes"


def _labels(http_url: str, stop: threading.Event, rate: float = 1000.0, per_post: int = 500) -> list[int]:
    """Post labels for the load's ids ("s1000-n", "s1001-n") at about `rate`/s until `stop`."""
    sent, n, rng = [0], 0, np.random.default_rng(0)
    url = f"http://{http_url}/v2/models/mlp/feedback"
    while not stop.is_set():
        started = time.monotonic()
        body = [{"id": f"s{1000 + (k % 2)}-{n + k // 2}", "labels": [int(rng.random() < 0.5)]} for k in range(per_post)]
        n += per_post // 2
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        sent[0] += per_post
        stop.wait(max(0.0, per_post / rate - (time.monotonic() - started)))
    return sent


def serving(args, work: Path) -> dict:
    BASE.write(work / "off.toml")
    Config(server_table(), [model_table("mlp", "models/mlp.onnx", batching={"max_batch_size": 256},
                                        performance=PERFORMANCE)]).write(work / "on.toml")
    rps: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    counted: list[dict] = []
    for mode in ("off", "on") * args.rounds:
        server = serve(work / f"{mode}.toml")
        stop, sent = threading.Event(), [0]
        poster = None
        try:
            if mode == "on" and args.labels_per_s > 0:
                poster = threading.Thread(target=lambda: sent.__setitem__(
                    0, _labels(server.http_url, stop, args.labels_per_s)[0]))
                poster.start()
            pids = tree(server.proc.pid)
            before = cpu_s(pids)
            r = run_load(server.url, "mlp", 32, 2, 1, 2.0, args.duration, pool=131_072, ids=True)
            used = cpu_s(pids) - before
            stop.set()
            if mode == "on":
                if poster is not None:
                    poster.join()
                time.sleep(1.5)  # the workers' counters reach /metrics
                m = server.metrics()
                labelled = {k.split('outcome="')[1][:-2]: v for k, v in m.items()
                            if k.startswith("scorewire_feedback_labels_total")}
                counted.append({"labels_sent": sent[0], **labelled,
                                "dropped": m.get("scorewire_performance_dropped_total", 0.0),
                                "rows_in_window": m.get('scorewire_performance_rows{model="mlp",version="1",'
                                                        'role="champion"}', 0.0)})
        finally:
            server.stop_and_read(timeout_s=120)
        rps[mode].append(r["requests_per_s"])
        cpu[mode].append(used / (r["requests_per_s"] * (args.duration + 2.0)) * 1e6)
        note = f"  labels: {counted[-1]}" if mode == "on" else ""
        print(f"performance {mode:3}: {r['requests_per_s']:,.0f} req/s  p99 {r['p99_ms']:.2f} ms  "
              f"server CPU {cpu[mode][-1]:.1f} us/req{note}", flush=True)
    off, on = float(np.mean(rps["off"])), float(np.mean(rps["on"]))
    return {"requests_per_s_off": off, "requests_per_s_on": on, "retained": on / off, "runs": rps,
            "server_cpu_us_per_request": cpu, "on_counts": counted, "load": LOAD, "duration_s": args.duration}


def join_alone(n: int = 100_000) -> dict:
    from engine.batching.batch import Origin, ScoredBatch
    from engine.performance.join import Labels, PerformanceMonitor
    from engine.settings import ModelSettings, Settings

    settings = Settings(models=[ModelSettings(name="m", path="m.onnx", performance=PERFORMANCE)])
    pm = PerformanceMonitor(settings, thread=False)
    rng = np.random.default_rng(1)
    p = rng.random((n, 2))
    batches = [ScoredBatch("m", "1", "champion", {}, {"probabilities": p[a:a + 64]}, np.zeros(64), np.zeros(64), 1,
                           min(64, n - a), tuple(range(min(64, n - a) + 1)),
                           tuple(Origin(request_id=f"r{i}") for i in range(a, min(a + 64, n))), 0)
               for a in range(0, n, 64)]
    label_sets = [Labels("m", tuple(f"r{i}" for i in range(a, a + 500)), np.ones(500, np.int64),
                      (rng.random(500) < 0.5).astype(np.float64)) for a in range(0, n, 500)]
    started = time.perf_counter()
    for b in batches:
        pm._batch(b, 0)
    for labels in label_sets:
        pm._labels(labels, 0)
    pm._publish()
    seconds = time.perf_counter() - started
    pm.close()
    joined = pm.models["m"].counts["joined"]
    return {"rows": n, "labels": n, "joined": joined, "seconds": seconds, "rows_and_labels_per_s": 2 * n / seconds}


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, extra=lambda parser: parser.add_argument(
        "--labels-per-s", type=float, default=1000.0, help="the label stream's rate (0: none)"))
    work = Path(tempfile.mkdtemp(prefix="scorewire-feedback-bench-"))
    prepare_demo(work)
    summary = serving(args, work)
    summary["join_alone"] = join_alone()
    bound = json.loads((Path(__file__).parent / "bounds.json").read_text())["feedback_bench"]["retained"]
    dropped = sum(c["dropped"] for c in summary["on_counts"])
    met = summary["retained"] >= bound and dropped == 0
    ja = summary["join_alone"]
    table = (f"| performance + labels | requests/s (mean of {args.rounds}) |\n|---|---|\n"
             f"| off | {summary['requests_per_s_off']:,.0f} |\n| on | {summary['requests_per_s_on']:,.0f} |\n\n"
             f"retained: {summary['retained']:.1%} (per round: "
             f"{', '.join(f'{b / a:.0%}' for a, b in zip(summary['runs']['off'], summary['runs']['on']))}); "
             f"rows and labels the join dropped: {dropped:.0f}\n\n"
             f"server CPU per request (median): off {np.median(summary['server_cpu_us_per_request']['off']):.0f} us, "
             f"on {np.median(summary['server_cpu_us_per_request']['on']):.0f} us\n\n"
             f"on runs: {summary['on_counts']}\n\n"
             f"the join alone: {ja['rows']:,} rows and {ja['labels']:,} labels ({ja['joined']:,} joined) in "
             f"{ja['seconds']:.2f} s: {ja['rows_and_labels_per_s']:,.0f} rows + labels per second\n")
    verdict = f"bound (bench/bounds.json): retained >= {bound:.0%}, none dropped: " + ("met" if met else "MISSED")
    print("\n" + table + "\n" + verdict)
    if args.json is not None:
        from bench.report import write_json

        write_json(args.json, summary, f"# python -m bench.feedback_bench --rounds {args.rounds} --duration "
                   f"{args.duration:.0f} --labels-per-s {args.labels_per_s:.0f}\n\n{LOAD}, {args.duration:.0f} s per run, 2 cores shared with the load "
                   f"generator and the label poster.\n\n{table}\n{verdict}\n")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
