"""Realized performance over a window of joined rows: the same numbers as scikit-learn's.

binary (`score` = probability of class 1, labels 0/1): accuracy (class 1 when the score is
above 0.5, as a classifier's argmax picks), log_loss and brier (sklearn's log_loss,
brier_score_loss), auc (sklearn's roc_auc_score: ties count one half; NaN while the window
holds one class only). multiclass (`score` = the probability matrix, labels class indices):
accuracy (argmax), log_loss (sklearn's with labels = every class). regression: mae, rmse.
Scores are taken as float64; probabilities are clipped to [eps, 1 - eps] in log_loss, as
sklearn clips them (eps of float64).
"""

from __future__ import annotations

import numpy as np

METRICS = {
    "binary": ("accuracy", "log_loss", "brier", "auc"),
    "multiclass": ("accuracy", "log_loss"),
    "regression": ("mae", "rmse"),
}
_EPS = np.finfo(np.float64).eps


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U over average ranks)."""
    positive = labels == 1
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # here: SciPy costs a process 45 MiB, and most never rank

    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# Metrics that are a mean over rows of a per-row value (`per_row`): what the alert and the
# champion-vs-challenger sequence test. rmse's per-row value is the squared error.
PER_ROW = {
    "binary": ("accuracy", "log_loss", "brier"),
    "multiclass": ("accuracy", "log_loss"),
    "regression": ("mae", "rmse"),
}
LOWER_IS_BETTER = {"log_loss", "brier", "mae", "rmse"}


def per_row(task: str, metric: str, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's share of `metric` (its mean over rows is the metric; rmse: its square)."""
    scores = np.asarray(scores, dtype=np.float64)
    if task == "binary":
        y = np.asarray(labels, dtype=np.float64)
        if metric == "accuracy":
            return ((scores > 0.5) == (y == 1)).astype(np.float64)
        if metric == "brier":
            return (scores - y) ** 2
        p = np.clip(scores, _EPS, 1 - _EPS)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    if task == "multiclass":
        classes = np.asarray(labels).astype(np.int64)
        if metric == "accuracy":
            return (np.argmax(scores, axis=1) == classes).astype(np.float64)
        return -np.log(np.clip(scores[np.arange(len(classes)), classes], _EPS, 1 - _EPS))
    error = scores - np.asarray(labels, dtype=np.float64)
    return np.abs(error) if metric == "mae" else error ** 2


def realized(task: str, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics over `scores` (rows, or rows x classes) and their `labels`."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return {name: float("nan") for name in METRICS[task]}
    if task == "binary":
        y = labels.astype(np.float64)
        p = np.clip(scores, _EPS, 1 - _EPS)
        return {
            "accuracy": float(np.mean((scores > 0.5) == (labels == 1))),
            "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
            "brier": float(np.mean((scores - y) ** 2)),
            "auc": auc(scores, labels),
        }
    if task == "multiclass":
        classes = labels.astype(np.int64)
        picked = scores[np.arange(len(classes)), classes]
        return {
            "accuracy": float(np.mean(np.argmax(scores, axis=1) == classes)),
            "log_loss": float(-np.mean(np.log(np.clip(picked, _EPS, 1 - _EPS)))),
        }
    error = scores - labels.astype(np.float64)
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error ** 2)))}
