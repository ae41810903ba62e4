"""Numba kernels for streaming statistics (numpy + numba only; never imports `engine`).

Each public function or class checks its inputs and calls a private jitted kernel on
whole arrays. Numba options live in kernels/_jit.py.
"""

from kernels.hdr import HdrHistogram

__all__ = ["HdrHistogram"]
