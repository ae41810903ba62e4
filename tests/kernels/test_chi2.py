"""Chi-squared kernels against SciPy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given, settings, strategies as st

from kernels.chi2 import SlidingChi2, chisquare, psi
from kernels.pvalues import chi2_sf, gammaincc


def close_p(ours: float, ref: float) -> bool:
    """p-values: 1e-6 relative, or 1e-10 absolute when tiny (the issue's bar)."""
    return abs(ours - ref) <= max(1e-6 * abs(ref), 1e-10)


@given(st.floats(0.05, 5e4), st.floats(0, 1e5))
@settings(max_examples=400, deadline=None)
def test_gammaincc_matches_scipy(a, x):
    ours, ref = gammaincc(a, x), scipy.special.gammaincc(a, x)
    assert abs(ours - ref) <= max(1e-10 * ref, 1e-300), (a, x, ours, ref)


def test_chi2_sf_edges():
    assert chi2_sf(0.0, 3) == 1.0
    assert chi2_sf(np.inf, 3) == 0.0
    assert np.isnan(chi2_sf(np.nan, 3)) and np.isnan(chi2_sf(1.0, 0))


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=50), st.booleans())
@settings(max_examples=300, deadline=None)
def test_chisquare_equals_scipy(observed, with_expected):
    obs = np.array(observed, dtype=np.float64)
    if obs.sum() == 0:
        return
    if with_expected:
        weights = np.arange(1, len(obs) + 1, dtype=np.float64)
        exp = weights / weights.sum() * obs.sum()
        ours, ref = chisquare(obs, exp), scipy.stats.chisquare(obs, exp)
    else:
        ours, ref = chisquare(obs), scipy.stats.chisquare(obs)
    assert ours[0] == pytest.approx(ref.statistic, rel=1e-12, abs=1e-12)
    assert close_p(ours[1], ref.pvalue)


def test_chisquare_refuses_mismatched_totals():
    with pytest.raises(ValueError, match="totals differ"):
        chisquare([1, 2, 3], [1, 1, 1])


@given(
    st.lists(st.integers(0, 9), min_size=1, max_size=400),
    st.lists(st.integers(-3, 14), min_size=0, max_size=3000),
    st.integers(1, 700),
)
@settings(max_examples=150, deadline=None)
def test_sliding_chi2_equals_scipy_on_the_window(reference, stream, window):
    ref = np.array(reference, dtype=np.int64)
    s = SlidingChi2(ref, window)
    data = np.array(stream, dtype=np.int64)
    # feed in uneven chunks: results must not depend on how the stream is cut
    for chunk in np.array_split(data, 7):
        s.update(chunk)
    last = data[-window:] if len(data) else data
    k = ref.max() + 1
    bins = np.where((last >= 0) & (last < k), last, k)
    obs = np.bincount(bins, minlength=k + 1).astype(np.float64)
    assert s.n == len(last)
    assert np.array_equal(s.counts, obs)
    if len(last) == 0:
        assert s.statistic == 0.0 and s.pvalue() == 1.0
        return
    ref_result = scipy.stats.chisquare(obs, s.frequencies * len(last))
    assert s.statistic == pytest.approx(ref_result.statistic, rel=1e-12, abs=1e-9)
    assert close_p(s.pvalue(), ref_result.pvalue)
    assert np.isfinite(s.psi())


def test_long_stream_stays_exact(rng):
    """Millions of O(1) updates: the running sum does not drift (periodic re-summation)."""
    s = SlidingChi2(rng.integers(0, 20, 10_000), 5000)
    data = rng.integers(0, 21, 3_000_000)
    s.update(data)
    obs = np.bincount(data[-5000:], minlength=21).astype(float)
    assert s.statistic == pytest.approx(scipy.stats.chisquare(obs, s.frequencies * 5000).statistic, rel=1e-12)


def test_reference_as_counts_and_unseen_categories():
    s = SlidingChi2(np.array([50, 0, 50]), 10, reference_is_counts=True)
    s.update(np.array([1, 1, 7, 7]))  # 1 never seen in the reference, 7 not a category at all
    assert s.counts.tolist() == [0, 2, 0, 2]
    assert np.isfinite(s.statistic) and 0 <= s.pvalue() < 0.01


def test_psi_matches_its_definition():
    e, a = np.array([30, 50, 20]), np.array([20, 40, 40])
    pe, pa = (e + 0.5) / (e + 0.5).sum(), (a + 0.5) / (a + 0.5).sum()
    assert psi(e, a) == pytest.approx(np.sum((pa - pe) * np.log(pa / pe)), rel=1e-12)
    assert psi(e, e) == pytest.approx(0.0, abs=1e-15)


def test_bad_calls():
    with pytest.raises(TypeError, match="integer category codes"):
        SlidingChi2(np.array([0.5, 1.5]), 10)
    with pytest.raises(ValueError, match="window"):
        SlidingChi2(np.array([0, 1]), 0)
    s = SlidingChi2(np.array([0, 1]), 10)
    with pytest.raises(TypeError, match="integers"):
        s.update(np.array([0.0]))
