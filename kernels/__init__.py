"""Numba kernels for streaming statistics (numpy + numba only; never imports `engine`).

Each public function or class checks its inputs and calls a private jitted kernel on
whole arrays. Numba options live in kernels/_jit.py.

The names below are imported when first used (PEP 562), not with the package: importing
one kernel module (`kernels.keyhash`, say) must not load every other, nor Numba for a
module that does not need it, because a process pays for what it imports (Numba and LLVM:
about 30 MiB each).
"""

from __future__ import annotations

import importlib

_WHERE = {"HdrHistogram": "kernels.hdr", "SlidingChi2": "kernels.chi2", "chisquare": "kernels.chi2",
          "psi": "kernels.chi2", "ks_2samp": "kernels.ks", "ks_2samp_nan": "kernels.ks",
          "KSColumns": "kernels.sliding_ks", "SlidingKS": "kernels.sliding_ks", "kstwo_sf": "kernels.kolmogorov"}

__all__ = list(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
