"""The guards' input domain and data quality read the reference alike (engine/monitor/domain.py)."""

from __future__ import annotations

import numpy as np

from engine.codec.validate import TensorSpec
from engine.guards import INPUT_DOMAIN, for_version
from engine.monitor.domain import reference_domain
from engine.settings import ModelSettings

FEATURES = ["f0", "f1", "f2"]


def inputs(dtype) -> tuple[TensorSpec, ...]:
    """The model's inputs: one, "x", of `dtype`."""
    return (TensorSpec("x", "FP32" if dtype == np.float32 else "FP64", np.dtype(dtype), (-1, len(FEATURES))),)


def settings(tmp_path, reference: dict[str, np.ndarray], margin: float) -> ModelSettings:
    np.savez(tmp_path / "ref.npz", **reference)
    return ModelSettings(name="m", path=tmp_path / "m.onnx",
                         monitor={"features": FEATURES, "reference": tmp_path / "ref.npz", "categorical": ["f2"]},
                         guards={"input_domain": "reference", "margin": margin, "action": "flag"})


def test_the_references_own_rows_sent_as_fp32_are_inside_a_guard_with_no_margin(tmp_path, rng):
    """A float64 reference whose extremes FP32 cannot hold: float32(min) lies below min (and
    float32(max) above max for some). Those training rows, sent as FP32, must not be flagged:
    the range is the reference's as the input sees it, the same one data quality counts with."""
    n = 500
    reference = {"f0": rng.normal(size=n) * 3.3, "f1": rng.uniform(-1, 1, size=n) / 3, "f2": rng.integers(0, 4, n) * 1.0}
    lo64 = np.array([reference["f0"].min(), reference["f1"].min()])
    assert (lo64.astype(np.float32).astype(np.float64) != lo64).all()  # the extremes are not FP32 values
    ms = settings(tmp_path, reference, margin=0.0)
    guards = for_version(ms, inputs(np.float32))
    rows = np.stack([reference[f] for f in FEATURES], axis=1).astype(np.float32)
    assert not guards.input_bits({"x": rows}).any()
    # the domain is the shared one
    lo, hi, codes, empty = reference_domain(reference, FEATURES, [False, False, True], np.dtype(np.float32))
    np.testing.assert_array_equal(guards.lo[:2], lo[:2])
    np.testing.assert_array_equal(guards.hi[:2], hi[:2])
    np.testing.assert_array_equal(guards.codes[2], codes[2])
    assert empty == []
    # just past the range, or a category never seen: flagged, those rows alone
    outside = rows[:3].copy()
    outside[0, 0] = np.nextafter(np.float32(hi[0]), np.float32(np.inf))
    outside[1, 1] = np.nextafter(np.float32(lo[1]), np.float32(-np.inf))
    bits = guards.input_bits({"x": np.vstack([outside, rows[3:10]])})
    assert bits.tolist() == [INPUT_DOMAIN, INPUT_DOMAIN] + [0] * 8
    outside[2, 2] = 7.0
    assert guards.input_bits({"x": outside[2:3]}).tolist() == [INPUT_DOMAIN]


def test_a_margin_widens_the_range_by_its_share_on_each_side(tmp_path, rng):
    reference = {"f0": np.array([0.0, 10.0]), "f1": np.array([-1.0, 1.0]), "f2": np.array([1.0, 2.0])}
    guards = for_version(settings(tmp_path, reference, margin=0.1), inputs(np.float64))
    np.testing.assert_array_equal(guards.lo[:2], [-1.0, -1.2])
    np.testing.assert_array_equal(guards.hi[:2], [11.0, 1.2])
    assert guards.input_bits({"x": np.array([[10.9, 1.19, 1.0], [11.1, 0.0, 2.0]])}).tolist() == [0, INPUT_DOMAIN]
