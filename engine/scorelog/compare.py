"""`scorewire compare`: a model's champion against each challenger, from the scoring log.

Rows pair by (request_id, row): a challenger scored exactly the champion's rows. For each
challenger: how many champion rows it covered, agreement per output column (equality for
integer outputs, |difference| <= atol for floats) with the distribution of |differences|,
and latency percentiles per version. With labels (a Parquet or CSV file with request_id,
the label and optionally row; joined with the champion's rows as engine/scorelog/labelled.py
says), on the rows both scored: accuracy, log-loss and AUC of each, McNemar's exact test on which rows each gets right, and a paired t-test on per-row log-loss.
Binary classification: the score is the probability of class 1.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.scorelog.labelled import KEY, LogError, join_labels, read_labels, read_log

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


def _outputs(table: pa.Table) -> list[str]:
    return [c for c in table.column_names if c.startswith("out_")]


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _log_losses(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    p = np.clip(score.astype(np.float64), 1e-15, 1 - 1e-15)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def _default_score(columns: list[str]) -> str:
    for c in columns:
        if c.endswith("_1") and c[:-2] + "_0" in columns and c[:-2] + "_2" not in columns:
            return c
    raise LogError(f"cannot tell which output is the probability of class 1 among {columns}; pass --score")


def compare(log_dir: Path, model: str, labels: Path | None = None, label_column: str = "label",
            score: str | None = None, predicted: str | None = None, atol: float = 1e-6) -> dict:
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
    score = score or (_default_score(outputs) if label_table is not None else None)
    if score is not None and score not in outputs:
        raise LogError(f"--score {score}: no such output column (have {outputs})")
    if predicted is None and label_table is not None:
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
            entry["labelled"] = _labelled(paired, label_table, score, predicted)
        entry["verdict"] = verdict(entry)
        report["challengers"].append(entry)
    if not report["challengers"]:
        raise LogError(f"model {model!r} has no challenger rows in {log_dir}")
    return report


def _labelled(paired: pa.Table, labels: pa.Table, score: str, predicted: str | None) -> dict:
    from scipy.stats import binomtest, ttest_rel

    joined = join_labels(paired, labels).table
    y = joined.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    result: dict = {"rows": len(y), "score": score, "predicted": predicted or f"{score} >= 0.5"}
    if len(y) == 0:
        return result
    correct, losses = {}, {}
    for side, suffix in (("champion", ""), ("challenger", "__ch")):
        s = joined.column(score + suffix).to_numpy(zero_copy_only=False).astype(np.float64)
        pred = (joined.column(predicted + suffix).to_numpy(zero_copy_only=False) if predicted
                else (s >= 0.5).astype(np.int64))
        correct[side] = pred == y
        losses[side] = _log_losses(y, s)
        result[side] = {"accuracy": float(correct[side].mean()), "log_loss": float(losses[side].mean()),
                        "auc": _auc(y, s)}
    b = int(np.sum(correct["champion"] & ~correct["challenger"]))
    c = int(np.sum(~correct["champion"] & correct["challenger"]))
    result["mcnemar"] = {"champion_only_right": b, "challenger_only_right": c,
                         "pvalue": float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0}
    diff = losses["champion"] - losses["challenger"]
    if len(y) > 1 and np.any(diff != diff[0]):
        t = ttest_rel(losses["champion"], losses["challenger"])
        result["paired_t_log_loss"] = {"statistic": float(t.statistic), "pvalue": float(t.pvalue)}
    else:
        result["paired_t_log_loss"] = {"statistic": 0.0, "pvalue": 1.0}
    return result


ALPHA = 0.05  # the verdict's significance level


def verdict(entry: dict) -> str:
    """One line: better, worse or no difference at ALPHA, with the test and its p-value (the
    paired t-test on per-row log-loss; McNemar's exact test on accuracy beside it)."""
    lab = entry.get("labelled")
    if not lab or not lab.get("rows"):
        agree = [o["agreement"] for o in entry["outputs"].values() if not math.isnan(o["agreement"])]
        return (f"no verdict without labels: the outputs agree on {min(agree):.1%} of the paired rows or more "
                "(--labels adds the tests)" if agree else "no verdict: no paired rows")
    tt, mc = lab["paired_t_log_loss"], lab["mcnemar"]
    ch, cp = lab["challenger"], lab["champion"]
    losses = f"log-loss {ch['log_loss']:.4f} vs the champion's {cp['log_loss']:.4f}"
    beside = (f"; McNemar's exact test on accuracy ({ch['accuracy']:.4f} vs {cp['accuracy']:.4f}): "
              f"p = {_p(mc['pvalue'])}")
    if tt["pvalue"] < ALPHA:
        better = ch["log_loss"] < cp["log_loss"]
        return (f"challenger {entry['version']} is {'BETTER' if better else 'WORSE'}: {losses} "
                f"(paired t-test on per-row log-loss, p = {_p(tt['pvalue'])} < {ALPHA}){beside}")
    return (f"challenger {entry['version']}: no significant difference at {ALPHA}: {losses} "
            f"(paired t-test on per-row log-loss, p = {_p(tt['pvalue'])}){beside}")


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


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
            lines.append(f"  labelled rows: {lab['rows']} (score {lab['score']}, predicted {lab['predicted']})")
            if lab["rows"]:
                lines.append(f"  {'':<12} {'accuracy':>10} {'log-loss':>10} {'AUC':>10}")
                for side in ("champion", "challenger"):
                    m = lab[side]
                    lines.append(f"  {side:<12} {_fmt(m['accuracy']):>10} {_fmt(m['log_loss']):>10} {_fmt(m['auc']):>10}")
                mc = lab["mcnemar"]
                lines.append(f"  McNemar (exact): champion-only right {mc['champion_only_right']}, challenger-only "
                             f"right {mc['challenger_only_right']}, p = {_fmt(mc['pvalue'])}")
                tt = lab["paired_t_log_loss"]
                lines.append(f"  paired t-test on log-loss: t = {_fmt(tt['statistic'])}, p = {_fmt(tt['pvalue'])}")
        lines.append(f"  verdict: {ch['verdict']}")
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


def main(args) -> int:
    try:
        report = compare(Path(args.log), args.model, args.labels, args.label_column, args.score, args.predicted,
                         args.atol)
    except LogError as exc:
        print(f"scorewire compare: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
