"""kernels.quality against numpy on the same data: the window's shares of missing values,
values outside the reference's range and unseen categories, at every boundary asked for,
with NaN and +-inf, values exactly at the reference's min and max, and batches of any cut."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.quality import QualityWindow


def naive(x: np.ndarray, lo, hi, categories, size: int) -> np.ndarray:
    """[columns, 3] shares over the last `size` rows of x, with numpy alone."""
    w = np.asarray(x, dtype=np.float64)[-size:]
    missing = ~np.isfinite(w)
    out = np.zeros((w.shape[1], 3))
    for j, cats in enumerate(categories):
        out[j, 0] = missing[:, j].mean()
        if cats is None:
            out[j, 1] = (~missing[:, j] & ((w[:, j] < lo[j]) | (w[:, j] > hi[j]))).mean()
        else:
            codes = np.rint(w[:, j])
            out[j, 2] = (~missing[:, j] & ~np.isin(codes, np.rint(cats))).mean()
    return out


def data(rng, rows: int, lo, hi) -> np.ndarray:
    """Three columns: continuous in ~[lo0, hi0] with values exactly at both ends and beyond,
    NaN and +-inf; a categorical one with codes 0..6 (the reference has 0..4) and NaN; an
    integer-valued continuous one."""
    x = np.column_stack([rng.uniform(lo[0] - 0.5, hi[0] + 0.5, rows), rng.integers(0, 7, rows).astype(np.float64),
                         rng.integers(-3, 13, rows).astype(np.float64)])
    at = rng.choice(rows, size=rows // 5, replace=False)
    x[at[: len(at) // 4], 0] = lo[0]  # exactly at the ends: inside
    x[at[len(at) // 4: len(at) // 2], 0] = hi[0]
    x[at[len(at) // 2:], 0] = rng.choice([np.nan, np.inf, -np.inf], size=len(at) - len(at) // 2)
    x[rng.choice(rows, size=rows // 10, replace=False), 1] = np.nan
    x[rng.choice(rows, size=rows // 20, replace=False), 1] += 0.3  # 2.3 is category 2
    return x


LO, HI = np.array([-1.0, 0.0, 0.0]), np.array([2.0, 0.0, 10.0])
CATEGORIES = [None, np.array([0.0, 1, 2, 3, 4]), None]


@pytest.mark.parametrize("size", [1, 7, 100, 5000])
def test_shares_equal_numpy_at_every_boundary(rng, size):
    x = data(rng, 3000, LO, HI)
    window = QualityWindow(size, LO, HI, CATEGORIES)
    start = 0
    for stop in (1, 2, 50, 51, 700, 2999, 3000):  # batches of every shape, boundaries inside them
        ends = sorted({stop - start, max(1, (stop - start) // 2)})
        counts, lengths = window.advance(x[start:stop], ends)
        for e, c, n in zip(ends, counts, lengths):
            seen = x[: start + e]
            assert n == min(size, len(seen))
            np.testing.assert_array_equal(c / n, naive(seen, LO, HI, CATEGORIES, size))
        start = stop
        np.testing.assert_array_equal(window.shares(), naive(x[:stop], LO, HI, CATEGORIES, size))
    assert window.length == min(size, len(x))


def test_edges_are_inside_and_each_value_has_one_flag():
    window = QualityWindow(10, [0.0], [1.0], [None])
    window.advance(np.array([0.0, 1.0, np.nextafter(1.0, 2), np.nextafter(0.0, -1), np.nan, np.inf, -np.inf, 0.5]))
    assert window.counts.tolist() == [[3, 2, 0]]
    assert window.length == 8 and window.shares()[0, 1] == 2 / 8


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.bool_, np.float16])
def test_any_numeric_dtype_as_numpy_reads_it(rng, dtype):
    x = (rng.normal(0, 3, (400, 2)) if np.dtype(dtype).kind == "f" else rng.integers(-4, 6, (400, 2))).astype(dtype)
    lo, hi, cats = np.array([-2.0, 0.0]), np.array([2.0, 0.0]), [None, np.array([0, 1, 2])]
    window = QualityWindow(150, lo, hi, cats)
    window.advance(x[:123])
    window.advance(x[123:])
    np.testing.assert_array_equal(window.shares(), naive(x.astype(np.float64), lo, hi, cats, 150))


def test_a_strided_view_and_a_one_dimensional_column(rng):
    x = rng.normal(size=(300, 4))
    x[::7, 2] = np.nan
    window = QualityWindow(64, [-1.0], [1.0], [None])
    window.advance(x[:, 2])
    np.testing.assert_array_equal(window.shares(), naive(x[:, 2:3], [-1.0], [1.0], [None], 64))
    view = QualityWindow(64, [-1.0, -1.0], [1.0, 1.0], [None, None])
    view.advance(x[:, ::2])  # not contiguous
    np.testing.assert_array_equal(view.shares(), naive(x[:, ::2], [-1.0] * 2, [1.0] * 2, [None] * 2, 64))


def test_empty_window_and_checked_calls():
    window = QualityWindow(5, [0.0], [1.0], [None])
    assert np.isnan(window.shares()).all()
    counts, lengths = window.advance(np.empty((0, 1)), [])
    assert counts.shape == (0, 1, 3) and window.length == 0
    with pytest.raises(ValueError, match=r"\[rows, 1\]"):
        window.advance(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="ascending"):
        window.advance(np.zeros(3), [2, 1])
    with pytest.raises(TypeError, match="numeric"):
        window.advance(np.array(["a"]))
    with pytest.raises(ValueError, match="positive"):
        QualityWindow(0, [0.0], [1.0], [None])
    with pytest.raises(ValueError, match="finite"):
        QualityWindow(5, [0.0], [1.0], [np.array([1.0, np.nan])])
