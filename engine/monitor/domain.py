"""The reference's domain as a model's input sees it: the one reading of it that the guards
(engine/guards.py, input_domain = "reference") and data quality (engine/monitor/quality.py)
share, so that a row quality counts inside is a row the guards let through.

Per feature: the reference's finite values give [min, max] (continuous) or the set of codes
(categorical). The range is rounded to the input's precision: a training value at the
reference's min, sent as FP32, arrives as float32(min), which can lie just below the float64
min and must still count as inside.
"""

from __future__ import annotations

import numpy as np


def reference_domain(reference: dict[str, np.ndarray], names: list[str], categorical: list[bool],
                     dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None], list[str]]:
    """(lo, hi, codes, empty): per feature of `names`, its range (-inf, +inf for a categorical
    feature or one without a finite value), its codes (None for a continuous one), and the
    names of the features whose reference column holds no finite value."""
    k = len(names)
    lo, hi = np.full(k, -np.inf), np.full(k, np.inf)
    codes: list[np.ndarray | None] = [None] * k
    empty = []
    for j, name in enumerate(names):
        values = np.asarray(reference[name], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if not len(finite):
            empty.append(name)
        elif categorical[j]:
            codes[j] = np.unique(finite)
        else:
            lo[j], hi[j] = finite.min(), finite.max()
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize < 8:
        lo, hi = lo.astype(dtype).astype(np.float64), hi.astype(dtype).astype(np.float64)
    return lo, hi, codes, empty
