"""`scorewire compare`: a model's champion against each challenger, from the scoring log.

Rows pair by (request_id, row): a challenger scored exactly the champion's rows. For each
challenger: how many champion rows it covered, agreement per output column (equality for
integer outputs, |difference| <= atol for floats) with the distribution of |differences|,
and latency percentiles per version. With labels (a Parquet or CSV file with request_id,
the label and optionally row; joined with the champion's rows as engine/scorelog/labelled.py
says), on the rows both scored: each one's metrics and the paired tests of the task, and a
verdict (engine/scorelog/paired.py). The task: binary (the score is P(class 1), labels 0/1;
a score outside [0, 1] or other labels are refused), multiclass (the probability matrix,
labels class indices) or regression (the prediction).

A route with a split has arms: versions answering other requests than the champion's (the
log's role "arm"). Nothing pairs there; each arm against the champion, on the labelled rows
of each, is engine/scorelog/arms.py's: metrics, an always-valid interval and Welch's
fixed-horizon test of the decision metric's difference (--metric, --alpha, --tuning-rows).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.performance.metrics import METRICS
from engine.scorelog import arms as arm_tests
from engine.scorelog import paired as paired_tests
from engine.scorelog.labelled import (KEY, LogError, Score, check_labels, check_scores, default_score, find_score,
                                      join_labels, outputs as _outputs, read_labels, read_log)

QUANTILES = (0.5, 0.9, 0.99)


def _unique_keys(table: pa.Table) -> tuple[pa.Table, int]:
    """Rows whose (request_id, row) occurs once (a reused client id cannot be paired)."""
    counts = table.group_by(KEY).aggregate([("version", "count")])
    single = counts.filter(pc.equal(counts.column("version_count"), 1)).select(KEY)
    kept = table.join(single, keys=KEY, join_type="inner")
    return kept, table.num_rows - kept.num_rows


def _by_version(table: pa.Table):
    """(version, its rows) for each version in the table, in sorted order."""
    for version in sorted(set(table.column("version").to_pylist())):
        yield version, table.filter(pc.equal(table.column("version"), version))


def _percentiles(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    return {f"p{round(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES} | {"max": float(values.max())}


def compare(log_dir: Path, model: str, labels: Path | None = None, label_column: str = "label",
            score: str | None = None, predicted: str | None = None, atol: float = 1e-6, task: str = "binary",
            metric: str | None = None, alpha: float = 0.05, tuning_rows: int = 1000) -> dict:
    """Challengers paired with the champion, arms (a split's) against it unpaired; `metric`,
    `alpha` and `tuning_rows` are the arms' (engine/scorelog/arms.py)."""
    if not 0 < alpha < 1:
        raise LogError(f"--alpha {alpha:g}: give a level between 0 and 1 (e.g. 0.05)")
    if tuning_rows < 1:
        raise LogError(f"--tuning-rows {tuning_rows}: give the number of labelled rows per arm the always-valid "
                       "interval is to be narrowest at (e.g. 1000)")
    metric = arm_tests.decision_metric(task, metric)
    table = read_log(log_dir, model)
    roles = table.column("role")
    champion_all = table.filter(pc.equal(roles, "champion"))
    if champion_all.num_rows == 0:
        raise LogError(f"model {model!r} has no champion rows in {log_dir}")
    champion, ambiguous = _unique_keys(champion_all)
    outputs = _outputs(champion)
    report: dict = {"model": model, "atol": atol, "champion": {"versions": sorted(set(champion_all.column("version").to_pylist())),
                                                 "rows": champion_all.num_rows, "ambiguous_ids": ambiguous},
                    "latency_us": {}, "challengers": []}
    for role in ("champion", "challenger", "arm"):
        for version, rows in _by_version(table.filter(pc.equal(roles, role))):
            report["latency_us"][f"{version} ({role})"] = {
                stage: _percentiles(rows.column(f"{stage}_us").to_numpy()) for stage in ("queue", "inference", "total")}
    label_table = read_labels(Path(labels), label_column) if labels is not None else None
    found = (find_score(task, score, champion) if score is not None
             else default_score(task, champion) if label_table is not None else None)
    if found is not None:
        check_scores(task, found, table)
    if predicted is not None and task != "binary":
        raise LogError(f"--predicted is for --task binary (--task {task}: "
                       + ("the argmax of the probability matrix)" if task == "multiclass" else "no classes)"))
    if predicted is not None and predicted not in outputs:
        raise LogError(f"--predicted {predicted}: no such output column (have {outputs})")
    if label_table is not None:
        check_labels(task, label_table.column("label").to_numpy(), found)
        if predicted is None and task == "binary":
            ints = [c for c in outputs if pa.types.is_integer(champion.schema.field(c).type)]
            predicted = ints[0] if len(ints) == 1 else None
    for version, all_rows in _by_version(table.filter(pc.equal(roles, "challenger"))):
        rows, _ = _unique_keys(all_rows)
        renamed = rows.select([*KEY, *[c for c in outputs if c in rows.column_names]])
        renamed = renamed.rename_columns([*KEY, *[f"{c}__ch" for c in renamed.column_names[2:]]])
        paired = champion.select([*KEY, "routing_key", *outputs]).join(renamed, keys=KEY, join_type="inner")
        entry: dict = {"version": version, "paired_rows": paired.num_rows,
                       "coverage": paired.num_rows / champion.num_rows, "outputs": {}}
        for c in outputs:
            if f"{c}__ch" not in paired.column_names:
                continue
            a = paired.column(c).to_numpy(zero_copy_only=False)
            b = paired.column(f"{c}__ch").to_numpy(zero_copy_only=False)
            if np.issubdtype(a.dtype, np.floating):
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                entry["outputs"][c] = {"agreement": float(np.mean(diff <= atol)) if len(a) else float("nan"),
                                       "abs_diff": _percentiles(diff) | ({"mean": float(diff.mean())} if len(a) else {})}
            else:
                entry["outputs"][c] = {"agreement": float(np.mean(a == b)) if len(a) else float("nan")}
        if label_table is not None:
            entry["labelled"] = _labelled(version, paired, label_table, task, found, predicted)
        entry["verdict"] = verdict(entry)
        report["challengers"].append(entry)
    report["arms"] = arm_tests.arms(table, label_table, task, found, metric, alpha, tuning_rows)
    if not report["challengers"] and not report["arms"]:
        raise LogError(f"model {model!r} has no challenger or arm rows in {log_dir}")
    return report


def _labelled(version: str, paired: pa.Table, labels: pa.Table, task: str, score: Score, predicted: str | None) -> dict:
    needed = [*score.columns, *([predicted] if predicted else [])]
    missing = [c for c in needed if f"{c}__ch" not in paired.column_names]
    if missing:
        raise LogError(f"challenger {version}'s rows have no {', '.join(missing)}: it cannot be scored as the "
                       "champion is")
    joined = join_labels(paired, labels).table
    y = joined.column("label").to_numpy()
    shown = {"binary": predicted or f"{score.columns[0]} > 0.5", "multiclass": f"the argmax of {score.text}",
             "regression": None}[task]
    sides = {"champion": "", "challenger": "__ch"}
    correct = None
    if predicted is not None:
        correct = {side: joined.column(predicted + suffix).to_numpy(zero_copy_only=False) == y
                   for side, suffix in sides.items()}
    scores = {side: score.values(joined, suffix) for side, suffix in sides.items()}
    found = paired_tests.labelled(task, y, scores, correct)
    return {"rows": found.pop("rows"), "task": task, "score": score.text, "columns": list(score.columns),
            "predicted": shown} | found


def verdict(entry: dict) -> str:
    """One line: what the paired tests say (engine/scorelog/paired.py), or, without labels,
    how far the outputs agree."""
    lab = entry.get("labelled")
    if not lab or not lab.get("rows"):
        agree = [f"{name} {o['agreement']:.1%}" for name, o in entry["outputs"].items() if not math.isnan(o["agreement"])]
        return (f"no verdict without labels (--labels adds the tests); the paired rows agree on {', '.join(agree)} "
                "(floats: within atol)" if agree else "no verdict: no paired rows")
    return paired_tests.verdict(entry["version"], lab["task"], lab)


def _us(x: float) -> str:
    """Microseconds, fixed point: whole numbers with thousands separators."""
    return "-" if x is None or math.isnan(x) else f"{x:,.0f}"


def _fmt(x) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def render(report: dict) -> str:
    lines = [f"model {report['model']}: champion {', '.join(report['champion']['versions'])}, "
             f"{report['champion']['rows']} rows" + (f" ({report['champion']['ambiguous_ids']} with a reused id, "
                                                     "not paired)" if report["champion"]["ambiguous_ids"] else "")]
    for ch in report["challengers"]:
        lines.append("")
        lines.append(f"challenger {ch['version']}: {ch['paired_rows']} paired rows "
                     f"({ch['coverage']:.1%} of the champion's)")
        lines.append(f"  {'output':<28} {'agreement':>10} {'|diff| p50':>11} {'p90':>10} {'p99':>10} {'max':>10}"
                     f"   (floats agree when |diff| <= atol = {report.get('atol', 1e-6):g}; --atol)")
        for name, o in ch["outputs"].items():
            d = o.get("abs_diff", {})
            lines.append(f"  {name:<28} {_fmt(o['agreement']):>10} " + " ".join(
                f"{_fmt(d[k]) if k in d else '-':>{11 if k == 'p50' else 10}}" for k in ("p50", "p90", "p99", "max")))
        lab = ch.get("labelled")
        if lab:
            lines += _render_labelled(lab)
        lines.append(f"  verdict: {ch['verdict']}")
    for arm in report.get("arms", []):
        lines.append("")
        lines += arm_tests.render(arm)
    lines.append("")
    lines.append(f"latency (us)  {'':<18} {'wait p50':>10} {'p99':>8} {'inference p50':>14} {'p99':>8} "
                 f"{'total p50':>10} {'p99':>8}")
    for version, stages in report["latency_us"].items():
        cells = []
        for stage, width in (("queue", 10), ("inference", 14), ("total", 10)):
            s = stages[stage]
            cells += [f"{_us(s.get('p50', float('nan'))):>{width}}", f"{_us(s.get('p99', float('nan'))):>8}"]
        lines.append(f"  {version:<30} " + " ".join(cells))
    if any("(challenger)" in v for v in report["latency_us"]):
        lines.append("  wait: a champion's in its batcher queue; a challenger's in the shadow queue, after the champion "
                     "answered (no caller waits for it): compare inference")
    return "\n".join(lines)


NAMES = {"accuracy": "accuracy", "log_loss": "log-loss", "brier": "Brier", "auc": "AUC", "mae": "MAE", "rmse": "RMSE"}


def _render_labelled(lab: dict) -> list[str]:
    lines = [f"  labelled rows: {lab['rows']} (--task {lab['task']}, score {lab['score']}"
             + (f", predicted {lab['predicted']})" if lab["predicted"] else ")")]
    if not lab["rows"]:
        return lines
    metrics = METRICS[lab["task"]]
    lines.append(f"  {'':<12} " + " ".join(f"{NAMES[m]:>10}" for m in metrics))
    for side in paired_tests.SIDES:
        lines.append(f"  {side:<12} " + " ".join(f"{_fmt(lab[side][m]):>10}" for m in metrics))
    for test, _, name in paired_tests.TESTS[lab["task"]]:
        r = lab[test]
        if test == "mcnemar":
            lines.append(f"  McNemar (exact): champion-only right {r['champion_only_right']}, challenger-only "
                         f"right {r['challenger_only_right']}, p = {_fmt(r['pvalue'])}")
        else:
            lines.append(f"  {name}: t = {_fmt(r['statistic'])}, p = {_fmt(r['pvalue'])}")
    return lines


def main(args) -> int:
    try:
        report = compare(Path(args.log), args.model, args.labels, args.label_column, args.score, args.predicted,
                         args.atol, args.task, args.metric, args.alpha, args.tuning_rows)
    except LogError as exc:
        print(f"scorewire compare: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
