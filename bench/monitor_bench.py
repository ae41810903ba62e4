"""Scoring throughput with drift + latency monitoring on vs off, measured in one run.

    python -m bench.monitor_bench [--duration S] [--json FILE]

Two `scorewire serve` processes on the demo MLP: one monitors its 32 input features and
its prediction (window 10,000, every 1,000) against a reference drawn from the training
distribution, the other monitors nothing but latency. The same closed-loop tritonclient
load (32 callers, 16 rows per request) runs against each, alternating off/on/off/on, and
the report gives rows/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.grpc_bench import prepare_demo, run_load, serve
from bench.report import write_json

FEATURES = [f"f{i}" for i in range(32)]
BASE = """\
[server]
host = "127.0.0.1"
grpc_port = 0
metrics_port = 0

[[models]]
name = "mlp"
path = "models/mlp.onnx"
[models.batching]
max_batch_size = 256
"""
MONITOR = """\
[models.monitor]
features = [{features}]
outputs = ["probabilities:1"]
reference = "ref.npz"
window = 10000
every = 1000
"""


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="off/on alternations")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 when the bound in bench/bounds.json is missed")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="scorewire-monitor-bench-"))
    prepare_demo(work)
    # reference: N(0, 1) columns like the load's rows (the drift work is the same whether
    # or not anything alerts)
    rng = np.random.default_rng(7)
    np.savez(work / "ref.npz", **{f: rng.normal(size=10_000) for f in FEATURES},
             **{"probabilities:1": rng.uniform(size=10_000)})
    (work / "off.toml").write_text(BASE)
    (work / "on.toml").write_text(BASE + MONITOR.format(features=", ".join(f'"{f}"' for f in FEATURES)))
    results: dict[str, list[float]] = {"off": [], "on": []}
    cpu_per_row: dict[str, list[float]] = {"off": [], "on": []}
    for mode in ("off", "on") * args.rounds:
        proc, url = serve(work / f"{mode}.toml")
        try:
            before = _cpu_s(proc.pid)
            # distinct rows, as live traffic has (a short cycle of rows would make the drift
            # windows hold repeats, far from the reference, and every evaluation new)
            r = run_load(url, "mlp", 32, 2, 16, 2.0, args.duration, pool=131_072)
            # CPU of the server process (all its threads) over warm-up + measured load
            used = _cpu_s(proc.pid) - before
            rows_served = r["rows_per_s"] * (args.duration + 2.0)
            results[mode].append(r["rows_per_s"])
            cpu_per_row[mode].append(used / rows_served * 1e6)
            print(f"monitoring {mode:3}: {r['rows_per_s']:,.0f} rows/s  p99 {r['p99_ms']:.2f} ms  "
                  f"server CPU {cpu_per_row[mode][-1]:.2f} us/row", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    off, on = float(np.mean(results["off"])), float(np.mean(results["on"]))
    pairs = [b / a for a, b in zip(results["off"], results["on"])]
    cpu_off, cpu_on = float(np.median(cpu_per_row["off"])), float(np.median(cpu_per_row["on"]))
    summary = {"rows_per_s_off": off, "rows_per_s_on": on, "retained": on / off, "runs": results,
               "retained_per_round": pairs, "server_cpu_us_per_row": cpu_per_row,
               "server_cpu_us_per_row_median": {"off": cpu_off, "on": cpu_on},
               "capacity_retained_by_cpu": cpu_off / cpu_on,
               "load": "closed loop, 32 callers, 16 rows/request, tritonclient.grpc.aio in 2 processes",
               "duration_s": args.duration}
    print(f"\n| monitoring | rows/s (mean of {args.rounds}) |\n|---|---|\n| off | {off:,.0f} |\n| on (32 features + 1 output, "
          f"window 10,000, every 1,000) | {on:,.0f} |\n\nretained: {on / off:.1%} "
          f"(per round: {', '.join(f'{r:.1%}' for r in pairs)})\n"
          f"server CPU per row (median): off {cpu_off:.2f} us, on {cpu_on:.2f} us -> "
          f"capacity retained by CPU: {cpu_off / cpu_on:.1%}")
    bound = json.loads((Path(__file__).parent / "bounds.json").read_text())["monitor_bench"]["retained"]
    met = on / off >= bound
    summary["bound_retained"] = bound
    print(f"bound (bench/bounds.json): retained >= {bound:.0%}: " + ("met" if met else "MISSED"))
    if args.json:
        write_json(args.json, summary)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
