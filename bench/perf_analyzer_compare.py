"""Triton's perf_analyzer against `scorewire serve`, beside `scorewire bench grpc --closed-loop`
at the same concurrency, on the same server, in one run.

    python -m bench.perf_analyzer_compare --perf-analyzer PATH [--concurrency 1 8] [--rounds 2]

perf_analyzer comes with tritonclient 2.50.0's wheel (tritonclient-2.50.0.data/data/bin/
perf_analyzer: `pip download --no-deps tritonclient==2.50.0`, unzip); it needs libb64.so.0d
(Debian's libb64-0d: `apt-get download libb64-0d`, `dpkg-deb -x`) and libcudart.so.12 (the
nvidia-cuda-runtime-cu12 wheel) on LD_LIBRARY_PATH (--lib-dir), no GPU. It runs with its
default options (gRPC, synchronous calls, one row per request, 5 s windows) but for the
stability it waits for: 30% instead of 10%, up to 20 windows.
The demo MLP, `workers = 1`: the same cores carry the client either way.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.loadgen import Load, run
from bench.servers import prepare_demo, serve, stop
from bench.workers_bench import server_config


def perf_analyzer(binary: str, lib_dir: str | None, url: str, concurrency: int) -> float:
    env = dict(os.environ)
    if lib_dir:
        env["LD_LIBRARY_PATH"] = lib_dir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    # stability within 30% (its default is 10%): on a small machine shared with the client the
    # windows rarely agree closer than that
    done = subprocess.run([binary, "-m", "mlp", "-u", url, "-i", "grpc", "--concurrency-range", str(concurrency),
                           "-s", "30", "-r", "20"],
                          capture_output=True, text=True, env=env, timeout=600)
    found = re.findall(r"Throughput: ([0-9.]+) infer/sec", done.stdout)
    if done.returncode != 0 or not found:
        raise SystemExit(f"perf_analyzer failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return float(found[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--perf-analyzer", required=True)
    p.add_argument("--lib-dir", help="folder with libb64.so.0d and libcudart.so.12")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=10.0, help="scorewire bench's measured seconds")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="perf-analyzer-"))
    prepare_demo(work)
    served = serve(server_config(1).write(work / "w1.toml"))
    proc, url = served.proc, served.url
    rows = []
    try:
        for concurrency in args.concurrency:
            for _ in range(args.rounds):
                pa = perf_analyzer(args.perf_analyzer, args.lib_dir, url, concurrency)
                # what `scorewire bench grpc --closed-loop --concurrency N` runs
                ours = run(Load(url=url, model="mlp", closed_loop=True, concurrency=concurrency, connections=1,
                                duration_s=args.duration, warmup_s=1.0)).achieved_rps
                rows.append((concurrency, pa, ours))
    finally:
        stop(proc)
    print(f"# python -m bench.perf_analyzer_compare --concurrency {' '.join(map(str, args.concurrency))} "
          f"--rounds {args.rounds}\n")
    print("One-row requests to `scorewire serve` (workers = 1, the demo MLP) over gRPC, closed loop, on the same "
          f"{os.cpu_count()} cores as the client, in turns.\n")
    print("| callers | perf_analyzer infer/s | scorewire bench grpc --closed-loop requests/s | ratio |\n"
          "|---|---|---|---|")
    for concurrency, pa, ours in rows:
        print(f"| {concurrency} | {pa:,.0f} | {ours:,.0f} | {pa / ours:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
