"""Batching on against batching off, one-row requests over gRPC and REST, at 1, 8 and 32 callers.

    python -m bench.batching_bench [--duration S] [--rounds R] [--instances N] [--idle] [--json FILE]

Why: a batcher that waits for company nobody brings costs every request its delay (issue 37:
one-row REST at 8 callers, 2 workers, 2,291 req/s with batching 64 / 2 ms against 4,405 with it
off). The servers, all up at once, `workers = 2`, the demo MLP:

- **off**: `max_batch_size = 1` (every request its own batch, nothing waits);
- **delay**: `max_batch_size = 64`, `max_queue_delay_us = 2000`, `dispatch = "delay"`: the old
  batcher (every batch's first request waits up to 2 ms unless the batch fills);
- **free_slot**: `max_batch_size = 64`, the default `dispatch`: a batch goes when an instance is
  free and grows only while every instance is busy;
- with `--idle`, also **idle**: `dispatch = "idle"` (goes at once when nothing runs, waits up
  to 2 ms for company while a batch runs): differs from free_slot only with `--instances 2` or more.

Load: closed loop, the same clients as `bench.grpc_bench` (tritonclient.grpc.aio) and
`bench.rest_bench` (aiohttp, JSON `data`), in 1 process at 1 caller and 2 otherwise, on the
same cores as the servers. Each (transport, callers) cell runs every server in turn, R rounds,
the order rotated each round so that the machine's drift hits all alike. Reported: mean
requests/s, each batching server's ratio to off, p99 and the CPU of the server's processes per
request, and the mean rows per batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.grpc_bench import run_load
from bench.onoff import cpu_s, tree
from bench.report import write_json
from bench.rest_bench import run as run_rest
from bench.servers import prepare_demo, serve
from engine.harness.config import Config, model_table, server_table

CALLERS = (1, 8, 32)
TRANSPORTS = ("grpc", "rest")


def configs(instances: int, idle: bool) -> dict[str, Config]:
    """The servers compared, by name (off first: the ratios' base)."""
    def one(batching: dict) -> Config:
        return Config(server_table(workers=2),
                      [model_table("mlp", "models/mlp.onnx", instances=instances, batching=batching)])

    out = {"off": one({"max_batch_size": 1}),
           "delay": one({"max_batch_size": 64, "max_queue_delay_us": 2000, "dispatch": "delay"}),
           "free_slot": one({"max_batch_size": 64, "max_queue_delay_us": 2000, "dispatch": "free_slot"})}
    if idle:
        out["idle"] = one({"max_batch_size": 64, "max_queue_delay_us": 2000, "dispatch": "idle"})
    return out


BATCHES, ROWS = 'scorewire_batches_total{model="mlp",version="1"}', 'scorewire_rows_total{model="mlp",version="1"}'


def measure(transport: str, server, callers: int, warmup_s: float, duration_s: float) -> dict:
    """One closed-loop run of `callers` one-row callers against `server`; with the mean rows
    per batch over it (the workers' counters reach /metrics every 0.25 s: a few batches of
    the run before or after may count in it)."""
    pids = tree(server.proc.pid)
    procs = 1 if callers == 1 else 2
    counts = server.metrics()
    if transport == "rest":
        url = f"http://{server.http_url}/v2/models/mlp/infer"
        r = run_rest(url, pids, duration_s, procs=procs, callers=callers // procs, warmup_s=warmup_s)
        out = {k: r[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")}
    else:
        before = cpu_s(pids)
        r = run_load(server.url, "mlp", callers, procs, 1, warmup_s, duration_s, pool=131_072)
        used = cpu_s(pids) - before  # over warm-up + measured load, at about the same rate
        out = {"requests_per_s": r["requests_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
               "server_cpu_us_per_request": used / (r["requests_per_s"] * (duration_s + warmup_s)) * 1e6}
    time.sleep(0.3)
    after = server.metrics()
    batches = after.get(BATCHES, 0) - counts.get(BATCHES, 0)
    out["rows_per_batch"] = (after.get(ROWS, 0) - counts.get(ROWS, 0)) / batches if batches else float("nan")
    return out


def table(results: dict, names: list[str]) -> str:
    """Markdown: a row per (transport, callers), requests/s and ratio to off per server."""
    head = "| transport | callers | " + " | ".join(f"{n} req/s" for n in names) + " | " + " | ".join(
        f"{n} / off" for n in names[1:]) + " | p99 ms (" + ", ".join(names) + ") | server CPU us/req (" + \
        ", ".join(names) + ") | rows/batch (" + ", ".join(names) + ") |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (transport, callers), runs in results.items():
        mean = {n: float(np.mean([r["requests_per_s"] for r in runs[n]])) for n in names}
        p99 = {n: float(np.median([r["p99_ms"] for r in runs[n]])) for n in names}
        cpu = {n: float(np.median([r["server_cpu_us_per_request"] for r in runs[n]])) for n in names}
        size = {n: float(np.median([r["rows_per_batch"] for r in runs[n]])) for n in names}
        lines.append(f"| {transport} | {callers} | " + " | ".join(f"{mean[n]:,.0f}" for n in names) + " | "
                     + " | ".join(f"{mean[n] / mean['off']:.2f}x" for n in names[1:]) + " | "
                     + ", ".join(f"{p99[n]:.2f}" for n in names) + " | "
                     + ", ".join(f"{cpu[n]:.0f}" for n in names) + " | "
                     + ", ".join(f"{size[n]:.1f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each run's measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--instances", type=int, default=1, help="ONNX Runtime sessions per worker")
    p.add_argument("--idle", action="store_true", help='also dispatch = "idle"')
    p.add_argument("--callers", type=int, nargs="+", default=list(CALLERS))
    p.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="batching-bench-"))
    prepare_demo(work)
    servers = {}
    results: dict[tuple[str, int], dict[str, list[dict]]] = {}
    try:
        for name, config in configs(args.instances, args.idle).items():
            servers[name] = serve(config.write(work / f"{name}.toml"))
        names = list(servers)
        for transport in args.transports:
            for callers in args.callers:
                cell = results.setdefault((transport, callers), {n: [] for n in names})
                for r in range(args.rounds):
                    for name in names[r % len(names):] + names[:r % len(names)]:
                        m = measure(transport, servers[name], callers, args.warmup, args.duration)
                        cell[name].append(m)
                        print(f"{transport} c{callers} {name:9}: {m['requests_per_s']:8,.0f} req/s  "
                              f"p99 {m['p99_ms']:6.2f} ms  server CPU {m['server_cpu_us_per_request']:5.0f} us/req  "
                              f"{m['rows_per_batch']:5.1f} rows/batch",
                              file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop_and_read(timeout_s=60)
    command = (f"python -m bench.batching_bench --duration {args.duration:g} --warmup {args.warmup:g} "
               f"--rounds {args.rounds} --instances {args.instances}" + (" --idle" if args.idle else "")
               + (f" --callers {' '.join(map(str, args.callers))}" if args.callers != list(CALLERS) else "")
               + (f" --transports {' '.join(args.transports)}" if args.transports != list(TRANSPORTS) else ""))
    text = (f"# {command}\n\nOne-row requests, the demo MLP, `workers = 2`, instances = {args.instances}, closed loop "
            f"on the same {os.cpu_count()} cores as the servers; {args.duration:g} s per run after {args.warmup:g} s "
            f"of load, {args.rounds} rounds in rotated order; requests/s are means, p99 and CPU medians.\n\n"
            + table(results, names))
    print(text)
    if args.json is not None:
        write_json(args.json, {"command": command, "cells": [
            {"transport": t, "callers": c, "runs": runs} for (t, c), runs in results.items()]}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
