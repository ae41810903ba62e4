"""Performance before the labels come: confidence-based performance estimation (CBPE, as
NannyML computes it), from the scores of the last `window` scored rows and a reference with
labels.

The reference's scores are calibrated against its labels with isotonic regression
(scikit-learn's IsotonicRegression(out_of_bounds="clip"): equal scores averaged, pool
adjacent violators, linear between the fitted points), one calibrator per class one-vs-rest
for multiclass (rows renormalised to sum 1); a class whose scores calibration does not
improve keeps them as they are. Then, on live scores:
- binary accuracy: mean over rows of the calibrated probability that the predicted class
  (score > 0.5) is right;
- binary AUC: the ROC curve whose positives are counted as calibrated probabilities (rows in
  descending order of score, counts rounded to 5 decimals as NannyML does), its area by the
  trapezoid rule;
- multiclass accuracy: mean calibrated probability of the argmax class.

Whether calibration improves a score: NannyML decides by the expected calibration error of
10 stratified random 90/10 splits (scikit-learn's StratifiedShuffleSplit, seed 42); here the
same comparison runs on 10 deterministic stratified folds (every 10th row of each class, in
score order), so on a reference where the two decisions differ the estimates differ too.
What CBPE assumes: scores calibrated on the reference stay calibrated (no concept drift: the
probability of a label given the inputs does not change; covariate shift is what it handles).
"""

from __future__ import annotations

import numpy as np

SPLITS = 10
BINS = 10


class Isotonic:
    """A non-decreasing fit of y on x (scikit-learn's IsotonicRegression, out_of_bounds="clip")."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        order = np.lexsort((y, x))
        x, y = x[order], y[order]
        unique, start, counts = np.unique(x, return_index=True, return_counts=True)
        sums = np.add.reduceat(y, start) if len(y) else y
        self.x = unique
        self.y = _pool_adjacent_violators(sums / counts, counts.astype(np.float64))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(self.x) == 1:
            return np.full(len(x), self.y[0])
        return np.interp(np.asarray(x, np.float64), self.x, self.y)


def _pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of y (pool adjacent violators)."""
    means, weights, sizes = [], [], []
    for value, weight in zip(y.tolist(), w.tolist()):
        means.append(value)
        weights.append(weight)
        sizes.append(1)
        while len(means) > 1 and means[-2] >= means[-1]:
            m, wt, n = means.pop(), weights.pop(), sizes.pop()
            total = weights[-1] + wt
            means[-1] = (means[-1] * weights[-1] + m * wt) / total
            weights[-1] = total
            sizes[-1] += n
    return np.repeat(np.array(means), sizes)


def calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over equal-count bins of rows in score order (NannyML's)."""
    n = len(scores)
    if n <= 2 * bins:
        bins = max(2, n // 2)
    width = n // bins
    edges = list(range(0, n + 1, width))
    edges[-1] = n
    order = np.argsort(scores, kind="stable")
    scores, labels = scores[order], labels[order]
    return float(sum((b - a) / n * abs(scores[a:b].mean() - labels[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])))


def needs_calibration(labels: np.ndarray, scores: np.ndarray) -> bool:
    """Whether isotonic calibration lowers the expected calibration error of held-out rows."""
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    if len(np.unique(labels)) < 2 or len(labels) < 4 * SPLITS:
        return False
    from engine.performance.metrics import auc

    if auc(scores, labels) > 0.999:
        return False
    fold = np.empty(len(labels), np.int64)
    for value in np.unique(labels):  # stratified: each class's rows dealt in score order
        rows = np.flatnonzero(labels == value)
        rows = rows[np.argsort(scores[rows], kind="stable")]
        fold[rows] = np.arange(len(rows)) % SPLITS
    truth, before, after = [], [], []
    for k in range(SPLITS):
        test = fold == k
        fitted = Isotonic(scores[~test], labels[~test])
        truth.append(labels[test])
        before.append(scores[test])
        after.append(fitted(scores[test]))
    truth = np.concatenate(truth)
    return calibration_error(truth, np.concatenate(before)) > calibration_error(truth, np.concatenate(after))


class Calibration:
    """Per class (binary: class 1 only) an isotonic fit on the reference, or none."""

    def __init__(self, task: str, scores: np.ndarray, labels: np.ndarray):
        self.task = task
        scores = np.asarray(scores, np.float64)
        labels = np.asarray(labels, np.float64)
        if task == "binary":
            columns = [(scores, labels)]
        else:
            columns = [(scores[:, j], (labels == j).astype(np.float64)) for j in range(scores.shape[1])]
        self.calibrated = [needs_calibration(y, s) for s, y in columns]
        self.fits = [Isotonic(s, y) if c else None for (s, y), c in zip(columns, self.calibrated)]

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, np.float64)
        if self.task == "binary":
            return scores if self.fits[0] is None else self.fits[0](scores)
        out = np.column_stack([scores[:, j] if f is None else f(scores[:, j]) for j, f in enumerate(self.fits)])
        total = out.sum(axis=1, keepdims=True)
        uniform = np.full_like(out, 1 / out.shape[1])
        return np.divide(out, total, out=uniform, where=total != 0)


def estimated_auc(calibrated: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(scores)[::-1]
    p = calibrated[order]
    with np.errstate(divide="ignore", invalid="ignore"):
        tps = np.round(np.r_[0, np.cumsum(p)], 5)
        fps = np.round(np.r_[0, 1 + np.arange(len(p)) - np.cumsum(p)], 5)
        return float(np.trapezoid(tps / tps[-1], fps / fps[-1]))


def estimate(calibration: Calibration, scores: np.ndarray) -> dict[str, float]:
    """Estimated accuracy (and binary AUC) of rows scored `scores`."""
    if len(scores) == 0:
        return {"accuracy": float("nan")} | ({"auc": float("nan")} if calibration.task == "binary" else {})
    scores = np.asarray(scores, np.float64)
    p = calibration(scores)
    if calibration.task == "binary":
        predicted = scores > 0.5
        return {"accuracy": float(np.mean(np.where(predicted, p, 1 - p))), "auc": estimated_auc(p, scores)}
    return {"accuracy": float(np.mean(p[np.arange(len(p)), np.argmax(scores, axis=1)]))}


__all__ = ["Calibration", "Isotonic", "estimate", "needs_calibration"]
