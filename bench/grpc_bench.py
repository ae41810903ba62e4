"""gRPC scoring benchmark: requests/s and latency percentiles at several concurrencies,
next to in-process onnxruntime on the same rows (the limit), measured in one run.

    python -m bench.grpc_bench                      # starts `scorewire serve` on the demo models
    python -m bench.grpc_bench --target HOST:PORT   # any Open Inference Protocol server

Closed loop: each of C callers sends its next request when the previous answer arrives
(tritonclient.grpc.aio), spread over --procs worker processes so that the client is not one
Python thread. One row per request unless --rows says otherwise. Latency per request into an
HDR histogram (hdrhistogram package, microseconds, 3 significant figures), merged across
workers. The open-loop, coordinated-omission-free generator is a later stage (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hdrh.histogram import HdrHistogram

from bench.report import write_json
from bench.servers import start_null_server, start_scorewire, stop

N_FEATURES = 32
LOWEST_US, HIGHEST_US, SIG_FIGS = 1, 60_000_000, 3


def _histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIG_FIGS)


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(np.float32)


# -- load workers ------------------------------------------------------------------------
async def _worker_main(url, model, concurrency, rows, warmup_s, duration_s, seed, stream, pool=1024, ids=False):
    import tritonclient.grpc.aio as aio

    data = _rows(max(pool, rows + 1), seed)
    hist = _histogram()
    done = [0]
    client = aio.InferenceServerClient(url)
    t_start = time.monotonic() + warmup_s
    t_end = t_start + duration_s

    def make_input(i):
        return _input(aio, data, rows, i)

    async def streamer():
        # One bidirectional stream keeping `concurrency` requests in flight.
        queue: asyncio.Queue = asyncio.Queue()
        sent_at: dict[str, int] = {}

        async def requests():
            i = 0
            while time.monotonic() < t_end:
                await queue.get()
                rid = str(i)
                sent_at[rid] = time.perf_counter_ns()
                yield {"model_name": model, "inputs": [make_input(i)], "request_id": rid}
                i += 1

        for _ in range(concurrency):
            queue.put_nowait(None)
        async for result, error in client.stream_infer(requests()):
            t1 = time.perf_counter_ns()
            if error is not None:
                raise error
            rid = result.get_response().id
            now = time.monotonic()
            if t_start <= now < t_end:
                hist.record_value(max(1, (t1 - sent_at.pop(rid)) // 1000))
                done[0] += 1
            else:
                sent_at.pop(rid, None)
            if now >= t_end:
                break
            queue.put_nowait(None)

    try:
        if stream:
            await streamer()
        else:
            done[0] = await _closed_loop(client, model, concurrency, rows, data, t_start, t_end, hist,
                                         f"s{seed}" if ids else None)
    finally:
        await client.close()
    return done[0], hist.encode()


def _input(aio, data: np.ndarray, rows: int, i: int):
    x = aio.InferInput("float_input", [rows, N_FEATURES], "FP32")
    start = (i * rows) % (len(data) - rows)
    x.set_data_from_numpy(data[start : start + rows])
    return x


async def _closed_loop(client, model, concurrency, rows, data, t_start, t_end, hist, ids: str | None,
                       first: int = 0) -> int:
    """`concurrency` callers back to back until t_end (monotonic); each answer after t_start
    into `hist`. Ids "<ids>-<n>" where `ids` is given. Returns the answers counted."""
    import tritonclient.grpc.aio as aio

    done = 0

    async def caller(k):
        nonlocal done
        i = first + k
        while True:
            inp = _input(aio, data, rows, i)
            t0 = time.perf_counter_ns()
            await client.infer(model, [inp], request_id=f"{ids}-{i}" if ids else "")
            t1 = time.perf_counter_ns()
            now = time.monotonic()
            if now >= t_end:
                return
            if now >= t_start:
                hist.record_value(max(1, (t1 - t0) // 1000))
                done += 1
            i += concurrency

    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return done


def _worker(args, out):
    out.send(asyncio.run(_worker_main(*args)))


# -- the same load in turns, against several servers ------------------------------------
class TurnLoad:
    """The closed-loop load of `run_load` kept up across turns: `procs` processes, each with a
    client (a connection) per target, load one target at a time when told. No process starts
    between turns, so turns can be short and many: A/B comparisons on a machine whose other
    work moves faster than a server starts."""

    def __init__(self, urls: list[str], model: str, concurrency: int, procs: int, rows: int, pool: int = 1024):
        procs = max(1, min(procs, concurrency))
        shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
        ctx = mp.get_context("spawn")
        self.rows, self.pipes, self.workers = rows, [], []
        for i, share in enumerate(shares):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_turns_worker, args=((urls, model, share, rows, 1000 + i, pool), child))
            p.start()
            self.pipes.append(parent)
            self.workers.append(p)
        for parent in self.pipes:  # connected to every target
            parent.recv()

    def run(self, url: str, warmup_s: float, duration_s: float) -> dict:
        for parent in self.pipes:
            parent.send((url, warmup_s, duration_s))
        total, hist = 0, _histogram()
        for parent in self.pipes:
            n, encoded = parent.recv()
            total += n
            hist.add(HdrHistogram.decode(encoded))
        return _summary(total, hist, duration_s, self.rows)

    def close(self) -> None:
        for parent in self.pipes:
            parent.send(None)
        for p in self.workers:
            p.join(30)


async def _turns_main(urls, model, concurrency, rows, seed, pool, conn):
    import tritonclient.grpc.aio as aio

    data = _rows(max(pool, rows + 1), seed)
    clients = {url: aio.InferenceServerClient(url) for url in urls}
    try:
        for client in clients.values():
            await client.is_server_ready()
        conn.send("ready")
        loop, first = asyncio.get_running_loop(), 0
        while (turn := await loop.run_in_executor(None, conn.recv)) is not None:
            url, warmup_s, duration_s = turn
            hist = _histogram()
            t_start = time.monotonic() + warmup_s
            done = await _closed_loop(clients[url], model, concurrency, rows, data, t_start, t_start + duration_s,
                                      hist, None, first)
            first += 1_000_000  # the next turn's rows: further along the pool
            conn.send((done, hist.encode()))
    finally:
        for client in clients.values():
            await client.close()


def _turns_worker(args, conn):
    asyncio.run(_turns_main(*args, conn))


def run_load(url, model, concurrency, procs, rows, warmup_s, duration_s, stream=False, pool=1024, ids=False) -> dict:
    """Closed-loop load; each worker cycles through `pool` distinct random rows. `ids`: the
    requests carry ids "s<1000 + process>-<n>" (n: 0, 1, 2, ... over the process's callers)."""
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    ctx = mp.get_context("spawn")
    pipes, workers = [], []
    for i, share in enumerate(shares):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=((url, model, share, rows, warmup_s, duration_s, 1000 + i, stream, pool,
                                               ids), child))
        p.start()
        pipes.append(parent)
        workers.append(p)
    total, hist = 0, _histogram()
    for parent in pipes:
        n, encoded = parent.recv()
        total += n
        hist.add(HdrHistogram.decode(encoded))
    for p in workers:
        p.join()
    return _summary(total, hist, duration_s, rows)


def _summary(requests: int, hist: HdrHistogram, duration_s: float, rows: int) -> dict:
    return {
        "requests_per_s": requests / duration_s,
        "rows_per_s": requests * rows / duration_s,
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p999_ms": hist.get_value_at_percentile(99.9) / 1000,
        "requests": requests,
    }


# -- the limit: in-process onnxruntime ----------------------------------------------------
def run_in_process(model_path: Path, rows: int, duration_s: float) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    data = _rows(1024, 1000)
    hist = _histogram()
    n = 0
    for i in range(200):  # warm-up
        session.run(None, {"float_input": data[i % 1000 : i % 1000 + rows]})
    end = time.monotonic() + duration_s
    i = 0
    while time.monotonic() < end:
        start = (i * rows) % (len(data) - rows)
        t0 = time.perf_counter_ns()
        session.run(None, {"float_input": data[start : start + rows]})
        hist.record_value(max(1, (time.perf_counter_ns() - t0) // 1000))
        n += 1
        i += 1
    return _summary(n, hist, duration_s, rows)


def server_name(url: str) -> str:
    import tritonclient.grpc as g

    c = g.InferenceServerClient(url)
    meta = c.get_server_metadata()
    c.close()
    return f"{meta.name} {meta.version}"


def _line(model, mode, c, r, ceiling=None) -> dict:
    row = {"model": model, "mode": mode, "concurrency": c, **r}
    if ceiling is not None:
        row["null_server_requests_per_s"] = ceiling["requests_per_s"]
        row["share_of_ceiling"] = r["requests_per_s"] / ceiling["requests_per_s"]
    tail = f"  (null server {ceiling['requests_per_s']:,.0f} req/s)" if ceiling else ""
    print(f"{model:4} {mode:32} c={c:<3} {r['requests_per_s']:9,.0f} req/s {r['rows_per_s']:10,.0f} rows/s  "
          f"p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms{tail}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="HOST:PORT of a running OIP server (default: start scorewire on the demo models)")
    parser.add_argument("--models", default="mlp,gbt")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--procs", type=int, default=2, help="client worker processes")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--batched-rows", type=int, default=16, help="rows per request of the batched-client line")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the null-server ceiling")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="scorewire-bench-"))
    proc = null = None
    url = args.target
    try:
        if url is None:
            served = start_scorewire(workdir)
            proc, url = served.proc, served.url
        if not args.no_ceiling:
            null, null_url = start_null_server()
        results = {"server": server_name(url), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                   "duration_s": args.duration, "procs": args.procs, "runs": []}
        runs = results["runs"]
        ceilings: dict[int, dict] = {}
        for model in args.models.split(","):
            if proc is not None:
                path = workdir / "models" / f"{model}.onnx"
                runs.append(_line(model, "in-process onnxruntime, 1 row/run", 1, run_in_process(path, 1, args.duration)))
                runs.append(_line(model, "in-process onnxruntime, 64 rows/run", 1, run_in_process(path, 64, args.duration)))
            for c in [int(x) for x in args.concurrency.split(",")]:
                if null is not None and c not in ceilings:
                    ceilings[c] = run_load(null_url, model, c, args.procs, 1, args.warmup, args.duration)
                r = run_load(url, model, c, args.procs, 1, args.warmup, args.duration)
                runs.append(_line(model, "gRPC unary, 1 row/request", c, r, ceilings.get(c)))
            r = run_load(url, model, 32, args.procs, args.batched_rows, args.warmup, args.duration)
            runs.append(_line(model, f"gRPC unary, {args.batched_rows} rows/request", 32, r))
            r = run_load(url, model, 64, args.procs, 1, args.warmup, args.duration, stream=True)
            runs.append(_line(model, "gRPC stream, 1 row/request", 64, r))
    finally:
        stop(proc)
        stop(null)
    print()
    print(markdown(results))
    if args.json:
        write_json(args.json, results)
    return 0


def markdown(results: dict) -> str:
    lines = [f"server: {results['server']}; machine: {results['machine']}; {results['duration_s']} s per point; "
             f"client: tritonclient.grpc.aio in {results['procs']} processes on the same machine, closed loop", "",
             "| model | load | concurrency | requests/s | rows/s | p50 ms | p99 ms | null server req/s (ceiling) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        ceiling = f"{r['null_server_requests_per_s']:,.0f}" if "null_server_requests_per_s" in r else ""
        lines.append(f"| {r['model']} | {r['mode']} | {r['concurrency']} | {r['requests_per_s']:,.0f} | "
                     f"{r['rows_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ceiling} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
