"""Numba kernels for streaming statistics (numpy + numba only; never imports `engine`).

Each public function or class checks its inputs and calls a private jitted kernel on
whole arrays. Numba options live in kernels/_jit.py.
"""

from kernels.hdr import HdrHistogram

__all__ = ["HdrHistogram"]
from kernels.chi2 import SlidingChi2, chisquare, psi
from kernels.ks import ks_2samp, ks_2samp_nan
from kernels.sliding_ks import KSColumns, SlidingKS
from kernels.kolmogorov import kstwo_sf

__all__ += ["SlidingChi2", "chisquare", "psi", "KSColumns", "SlidingKS", "ks_2samp", "ks_2samp_nan", "kstwo_sf"]
