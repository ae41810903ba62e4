"""Sticky splits: stable hashes, arms that follow the weights, one answer per key."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from engine.routing.policy import Split
from kernels.keyhash import hash_keys, hash_spans, unit_interval


def test_hash_is_the_same_in_another_process():
    keys = [f"user-{i}".encode() for i in range(50)] + [b"", "ключ".encode()]
    here = hash_keys(keys).tolist()
    code = ("import sys, json; from kernels.keyhash import hash_keys; "
            "keys = json.loads(sys.argv[1]); print(json.dumps(hash_keys([bytes.fromhex(k) for k in keys]).tolist()))")
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps([k.hex() for k in keys])],
                         capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert json.loads(out.stdout) == here


def test_hash_spans_checks_its_arguments():
    buf = np.frombuffer(b"abcdef", dtype=np.uint8)
    assert hash_spans(buf, np.array([0, 3]), np.array([3, 6])).tolist() == hash_keys([b"abc", b"def"]).tolist()
    with pytest.raises(TypeError, match="uint8"):
        hash_spans(buf.astype(np.int16), np.array([0]), np.array([1]))
    with pytest.raises(ValueError, match="inside buf"):
        hash_spans(buf, np.array([0]), np.array([7]))


def test_unit_interval_is_uniform():
    points = unit_interval(hash_keys([f"k{i}".encode() for i in range(100_000)]))
    assert points.min() >= 0 and points.max() < 1
    counts = np.histogram(points, bins=10, range=(0, 1))[0]
    expected = 10_000
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 27.9  # chi-squared, 9 degrees of freedom, p = 0.001


def test_one_key_and_many_keys_agree():
    split = Split({"1": 80, "2": 15, "3": 5})
    keys = [f"acct-{i}".encode() for i in range(3000)]
    many, random = split.arms(keys)
    assert random is None
    one = [split.versions.index(split.pick(k)[0]) for k in keys]
    assert many.tolist() == one
    assert split.pick("acct-7") == split.pick(b"acct-7")
    shares = np.bincount(many, minlength=3) / len(keys)
    for share, expected in zip(shares, split.shares):
        assert abs(share - expected) < 4.5 * np.sqrt(expected * (1 - expected) / len(keys))


def test_config_order_does_not_move_keys():
    keys = [f"k{i}".encode() for i in range(1000)]
    a, b = Split({"1": 60, "2": 40}), Split({"2": 40, "1": 60})
    assert [a.versions[i] for i in a.arms(keys)[0]] == [b.versions[i] for i in b.arms(keys)[0]]


def test_missing_keys_draw_at_random():
    split = Split({"a": 50, "b": 50}, seed=3)
    arms, random = split.arms([None] * 4000 + [b""] * 4000 + [b"k"])
    assert random.tolist() == [True] * 8000 + [False]
    assert abs(arms[:8000].mean() - 0.5) < 4.5 * np.sqrt(0.25 / 8000)
    version, sticky = split.pick(None)
    assert version in ("a", "b") and sticky is False
