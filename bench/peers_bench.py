"""scorewire beside the servers its users would otherwise pick, each serving the same ONNX model
as its own users would, one at a time, in one run.

    python -m bench.peers_bench [--peers scorewire floor mlserver kserve pytriton bentoml litserve ray]
                                [--duration 10] [--rows 1 64] [--concurrency 8 32] [--passes 3]
                                [--workers N] [--delay-us 2000] [--json bench/results/peers-bench.json]

The model is the demo's MLP (`scorewire demo --prepare-only`: 32 float features, label and
probabilities). The peers (bench/peer_servers.py starts them; bench/peers/ holds their scripts):
MLServer with a custom onnxruntime runtime, KServe's ModelServer with a kserve.Model, PyTriton's
bind with dynamic batching, a BentoML service with adaptive batching, a LitServe API with
batching, a Ray Serve deployment with @serve.batch, and the hand-written floor (grpc.aio +
aiohttp + onnxruntime, one process, no batching). Each peer runs in its own venv, made by the
bench under ~/.cache/scorewire-peers/PEER (bench/peer_envs.py); one that fails to install,
start or answer correctly is reported with the reason, never left out.

Before it is timed, each server must answer what onnxruntime answers on the same 64 rows (REST,
and gRPC where it speaks the Open Inference Protocol). Then, for every protocol it speaks
(gRPC: tritonclient.grpc.aio, closed loop in 2 processes, bench/grpc_bench.py; REST: wrk,
bench/wrk.py), every request size (--rows) and every concurrency (--concurrency): requests/s,
p50/p99, the server's CPU per request over its whole process tree, the tree's RSS and PSS, the
client's and the machine's CPU, and what limited the figure. --passes repeats the whole round
(every server started afresh), so the machine's drift falls on all; the report shows medians,
with ratios to scorewire's medians from the same run.

Everything shares the machine: the clients run on the same cores as the server, which is why
the client's CPU is measured and named when it is the limit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import proctree, wrk
from bench.grpc_bench import run_load
from bench.limits import limit
from bench.peer_envs import CACHE, ensure
from bench.peer_envs import wrk as find_wrk
from bench.peer_servers import ALL_PEERS, OIP_PEERS, VENV_PEERS, Running, body, check, start, stop, tail
from bench.report import write_json
from bench.servers import prepare_demo

RESULTS = Path(__file__).parent / "results" / "peers-bench.json"
FULL_DURATION_S, FULL_PASSES = 10.0, 3  # below either, the report calls itself a short functional run
GRPC_PROCS = 2
SETTLE_S = 3.0


def limit_of(cpu: dict, client_cores: float, client_loops: int) -> dict:
    """bench/limits.py's verdict on a cell ({"kind", "why"}), and when the machine was the limit,
    whose use was largest: on a shared machine that is often neither server nor client."""
    verdict = limit({"cpu": cpu, "client_loop_cpu": client_cores / client_loops, "client_cpu_total": client_cores})
    if verdict["kind"] == "machine":
        other = max(0.0, cpu["machine_busy_cores"] - cpu["cores"] - client_cores)
        top = max((cpu["cores"], "server"), (client_cores, "client"), (other, "other processes"))[1]
        verdict["kind"] = f"machine: {top}"
    return verdict


def measure(run: Running, protocol: str, rows: int, concurrency: int, duration_s: float, x: np.ndarray,
            wrk_cmd: tuple[str, dict]) -> dict:
    """One cell: warm-up, then the timed load with the CPU and memory readings around it."""
    warmup = min(2.0, duration_s / 2)
    pid = run.proc.pid
    if protocol == "rest":
        payload = body(run.style, x[:rows])
        wrk.run(*wrk_cmd, run.rest_url, payload, concurrency, warmup)
        a = proctree.snapshot(pid, time.monotonic())
        r = wrk.run(*wrk_cmd, run.rest_url, payload, concurrency, duration_s)
        b = proctree.snapshot(pid, time.monotonic())
        requests, client_s, loops = r["requests"], r["client_cpu_s"], min(wrk.THREADS, concurrency)
        out = {"requests_per_s": r["requests_per_s"], "p50_ms": r["p50_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
               "errors": r["errors"]}
    else:
        # the clients' processes start, import and warm up before their measured window, which
        # ends when they do: snapshots are taken throughout and cut to that window afterwards
        with proctree.Sampler(pid) as sampler:
            r = run_load(run.grpc, "mlp", concurrency, GRPC_PROCS, rows, warmup, duration_s, pool=4096)
            t1 = time.monotonic()
        a, b, client_s = sampler.window(t1 - duration_s - 0.1, t1)
        requests, loops = r["requests"], min(GRPC_PROCS, concurrency)
        out = {"requests_per_s": r["requests_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": 0}
    run.pids_seen |= set(b.tree_s)
    wall = max(b.at - a.at, 1e-9)
    cpu = {**proctree.between(a, b), "server_cores": proctree.cores(pid)}
    client_cores = client_s / wall
    verdict = limit_of(cpu, client_cores, loops)
    out.update({
        "server_cpu_us_per_request": cpu["cores"] * wall / requests * 1e6 if requests else None,
        "server_cores": cpu["cores"], "client_cores": client_cores,
        "other_cores": max(0.0, cpu["machine_busy_cores"] - cpu["cores"] - client_cores),
        "busiest_main_thread": cpu["busiest_main_thread"],
        "machine_busy": cpu["machine_busy_cores"] / max(1, cpu["machine_cores"]),
        "limit": verdict["kind"] + (f"; {out['errors']} errors" if out["errors"] else ""), "limit_why": verdict["why"],
        **proctree.memory(pid)})
    return out


def serve_and_measure(peer: str, args, work: Path, x: np.ndarray, expected: np.ndarray, wrk_cmd) -> dict:
    """Start `peer`, check it, run its cells, stop it. Returns {"status", "reason", "settings",
    "idle": memory, "cells": [...]}; a failure at any step is the status, never an exception."""
    env = None
    if peer in VENV_PEERS:
        env = ensure(peer, args.cache)
        if env.python is None:
            return {"status": "install failed", "reason": env.error, "cells": []}
    try:
        run = start(peer, env, work, args.workers, args.max_batch, args.delay_us)
    except (SystemExit, RuntimeError, OSError) as exc:
        return {"status": "start failed", "reason": str(exc)[:500], "cells": []}
    result = {"status": "ok", "reason": "", "settings": run.settings, "cells": []}
    try:
        check(run, x, expected)
        # settle: lazily started workers, replicas and JIT paths come up before any cell's warm-up
        wrk.run(*wrk_cmd, run.rest_url, body(run.style, x[:1]), 8, SETTLE_S)
        time.sleep(1.0)
        result["idle"] = proctree.memory(run.proc.pid)
        protocols = [p for p in args.protocols if p == "rest" or peer in OIP_PEERS]
        for protocol in protocols:
            for rows in args.rows:
                for c in args.concurrency:
                    cell = {"protocol": protocol, "rows": rows, "concurrency": c}
                    if run.proc.poll() is not None:
                        raise RuntimeError(f"exited with {run.proc.returncode} under load: {tail(run.log)}")
                    try:
                        cell.update(measure(run, protocol, rows, c, args.duration, x, wrk_cmd))
                    except Exception as exc:  # a cell that breaks is reported, the others still run
                        cell["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    result["cells"].append(cell)
                    _print(peer, cell)
    except RuntimeError as exc:
        result.update(status="check failed" if not result["cells"] else "died", reason=str(exc)[:500])
    finally:
        stop(run)
    return result


def _print(peer: str, c: dict) -> None:
    where = f"{peer:10} {c['protocol']:4} rows={c['rows']:<3} c={c['concurrency']:<3}"
    if "error" in c:
        print(f"{where} ERROR {c['error']}", flush=True)
        return
    print(f"{where} {c['requests_per_s']:8,.0f} req/s  p50 {c['p50_ms']:7.2f} ms  p99 {c['p99_ms']:7.2f} ms  "
          f"server {c['server_cpu_us_per_request'] or 0:7.0f} us/req  server {c['server_cores']:.2f} cores, client "
          f"{c['client_cores']:.2f}, busy {c['machine_busy']:.0%}  PSS {c['pss_mib']:.0f} MiB  [{c['limit']}]",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="see the module docstring")
    p.add_argument("--peers", nargs="+", default=list(ALL_PEERS), choices=list(ALL_PEERS))
    p.add_argument("--duration", type=float, default=FULL_DURATION_S, help="seconds per cell (after a warm-up)")
    p.add_argument("--rows", nargs="+", type=int, default=[1, 64], help="rows per request")
    p.add_argument("--concurrency", nargs="+", type=int, default=[8, 32], help="requests in flight")
    p.add_argument("--passes", type=int, default=FULL_PASSES, help="rounds over every server")
    p.add_argument("--protocols", nargs="+", default=["grpc", "rest"], choices=["grpc", "rest"])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes / replicas for every server that has them (default: the cores)")
    p.add_argument("--max-batch", type=int, default=64, help="rows per batch for every batcher")
    p.add_argument("--delay-us", type=int, default=2000, help="longest wait for a batch to fill")
    p.add_argument("--cache", type=Path, default=CACHE, help="where the peers' venvs and wrk live")
    p.add_argument("--json", type=Path, default=RESULTS, help="results (and the Markdown beside it)")
    args = p.parse_args(argv)
    if "scorewire" not in args.peers:
        args.peers.insert(0, "scorewire")  # the ratios' baseline
    from bench.peers_report import markdown, summarize

    work = Path(tempfile.mkdtemp(prefix="scorewire-peers-bench-"))
    prepare_demo(work)
    import onnxruntime as ort

    x = np.random.default_rng(37).normal(size=(max(64, *args.rows), 32)).astype(np.float32)
    session = ort.InferenceSession(str(work / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"float_input": x})[0]
    wrk_cmd = find_wrk(args.cache)
    passes: list[dict] = []
    for n in range(args.passes):
        results = {}
        for peer in args.peers:
            print(f"-- pass {n + 1}/{args.passes}: {peer}", flush=True)
            results[peer] = serve_and_measure(peer, args, work, x, expected, wrk_cmd)
            if results[peer]["status"] != "ok":
                print(f"{peer}: {results[peer]['status']}: {results[peer]['reason']}", flush=True)
        passes.append(results)
    command = "python -m bench.peers_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    short = args.duration < FULL_DURATION_S or args.passes < FULL_PASSES
    summary = summarize(passes, args)
    text = markdown(summary, args, command.strip(), short)
    print("\n" + text)
    write_json(args.json, {"command": command.strip(), "short_functional_run": short, "duration_s": args.duration,
                           "passes": args.passes, "cores": os.cpu_count(), "workers": args.workers,
                           "max_batch": args.max_batch, "delay_us": args.delay_us, "summary": summary,
                           "runs": passes}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
