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

import re
import shutil
import sys
import tempfile
from pathlib import Path

from bench.onoff import BASE, alternate, finish, parse_args
from bench.servers import prepare_demo
from engine.harness.config import model_table, route_table

SUMMARY = re.compile(r"challenger mlp:2: (\d+) rows scored, (\d+) dropped, (\d+) failed")
LOG_SUMMARY = re.compile(r"scoring log: (\d+) rows written in (\d+) files, (\d+) dropped, (\d+) failed")


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    work = Path(tempfile.mkdtemp(prefix="scorewire-shadow-bench-"))
    prepare_demo(work)
    shutil.copy(work / "models" / "mlp.onnx", work / "models" / "mlp-challenger.onnx")
    BASE.write(work / "off.toml")
    challenger = model_table("mlp", "models/mlp-challenger.onnx", version="2", batching={"max_batch_size": 256})

    def configs(i: int) -> dict[str, Path]:  # a fresh log folder per run
        BASE.add(models=[challenger], routes=[route_table("mlp", "1", challengers=["2"])],
                 scorelog={"dir": work / f"log-{i}"}).write(work / "on.toml")
        return {"off": work / "off.toml", "on": work / "on.toml"}

    on_runs: list[dict] = []

    def after(mode: str, out: str) -> str:
        if mode == "off":
            return ""
        s, lg = SUMMARY.search(out), LOG_SUMMARY.search(out)
        if s is None or lg is None:
            raise SystemExit(f"the 'on' server printed no shadow/log summary:\n{out}")
        entry = {"shadow_rows_scored": int(s[1]), "shadow_rows_dropped": int(s[2]), "shadow_rows_failed": int(s[3]),
                 "log_rows_written": int(lg[1]), "log_files": int(lg[2]), "log_rows_dropped": int(lg[3]),
                 "log_rows_failed": int(lg[4])}
        on_runs.append(entry)
        for log_dir in work.glob("log-*"):
            shutil.rmtree(log_dir, ignore_errors=True)
        return (f"  shadow: {entry['shadow_rows_scored']:,} scored, {entry['shadow_rows_dropped']:,} dropped; "
                f"log: {entry['log_rows_written']:,} rows written, {entry['log_rows_dropped']:,} dropped")

    summary = alternate(configs, args.rounds, args.duration, "challenger+log", after)
    dropped = sum(e["shadow_rows_dropped"] for e in on_runs)
    offered = sum(e["shadow_rows_scored"] + e["shadow_rows_dropped"] + e["shadow_rows_failed"] for e in on_runs)
    summary["on_runs"] = on_runs
    summary["shadow_dropped_share"] = dropped / offered if offered else 0.0
    return finish(summary, "shadow_bench", "challenger + scoring log", "1 challenger, every row logged",
                  args.json, args.check, f"; shadow rows dropped: {summary['shadow_dropped_share']:.2%}")


if __name__ == "__main__":
    sys.exit(main())
