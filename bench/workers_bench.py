"""Several workers vs one, beside MLServer, with one-row requests; and what monitoring, a
challenger and the scoring log cost with several workers. Everything in one run.

    python -m bench.workers_bench [--duration S] [--rounds R] [--json FILE] [--check]
    python -m bench.workers_bench --mlserver /path/to/venv/bin/mlserver   # the peer, if installed

Part 1, serving: the demo MLP, one row per request, closed loop (tritonclient.grpc.aio in 2
processes) at concurrency 8 and 32, against `workers = 1`, `workers = 2` and MLServer 1.7
(custom onnxruntime runtime, bench/mlserver_onnx, parallel_workers 0), in turns, R rounds.
Reported: requests/s, p50/p99, and server CPU per request -- the CPU of every process of the
server (supervisor, workers, observer; MLServer's own tree) over the load, per request.

Part 2, watching (workers = 2, concurrency 8, one-row requests): off (latency only), drift on
(32 features + the prediction, window 10,000, every 1,000), and one challenger plus the
scoring log; requests/s kept, and the rows the monitor and the hand-off dropped (read from
/metrics before shutting down and from the shutdown summary).

The load generator runs on the same 2 cores as the server: its CPU is reported (client CPU),
and so is the machine's, so a figure says what limited it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.grpc_bench import run_load
from engine.harness.server import scrape
from bench.onoff import cpu_s, tree
from bench.report import write_json
from bench.servers import prepare_demo, serve, start_null_server, stop
from engine.harness.config import Config, model_table, route_table, server_table

WARMUP_S = 2.0
NULL = "null OIP server"  # bench/null_server.py: Python grpc.aio answering a canned response, no work
FEATURES = [f"f{i}" for i in range(32)]

MONITOR = {"features": FEATURES, "outputs": ["probabilities:1"], "reference": "ref.npz", "window": 10000,
           "every": 1000}


def server_config(workers: int) -> Config:
    """The demo's MLP served by `workers` processes."""
    return Config(server_table(workers=workers),
                  [model_table("mlp", "models/mlp.onnx", batching={"max_batch_size": 64, "max_queue_delay_us": 200})])


def challenged(config: Config, run: int) -> Config:
    """`config` with a second version of the MLP shadowing the first, every row logged in log-RUN."""
    return config.add(models=[model_table("mlp", "models/mlp.onnx", version="2")],
                      routes=[route_table("mlp", "1", challengers=["2"])], scorelog={"dir": f"log-{run}"})


def machine_busy() -> tuple[float, float]:
    fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def measure(url: str, server_pids: list[int], concurrency: int, duration_s: float) -> dict:
    before_cpu = cpu_s(server_pids)
    before_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = machine_busy()
    r = run_load(url, "mlp", concurrency, 2, 1, WARMUP_S, duration_s, pool=131_072)
    busy1, total1 = machine_busy()
    after_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = cpu_s(server_pids) - before_cpu
    requests = r["requests_per_s"] * (duration_s + WARMUP_S)  # approximately: warm-up at the same rate
    client = (after_client.ru_utime + after_client.ru_stime - before_client.ru_utime - before_client.ru_stime)
    cores = os.cpu_count() or 1
    return {**r, "server_cpu_us_per_request": used / requests * 1e6,
            "server_cores": used / (duration_s + WARMUP_S), "client_cores": client / (duration_s + WARMUP_S),
            "machine_busy": (busy1 - busy0) / (total1 - total0), "cores": cores}


def start_mlserver(mlserver: str, work: Path) -> tuple[subprocess.Popen, str]:
    folder = work / "mlserver"
    model = folder / "mlp"
    model.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).parent / "mlserver_onnx" / "runtime.py", model / "runtime.py")
    ports = [free_port() for _ in range(3)]
    (folder / "settings.json").write_text(json.dumps({
        "parallel_workers": 0, "http_port": ports[0], "grpc_port": ports[1], "metrics_port": ports[2],
        "debug": False, "host": "127.0.0.1"}))
    (model / "model-settings.json").write_text(json.dumps({
        "name": "mlp", "implementation": "runtime.OnnxRuntime",
        "parameters": {"uri": str(work / "models" / "mlp.onnx")}}))
    proc = subprocess.Popen([mlserver, "start", str(folder)], cwd=model, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"127.0.0.1:{ports[1]}"
    import tritonclient.grpc as g

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            c = g.InferenceServerClient(url)
            if c.is_model_ready("mlp"):
                c.close()
                return proc, url
            c.close()
        except Exception:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"mlserver exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("mlserver did not become ready")


def free_port() -> int:
    """A free TCP port on loopback, for a server that cannot be told to pick its own."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_serving(work: Path, args) -> list[dict]:
    configs = {}
    for workers in (1, 2):
        configs[f"scorewire workers={workers}"] = server_config(workers).write(work / f"w{workers}.toml")
    names = list(configs) + (["mlserver 1.7"] if args.mlserver else []) + [NULL]
    rows = []
    for round_ in range(args.rounds):
        for name in names:
            if name.startswith("mlserver"):
                proc, url = start_mlserver(args.mlserver, work)
            elif name == NULL:
                proc, url = start_null_server()
            else:
                served = serve(configs[name])
                proc, url = served.proc, served.url
            try:
                time.sleep(0.5)
                pids = tree(proc.pid)
                for c in (8, 32):
                    r = measure(url, pids, c, args.duration)
                    rows.append({"server": name, "concurrency": c, "round": round_, **r})
                    print(f"{name:22} c={c:<3} {r['requests_per_s']:8,.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                          f"p99 {r['p99_ms']:6.2f} ms  server CPU {r['server_cpu_us_per_request']:6.1f} us/req  "
                          f"server {r['server_cores']:.2f} cores, client {r['client_cores']:.2f}, "
                          f"machine {r['machine_busy']:.0%}", flush=True)
            finally:
                stop(proc, timeout_s=120)
    return rows


SUMMARY = re.compile(r"monitor: (\d+) rows observed, (\d+) dropped, (\d+) failed")


def part_watching(work: Path, args) -> list[dict]:
    base = server_config(2)
    modes = {"off": lambda run: base,
             "drift on": lambda run: replace(base, models=[{**base.models[0], "monitor": MONITOR}]),
             "challenger + scoring log": lambda run: challenged(base, run)}
    rows = []
    for round_ in range(args.rounds):
        for mode, config in modes.items():
            served = serve(config(len(rows)).write(work / f"watch-{len(rows)}.toml"))
            try:
                time.sleep(0.5)
                r = measure(served.url, tree(served.proc.pid), 8, args.duration)
                time.sleep(1.0)
                m = scrape(served.metrics_url)
            finally:
                out = stop(served.proc, timeout_s=120)
            summary = SUMMARY.search(out)
            handoff = sum(v for k, v in m.items() if k.startswith("scorewire_handoff_dropped_rows_total"))
            shadow = {k: v for k, v in m.items() if k.startswith("scorewire_shadow_rows_total")}
            log_dropped = m.get('scorewire_scorelog_rows_total{outcome="dropped"}', 0)
            row = {"mode": mode, "round": round_, **r, "handoff_dropped_rows": handoff,
                   "monitor_rows_observed": int(summary.group(1)) if summary else None,
                   "monitor_rows_dropped": int(summary.group(2)) if summary else None,
                   "shadow_rows": shadow, "scorelog_rows_dropped": log_dropped}
            rows.append(row)
            print(f"{mode:26} {r['requests_per_s']:8,.0f} req/s  p99 {r['p99_ms']:6.2f} ms  server CPU "
                  f"{r['server_cpu_us_per_request']:6.1f} us/req  monitor observed {row['monitor_rows_observed']} "
                  f"dropped {row['monitor_rows_dropped']}, hand-off dropped {handoff:.0f}, log dropped {log_dropped:.0f}, "
                  f"shadow {shadow}", flush=True)
    return rows


def _mean(rows, **match) -> dict:
    chosen = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return {k: float(np.mean([r[k] for r in chosen])) for k in
            ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request", "server_cores", "client_cores",
             "machine_busy")}


def report(serving: list[dict], watching: list[dict], args) -> tuple[str, dict, list[str]]:
    bounds = json.loads((Path(__file__).parent / "bounds.json").read_text())["workers_bench"]
    lines = ["| server | callers | requests/s | p50 ms | p99 ms | server CPU us/request | server cores | "
             "client cores | machine busy |", "|---|---|---|---|---|---|---|---|---|"]
    summary: dict = {"serving": {}, "watching": {}}
    servers = list(dict.fromkeys(r["server"] for r in serving))
    for c in (8, 32):
        for name in servers:
            m = _mean(serving, server=name, concurrency=c)
            summary["serving"][f"{name} c={c}"] = m
            lines.append(f"| {name} | {c} | {m['requests_per_s']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                         f"{m['server_cpu_us_per_request']:.0f} | {m['server_cores']:.2f} | {m['client_cores']:.2f} | "
                         f"{m['machine_busy']:.0%} |")
    verdicts = []
    for c in (8, 32):
        two, one = summary["serving"][f"scorewire workers=2 c={c}"], summary["serving"][f"scorewire workers=1 c={c}"]
        verdicts.append(f"c={c}: workers=2 / workers=1 = {two['requests_per_s'] / one['requests_per_s']:.2f}x "
                        f"requests/s, CPU per request {two['server_cpu_us_per_request'] / one['server_cpu_us_per_request']:.2f}x")
        peer = summary["serving"].get(f"mlserver 1.7 c={c}")
        if peer is not None:
            for name in ("scorewire workers=1", "scorewire workers=2"):
                mine = summary["serving"][f"{name} c={c}"]
                speed = mine["requests_per_s"] / peer["requests_per_s"]
                cheaper = peer["server_cpu_us_per_request"] / mine["server_cpu_us_per_request"]
                ok = speed >= bounds["vs_mlserver_requests"] and cheaper >= bounds["vs_mlserver_cpu"]
                verdicts.append(f"c={c}: {name} vs MLServer: {speed:.2f}x requests/s, {cheaper:.2f}x cheaper in "
                                f"server CPU per request (bound {bounds['vs_mlserver_requests']}x / "
                                f"{bounds['vs_mlserver_cpu']}x: {'met' if ok else 'MISSED'})")
        null = summary["serving"].get(f"{NULL} c={c}")
        if null is not None and peer is not None:
            verdicts.append(f"c={c}: the null server (grpc.aio, no work) costs {null['server_cpu_us_per_request']:.0f} us "
                            f"of server CPU per request; a third of MLServer's would be "
                            f"{peer['server_cpu_us_per_request'] / 3:.0f} us")
    lines += ["", "| workers = 2, 8 callers | requests/s | kept | p99 ms | server CPU us/request | monitor dropped | "
              "hand-off dropped | log dropped |", "|---|---|---|---|---|---|---|---|"]
    off = _mean(watching, mode="off")["requests_per_s"]
    for mode in dict.fromkeys(r["mode"] for r in watching):
        m = _mean(watching, mode=mode)
        chosen = [r for r in watching if r["mode"] == mode]
        dropped = sum((r["monitor_rows_dropped"] or 0) for r in chosen)
        handoff = sum(r["handoff_dropped_rows"] for r in chosen)
        log_dropped = sum(r["scorelog_rows_dropped"] for r in chosen)
        kept = m["requests_per_s"] / off
        summary["watching"][mode] = {**m, "kept": kept, "monitor_rows_dropped": dropped,
                                     "handoff_rows_dropped": handoff, "scorelog_rows_dropped": log_dropped}
        lines.append(f"| {mode} | {m['requests_per_s']:,.0f} | {kept:.0%} | {m['p99_ms']:.2f} | "
                     f"{m['server_cpu_us_per_request']:.0f} | {dropped} | {handoff:.0f} | {log_dropped:.0f} |")
        bound = {"drift on": bounds["monitor_kept"], "challenger + scoring log": bounds["challenger_kept"]}.get(mode)
        if bound is not None:
            ok = kept >= bound and dropped == 0 and handoff == 0 and log_dropped == 0
            verdicts.append(f"{mode}: {kept:.0%} of the requests/s kept, {dropped + handoff + log_dropped:.0f} rows "
                            f"dropped (bound: >= {bound:.0%} kept, none dropped: {'met' if ok else 'MISSED'})")
    return "\n".join(lines), summary, verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mlserver", help="the `mlserver` command of an environment with MLServer 1.7 "
                                           "(default: `mlserver` on PATH, if there)")
    parser.add_argument("--only", choices=["serving", "watching"], help="run one part (no report file)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 when a bound in bench/bounds.json is missed")
    args = parser.parse_args(argv)
    args.mlserver = args.mlserver or shutil.which("mlserver")
    work = Path(tempfile.mkdtemp(prefix="scorewire-workers-bench-"))
    prepare_demo(work)
    import onnxruntime as ort

    x = np.random.default_rng(7).normal(size=(5000, 32)).astype(np.float32)  # drawn as the load's rows are
    session = ort.InferenceSession(str(work / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    np.savez(work / "ref.npz", **{f: x[:, i] for i, f in enumerate(FEATURES)},
             **{"probabilities:1": session.run(["probabilities"], {"float_input": x})[0][:, 1]})
    if not args.mlserver:
        print("MLServer not found (--mlserver): the peer is left out of this run", flush=True)
    serving = [] if args.only == "watching" else part_serving(work, args)
    watching = [] if args.only == "serving" else part_watching(work, args)
    if args.only:
        return 0
    table, summary, verdicts = report(serving, watching, args)
    text = (f"{table}\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
    print("\n" + text)
    summary.update({"runs_serving": serving, "runs_watching": watching, "duration_s": args.duration,
                    "rounds": args.rounds, "verdicts": verdicts})
    if args.json is not None:
        write_json(args.json, summary, f"# python -m bench.workers_bench --rounds {args.rounds} --duration "
                   f"{args.duration:g}{' --mlserver ...' if args.mlserver else ''}\n\n"
                   f"One-row requests, closed loop, tritonclient.grpc.aio in 2 processes on the same "
                   f"{os.cpu_count()} cores as the server; {args.duration:g} s per run after {WARMUP_S:g} s of "
                   f"warm-up, {args.rounds} rounds in turns, means shown.\n\n{text}")
    return 1 if args.check and any("MISSED" in v for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
