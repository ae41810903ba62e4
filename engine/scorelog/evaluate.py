"""`scorewire evaluate`: realized performance per version and role from the scoring log and a
labels file, for labels that came after the live join's label_ttl_s (or without a server).

The labels join the logged rows as they join live (engine/scorelog/labelled.py says how,
Kafka events included); each version and role gets the numbers `metrics.realized` gives live
(binary accuracy, log_loss, brier, auc; multiclass accuracy, log_loss; regression mae, rmse)
over all its labelled rows, not a window.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyarrow.compute as pc

from engine.performance.metrics import METRICS, realized
from engine.scorelog.labelled import (LogError, check_labels, check_scores, find_score, join_labels, read_labels,
                                      read_log)

ROLES = ("champion", "arm", "direct", "challenger")  # the order of the table


def evaluate(log_dir: Path, model: str, labels: Path, task: str, score: str, label_column: str = "label") -> dict:
    table = read_log(log_dir, model)
    found = find_score(task, score, table)
    check_scores(task, found, table)
    label_table = read_labels(labels, label_column)
    check_labels(task, label_table.column("label").to_numpy(), found)
    joined = join_labels(table, label_table)
    report: dict = {"model": model, "task": task, "score": score, "columns": list(found.columns),
                    "labels": joined.labels, "unmatched": joined.unmatched, "by_key": joined.by_key,
                    "key_rows": joined.key_rows, "versions": []}
    groups = table.group_by(["version", "role"]).aggregate([("row", "count")]).to_pylist()
    order = {role: i for i, role in enumerate(ROLES)}
    for g in sorted(groups, key=lambda g: (g["version"], order.get(g["role"], len(ROLES)), g["role"])):
        rows = joined.table.filter(pc.and_(pc.equal(joined.table.column("version"), g["version"]),
                                           pc.equal(joined.table.column("role"), g["role"])))
        y = rows.column("label").to_numpy()
        report["versions"].append({"version": g["version"], "role": g["role"], "rows": g["row_count"],
                                   "labelled": len(y), "metrics": realized(task, found.values(rows), y)})
    return report


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.4f}"


def render(report: dict) -> str:
    metrics = METRICS[report["task"]]
    lines = [f"model {report['model']}, --task {report['task']}, score {report['score']} "
             f"({', '.join(report['columns']) if len(report['columns']) < 4 else report['columns'][0] + ' ...'})",
             f"labels: {report['labels']:,}; {report['unmatched']:,} joined no row"
             + (f"; {report['by_key']:,} joined {report['key_rows']:,} Kafka events by message key"
                if report["by_key"] else ""),
             "",
             f"  {'version':<12} {'role':<11} {'rows':>10} {'labelled':>10} " + " ".join(f"{m:>10}" for m in metrics)]
    for v in report["versions"]:
        lines.append(f"  {v['version']:<12} {v['role']:<11} {v['rows']:>10,} {v['labelled']:>10,} "
                     + " ".join(f"{_fmt(v['metrics'][m]):>10}" for m in metrics))
    return "\n".join(lines)


def main(args) -> int:
    try:
        report = evaluate(Path(args.log), args.model, Path(args.labels), args.task, args.score, args.label_column)
    except LogError as exc:
        print(f"scorewire evaluate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0

