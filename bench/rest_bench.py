"""REST (Open Inference Protocol over HTTP, JSON): scorewire beside MLServer, one run.

    python -m bench.rest_bench --mlserver /path/to/venv/bin/mlserver [--duration S] [--rounds R]

The demo MLP, one row per request as JSON `data` (what curl, `requests` and languages
without a gRPC stack send), closed loop: the same client (aiohttp, 2 processes, 4 callers
each) against scorewire `workers = 1`, `workers = 2` and MLServer 1.7 (custom onnxruntime
runtime, bench/mlserver_onnx, parallel_workers 0), in turns, R rounds. Reported: requests/s,
p50/p99 and the CPU of every process of the server per request; the client's CPU too (it
shares the 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.proctree import cpu_s, tree
from bench.servers import prepare_demo, serve, stop
from bench.workers_bench import server_config, start_mlserver

WARMUP_S = 2.0


def _client(url: str, callers: int, warmup_s: float, duration_s: float, seed: int, conn) -> None:
    import aiohttp
    import uvloop

    rng = np.random.default_rng(seed)
    bodies = [json.dumps({"inputs": [{"name": "float_input", "shape": [1, 32], "datatype": "FP32",
                                      "data": row.tolist()}]}).encode() for row in rng.random((512, 32))]

    async def main() -> list[float]:
        latencies: list[float] = []
        start = time.monotonic()
        measure_from, stop = start + warmup_s, start + warmup_s + duration_s
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=callers)) as session:
            async def caller(k: int) -> None:
                i = k
                while (now := time.monotonic()) < stop:
                    async with session.post(url, data=bodies[i % len(bodies)],
                                            headers={"Content-Type": "application/json"}) as r:
                        body = await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")
                    if now >= measure_from:
                        latencies.append(time.monotonic() - now)
                    i += callers

            await asyncio.gather(*(caller(k) for k in range(callers)))
        return latencies

    conn.send(uvloop.run(main()))


def run(url: str, pids: list[int], duration_s: float, procs: int = 2, callers: int = 4,
        warmup_s: float = WARMUP_S) -> dict:
    ctx = mp.get_context("spawn")
    pipes, workers = [], []
    before = cpu_s(pids)
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for i in range(procs):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_client, args=(url, callers, warmup_s, duration_s, 100 + i, child))
        p.start()
        pipes.append(parent)
        workers.append(p)
    latencies = np.concatenate([np.array(parent.recv()) for parent in pipes])
    for p in workers:
        p.join()
    used = cpu_s(pids) - before
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = len(latencies) * (duration_s + warmup_s) / duration_s  # the warm-up ran at about the same rate
    client = client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime
    return {"requests_per_s": len(latencies) / duration_s, "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3), "server_cpu_us_per_request": used / requests * 1e6,
            "client_cores": client / (duration_s + warmup_s)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mlserver", help="the mlserver command of an environment with MLServer 1.7")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rest-bench-"))
    prepare_demo(work)
    servers: dict[str, tuple] = {}
    try:
        for workers in (1, 2):
            served = serve(server_config(workers).write(work / f"w{workers}.toml"))
            servers[f"scorewire workers={workers}"] = (served.proc, f"http://{served.http_url}/v2/models/mlp/infer")
        if args.mlserver:
            proc, _ = start_mlserver(args.mlserver, work)
            port = json.loads((work / "mlserver" / "settings.json").read_text())["http_port"]
            servers["mlserver 1.7"] = (proc, f"http://127.0.0.1:{port}/v2/models/mlp/infer")
        results: dict[str, list[dict]] = {}
        for _ in range(args.rounds):
            for name, (proc, url) in servers.items():
                results.setdefault(name, []).append(run(url, tree(proc.pid), args.duration))
    finally:
        for proc, _ in servers.values():
            stop(proc)
    print(f"# python -m bench.rest_bench --rounds {args.rounds} --duration {args.duration:g}"
          + (" --mlserver ..." if args.mlserver else ""))
    print(f"\nOne-row JSON requests (OIP REST), closed loop, 8 callers (aiohttp in 2 processes, on the same "
          f"{os.cpu_count()} cores), {args.duration:g} s per run after {WARMUP_S:g} s of warm-up, {args.rounds} rounds "
          "in turns, means shown.\n")
    print("| server | requests/s | p50 ms | p99 ms | server CPU us/request | client cores |\n|---|---|---|---|---|---|")
    means = {}
    for name, runs in results.items():
        m = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        means[name] = m
        print(f"| {name} | {m['requests_per_s']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
              f"{m['server_cpu_us_per_request']:,.0f} | {m['client_cores']:.2f} |")
    peer = means.get("mlserver 1.7")
    if peer:
        print()
        for name in ("scorewire workers=1", "scorewire workers=2"):
            m = means[name]
            print(f"- {name} vs MLServer: {m['requests_per_s'] / peer['requests_per_s']:.2f}x requests/s, "
                  f"{peer['server_cpu_us_per_request'] / m['server_cpu_us_per_request']:.2f}x cheaper in server CPU "
                  "per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
