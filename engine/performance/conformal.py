"""Split conformal prediction, calibrated at load on the version's performance reference
(`[models.conformal]`; the reference of `[models.performance]`: a `label` column and the
version's scores on the same rows).

Classification (LAC): s = 1 - p(true class) on the reference's n rows; q = the
ceil((n + 1)(1 - alpha))-th smallest s (1 when that is past n: every class); a row's set is
every class c with p(c) >= 1 - q, served as `prediction_set` (BOOL [rows, classes]).
Regression: s = |y - prediction|, the interval [prediction - q, prediction + q], served as
`prediction_interval` (FP32 [rows, 2]).
If live rows are exchangeable with the reference's, a set holds the true label with
probability at least 1 - alpha (and, for continuous scores, at most 1 - alpha + 1/(n+1)).
Drift breaks it: the observer follows the coverage on the labelled rows
(`scorewire_conformal_coverage`) and alerts when it is significantly below 1 - alpha.
"""

from __future__ import annotations

import math

import numpy as np

from engine.codec.validate import TensorSpec

DERIVED = ("prediction_set", "prediction_interval")  # outputs scorewire adds (not the model's)


def quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest of `scores` (inf, or 1 for probabilities, past n)."""
    n = len(scores)
    k = math.ceil((n + 1) * (1 - alpha))
    return float(np.sort(scores)[k - 1]) if k <= n else float("inf")


def matrix(task: str, scores: np.ndarray) -> np.ndarray:
    """The probability matrix of a binary (P(class 1)) or multiclass score."""
    scores = np.asarray(scores, np.float64)
    return np.column_stack([1 - scores, scores]) if task == "binary" and scores.ndim == 1 else scores


class Conformal:
    def __init__(self, task: str, output: str, alpha: float, scores: np.ndarray, labels: np.ndarray):
        self.task, self.output, self.alpha = task, output, alpha
        if task == "regression":
            nonconformity = np.abs(np.asarray(labels, np.float64) - np.asarray(scores, np.float64))
        else:
            p = matrix(task, scores)
            nonconformity = 1 - p[np.arange(len(labels)), np.asarray(labels).astype(np.int64)]
        self.q = quantile(nonconformity, alpha)
        self.n = len(nonconformity)

    @property
    def name(self) -> str:
        return "prediction_interval" if self.task == "regression" else "prediction_set"

    def spec(self, output: TensorSpec) -> TensorSpec:
        if self.task == "regression":
            return TensorSpec(self.name, "FP32", np.dtype(np.float32), (-1, 2))
        classes = output.shape[1] if len(output.shape) == 2 else -1
        return TensorSpec(self.name, "BOOL", np.dtype(np.bool_), (-1, classes))

    def derive(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The set (interval) of every row of a scored batch's outputs."""
        values = outputs[self.output]
        if self.task == "regression":
            prediction = np.asarray(values, np.float64).reshape(len(values), -1)[:, 0]
            return np.column_stack([prediction - self.q, prediction + self.q]).astype(np.float32)
        return np.asarray(values) >= 1 - self.q

    def coverage(self, scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """(share of rows whose label is in their set or interval, mean set size or width)."""
        if len(labels) == 0:
            return float("nan"), float("nan")
        if self.task == "regression":
            covered = np.abs(np.asarray(labels, np.float64) - np.asarray(scores, np.float64)) <= self.q
            return float(covered.mean()), 2 * self.q
        p = matrix(self.task, scores)
        sets = p >= 1 - self.q
        covered = sets[np.arange(len(labels)), np.asarray(labels).astype(np.int64)]
        return float(covered.mean()), float(sets.sum(axis=1).mean())


def for_version(settings) -> Conformal | None:
    """The version's conformal predictor ([models.conformal]), from its performance reference."""
    if settings.conformal is None:
        return None
    from engine.performance.alert import load_reference

    p = settings.performance
    reference = load_reference(p.reference, p.task, p.score)
    return Conformal(p.task, p.output, settings.conformal.alpha, reference.scores, reference.labels)


__all__ = ["Conformal", "DERIVED", "for_version", "matrix", "quantile"]
