"""Scoring throughput with drift + latency monitoring on vs off, measured in one run.

    python -m bench.monitor_bench [--duration S] [--json FILE] [--windows 1000,2000,10000 --every 100]

Two `scorewire serve` processes on the demo MLP: one monitors its 32 input features and
its prediction (by default one window of 10,000, every 1,000; --windows gives several)
against a reference drawn from the load's distribution (so no window drifts: the common
case, where quiet windows are only tested against their thresholds), the other monitors
nothing but latency. The same closed-loop tritonclient
load (32 callers, 16 rows per request) runs against each, alternating off/on/off/on, and
the report gives rows/s of each, their ratio, and what the "on" server's monitor did (rows
observed, dropped), read from its shutdown summary: a retained rate bought by dropping is
visible.
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.onoff import BASE, alternate, finish, parse_args
from bench.servers import prepare_demo

FEATURES = [f"f{i}" for i in range(32)]
SUMMARY = re.compile(r"monitor: (\d+) rows observed, (\d+) dropped, (\d+) failed \((\d+) drift evaluations\)")


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, extra=lambda parser: (
        parser.add_argument("--windows", default="10000", help="window sizes, comma-separated (default: 10000)"),
        parser.add_argument("--every", type=int, default=1000, help="evaluate every N events (default: 1000)")))
    sizes = [int(w) for w in args.windows.split(",")]
    windows = {"window": sizes[0]} if len(sizes) == 1 else {"windows": sizes}
    work = Path(tempfile.mkdtemp(prefix="scorewire-monitor-bench-"))
    prepare_demo(work)
    # reference: N(0, 1) columns like the load's rows (the drift work is the same whether
    # or not anything alerts)
    rng = np.random.default_rng(7)
    np.savez(work / "ref.npz", **{f: rng.normal(size=10_000) for f in FEATURES},
             **{"probabilities:1": rng.uniform(size=10_000)})
    monitor = {"features": FEATURES, "outputs": ["probabilities:1"], "reference": "ref.npz", **windows,
               "every": args.every}
    BASE.write(work / "off.toml")
    replace(BASE, models=[{**BASE.models[0], "monitor": monitor}]).write(work / "on.toml")
    configs = {"off": work / "off.toml", "on": work / "on.toml"}
    on_runs: list[dict] = []

    def after(mode: str, out: str) -> str:
        s = SUMMARY.search(out)
        if s is None:
            raise SystemExit(f"the server printed no monitor summary:\n{out}")
        entry = {"rows_observed": int(s[1]), "rows_dropped": int(s[2]), "rows_failed": int(s[3]),
                 "evaluations": int(s[4])}
        if mode == "on":
            on_runs.append(entry)
        return f"  monitor: {entry['rows_observed']:,} rows observed, {entry['rows_dropped']:,} dropped, " \
               f"{entry['evaluations']:,} drift evaluations"

    summary = alternate(lambda i: configs, args.rounds, args.duration, "monitoring", after)
    observed = sum(e["rows_observed"] for e in on_runs)
    dropped = sum(e["rows_dropped"] + e["rows_failed"] for e in on_runs)
    summary["on_runs"] = on_runs
    summary["monitor_dropped_share"] = dropped / (observed + dropped) if observed + dropped else 0.0
    summary["windows"], summary["every"] = sizes, args.every
    label = (f"window {sizes[0]:,}" if len(sizes) == 1 else f"windows {', '.join(f'{w:,}' for w in sizes)}")
    return finish(summary, "monitor_bench", "monitoring", f"32 features + 1 output, {label}, every {args.every:,}",
                  args.json, args.check, f"; rows the monitor dropped: {summary['monitor_dropped_share']:.2%}",
                  "" if len(sizes) == 1 and args.every == 1000 else f" --windows {args.windows} --every {args.every}")


if __name__ == "__main__":
    sys.exit(main())
