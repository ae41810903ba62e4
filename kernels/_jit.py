"""Numba options in one place: every kernel is compiled through `jit` (a test checks that
no module calls numba.njit itself).

cache=True writes compiled code next to the sources (__pycache__), so only the first run
on a machine pays compilation; nogil=True lets callers run kernels on threads. fastmath
stays off: the statistics must equal SciPy's to 1e-12, and NaN handling must be exact.

Numba is imported when a kernel is first called, not when its module is imported: Numba and
its LLVM cost a process ~60 MiB on import and ~110 MiB once kernels run, and a process that
imports a module with a kernel (the label join's id table, the drift rule) without running
one (no label join, no drift monitor configured) need not carry them. On the first call of
any kernel, every kernel of every loaded `kernels` module becomes Numba's dispatcher in its
module, so compiled code that calls another kernel finds a dispatcher where it looks.

A signature not in the cache is compiled by a helper process (`_compile.py`: compiling leaves
~120 MiB in the process that compiles) and loaded from the cache it wrote; COMPILE_ELSEWHERE
off (or SCOREWIRE_COMPILE_ELSEWHERE=0) compiles in the process, as Numba does.
"""

from __future__ import annotations

import functools
import os
import sys
import threading

import numpy as np

OPTIONS = {"cache": True, "nogil": True, "fastmath": False}
COMPILE_ELSEWHERE = os.environ.get("SCOREWIRE_COMPILE_ELSEWHERE", "1") != "0"


class Kernel:
    """A kernel not yet compiled: calls go to its Numba dispatcher, made on the first."""

    def __init__(self, function, options: dict):
        functools.update_wrapper(self, function)
        self.function, self.options = function, options
        self.dispatcher = None  # set once every loaded kernel module holds dispatchers
        self._made = None

    def __call__(self, *args, **kwargs):
        if self.dispatcher is None:
            _materialize()
        return self.dispatcher(*args, **kwargs)

    def compile(self):
        if self._made is None:
            self._made = _numba().njit(**self.options)(self.function)
        return self._made


class _NoLinalg:
    """An import finder that refuses scipy.linalg to the thread importing Numba (another
    thread's import of scipy.stats meanwhile goes through)."""

    def __init__(self):
        self.thread = threading.get_ident()

    def find_spec(self, name, path=None, target=None):
        if (name == "scipy.linalg" or name.startswith("scipy.linalg.")) and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"{name}: not while Numba is imported", name=name)
        return None


def _numba():
    """Numba, imported without its probe for BLAS: on import, numba.np.arraymath imports
    SciPy's linear algebra (~16 MiB measured, more of it shared libraries) only to choose how
    np.correlate and np.convolve take inner products, which no kernel calls. Refused, the
    probe answers no BLAS; a kernel calling np.dot would still load it when compiled."""
    if "numba.np.arraymath" not in sys.modules and "scipy.linalg" not in sys.modules:
        finder = _NoLinalg()
        sys.meta_path.insert(0, finder)
        try:
            import numba.np.arraymath  # noqa: F401
        finally:
            sys.meta_path.remove(finder)
    import numba

    return numba


_lock = threading.Lock()


def _materialize() -> None:
    """Every kernel of every loaded kernels module becomes its dispatcher in its module; only
    then do the kernels hand calls on (another thread's first call waits for the lock)."""
    with _lock:
        made = [(module, attribute, value, value.compile())
                for name, module in list(sys.modules.items()) if name == "kernels" or name.startswith("kernels.")
                for attribute, value in list(vars(module).items()) if isinstance(value, Kernel)]
        if COMPILE_ELSEWHERE and OPTIONS["cache"]:
            from kernels._compile import CompiledElsewhere

            for module, attribute, kernel, dispatcher in made:
                cache = getattr(dispatcher, "_cache", None)  # none where NUMBA_DISABLE_JIT=1
                if kernel.options.get("cache") and cache is not None and not isinstance(cache, CompiledElsewhere):
                    dispatcher._cache = CompiledElsewhere(cache, module.__name__, attribute)
        for module, attribute, _, dispatcher in made:
            setattr(module, attribute, dispatcher)
        for _, _, kernel, dispatcher in made:
            kernel.dispatcher = dispatcher


def numba_readable(array):
    """`array` as a kernel takes it: a bool array viewed as uint8 (no copy), a float16 one
    widened to float32 (exactly, a copy: Numba has no float16); any other as it is."""
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def dispatcher(kernel):
    """The Numba dispatcher of a kernel (a `Kernel`, or what its module holds once compiled)."""
    if isinstance(kernel, Kernel):
        if kernel.dispatcher is None:
            _materialize()
        return kernel.dispatcher
    return kernel


def jit(function=None, **overrides):
    """numba.njit with the project's options (overrides only where a kernel documents why),
    compiled on first call."""
    options = {**OPTIONS, **overrides}
    if function is None:
        return lambda f: Kernel(f, options)
    return Kernel(function, options)
