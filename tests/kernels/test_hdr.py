"""kernels.HdrHistogram against the `hdrhistogram` package (hdrh), the reference."""

from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram as Reference
from hypothesis import given, settings, strategies as st

from kernels import HdrHistogram

PERCENTILES = [0, 0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100]
# The reference scans its counts in pure Python: keep layouts to tens of thousands of
# counters (5 significant figures over 2**62 would be millions per example).
layouts = st.one_of(
    st.tuples(st.sampled_from([1, 3, 1000]), st.sampled_from([10**6, 3_600_000_000, 2**62]), st.integers(1, 3)),
    st.tuples(st.sampled_from([1, 1000]), st.just(10**6), st.integers(4, 5)),
)
values = st.lists(st.integers(-5, 2**45), min_size=0, max_size=300)


def both(layout, vals):
    lowest, highest, sigfigs = layout
    ours, ref = HdrHistogram(lowest, highest, sigfigs), Reference(lowest, highest, sigfigs)
    ours.record_values(np.array(vals, dtype=np.int64))
    rejected = sum(not ref.record_value(v) for v in vals)
    return ours, ref, rejected


@given(layouts, values)
@settings(max_examples=80, deadline=None)
def test_same_answers_as_the_reference(layout, vals):
    ours, ref, rejected = both(layout, vals)
    assert ours.total_count == ref.get_total_count()
    assert ours.out_of_range == rejected  # never silently dropped: counted
    table = ref.get_percentile_to_value_dict(PERCENTILES)  # one pass in the reference too
    assert ours.percentiles(PERCENTILES).tolist() == [table.get(p, 0) for p in PERCENTILES]
    assert ours.value_at_percentile(99.0) == ref.get_value_at_percentile(99.0)
    if ref.counts_len <= 20_000:  # the reference's mean walks every counter in Python
        assert ours.mean() == pytest.approx(ref.get_mean_value(), rel=1e-12)
    assert ours.max() == ref.get_max_value()
    if ours.total_count:
        assert ours.min() == ref.get_min_value()


@given(layouts, values)
@settings(max_examples=60, deadline=None)
def test_encoding_round_trips_both_ways(layout, vals):
    ours, ref, _ = both(layout, vals)
    theirs_from_ours = Reference.decode(ours.encode())
    ours_from_theirs = HdrHistogram.decode(ref.encode())
    assert theirs_from_ours.get_total_count() == ours.total_count
    table = theirs_from_ours.get_percentile_to_value_dict(PERCENTILES)
    assert [table.get(p, 0) for p in PERCENTILES] == ours.percentiles(PERCENTILES).tolist()
    assert np.array_equal(ours_from_theirs.counts, ours.counts)
    assert ours_from_theirs.percentiles(PERCENTILES).tolist() == ours.percentiles(PERCENTILES).tolist()
    # max after decoding: what the reference decoder says (counts per bucket are all the
    # encoding keeps; it cannot tell a 0 from a 1 in a bucket that holds both)
    assert HdrHistogram.decode(ours.encode()).max() == theirs_from_ours.get_max_value()


@given(st.lists(st.integers(0, 10**7), max_size=100), st.integers(0, 10**6))
@settings(max_examples=100, deadline=None)
def test_coordinated_omission_correction_matches(vals, interval):
    ours, ref = HdrHistogram(1, 10**9, 3), Reference(1, 10**9, 3)
    ours.record_corrected_values(np.array(vals, dtype=np.int64), interval)
    for v in vals:
        ref.record_corrected_value(v, interval)
    assert ours.total_count == ref.get_total_count()
    table = ref.get_percentile_to_value_dict(PERCENTILES)
    assert ours.percentiles(PERCENTILES).tolist() == [table.get(p, 0) for p in PERCENTILES]


@pytest.mark.parametrize("layout", [(1, 3_600_000_000, 3), (1000, 2**62, 2), (1, 10**6, 5)])
def test_mean_matches_the_reference_on_large_layouts(rng, layout):
    vals = rng.lognormal(9, 2.5, 2000).astype(np.int64)
    ours, ref, _ = both(layout, vals.tolist())
    assert ours.mean() == pytest.approx(ref.get_mean_value(), rel=1e-12)


def test_merge_equals_recording_everything(rng):
    a, b, both_ = (HdrHistogram(1, 10**9, 3) for _ in range(3))
    x, y = rng.integers(0, 10**8, 5000), rng.integers(0, 10**5, 3000)
    a.record_values(x), b.record_values(y), both_.record_values(np.concatenate([x, y]))
    a.merge(b)
    assert np.array_equal(a.counts, both_.counts) and a.max() == both_.max() and a.min() == both_.min()
    other_layout = HdrHistogram(1, 10**6, 2)
    other_layout.record_values(y)
    c = HdrHistogram(1, 10**9, 3)
    c.merge(other_layout)
    assert c.total_count == 3000


def test_reset_and_empty():
    h = HdrHistogram(1, 1000, 2)
    assert h.percentiles([50, 99]).tolist() == [0, 0] and h.mean() == 0.0 and h.max() == 0
    h.record_values(np.array([5, 7, 10_000_000]))
    assert h.total_count == 2 and h.out_of_range == 1
    h.reset()
    assert h.total_count == 0 and h.out_of_range == 0 and not h.counts.any()


def test_bad_calls_say_how_to_fix():
    h = HdrHistogram(1, 1000, 2)
    with pytest.raises(TypeError, match="np.rint"):
        h.record_values(np.array([1.5]))
    with pytest.raises(ValueError, match="significant_figures"):
        HdrHistogram(1, 1000, 6)
    with pytest.raises(ValueError, match="highest must be"):
        HdrHistogram(10, 15, 2)
    with pytest.raises(ValueError, match=f"make lowest at most {2**57}"):  # Java refuses it too: 59 + 4 bits > 61
        HdrHistogram(2**59, 2**62, 1)
    assert HdrHistogram(2**57, 2**62, 1).unit_magnitude == 57  # what it suggests, it takes
    with pytest.raises(ValueError, match="percentiles"):
        h.percentiles([np.nan])
    with pytest.raises(ValueError, match="cookie"):
        HdrHistogram.decode(__import__("base64").b64encode(b"\0" * 16))


@given(layouts, st.lists(st.one_of(st.integers(-5, 2**45), st.integers(2**62 - 5, 2**63 - 1)), min_size=1, max_size=60))
@settings(max_examples=80, deadline=None)
def test_one_at_a_time_equals_all_at_once(layout, vals):
    """Short arrays are recorded with Python's ints, long ones with numpy: the same counts,
    extremes and out-of-range counts either way, up to 2**63 - 1."""
    one, whole = HdrHistogram(*layout), HdrHistogram(*layout)
    for _ in range(17):
        for v in vals:
            one.record_values(np.array([v], dtype=np.int64))
    whole.record_values(np.array(vals * 17, dtype=np.int64))  # > 16 values: numpy's path
    assert np.array_equal(one.counts, whole.counts)
    assert (one.total_count, one.out_of_range, one.min(), one.max()) == (
        whole.total_count, whole.out_of_range, whole.min(), whole.max())


def test_correction_far_above_the_interval_is_made_in_pieces(monkeypatch):
    """A value far above the interval makes more corrected values than one array holds: they
    are recorded piece by piece, the same as the reference's one by one."""
    import kernels.hdr

    monkeypatch.setattr(kernels.hdr, "_CORRECTED_CHUNK", 64)
    vals = [5, 10_000, 0, 3, 999_999, 20, 10**12]  # 10**12: beyond the layout, counted once
    ours, ref = HdrHistogram(1, 10**9, 3), Reference(1, 10**9, 3)
    ours.record_corrected_values(np.array(vals, dtype=np.int64), 7)
    for v in vals:
        ref.record_corrected_value(v, 7)
    assert ours.total_count == ref.get_total_count() == 1 + 1429 + 1 + 1 + 142_857 + 3
    assert ours.out_of_range == 1
    table = ref.get_percentile_to_value_dict(PERCENTILES)
    assert ours.percentiles(PERCENTILES).tolist() == [table.get(p, 0) for p in PERCENTILES]
    assert Reference.decode(ours.encode()).get_total_count() == ours.total_count


def test_a_total_ahead_of_the_counts_answers_from_the_counts():
    """A merge that raced a recording on another thread (the latency monitor's readers merge
    the half-window being recorded into) may count a value in the total and not in the counts:
    the percentiles still come from the counts, never from beyond the last one."""
    h = HdrHistogram(1, 3_600_000_000, 3)
    h.record_values(np.array([500, 1_000, 2_000, 4_000] * 25, dtype=np.int64))
    expected = h.percentiles(PERCENTILES).tolist()
    h._total += 5  # what such a merge leaves
    assert h.percentiles(PERCENTILES).tolist() == expected
    assert h.percentiles([100]).tolist() == [h.highest_equivalent(4_000)]
