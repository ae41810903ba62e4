"""`scorewire compare`'s arms: each version a route's split sends requests to (A/B, canary;
the log's role "arm") against the champion, on the rows the split routed to each (routing
sticky or random; pinned requests and rows from before the split are left out, counted).

The arms answered different requests, so nothing pairs: each side's labelled rows stand
alone. On them, each side's metrics (metrics.realized) and two tests of the difference of
the decision metric's mean, arm minus champion (per row: metrics.per_row; log_loss for
classification, mae for regression, or --metric):

- always-valid: each side's per-row values in its own sequence at alpha / 2
  (engine/performance/sequence.py), the difference bounded as the rollout bounds it
  (sequence.difference, a union bound; engine/rollout/decide.py). It may be read after
  every row, and will be, by whoever runs compare again tomorrow.
- fixed-horizon: Welch's t-test (SciPy's ttest_ind, equal_var=False) and its interval, at
  alpha. Valid only when this look is the one planned in advance.

The verdict follows the always-valid interval ("arm worse" or "arm better" when it excludes
0, in the metric's direction: accuracy lower is worse) and says when Welch's test disagrees.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.performance.metrics import LOWER_IS_BETTER, METRICS, PER_ROW, per_row, realized
from engine.performance.sequence import MIN_PAIRS, PairedSequence, difference
from engine.scorelog.labelled import LogError, Score, join_labels

ROUTED = ("sticky", "random")  # the split chose the version
SIDES = ("champion", "arm")
ALWAYS_VALID = "always-valid (safe to read at any time)"
FIXED_HORIZON = "fixed-horizon: valid only if this is the one look planned in advance"
NONE_SHOWN = "no difference shown yet"
NAMES = {"accuracy": "accuracy", "log_loss": "log-loss", "brier": "Brier", "auc": "AUC", "mae": "MAE", "rmse": "RMSE"}
# What the difference is of: the mean of metrics.per_row (rmse's per-row value is the squared error).
DIFFERENCE_OF = NAMES | {"rmse": "squared error (RMSE's per-row value)"}


def decision_metric(task: str, metric: str | None) -> str:
    """--metric, or the task's default (log_loss; regression mae), checked against the task."""
    if metric is None:
        return "mae" if task == "regression" else "log_loss"
    if metric not in PER_ROW[task]:
        raise LogError(f"--metric {metric}: not a per-row metric of --task {task} (one of "
                       f"{', '.join(PER_ROW[task])})")
    return metric


def arms(table: pa.Table, labels: pa.Table | None, task: str, score: Score | None, metric: str, alpha: float,
         tuning_rows: int) -> list[dict]:
    """One entry per arm version (sorted): rows of each side, and with labels their metrics,
    the two tests and the verdict."""
    roles, routing = table.column("role"), table.column("routing")
    routed = pc.is_in(routing, pa.array(ROUTED))
    sides = {"champion": pc.equal(roles, "champion"), "arm": pc.equal(roles, "arm")}
    versions = sorted(set(table.filter(sides["arm"]).column("version").to_pylist()))
    if not versions:
        return []
    champion = table.filter(pc.and_(sides["champion"], routed))
    champion_versions = sorted(set(champion.column("version").to_pylist()))
    left_out = {"champion": table.filter(sides["champion"]).num_rows - champion.num_rows}
    joined = None
    if labels is not None:
        joined = join_labels(table.filter(pc.and_(pc.or_(sides["champion"], sides["arm"]), routed)), labels).table
    found = []
    for version in versions:
        mine = pc.and_(sides["arm"], pc.equal(table.column("version"), version))
        rows = {"champion": champion.num_rows, "arm": table.filter(pc.and_(mine, routed)).num_rows}
        entry: dict = {"version": version, "champion_versions": champion_versions, "rows": rows,
                       "left_out": left_out | {"arm": table.filter(mine).num_rows - rows["arm"]}}
        if joined is not None:
            role = joined.column("role")
            picked = {"champion": pc.equal(role, "champion"),
                      "arm": pc.and_(pc.equal(role, "arm"), pc.equal(joined.column("version"), version))}
            side_rows = {side: joined.filter(picked[side]) for side in SIDES}
            _check_scored(version, side_rows["arm"], score)
            y = {side: side_rows[side].column("label").to_numpy() for side in SIDES}
            scores = {side: score.values(side_rows[side]) for side in SIDES}
            entry["labelled"] = {"task": task, "score": score.text, "columns": list(score.columns)} | labelled(
                task, metric, y, scores, alpha, tuning_rows)
        entry["decision"], entry["verdict"] = verdict(entry)
        found.append(entry)
    return found


def _check_scored(version: str, rows: pa.Table, score: Score) -> None:
    empty = [c for c in score.columns if c not in rows.column_names or rows.column(c).null_count]
    if empty:
        raise LogError(f"arm {version}'s rows have no {', '.join(empty)}: it cannot be scored as the champion is")


def labelled(task: str, metric: str, y: dict[str, np.ndarray], scores: dict[str, np.ndarray], alpha: float,
             tuning_rows: int) -> dict:
    """Per side ("champion", "arm"): labelled rows and metrics; the two tests of the
    difference of `metric`'s mean, arm minus champion, in the metric's own units."""
    result: dict = {"metric": metric, "alpha": alpha, "tuning_rows": tuning_rows,
                    "rows": {side: len(y[side]) for side in SIDES},
                    "metrics": {side: realized(task, scores[side], y[side]) for side in SIDES}}
    values = {side: per_row(task, metric, scores[side], y[side]) for side in SIDES}
    result["always_valid"] = always_valid(values["arm"], values["champion"], alpha, tuning_rows) | {
        "label": ALWAYS_VALID}
    result["welch"] = welch(values["arm"], values["champion"], alpha) | {"label": FIXED_HORIZON}
    for test in ("always_valid", "welch"):
        result[test]["shows"] = shows(metric, result[test]["lower"], result[test]["upper"])
    return result


def always_valid(arm: np.ndarray, champion: np.ndarray, alpha: float, tuning_rows: int) -> dict:
    """(estimate, lower, upper) of mean(arm) - mean(champion) as engine/rollout/decide.py
    bounds candidate - champion: a sequence per side at alpha / 2; None before MIN_PAIRS
    labelled rows on either side."""
    sequences = {}
    for side, values in (("arm", arm), ("champion", champion)):
        sequences[side] = PairedSequence(alpha / 2, tuning_rows)
        sequences[side].add(values)
    d = difference(sequences["arm"], sequences["champion"])
    if d is None:
        return {"estimate": None, "lower": None, "upper": None,
                "note": f"published from {MIN_PAIRS} labelled rows on each side"}
    return {"estimate": d[0], "lower": d[1], "upper": d[2]}


def welch(arm: np.ndarray, champion: np.ndarray, alpha: float) -> dict:
    """Welch's t-test of mean(arm) = mean(champion) (SciPy's ttest_ind, equal_var=False) and
    its 1 - alpha interval of the difference. Both sides constant: t = 0, p = 1 when they are
    equal, else t = +-inf, p = 0 (where SciPy gives NaN or warns)."""
    from scipy.stats import ttest_ind

    if len(arm) < 2 or len(champion) < 2:
        return {"estimate": None, "statistic": None, "pvalue": None, "lower": None, "upper": None,
                "note": "needs 2 labelled rows on each side"}
    d = float(arm.mean() - champion.mean())
    if np.all(arm == arm[0]) and np.all(champion == champion[0]):
        return {"estimate": d, "statistic": math.copysign(math.inf, d) if d else 0.0, "pvalue": 0.0 if d else 1.0,
                "lower": d, "upper": d}
    t = ttest_ind(arm, champion, equal_var=False)
    interval = t.confidence_interval(1 - alpha)
    p = float(t.pvalue)
    return {"estimate": d, "statistic": float(t.statistic), "pvalue": p, "df": float(t.df),
            "lower": float(interval.low), "upper": float(interval.high)}


def shows(metric: str, lower: float | None, upper: float | None) -> str | None:
    """"arm worse" or "arm better" when the interval of arm - champion excludes 0."""
    if lower is None or upper is None:
        return None
    higher = "arm worse" if metric in LOWER_IS_BETTER else "arm better"
    lower_side = "arm better" if metric in LOWER_IS_BETTER else "arm worse"
    return higher if lower > 0 else lower_side if upper < 0 else None


def verdict(entry: dict) -> tuple[str | None, str]:
    """(what the always-valid interval shows: "arm worse", "arm better" or "no difference
    shown yet"; None without labels) and one line that says it, with Welch's test where it
    disagrees."""
    lab = entry.get("labelled")
    if lab is None:
        return None, "no verdict without labels (--labels adds the tests)"
    metric, av, w = lab["metric"], lab["always_valid"], lab["welch"]
    name = NAMES[metric]
    decision = av["shows"] or NONE_SHOWN
    means = (f"{name} {_num(lab['metrics']['arm'], metric)} vs the champion's "
             f"{_num(lab['metrics']['champion'], metric)}")
    if av["estimate"] is None:
        line = f"{decision}: {lab['rows']['arm']:,} and {lab['rows']['champion']:,} labelled rows ({av['note']})"
    else:
        of = "" if metric != "rmse" else " of the mean squared error"
        line = (f"{decision}: {means}, always-valid {1 - lab['alpha']:.0%} interval of the difference{of} "
                f"[{av['lower']:+.4g}, {av['upper']:+.4g}]")
    if w["shows"] != av["shows"] and w["pvalue"] is not None:
        said = w["shows"] or "no difference"
        line += (f"; the fixed-horizon test (Welch's t, p = {_p(w['pvalue'])}) says {said}, valid only if this is "
                 "the one look planned in advance")
    return decision, line


def _num(metrics: dict, metric: str) -> str:
    return "nan" if math.isnan(metrics[metric]) else f"{metrics[metric]:.4f}"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def _bound(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4g}"


def render(entry: dict) -> list[str]:
    rows, left = entry["rows"], entry["left_out"]
    champion = ", ".join(entry["champion_versions"]) or "-"
    lines = [f"arm {entry['version']} (a split: other requests than the champion's, nothing paired): "
             f"{rows['arm']:,} rows; champion {champion}: {rows['champion']:,} rows"]
    if left["arm"] or left["champion"]:
        lines.append(f"  not routed by the split, left out: arm {left['arm']:,}, champion {left['champion']:,} rows "
                     "(pinned requests, rows from before the split)")
    lab = entry.get("labelled")
    if lab is not None:
        metrics = METRICS[lab["task"]]
        lines.append(f"  labelled rows: arm {lab['rows']['arm']:,}, champion {lab['rows']['champion']:,} "
                     f"(--task {lab['task']}, score {lab['score']})")
        lines.append(f"  {'':<12} " + " ".join(f"{NAMES[m]:>10}" for m in metrics))
        for side in ("champion", "arm"):
            lines.append(f"  {side:<12} " + " ".join(f"{_fmt(lab['metrics'][side][m]):>10}" for m in metrics))
        av, w = lab["always_valid"], lab["welch"]
        level = f"{1 - lab['alpha']:.0%}"
        estimate = av["estimate"] if av["estimate"] is not None else w["estimate"]
        lines.append(f"  {DIFFERENCE_OF[lab['metric']]}, arm minus champion (per row, unpaired): {_bound(estimate)}")
        lines.append(f"    {ALWAYS_VALID}: " + (f"{level} interval [{_bound(av['lower'])}, {_bound(av['upper'])}] "
                                               f"(alpha/2 per side, tuned for {lab['tuning_rows']:,} rows)"
                                               if av["estimate"] is not None else av["note"]))
        lines.append(f"    {FIXED_HORIZON}: " + (f"Welch's t = {_fmt(w['statistic'])}, p = {_p(w['pvalue'])}, {level} "
                                                f"interval [{_bound(w['lower'])}, {_bound(w['upper'])}]"
                                                if w["pvalue"] is not None else w["note"]))
    lines.append(f"  verdict: {entry['verdict']}")
    return lines


def _fmt(x) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return str(x)
