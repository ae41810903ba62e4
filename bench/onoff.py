"""Feature on vs off, measured in one run: two `scorewire serve` configs take the same
closed-loop tritonclient load in turns (off, on, off, on, ...), so that the machine's drift
over time hits both alike. Used by monitor_bench and shadow_bench; guards_bench interleaves
two running servers in shorter turns instead (`interleave`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.grpc_bench import TurnLoad, run_load
from bench.proctree import cpu_s, tree
from bench.servers import serve
from engine.harness.config import Config, model_table, server_table

# The demo's MLP; workers = "auto" (one per core), as a user's server without [server] workers
BASE = Config(server_table(), [model_table("mlp", "models/mlp.onnx", batching={"max_batch_size": 256})])


def load_text(rows: int) -> str:
    """The load `alternate` offers, in words."""
    return f"closed loop, 32 callers, {rows} row{'s' if rows > 1 else ''}/request, tritonclient.grpc.aio in 2 processes"


LOAD = load_text(16)


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


def alternate(configs: Callable[[int], dict[str, Path]], rounds: int, duration_s: float, label: str,
              after: Callable[[str, str], str] | None = None) -> dict:
    """`configs(i)` gives the "off" and "on" config files of run i. `after(mode, stdout)`
    reads what the server printed after SIGTERM and returns a note for the run's line.
    Returns rows/s, p99 and server CPU per row of every run, their means/medians and ratios."""
    rows: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    p99: dict[str, list[float]] = {"off": [], "on": []}
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
        p99[mode].append(r["p99_ms"])
        cpu[mode].append(used / (r["rows_per_s"] * (duration_s + 2.0)) * 1e6)
        note = after(mode, out) if after is not None else ""
        print(f"{label} {mode:3}: {r['rows_per_s']:,.0f} rows/s  p99 {r['p99_ms']:.2f} ms  "
              f"server CPU {cpu[mode][-1]:.2f} us/row{note}", flush=True)
    off, on = float(np.mean(rows["off"])), float(np.mean(rows["on"]))
    cpu_off, cpu_on = float(np.median(cpu["off"])), float(np.median(cpu["on"]))
    return {"rows_per_s_off": off, "rows_per_s_on": on, "retained": on / off, "runs": rows,
            "retained_per_round": [b / a for a, b in zip(rows["off"], rows["on"])],
            "server_cpu_us_per_row": cpu, "server_cpu_us_per_row_median": {"off": cpu_off, "on": cpu_on},
            "capacity_retained_by_cpu": cpu_off / cpu_on, "load": LOAD, "duration_s": duration_s, "p99_ms": p99}


def interleave(configs: dict[str, Path], pairs: int, duration_s: float, label: str, rows_per_request: int = 1,
               warmup_s: float = 0.5, before_stop: Callable[[str, object], None] | None = None) -> dict:
    """Both configs served at once, the same load (grpc_bench.TurnLoad: its processes and
    connections stay up) on one at a time in short turns, pairs in ABBA order (off on, on off,
    ...: a linear drift of the machine's speed hits both alike). For a machine shared with
    other work, whose noise moves faster than `alternate`'s runs (each starts a server and the
    load's processes) can follow. `before_stop(mode, server)` reads each server (its /metrics)
    after the last turn. Returns what `alternate` does, and a ratio per pair."""
    rows: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    p99: dict[str, list[float]] = {"off": [], "on": []}
    servers, load = {}, None
    try:
        for mode in ("off", "on"):
            servers[mode] = serve(configs[mode])
        pids = {mode: tree(server.proc.pid) for mode, server in servers.items()}
        load = TurnLoad([s.url for s in servers.values()], "mlp", 32, 2, rows_per_request, pool=131_072)
        for i in range(pairs):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                before = cpu_s(pids[mode])
                r = load.run(servers[mode].url, warmup_s, duration_s)
                used = cpu_s(pids[mode]) - before  # the server's processes over warm-up + measured load
                rows[mode].append(r["rows_per_s"])
                p99[mode].append(r["p99_ms"])
                cpu[mode].append(used / (r["rows_per_s"] * (duration_s + warmup_s)) * 1e6)
                print(f"{label} {mode:3}: {r['rows_per_s']:,.0f} rows/s  p99 {r['p99_ms']:.2f} ms  "
                      f"server CPU {cpu[mode][-1]:.2f} us/row", flush=True)
        if before_stop is not None:
            for mode, server in servers.items():
                before_stop(mode, server)
    finally:
        if load is not None:
            load.close()
        for server in servers.values():
            server.stop_and_read(timeout_s=120)
    off, on = float(np.mean(rows["off"])), float(np.mean(rows["on"]))
    cpu_off, cpu_on = float(np.median(cpu["off"])), float(np.median(cpu["on"]))
    per_pair = [b / a for a, b in zip(rows["off"], rows["on"])]
    # the ratio of the means over pairs drawn again (percentile bootstrap, seed 0): how far the
    # machine's noise leaves it uncertain
    pick = np.random.default_rng(0).integers(0, pairs, (2000, pairs))
    redrawn = np.asarray(rows["on"])[pick].mean(axis=1) / np.asarray(rows["off"])[pick].mean(axis=1)
    return {"rows_per_s_off": off, "rows_per_s_on": on, "retained": on / off, "runs": rows,
            "retained_per_round": per_pair, "retained_median_of_pairs": float(np.median(per_pair)),
            "retained_ci90": [float(np.percentile(redrawn, 5)), float(np.percentile(redrawn, 95))],
            "server_cpu_us_per_row": cpu, "server_cpu_us_per_row_median": {"off": cpu_off, "on": cpu_on},
            "capacity_retained_by_cpu": cpu_off / cpu_on, "load": load_text(rows_per_request),
            "duration_s": duration_s, "p99_ms": p99, "rows_per_request": rows_per_request,
            "order": "both servers up, the load's processes and connections too, turns in ABBA pairs",
            "warmup_s": warmup_s}


def finish(summary: dict, bench: str, title: str, on_label: str, json_path: Path | None, check: bool,
           extra: str = "", options: str = "") -> int:
    """Print the table and the bound of bench/bounds.json; write JSON + Markdown; exit code."""
    import json

    from bench.report import write_json

    off, on, cpu = summary["rows_per_s_off"], summary["rows_per_s_on"], summary["server_cpu_us_per_row_median"]
    rounds = len(summary["runs"]["off"])
    unit = "request" if summary.get("rows_per_request") == 1 else "row"  # one-row requests: rows are requests
    p99 = summary.get("p99_ms")
    table = (f"| {title} | {unit}s/s (mean of {rounds}) |\n|---|---|\n| off | {off:,.0f} |\n| on ({on_label}) | "
             f"{on:,.0f} |\n\nretained: {on / off:.1%} (per round: "
             f"{', '.join(f'{r:.1%}' for r in summary['retained_per_round'])}"
             + (f"; median {summary['retained_median_of_pairs']:.1%}" if "retained_median_of_pairs" in summary else "")
             + ")"
             + (f"; 90% bootstrap interval over the pairs: [{summary['retained_ci90'][0]:.1%}, "
                f"{summary['retained_ci90'][1]:.1%}]" if "retained_ci90" in summary else "")
             + f"{extra}\n\n"
             f"server CPU per {unit} (median): off {cpu['off']:.2f} us, on {cpu['on']:.2f} us "
             f"(capacity retained by CPU: {summary['capacity_retained_by_cpu']:.1%})\n"
             + (f"\np99 (median of the runs): off {np.median(p99['off']):.2f} ms, on {np.median(p99['on']):.2f} ms\n"
                if p99 else ""))
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
