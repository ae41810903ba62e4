"""A process whose kernels are not in Numba's cache has a helper process compile them, and
loads them from the cache: it ends as small as a process that found them there, with the same
answers; when the helper cannot compile, the process compiles them itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a few kernels (Kolmogorov-Smirnov, chi-squared, HDR histogram) and the kernels they call
PROBE = r"""
import numpy as np
from kernels import HdrHistogram, SlidingChi2, ks_2samp
rng = np.random.default_rng(3)
c = SlidingChi2(rng.integers(0, 6, 200), 60); c.update(rng.integers(0, 8, 150))
h = HdrHistogram(1, 10**6, 3); h.record_values(rng.integers(0, 10**7, 500))
print(json.dumps({"ks": ks_2samp(rng.normal(size=40), rng.normal(0.3, size=55)), "chi2": [c.statistic, c.pvalue(), c.psi()],
                  "hdr": [h.percentiles([50, 99, 100]).tolist(), h.mean(), h.encode().decode()]}))
"""
# after the kernels ran: what the process compiled itself, what the helper did, its memory
HOW = r"""
import os, time
import numba.core.registry
from kernels import _compile
here = sum(sum(d.stats.cache_misses.values()) for name, m in list(sys.modules.items()) if name.startswith("kernels")
           for d in vars(m).values() if isinstance(d, numba.core.registry.CPUDispatcher))
helper = _compile.helper.proc
if helper is not None:
    _compile.helper.proc.wait(timeout=30)  # it leaves once idle
anon = [int(l.split()[1]) for l in open("/proc/self/smaps_rollup") if l.startswith("Pss_Anon:")][0] * 1024
print(json.dumps({"here": here, "elsewhere": _compile.helper.compiled, "helper_exit": None if helper is None else helper.returncode,
                  "anon": anon}))
"""


def run(cache: Path, before: str = "", **env) -> tuple[dict, dict]:
    """The kernels' probe in a new process on `cache` (NUMBA_CACHE_DIR): its answers, and how
    its kernels were compiled."""
    code = "import sys, json\n" + before + PROBE + HOW
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NUMBA_CACHE_DIR": str(cache), "SCOREWIRE_COMPILE_ELSEWHERE": "1",
                              "NUMBA_DISABLE_JIT": "0", **env})
    assert out.returncode == 0, out.stderr
    answers, how = (json.loads(line) for line in out.stdout.splitlines()[-2:])
    return answers, how


SHORT_IDLE = "from kernels import _compile; _compile.IDLE_S = 0.5\n"


def test_a_cold_process_has_its_kernels_compiled_by_a_helper_and_stays_as_small_as_a_warm_one(tmp_path):
    cold, cold_how = run(tmp_path / "helper", SHORT_IDLE)
    assert cold_how["here"] == 0 and cold_how["elsewhere"] >= 3  # every kernel it ran came from the cache
    assert cold_how["helper_exit"] == 0  # the helper left on its own once idle
    assert list((tmp_path / "helper").rglob("*.nbi"))

    warm, warm_how = run(tmp_path / "helper", SHORT_IDLE)  # the same cache, now full
    assert warm_how["here"] == 0 and warm_how["elsewhere"] == 0 and warm_how["helper_exit"] is None
    assert cold == warm
    # compiling keeps LLVM's memory in the process that compiled: not in this one
    assert cold_how["anon"] <= warm_how["anon"] + 4 * 2**20, (cold_how, warm_how)


def test_a_helper_that_does_not_answer_leaves_the_process_to_compile_its_kernels_itself(tmp_path):
    """As Numba does by itself: same answers, and the process keeps what compiling cost. A
    helper that hangs is given up after ANSWER_S (and killed), once: not tried again per kernel."""
    hangs = ("from kernels import _compile; _compile.ANSWER_S = 1; _compile.IDLE_S = 0.5\n"
             "_compile.helper.command = [sys.executable, '-c', 'import time; time.sleep(120)']\n")
    began = time.monotonic()
    answers, how = run(tmp_path / "cache", hangs)
    assert time.monotonic() - began < 90  # not the helper's 120 s of silence
    assert how["here"] >= 3 and how["elsewhere"] == 0
    assert how["helper_exit"] is None  # given up and killed (proc dropped), not left running
    warm, warm_how = run(tmp_path / "cache")
    assert answers == warm and warm_how["here"] == 0
    assert how["anon"] >= warm_how["anon"] + 20 * 2**20, (how, warm_how)


def test_done_lets_the_helper_go_at_once():
    """The observer, its kernels loaded, lets its helper go before the server says ready,
    rather than 5 s later (its memory back)."""
    from kernels import _compile

    helper = _compile.Helper(command=[sys.executable, "-c", "import sys; sys.stdin.buffer.read()"])  # leaves on EOF
    saved, _compile.helper = _compile.helper, helper
    try:
        proc = helper._start()
        began = time.monotonic()
        _compile.done()
        assert helper.proc is None and proc.returncode == 0 and time.monotonic() - began < 5
    finally:
        _compile.helper = saved
