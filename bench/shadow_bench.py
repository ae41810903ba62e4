"""Scoring throughput with one challenger + the Parquet scoring log on vs both off, one run.

    python -m bench.shadow_bench [--duration S] [--rounds N] [--json FILE]

Two `scorewire serve` processes on the demo MLP. "off": the champion alone. "on": the same
champion, a challenger (a second copy of the MLP: a retrained model of the same architecture
costs the same) shadow-scoring every batch, and the scoring log writing every champion and
challenger row to Parquet. The same closed-loop tritonclient load (32 callers, 16 rows per
request) runs against each, alternating off/on, and the report gives rows/s of each, their
ratio, and what the "on" server did with the shadow work and the log (scored, dropped,
written), read from its shutdown summary: a retained rate bought by dropping is visible.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.grpc_bench import prepare_demo, run_load, serve
from bench.monitor_bench import _cpu_s
from bench.report import write_json

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
ON = """
[[models]]
name = "mlp"
version = "2"
path = "models/mlp-challenger.onnx"
[models.batching]
max_batch_size = 256

[[routes]]
model = "mlp"
champion = "1"
challengers = ["2"]

[scorelog]
dir = "{log}"
"""
SUMMARY = re.compile(r"challenger mlp:2: (\d+) rows scored, (\d+) dropped, (\d+) failed")
LOG_SUMMARY = re.compile(r"scoring log: (\d+) rows written in (\d+) files, (\d+) dropped, (\d+) failed")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="off/on alternations")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 when the bound in bench/bounds.json is missed")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="scorewire-shadow-bench-"))
    prepare_demo(work)
    shutil.copy(work / "models" / "mlp.onnx", work / "models" / "mlp-challenger.onnx")
    (work / "off.toml").write_text(BASE)
    results: dict[str, list[float]] = {"off": [], "on": []}
    cpu_per_row: dict[str, list[float]] = {"off": [], "on": []}
    shadow: list[dict] = []
    for i, mode in enumerate(("off", "on") * args.rounds):
        log_dir = work / f"log-{i}"
        (work / "on.toml").write_text(BASE + ON.format(log=log_dir))
        proc, url = serve(work / f"{mode}.toml")
        try:
            before = _cpu_s(proc.pid)
            r = run_load(url, "mlp", 32, 2, 16, 2.0, args.duration, pool=131_072)
            used = _cpu_s(proc.pid) - before
            results[mode].append(r["rows_per_s"])
            cpu_per_row[mode].append(used / (r["rows_per_s"] * (args.duration + 2.0)) * 1e6)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
        note = ""
        if mode == "on":
            s, lg = SUMMARY.search(out), LOG_SUMMARY.search(out)
            if s is None or lg is None:
                raise SystemExit(f"the 'on' server printed no shadow/log summary:\n{out}")
            entry = {"shadow_rows_scored": int(s[1]), "shadow_rows_dropped": int(s[2]), "shadow_rows_failed": int(s[3]),
                     "log_rows_written": int(lg[1]), "log_files": int(lg[2]), "log_rows_dropped": int(lg[3]),
                     "log_rows_failed": int(lg[4])}
            shadow.append(entry)
            note = (f"  shadow: {entry['shadow_rows_scored']:,} scored, {entry['shadow_rows_dropped']:,} dropped; "
                    f"log: {entry['log_rows_written']:,} rows written, {entry['log_rows_dropped']:,} dropped")
            shutil.rmtree(log_dir, ignore_errors=True)
        print(f"challenger+log {mode:3}: {r['rows_per_s']:,.0f} rows/s  p99 {r['p99_ms']:.2f} ms  "
              f"server CPU {cpu_per_row[mode][-1]:.2f} us/row{note}", flush=True)
    off, on = float(np.mean(results["off"])), float(np.mean(results["on"]))
    pairs = [b / a for a, b in zip(results["off"], results["on"])]
    cpu_off, cpu_on = float(np.median(cpu_per_row["off"])), float(np.median(cpu_per_row["on"]))
    dropped = sum(e["shadow_rows_dropped"] for e in shadow)
    offered = sum(e["shadow_rows_scored"] + e["shadow_rows_dropped"] + e["shadow_rows_failed"] for e in shadow)
    summary = {"rows_per_s_off": off, "rows_per_s_on": on, "retained": on / off, "runs": results,
               "retained_per_round": pairs, "server_cpu_us_per_row": cpu_per_row,
               "server_cpu_us_per_row_median": {"off": cpu_off, "on": cpu_on}, "on_runs": shadow,
               "shadow_dropped_share": dropped / offered if offered else 0.0,
               "load": "closed loop, 32 callers, 16 rows/request, tritonclient.grpc.aio in 2 processes",
               "duration_s": args.duration}
    table = (f"| challenger + scoring log | rows/s (mean of {args.rounds}) |\n|---|---|\n| off | {off:,.0f} |\n"
             f"| on (1 challenger, every row logged) | {on:,.0f} |\n\nretained: {on / off:.1%} "
             f"(per round: {', '.join(f'{r:.1%}' for r in pairs)}); shadow rows dropped: "
             f"{summary['shadow_dropped_share']:.2%}\n\nserver CPU per row (median): off {cpu_off:.2f} us, "
             f"on {cpu_on:.2f} us (capacity retained by CPU: {cpu_off / cpu_on:.1%})\n")
    print("\n" + table)
    bound = json.loads((Path(__file__).parent / "bounds.json").read_text())["shadow_bench"]["retained"]
    met = on / off >= bound
    summary["bound_retained"] = bound
    print(f"bound (bench/bounds.json): retained >= {bound:.0%}: " + ("met" if met else "MISSED"))
    if args.json:
        write_json(args.json, summary, f"# python -m bench.shadow_bench\n\n{summary['load']}, {args.duration:.0f} s "
                   f"per run, demo MLP as champion and challenger, 2 cores shared with the load generator.\n\n"
                   + table + f"\nbound: retained >= {bound:.0%}: {'met' if met else 'MISSED'}\n")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
