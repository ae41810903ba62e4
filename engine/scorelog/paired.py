"""A challenger against the champion on the same labelled rows: each one's metrics (those
`metrics.realized` gives live), the paired tests of the task, and a verdict that says what
every test says.

binary and multiclass: McNemar's exact test on which rows each gets right (binary: class 1
above 0.5, or the model's own predicted class; multiclass: the argmax), and a paired t-test
on per-row log-loss; binary adds AUC, which no test here is on. regression: paired t-tests on
per-row absolute error and squared error. Each test at ALPHA favours a version, or neither.
"""

from __future__ import annotations

import math

import numpy as np

from engine.performance.metrics import per_row, realized

ALPHA = 0.05  # each test's significance level
SIDES = ("champion", "challenger")
# Per task: (test, the metric whose per-row values it compares (metrics.per_row), its name).
TESTS = {
    "binary": (("paired_t_log_loss", "log_loss", "paired t-test on per-row log-loss"),
               ("mcnemar", "accuracy", "McNemar's exact test on accuracy")),
    "regression": (("paired_t_abs_error", "mae", "paired t-test on per-row absolute error (MAE)"),
                   ("paired_t_squared_error", "rmse", "paired t-test on per-row squared error (RMSE)")),
}
TESTS["multiclass"] = TESTS["binary"]


def labelled(task: str, y: np.ndarray, scores: dict[str, np.ndarray], correct: dict[str, np.ndarray] | None = None
             ) -> dict:
    """Both sides' metrics and the task's tests on rows labelled `y`. `scores` per side;
    `correct` (binary, per side): which rows the model's own predicted class gets right,
    instead of the score above 0.5 (its accuracy then replaces realized's)."""
    from scipy.stats import binomtest

    result: dict = {"rows": len(y)}
    if len(y) == 0:
        return result
    for side in SIDES:
        result[side] = realized(task, scores[side], y)
        if correct is not None:
            result[side]["accuracy"] = float(np.mean(correct[side]))
    for test, metric, _ in TESTS[task]:
        rows = {side: per_row(task, metric, scores[side], y) for side in SIDES}
        if test == "mcnemar":
            right = correct or {side: rows[side] == 1 for side in SIDES}
            b = int(np.sum(right["champion"] & ~right["challenger"]))
            c = int(np.sum(~right["champion"] & right["challenger"]))
            p = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
            result[test] = {"champion_only_right": b, "challenger_only_right": c, "pvalue": p,
                            "favours": _favours(p, c - b)}
        else:
            t = paired_t(rows["champion"], rows["challenger"])
            result[test] = t | {"favours": _favours(t["pvalue"], t["statistic"])}
    return result


def paired_t(champion: np.ndarray, challenger: np.ndarray) -> dict:
    """SciPy's ttest_rel of the champion's per-row losses against the challenger's (t > 0: the
    challenger's are lower); no difference at all: t = 0, p = 1; the same difference on every
    row: t = +-inf, p = 0 (where SciPy gives NaN)."""
    from scipy.stats import ttest_rel

    diff = champion - challenger
    if len(diff) < 2 or not np.any(diff):
        return {"statistic": 0.0, "pvalue": 1.0}
    if np.all(diff == diff[0]):
        return {"statistic": math.copysign(math.inf, diff[0]), "pvalue": 0.0}
    t = ttest_rel(champion, challenger)
    return {"statistic": float(t.statistic), "pvalue": float(t.pvalue)}


def _favours(p: float, challenger_ahead: float) -> str | None:
    if p >= ALPHA or challenger_ahead == 0:
        return None
    return "challenger" if challenger_ahead > 0 else "champion"


def verdict(version: str, task: str, lab: dict) -> str:
    """One line: BETTER or WORSE when the significant tests all favour one version, "mixed"
    (naming which test favours whom) when they favour different ones, else no significant
    difference; every test with its metrics and p-value."""
    said = {test: (name, f"{lab['challenger'][metric]:.4f} vs the champion's {lab['champion'][metric]:.4f}, "
                         f"p = {p_text(lab[test]['pvalue'])}") for test, metric, name in TESTS[task]}
    favours = {test: lab[test]["favours"] for test in said}
    sides = {f for f in favours.values() if f}
    if len(sides) == 2:
        return (f"challenger {version}: mixed at {ALPHA}, the tests disagree: "
                + "; ".join(f"{name} favours the {favours[t]} ({detail})" for t, (name, detail) in said.items()))
    if not sides:
        return (f"challenger {version}: no significant difference at {ALPHA}: "
                + "; ".join(f"{name}: {detail}" for name, detail in said.values()))
    return (f"challenger {version} is {'BETTER' if sides == {'challenger'} else 'WORSE'} at {ALPHA}: "
            + "; ".join(f"{name}: {detail}" + ("" if favours[t] else " (not significant)")
                        for t, (name, detail) in said.items()))


def p_text(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"
