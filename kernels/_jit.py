"""Numba options in one place: every kernel is compiled through `jit` (a test checks that
no module calls numba.njit itself).

cache=True writes compiled code next to the sources (__pycache__), so only the first run
on a machine pays compilation; nogil=True lets callers run kernels on threads. fastmath
stays off: the statistics must equal SciPy's to 1e-12, and NaN handling must be exact.
"""

from __future__ import annotations

import numba

OPTIONS = {"cache": True, "nogil": True, "fastmath": False}


def jit(function=None, **overrides):
    """numba.njit with the project's options (overrides only where a kernel documents why)."""
    options = {**OPTIONS, **overrides}
    if function is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(function)
