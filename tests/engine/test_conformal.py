"""Conformal prediction against a direct numpy computation of its rule on the same reference,
and its coverage over many seeds: within binomial tolerance of 1 - alpha on exchangeable rows,
below it on shifted rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.performance.conformal import Conformal


def classes(n: int, seed: int, shift: float = 0.0, k: int = 4):
    """A calibrated k-class model's probabilities and labels drawn from them; `shift` makes the
    labels drift away from the probabilities (exchangeability broken)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 1.5
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = p.copy()
    if shift:
        truth = (1 - shift) * p + shift * np.roll(p, 1, axis=1)
    labels = np.array([rng.choice(k, p=row) for row in truth])
    return p, labels


def test_the_sets_are_the_lac_rule():
    p, y = classes(2000, 0)
    alpha = 0.1
    c = Conformal("multiclass", "probabilities", alpha, p, y)
    s = np.sort(1 - p[np.arange(len(y)), y])
    q = s[math.ceil((len(y) + 1) * (1 - alpha)) - 1]
    assert c.q == q
    live, _ = classes(500, 1)
    np.testing.assert_array_equal(c.derive({"probabilities": live.astype(np.float32)}), live.astype(np.float32) >= 1 - q)


def test_binary_and_regression():
    rng = np.random.default_rng(2)
    p1 = rng.random(1000)
    y = (rng.random(1000) < p1).astype(int)
    c = Conformal("binary", "probabilities", 0.2, p1, y)
    truth_p = np.where(y == 1, p1, 1 - p1)
    assert c.q == np.sort(1 - truth_p)[math.ceil(1001 * 0.8) - 1]
    x = rng.normal(size=1000)
    target = 2 * x + rng.normal(size=1000)
    r = Conformal("regression", "variable", 0.1, 2 * x, target)
    assert r.q == np.sort(np.abs(target - 2 * x))[math.ceil(1001 * 0.9) - 1]
    interval = r.derive({"variable": np.array([[1.0], [3.0]], np.float32)})
    np.testing.assert_allclose(interval, [[1 - r.q, 1 + r.q], [3 - r.q, 3 + r.q]], rtol=1e-6)


def test_coverage_over_seeds_is_one_minus_alpha_on_exchangeable_rows_and_less_on_shifted():
    alpha, n_cal, n_test = 0.1, 500, 500
    exchangeable, shifted = [], []
    for seed in range(200):
        p, y = classes(n_cal, seed)
        c = Conformal("multiclass", "probabilities", alpha, p, y)
        exchangeable.append(c.coverage(*classes(n_test, 10_000 + seed))[0])
        shifted.append(c.coverage(*classes(n_test, 20_000 + seed, shift=0.6))[0])
    mean = float(np.mean(exchangeable))
    # the guarantee: E[coverage] in [1 - alpha, 1 - alpha + 1/(n+1)]; 200 x 500 rows: sd of the mean ~0.002
    assert 1 - alpha - 0.006 <= mean <= 1 - alpha + 1 / (n_cal + 1) + 0.006, mean
    assert np.mean(shifted) < 1 - alpha - 0.05
