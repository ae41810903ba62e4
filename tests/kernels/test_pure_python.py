"""The kernels' Python, run without Numba (NUMBA_DISABLE_JIT=1) on small inputs, gives the
same answers as the compiled kernels: coverage sees the Python, and a kernel that only
works compiled (or only uncompiled) is caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import json, numpy as np
from kernels import HdrHistogram, KSColumns, SlidingChi2, SlidingKS, chisquare, ks_2samp, kstwo_sf
from kernels.jsonrows import RowSchema, scan_rows, KIND_FLOAT32, KIND_FLOAT64, KIND_INT
from kernels.quality import QualityWindow
rng = np.random.default_rng(3)
a, b = rng.normal(size=40), rng.normal(0.3, size=55)
s = SlidingKS(np.round(rng.normal(size=300), 1), [20, 50]); s.update(np.round(rng.normal(size=170), 1))
kc = KSColumns([SlidingKS(rng.normal(size=90), [15, 40]), SlidingKS(np.round(rng.normal(size=70), 1), [15, 40])])
seen = kc.advance(np.round(rng.normal(0.2, size=(2, 130)), 1), np.array([30, 80, 130]), np.array([True, False, True]))
c = SlidingChi2(rng.integers(0, 6, 200), 60); c.update(rng.integers(0, 8, 150))
h = HdrHistogram(1, 10**6, 3); h.record_values(rng.integers(0, 10**7, 500))
qx = np.column_stack([rng.normal(size=90), rng.integers(0, 5, 90)]); qx[::9, 0] = np.nan
q = QualityWindow(25, [-1.0, 0.0], [1.0, 0.0], [None, np.array([0, 1, 2])])
q_counts, q_lengths = q.advance(qx, [10, 60, 90])
texts = [b'{"id":"a","x":[1.5,-2e-3,0.1,3],"n":7}', b'{"x":[1e30,2.5E+2,-0.0,123456789.123],"n":-3}',
         b'{"x":[1,2,3],"n":1}', b' {"n":2, "id":12, "x":[0.333333343,7,8,9e-40]} ']
buf = np.frombuffer(b"".join(texts), np.uint8)
bounds = np.cumsum([0] + [len(t) for t in texts]).astype(np.int64)
values, ids, status = scan_rows(buf, bounds, RowSchema(["x", "n"], [4, 0], [KIND_FLOAT32, KIND_INT]))
print(json.dumps({
    "json": values[status == 0].ravel().tolist() + ids.ravel().tolist() + status.tolist(),
    "ks": ks_2samp(a, b), "ks_big": ks_2samp(rng.normal(size=120), rng.normal(size=10_050)),
    "kstwo": [kstwo_sf(x, n) for x, n in ((0.05, 50), (0.3, 200), (0.02, 5000))],
    "sliding_ks": [s.statistic, s.pvalue(), s.statistic_of(20), s.pvalue(20), float(s.significant(0.05, 20))],
    "ks_columns": seen.statistic.ravel().tolist() + seen.pvalues(1).ravel().tolist() + seen.n.ravel().tolist(), "chi2": chisquare([10, 20, 30, 40]),
    "sliding_chi2": [c.statistic, c.pvalue(), c.psi()],
    "quality": q_counts.ravel().tolist() + q_lengths.tolist() + q.shares().ravel().tolist(),
    "hdr": [h.percentiles([50, 99, 100]).tolist(), h.mean(), h.out_of_range, h.encode().decode()],
}))
"""


def run(disable_jit: bool) -> dict:
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1" if disable_jit else "0"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_pure_python_kernels_match_compiled():
    compiled, pure = run(False), run(True)
    for key in compiled:
        if key == "hdr":
            assert compiled[key][0] == pure[key][0] and compiled[key][2:] == pure[key][2:]
            assert abs(compiled[key][1] - pure[key][1]) <= 1e-9 * abs(compiled[key][1])
            continue
        for x, y in zip(compiled[key], pure[key]):
            assert abs(x - y) <= 1e-12 * max(abs(x), 1e-300) + 1e-300, (key, x, y)
