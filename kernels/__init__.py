"""Numba kernels for streaming statistics (numpy + numba only; never imports `engine`)."""
