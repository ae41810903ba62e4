"""Feature on vs off, measured in one run: two `scorewire serve` configs take the same
closed-loop tritonclient load in turns (off, on, off, on, ...), so that the machine's drift
over time hits both alike. Used by monitor_bench and shadow_bench."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.grpc_bench import run_load
from bench.servers import serve
from engine.harness.config import Config, model_table, server_table

# The demo's MLP; workers = "auto" (one per core), as a user's server without [server] workers
BASE = Config(server_table(), [model_table("mlp", "models/mlp.onnx", batching={"max_batch_size": 256})])
LOAD = "closed loop, 32 callers, 16 rows/request, tritonclient.grpc.aio in 2 processes"


def parse_args(description: str, argv=None, extra=None):
    """The on/off benches' options: --duration, --rounds, --json, --check (and what
    `extra(parser)` adds)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="off/on alternations")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 when the bound in bench/bounds.json is missed")
    return parser.parse_args(argv)


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc): every process of a server."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def alternate(configs: Callable[[int], dict[str, Path]], rounds: int, duration_s: float, label: str,
              after: Callable[[str, str], str] | None = None) -> dict:
    """`configs(i)` gives the "off" and "on" config files of run i. `after(mode, stdout)`
    reads what the server printed after SIGTERM and returns a note for the run's line.
    Returns rows/s and server CPU per row of every run, their means/medians and ratios."""
    rows: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    for i, mode in enumerate(("off", "on") * rounds):
        server = serve(configs(i)[mode])
        try:
            pids = tree(server.proc.pid)  # supervisor, workers, observer, challengers (or the one process)
            before = cpu_s(pids)
            # distinct rows, as live traffic has (a short cycle of rows would make drift
            # windows hold repeats, and every evaluation new)
            r = run_load(server.url, "mlp", 32, 2, 16, 2.0, duration_s, pool=131_072)
            # CPU of the server's processes (all their threads) over warm-up + measured load
            used = cpu_s(pids) - before
        finally:
            out = server.stop_and_read(timeout_s=120)
        rows[mode].append(r["rows_per_s"])
        cpu[mode].append(used / (r["rows_per_s"] * (duration_s + 2.0)) * 1e6)
        note = after(mode, out) if after is not None else ""
        print(f"{label} {mode:3}: {r['rows_per_s']:,.0f} rows/s  p99 {r['p99_ms']:.2f} ms  "
              f"server CPU {cpu[mode][-1]:.2f} us/row{note}", flush=True)
    off, on = float(np.mean(rows["off"])), float(np.mean(rows["on"]))
    cpu_off, cpu_on = float(np.median(cpu["off"])), float(np.median(cpu["on"]))
    return {"rows_per_s_off": off, "rows_per_s_on": on, "retained": on / off, "runs": rows,
            "retained_per_round": [b / a for a, b in zip(rows["off"], rows["on"])],
            "server_cpu_us_per_row": cpu, "server_cpu_us_per_row_median": {"off": cpu_off, "on": cpu_on},
            "capacity_retained_by_cpu": cpu_off / cpu_on, "load": LOAD, "duration_s": duration_s}


def finish(summary: dict, bench: str, title: str, on_label: str, json_path: Path | None, check: bool,
           extra: str = "", options: str = "") -> int:
    """Print the table and the bound of bench/bounds.json; write JSON + Markdown; exit code."""
    import json

    from bench.report import write_json

    off, on, cpu = summary["rows_per_s_off"], summary["rows_per_s_on"], summary["server_cpu_us_per_row_median"]
    rounds = len(summary["runs"]["off"])
    table = (f"| {title} | rows/s (mean of {rounds}) |\n|---|---|\n| off | {off:,.0f} |\n| on ({on_label}) | "
             f"{on:,.0f} |\n\nretained: {on / off:.1%} (per round: "
             f"{', '.join(f'{r:.1%}' for r in summary['retained_per_round'])}){extra}\n\n"
             f"server CPU per row (median): off {cpu['off']:.2f} us, on {cpu['on']:.2f} us "
             f"(capacity retained by CPU: {summary['capacity_retained_by_cpu']:.1%})\n")
    bound = json.loads((Path(__file__).parent / "bounds.json").read_text())[bench]["retained"]
    met = on / off >= bound
    summary["bound_retained"] = bound
    verdict = f"bound (bench/bounds.json): retained >= {bound:.0%}: " + ("met" if met else "MISSED")
    print("\n" + table + "\n" + verdict)
    if json_path is not None:
        write_json(json_path, summary, f"# python -m bench.{bench}{options}\n\n{summary['load']}, "
                   f"{summary['duration_s']:.0f} s per run, 2 cores shared with the load generator.\n\n"
                   f"{table}\n{verdict}\n")
    return 1 if check and not met else 0
