"""KS kernels against SciPy: statistic to 1e-12, p-values to 1e-6 relative (1e-10 absolute
when tiny), on drawn samples with ties, different sizes, and both exact and asymp regions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st

from kernels import SlidingKS, ks_2samp, ks_2samp_nan, kstwo_sf


def close_p(ours: float, ref: float) -> bool:
    return abs(ours - ref) <= max(1e-6 * abs(ref), 1e-10)


samples = st.lists(st.one_of(st.integers(-5, 5).map(float), st.floats(-1e6, 1e6)), min_size=1, max_size=120)


@given(samples, samples)
@settings(max_examples=300, deadline=None)
def test_ks_2samp_equals_scipy(a, b):
    ours = ks_2samp(np.array(a), np.array(b))
    ref = scipy.stats.ks_2samp(a, b)
    assert ours[0] == pytest.approx(ref.statistic, rel=1e-12, abs=1e-15)
    assert close_p(ours[1], ref.pvalue), (ours, ref)


@pytest.mark.parametrize("n, m, shift", [(2000, 3000, 0.0), (2000, 3000, 0.2), (10000, 10000, 0.05),
                                          (1000, 10000, 0.1), (12000, 500, 0.1), (15000, 20000, 0.03),
                                          (40000, 40000, 0.0), (1, 10001, 0.0), (10001, 3, 2.0)])
def test_ks_2samp_large_and_asymptotic(rng, n, m, shift):
    a, b = rng.normal(size=n), rng.normal(shift, size=m)
    ours, ref = ks_2samp(a, b), scipy.stats.ks_2samp(a, b)
    assert ours[0] == pytest.approx(ref.statistic, rel=1e-12)
    assert close_p(ours[1], ref.pvalue), (ours, ref)


@given(st.integers(1, 200_000), st.floats(0, 1))
@settings(max_examples=300, deadline=None)
def test_kstwo_sf_equals_scipy(n, x):
    assert close_p(kstwo_sf(x, n), scipy.stats.kstwo.sf(x, n))


def test_nans_are_counted_and_excluded(rng):
    a, b = rng.normal(size=50), rng.normal(size=40)
    a_nan = np.concatenate([a, [np.nan, np.nan]])
    stat, p, nans = ks_2samp_nan(a_nan, b)
    ref = scipy.stats.ks_2samp(a, b)
    assert nans == 2 and stat == pytest.approx(ref.statistic) and close_p(p, ref.pvalue)
    with pytest.raises(ValueError, match="at least one non-NaN"):
        ks_2samp([np.nan], [1.0])


def test_edge_cases():
    assert ks_2samp([1.0, 1.0, 1.0], [1.0, 1.0]) == (0.0, 1.0)  # all equal
    assert ks_2samp([0.0], [1.0])[0] == 1.0  # samples of one
    assert ks_2samp(np.array([1, 2, 3]), np.array([4, 5]))[0] == 1.0  # integer input
    ref = scipy.stats.ks_2samp([-np.inf, 0.0, np.inf], [1.0, 2.0])
    assert ks_2samp([-np.inf, 0.0, np.inf], [1.0, 2.0]) == pytest.approx((ref.statistic, ref.pvalue))


@given(
    st.lists(st.integers(-20, 20).map(float), min_size=1, max_size=200),
    st.lists(st.one_of(st.integers(-25, 25).map(float), st.just(np.nan)), max_size=600),
    st.integers(1, 150),
)
@settings(max_examples=200, deadline=None)
def test_sliding_ks_equals_scipy_on_the_window(reference, stream, window):
    """Ties with the reference, values outside it, NaNs, a window still filling."""
    s = SlidingKS(np.array(reference), window)
    data = np.array(stream)
    for chunk in np.array_split(data, 5):
        s.update(chunk)
    clean = data[~np.isnan(data)]
    last = clean[-window:]
    assert s.nan_count == int(np.isnan(data).sum())
    assert s.n == len(last)
    if len(last) == 0:
        assert s.statistic == 0.0 and s.pvalue() == 1.0
        return
    ref = scipy.stats.ks_2samp(last, reference)
    assert s.statistic == pytest.approx(ref.statistic, rel=1e-12, abs=1e-15)
    assert close_p(s.pvalue(), ref.pvalue)


def test_sliding_ks_long_stream_with_a_shift(rng):
    ref = rng.normal(size=10_000)
    s = SlidingKS(ref, 1000)
    data = np.concatenate([rng.normal(size=20_000), rng.normal(0.3, size=3_000)])
    end = 0
    for chunk in np.split(data, 23):
        s.update(chunk)
        end += chunk.size
        window = data[max(0, end - 1000):end]
        assert s.statistic == pytest.approx(scipy.stats.ks_2samp(window, ref).statistic, rel=1e-12)
    last = data[-1000:]
    ref_result = scipy.stats.ks_2samp(last, ref)
    assert s.statistic == pytest.approx(ref_result.statistic, rel=1e-12)
    assert close_p(s.pvalue(), ref_result.pvalue)
    assert s.pvalue() < 1e-6  # the shift is seen


def test_bad_calls():
    with pytest.raises(ValueError, match="window"):
        SlidingKS([1.0], 0)
    with pytest.raises(ValueError, match="non-NaN"):
        SlidingKS([np.nan], 3)
    with pytest.raises(TypeError):
        SlidingKS([1.0], 3).update(np.array(["a"]))


@pytest.mark.parametrize("window, m", [(50, 80), (64, 64), (30, 500)])
def test_critical_statistic_is_the_exact_threshold(rng, window, m):
    ref = rng.normal(size=m)
    s = SlidingKS(ref, window, alphas=(0.05, 1e-3))
    assert set(s._critical) == {(0.05, window), (1e-3, window)}
    for alpha in (0.05, 1e-3):
        d = s.critical_statistic(alpha)
        # just at the threshold the p-value is <= alpha, one step below it is not
        g = np.gcd(window, m)
        lcm = window // g * m
        h = round(d * lcm)
        from kernels.ks import _pvalue

        assert _pvalue(window, m, h) <= alpha < _pvalue(window, m, h - 1)
    data = rng.normal(0.8, size=window)
    s.update(data)
    assert s.significant(0.05) == (scipy.stats.ks_2samp(data, ref).pvalue <= 0.05)


@pytest.mark.parametrize("n, m", [(7, 13), (30, 500), (999, 10000), (13, 7)])
def test_block_of_pvalues_equals_one_at_a_time(n, m):
    from kernels.ks import BLOCK, _pvalue, pvalue_block

    lcm = n // np.gcd(n, m) * m
    for h in (0, 1, 17, lcm // 7, lcm - 3):
        block = pvalue_block(n, m, h)
        assert h in block and len(block) in (1, BLOCK)
        for hh, p in block.items():
            assert p == _pvalue(n, m, hh)


def test_far_tail_of_unequal_sizes_is_cheap_and_within_tolerance(rng):
    import time

    from kernels.ks import TAIL, _outside_inside_method, _pvalue

    n, m = 2000, 10000
    h = 6000  # D = 0.6: astronomically small
    start = time.perf_counter()
    p = _pvalue(n, m, h)
    assert time.perf_counter() - start < 0.05
    assert p < TAIL and abs(p - _outside_inside_method(n, m, 2000, h)) < 1e-11


@pytest.mark.parametrize("chunk", [1, 7, 400, 5000])
def test_lazy_tree_is_exact_however_often_it_is_asked(rng, chunk):
    """A query after every event replays few slots; after large chunks the tree is rebuilt
    (or the pending list overflows): the statistic is SciPy's every time."""
    ref = np.round(rng.normal(size=3000), 1)  # ties with the reference
    s = SlidingKS(ref, 500)
    data = np.round(rng.normal(0.05, size=12_000), 1)
    for end in range(chunk, len(data) + 1, chunk):
        s.update(data[end - chunk : end])
        if end >= 500 and (chunk >= 400 or end % 97 == 0):
            window = data[end - 500 : end]
            assert s.statistic == pytest.approx(scipy.stats.ks_2samp(window, ref).statistic, rel=1e-12)


finite_or_not = st.one_of(st.integers(-6, 6).map(float), st.floats(-1e6, 1e6), st.just(np.inf), st.just(-np.inf))


@given(
    st.lists(st.lists(finite_or_not, min_size=1, max_size=150), min_size=1, max_size=4),
    st.lists(st.one_of(finite_or_not, st.just(np.nan)), min_size=1, max_size=400),
    st.integers(1, 120),
    st.lists(st.tuples(st.integers(1, 60), st.booleans()), min_size=1, max_size=12),
)
@settings(max_examples=150, deadline=None)
def test_ks_columns_equal_scipy_at_every_boundary(references, stream, window, pieces):
    """Several columns (own references: ties, +-inf, wide ranges; NaNs in the stream) advanced
    in one call: at each boundary each column's statistic, window length and p-value are
    SciPy's on that column's window then."""
    from kernels import KSColumns

    kernels = [SlidingKS(np.array(r), window) for r in references]
    columns = KSColumns(kernels)
    rng = np.random.default_rng(len(stream))
    data = np.array([rng.permutation(stream) for _ in references])  # each column its own order
    ends, marks, end = [], [], 0
    for size, mark in pieces:  # the last piece ends at the last row, with a mark
        end = min(end + size, data.shape[1])
        ends.append(end)
        marks.append(mark)
        if end == data.shape[1]:
            break
    ends[-1], marks[-1] = data.shape[1], True
    seen = columns.advance(data, np.array(ends), np.array(marks))
    b = 0
    for end, mark in zip(ends, marks):
        if not mark:
            continue
        pvalues = seen.pvalues(b)
        for c, reference in enumerate(references):
            clean = data[c, :end][~np.isnan(data[c, :end])]
            last = clean[-window:]
            assert seen.n[c, 0, b] == len(last)
            if len(last) == 0:
                assert seen.statistic[c, 0, b] == 0.0 and pvalues[c, 0] == 1.0
                continue
            ref = scipy.stats.ks_2samp(last, reference)
            assert seen.statistic[c, 0, b] == pytest.approx(ref.statistic, rel=1e-12, abs=1e-15)
            assert close_p(pvalues[c, 0], ref.pvalue)
        b += 1
    for c, kernel in enumerate(kernels):  # the kernels' own view agrees after the call
        assert kernel.statistic == seen.statistic[c, 0, -1]
        assert kernel.nan_count == int(np.isnan(data[c]).sum())


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (0.05, 1.0), (2.0, 1.0), (0.0, 3.0)])
def test_bounded_scan_equals_the_full_scan(rng, shift, scale):
    """The block-bounded pass visits few blocks but finds the same largest gap, wherever it
    lies (no drift, a small and a large shift, a wider spread), and that is SciPy's."""
    from kernels.ks_window import _bounded_scan_h, _scan_h

    reference = np.exp(rng.normal(size=5000))  # skewed: crowded buckets and sparse tails
    s = SlidingKS(reference, 2000)
    stream = np.exp(rng.normal(shift, scale, size=12 * 700))
    for end in range(700, stream.size + 1, 700):
        s.update(stream[end - 700:end])
        if end < 2000:  # both passes are for a full window
            continue
        h = _bounded_scan_h(s._w[0], s._bcount[0], s._bref, s.m, s.window)
        assert h == _scan_h(s._w[0], s._ref_slot, 0)
        assert h / (s.n * s.m) == pytest.approx(
            scipy.stats.ks_2samp(stream[end - 2000:end], reference).statistic, rel=1e-12)


def test_ks_columns_bad_calls(rng):
    from kernels import KSColumns

    columns = KSColumns([SlidingKS(rng.normal(size=50), 10), SlidingKS(rng.normal(size=60), 10)])
    with pytest.raises(ValueError, match=r"\[2, rows\]"):
        columns.advance(np.zeros((3, 5)), np.array([5]), np.array([True]))
    with pytest.raises(ValueError, match="ends"):
        columns.advance(np.zeros((2, 5)), np.array([4]), np.array([True]))
    with pytest.raises(ValueError, match="at least one"):
        KSColumns([])
    with pytest.raises(ValueError, match="dtype"):  # int32 weights next to int64 ones
        KSColumns([SlidingKS(rng.normal(size=50), 10), SlidingKS(rng.normal(size=50_000), 50_000)])
    shared = SlidingKS(rng.normal(size=50), 10)  # its state lives in one KSColumns' arrays
    with pytest.raises(ValueError, match="one KSColumns only"):
        KSColumns([shared, shared])
    KSColumns([shared])
    with pytest.raises(ValueError, match="one KSColumns only"):
        KSColumns([shared])


def test_infinity_beyond_a_finite_reference_stays_in_its_column():
    """+inf where the reference has none lands in the gap after its largest value (the
    search pads the reference with +inf; taken for a reference value, it was written one
    slot past the column's weights: out of bounds, in the flat layout the next column's
    state). Each column equals SciPy, and the columns' own SlidingKS views agree."""
    from kernels import KSColumns

    references = [np.array([0.0]), np.array([0.0, 1.0, 2.0]), np.array([-np.inf, 0.5, np.inf])]
    kernels = [SlidingKS(r, 4) for r in references]
    columns = KSColumns(kernels)
    data = np.array([[np.inf, 0.0, np.inf, np.inf, 0.0, np.inf],
                     [0.0, 3.0, np.inf, 1.0, np.inf, 2.0],
                     [np.inf, 0.5, -np.inf, np.inf, 0.7, 0.5]])
    seen = columns.advance(data, np.array([3, 6]), np.array([True, True]))
    for b, end in enumerate((3, 6)):
        for c, reference in enumerate(references):
            window = data[c, max(0, end - 4):end]
            assert seen.statistic[c, 0, b] == pytest.approx(scipy.stats.ks_2samp(window, reference).statistic,
                                                            rel=1e-12, abs=1e-15)
    for c, kernel in enumerate(kernels):
        assert kernel.statistic == seen.statistic[c, 0, -1]
        assert kernel.n == 4


def test_gather_columns_copies_chosen_columns_into_block_rows(rng):
    from kernels.sliding_ks import gather_columns

    matrix = rng.normal(size=(700, 9)).astype(np.float32)  # more rows than one tile
    block = np.full((4, 700), -1.0)
    gather_columns(matrix, [8, 0, 3], block, [2, 0, 3])
    assert np.array_equal(block[[2, 0, 3]], matrix[:, [8, 0, 3]].T.astype(np.float64))
    assert np.all(block[1] == -1.0)
    gather_columns(np.arange(1400).reshape(700, 2), [1], block, [1])  # integers are cast
    assert np.array_equal(block[1], np.arange(1, 1400, 2, dtype=np.float64))
    half = matrix.astype(np.float16)  # a model with FP16 inputs: Numba has no float16, the values are kept
    gather_columns(half, [8, 0, 3], block, [2, 0, 3])
    assert np.array_equal(block[[2, 0, 3]], half[:, [8, 0, 3]].T.astype(np.float64))
    gather_columns(matrix > 0, [5], block, [1])
    assert np.array_equal(block[1], (matrix[:, 5] > 0).astype(np.float64))
    with pytest.raises(ValueError, match="pair up"):
        gather_columns(matrix, [9], block, [0])
    with pytest.raises(ValueError, match="float64"):
        gather_columns(matrix, [0], block[:, :10], [0])


def test_large_windows_keep_exact_int64_weights(rng):
    """m * window past 2**31 switches the slot weights to int64; the statistic stays SciPy's."""
    reference = rng.normal(size=50_000)
    s = SlidingKS(reference, 50_000)
    assert s._w.dtype == np.int64
    data = rng.normal(0.02, size=65_000)
    s.update(data)
    expected = scipy.stats.ks_2samp(data[-50_000:], reference)
    assert s.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert close_p(s.pvalue(), expected.pvalue)


@given(
    st.lists(st.integers(-20, 20).map(float), min_size=1, max_size=200),
    st.lists(st.one_of(st.integers(-25, 25).map(float), st.just(np.nan)), max_size=600),
    st.lists(st.integers(1, 150), min_size=1, max_size=4, unique=True),
    st.integers(1, 6),
)
@settings(max_examples=150, deadline=None)
def test_several_windows_each_equal_scipy_on_its_window(reference, stream, windows, pieces):
    """One kernel, several window sizes sharing the placement and one ring: each window's
    statistic, length and p-value are SciPy's on that window, filling or full."""
    s = SlidingKS(np.array(reference), windows)
    assert s.windows == tuple(sorted(windows)) and s.window == max(windows)
    data = np.array(stream)
    for chunk in np.array_split(data, pieces):
        s.update(chunk)
    clean = data[~np.isnan(data)]
    for size in windows:
        last = clean[-size:]
        assert s.length(size) == len(last)
        if len(last) == 0:
            assert s.statistic_of(size) == 0.0 and s.pvalue(size) == 1.0
            continue
        ref = scipy.stats.ks_2samp(last, reference)
        assert s.statistic_of(size) == pytest.approx(ref.statistic, rel=1e-12, abs=1e-15)
        assert close_p(s.pvalue(size), ref.pvalue)
        if len(last) == size:  # the O(1) decision agrees with the p-value
            assert s.significant(0.01, size) == (s.pvalue(size) <= 0.01)


def test_several_windows_in_columns_at_every_boundary(rng):
    """KSColumns with windows [300, 1000, 2500]: at every boundary each column's every window
    is SciPy's, through the tree (frequent queries) and the scan (rare ones)."""
    from kernels import KSColumns

    references = [rng.normal(size=4000), np.round(rng.normal(size=3000), 1)]
    kernels = [SlidingKS(r, [2500, 300, 1000]) for r in references]
    columns = KSColumns(kernels)
    assert columns.windows == (300, 1000, 2500)
    data = np.stack([rng.normal(0.1, size=9000), np.round(rng.normal(size=9000), 1)])
    ends = np.array([100, 250, 400, 3000, 3050, 7000, 7100, 9000])
    seen = columns.advance(data, ends, np.ones(len(ends), dtype=bool))
    assert seen.statistic.shape == (2, 3, len(ends))
    for b, end in enumerate(ends):
        pvalues = seen.pvalues(b)
        for c, reference in enumerate(references):
            for j, size in enumerate(columns.windows):
                last = data[c, max(0, end - size):end]
                ref = scipy.stats.ks_2samp(last, reference)
                assert seen.n[c, j, b] == len(last)
                assert seen.statistic[c, j, b] == pytest.approx(ref.statistic, rel=1e-12)
                assert close_p(pvalues[c, j], ref.pvalue)
    with pytest.raises(ValueError, match="same window sizes"):
        KSColumns([SlidingKS(references[0], [10, 20]), SlidingKS(references[1], 20)])
    with pytest.raises(ValueError, match="no window of 7"):
        kernels[0].pvalue(7)
    with pytest.raises(ValueError, match="must differ"):
        SlidingKS(references[0], [10, 10])


@pytest.mark.parametrize("shift", [0.0, 0.15])
def test_threshold_tests_agree_with_the_exact_statistic(rng, shift):
    """advance(exact=False, thresholds=T): a full window's h is noted exactly when it reaches
    T and as -1 when it does not -- the same decisions as the exact statistic, at thresholds
    around it -- and significant(alpha) agrees with the p-value."""
    from kernels import KSColumns

    reference = rng.normal(size=5000)
    data = rng.normal(shift, size=(1, 12_000))
    ends = np.arange(100, 12_001, 100)
    exact = KSColumns([SlidingKS(reference, [500, 2000])]).advance(data, ends, np.ones(len(ends), dtype=bool))
    full = exact.n == np.array([500, 2000])[None, :, None]
    for scale in (0.5, 0.9, 1.0, 1.1, 2.0):
        thresholds = np.maximum(1, (np.median(exact.h[0], axis=1) * scale).astype(np.int64))[None, :]
        tested = KSColumns([SlidingKS(reference, [500, 2000])]).advance(
            data, ends, np.ones(len(ends), dtype=bool), exact=np.zeros(len(ends), dtype=bool), thresholds=thresholds)
        reached = exact.h >= thresholds[:, :, None]
        assert np.array_equal(tested.h[reached | ~full], exact.h[reached | ~full])
        assert np.all(tested.h[~reached & full] == -1)
        assert np.all(np.isnan(tested.statistic[~reached & full]))
    s = SlidingKS(reference, [500, 2000])
    s.update(data[0])
    for alpha in (0.2, 1e-3, 1e-8):
        for size in (500, 2000):
            s._h_now = [None, None]  # decide by the threshold pass, not a statistic already known
            assert s.significant(alpha, size) == (s.pvalue(size) <= alpha)
