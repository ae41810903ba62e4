"""Kernels use numpy and numba only, never `engine`, and take Numba options from _jit.py."""

from __future__ import annotations

import ast
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
# standard-library modules the kernels use (importlib: the package loads its names when first used;
# functools, sys and threading: _jit.py compiles kernels when first called; os, json, select,
# signal, time, fcntl and subprocess: _compile.py has a helper process compile them)
ALLOWED = {"numpy", "numba", "kernels", "math", "base64", "struct", "zlib", "__future__", "typing", "dataclasses",
           "importlib", "functools", "sys", "threading", "os", "json", "select", "subprocess", "signal", "time",
           "fcntl"}


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


def test_numba_is_loaded_by_the_first_kernel_run_not_by_an_import():
    """A process that imports kernel modules (the label join's table, the Kafka codec, the
    drift rule) without running a kernel does not pay for Numba; the first kernel run
    compiles it and the kernels it calls in other modules."""
    import subprocess
    import sys

    probe = (
        "import importlib, pathlib, sys\n"
        "for p in sorted(pathlib.Path('kernels').glob('*.py')):\n"
        "    importlib.import_module('kernels.' + p.stem if p.stem != '__init__' else 'kernels')\n"
        "import engine.observer, engine.codec.kafka, engine.performance.join\n"
        "print('numba' in sys.modules, 'llvmlite' in sys.modules)\n"
        "import numpy as np\n"
        "from kernels import SlidingKS, ks_2samp\n"
        "s = SlidingKS(np.arange(50.0), [10, 20]); s.update(np.arange(30.0) / 3)\n"  # sliding_ks -> ks_window, ks
        "print('numba' in sys.modules, round(s.pvalue(10), 12) == round(ks_2samp(np.arange(20, 30.0) / 3, np.arange(50.0))[1], 12))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=KERNELS.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True", "True"]


def test_numba_comes_without_scipys_linear_algebra_and_refuses_it_to_no_other_thread():
    """Numba's import probes for BLAS by importing scipy.linalg (~16 MiB): the first kernel
    run imports Numba without it. Another thread importing scipy.stats (which needs
    scipy.linalg) while Numba loads is not refused."""
    import subprocess
    import sys

    probe = (
        "import sys, threading, time\n"
        "import numpy as np\n"
        "from kernels import ks_2samp\n"
        "done = []\n"
        "def other():\n"
        "    time.sleep(0.05)\n"
        "    from scipy.stats import binomtest\n"
        "    done.append(bool(binomtest(3, 10).pvalue > 0))\n"
        "t = threading.Thread(target=other); t.start()\n"
        "ks_2samp(np.arange(20.0), np.arange(5.0, 30.0))\n"  # the first kernel run: Numba loads
        "t.join()\n"
        "print(done)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=KERNELS.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[True]"]
    alone = subprocess.run([sys.executable, "-c", "import sys, numpy as np\nfrom kernels import ks_2samp\n"
                            "ks_2samp(np.arange(20.0), np.arange(5.0, 30.0))\nprint('scipy.linalg' in sys.modules)"],
                           cwd=KERNELS.parent, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0 and alone.stdout.split() == ["False"], alone.stderr
