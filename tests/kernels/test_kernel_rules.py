"""Kernels use numpy and numba only, never `engine`, and take Numba options from _jit.py."""

from __future__ import annotations

import ast
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
# standard-library modules the kernels use (importlib: the package loads its names when first used)
ALLOWED = {"numpy", "numba", "kernels", "math", "base64", "struct", "zlib", "__future__", "typing", "dataclasses",
           "importlib"}


def test_kernels_import_only_numpy_numba_and_the_standard_library():
    for path in KERNELS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in ALLOWED, f"{path.name} imports {name}"


def test_no_kernel_sets_its_own_numba_options():
    for path in KERNELS.glob("*.py"):
        if path.name == "_jit.py":
            continue
        text = path.read_text()
        assert "njit" not in text and "numba.jit" not in text and "@numba" not in text, path.name
