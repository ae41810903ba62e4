"""Kernel benchmark, one run, per event per feature:

  SlidingKS update (+ p-value whenever asked) vs scipy.stats.ks_2samp recomputed on the
  window, and vs river's KSWIN, windows 1,000 and 10,000 against a 10,000 reference;
  three windows (1,000, 2,000, 10,000) per column in the drift monitor, evaluated every 100
  and every 1,000 events (per event and column), vs SciPy and three KSWIN detectors;
  SlidingChi2 vs scipy.stats.chisquare recomputed on the window counts;
  HdrHistogram.record_values vs hdrhistogram's record_value;
  first-call compile time (empty Numba cache) and load time (warm cache).

    python -m bench.kernels_bench [--json FILE] [--events N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import write_json

SEED = 12345


def _per_event(seconds: float, events: int) -> float:
    return seconds / events * 1e9  # ns


def compile_times() -> dict:
    probe = (
        "import time, numpy as np; t = time.perf_counter();"
        "import kernels; from kernels import SlidingKS, SlidingChi2, HdrHistogram, ks_2samp;"
        "s = SlidingKS(np.arange(100.0), 10); s.update(np.arange(20.0)); s.pvalue();"
        "c = SlidingChi2(np.arange(5), 10); c.update(np.arange(20)); c.pvalue();"
        "h = HdrHistogram(1, 10**6, 3); h.record_values(np.arange(5)); h.percentiles([50]); h.encode();"
        "ks_2samp(np.arange(5.0), np.arange(7.0)); ks_2samp(np.arange(20001.0), np.arange(7.0));"
        "print(time.perf_counter() - t)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cold = float(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                    check=True).stdout)
        warm = float(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    return {"first_call_compile_s": cold, "cached_load_s": warm}


def _kswin_ns(stream: np.ndarray, window: int, events: int = 5000) -> float:
    """river's KSWIN, ns per event: its own window of `window` values (filled first), the
    last 30 against a random sample of the rest."""
    from river.drift import KSWIN

    kswin = KSWIN(alpha=0.005, window_size=window, stat_size=30, seed=SEED)
    for x in stream[:window]:
        kswin.update(float(x))
    t = time.perf_counter()
    for x in stream[window:window + events]:
        kswin.update(float(x))
    return _per_event(time.perf_counter() - t, events)


def bench_sliding_ks(window: int, events: int, rng) -> dict:
    import scipy.stats

    from kernels import SlidingKS

    ref = rng.normal(size=10_000)
    stream = rng.normal(size=window + events)
    s = SlidingKS(ref, window)
    s.update(stream[:window])
    s.pvalue()

    chunks = np.split(stream[window:], events // 1000)
    t = time.perf_counter()
    for chunk in chunks:
        s.update(chunk)
    update_ns = _per_event(time.perf_counter() - t, events)

    SlidingKS._pcache.clear()  # start cold: no p-value computed yet for these sizes

    def with_pvalues(stream_part):
        s2 = SlidingKS(ref, window)
        s2.update(stream_part[:window])
        first = []
        t = time.perf_counter()
        for chunk in np.split(stream_part[window:], events // 1000):  # a p-value every 1,000 events
            s2.update(chunk)
            t0 = time.perf_counter()
            known = (s2.n, s2.m, s2._h(0) // np.gcd(s2.n, s2.m)) in SlidingKS._pcache
            s2.pvalue()
            if not known:
                first.append(time.perf_counter() - t0)
        return _per_event(time.perf_counter() - t, events), first, s2

    with_p_ns, first_hits, s2 = with_pvalues(stream)
    # the same stream's distribution again: the p-values it needs are now mostly known
    steady_ns, _, _ = with_pvalues(rng.normal(size=window + events))
    t = time.perf_counter()
    for _ in range(10_000):
        s2.pvalue()
    cached_query_us = (time.perf_counter() - t) / 10_000 * 1e6

    # scipy: recompute on the window for each event (time a sample of events)
    k = 60 if window >= 10_000 else 200
    t = time.perf_counter()
    for i in range(k):
        scipy.stats.ks_2samp(stream[i + 1 : i + 1 + window], ref)
    scipy_ns = _per_event(time.perf_counter() - t, k)

    river_ns = _kswin_ns(stream, window)
    return {
        "kernel": "SlidingKS", "window": window, "reference": 10_000,
        "update_ns_per_event": update_ns, "update_plus_pvalue_every_1000_ns_per_event": with_p_ns,
        "update_plus_pvalue_steady_ns_per_event": steady_ns, "pvalue_cached_us": cached_query_us,
        "pvalue_first_hit_median_us": float(np.median(first_hits) * 1e6) if first_hits else None,
        "pvalue_first_hit_max_us": float(np.max(first_hits) * 1e6) if first_hits else None,
        "scipy_recompute_ns_per_event": scipy_ns, "river_kswin_ns_per_event": river_ns,
        "speedup_vs_scipy": scipy_ns / with_p_ns, "speedup_vs_river": river_ns / with_p_ns,
    }


def bench_three_windows(events: int, rng, every: int) -> dict:
    """Three windows (1,000, 2,000, 10,000) per column, 8 continuous columns moved together
    (KSColumns), evaluated every `every` events as the drift monitor does: quiet windows
    tested against their exact thresholds (alpha 1e-6 over 8 x 3 tests, D >= 0.05), every
    statistic and p-value exact every 10,000 events. Beside it the monitor itself
    (DriftMonitor.observe: kernel + evaluation in Python), SciPy recomputing the three
    windows (per event, and at the same cadence), and three river KSWIN detectors. Ours
    are steady-state figures (a third stream: the p-values it needs are mostly known);
    the p-values of the first stream, computed cold, are reported beside them."""
    import scipy.stats

    from engine.codec.validate import ModelSchema, TensorSpec
    from engine.monitor.drift import DriftMonitor
    from engine.settings import MonitorSettings
    from kernels import KSColumns, SlidingKS

    sizes, columns, block = [1_000, 2_000, 10_000], 8, 10_000
    ref = rng.normal(size=10_000)
    ends = np.arange(every, block + 1, every)
    exact = (ends % 10_000) == 0

    def kernel_pass(data) -> float:
        kernels = [SlidingKS(ref, sizes) for _ in range(columns)]
        ks = KSColumns(kernels)
        thresholds = np.array([[max(k.critical_h(1e-6 / 24, w), int(np.ceil(0.05 * w * k.m))) for w in sizes]
                               for k in kernels])
        ks.advance(data[:, :block], np.array([block]), np.array([True]))  # fill the windows
        advancing = pvalues = 0.0
        for start in range(block, events + block, block):
            t = time.perf_counter()
            marks = ks.advance(data[:, start:start + block], ends, np.ones(len(ends), dtype=bool), exact, thresholds)
            t1 = time.perf_counter()
            for b in np.flatnonzero(exact):
                marks.pvalues(int(b))
            advancing, pvalues = advancing + t1 - t, pvalues + time.perf_counter() - t1
        return _per_event(advancing, events) / columns, _per_event(pvalues, events) / columns

    names = [f"f{i}" for i in range(columns)]
    schema = ModelSchema(inputs=(TensorSpec("x", "FP32", np.dtype("<f4"), (-1, columns)),), outputs=())

    def monitor_pass(data) -> float:
        monitor = DriftMonitor("m:1", MonitorSettings(features=names, reference="unused", windows=sizes, every=every,
                                                      alpha=1e-6, min_effect=0.05),
                               schema, {name: ref for name in names})
        rows = data.T.astype(np.float32)
        monitor.observe({"x": rows[:block]}, {})
        t = time.perf_counter()
        for start in range(block, events + block, block):
            monitor.observe({"x": rows[start:start + block]}, {})
        return _per_event(time.perf_counter() - t, events) / columns

    SlidingKS._pcache.clear()  # cold: no p-value computed yet for these sizes
    data = rng.normal(size=(columns, events + block))
    _, pvalue_cold_ns = kernel_pass(data)
    kernel_pass(rng.normal(size=(columns, events + block)))
    kernel_ns, pvalue_ns = kernel_pass(rng.normal(size=(columns, events + block)))  # a third stream: steady
    monitor_ns = monitor_pass(rng.normal(size=(columns, events + block)))

    stream = data[0]
    scipy_event_ns = 0.0
    for w in sizes:
        k = 60 if w >= 10_000 else 200
        t = time.perf_counter()
        for i in range(k):
            scipy.stats.ks_2samp(stream[i + 1:i + 1 + w], ref)
        scipy_event_ns += _per_event(time.perf_counter() - t, k)
    river_ns = sum(_kswin_ns(stream, w) for w in sizes)
    return {"kernel": "SlidingKS x3", "windows": sizes, "every": every, "columns": columns, "reference": 10_000,
            "kernel_ns_per_event_column": kernel_ns, "pvalues_ns_per_event_column": pvalue_ns,
            "pvalues_cold_ns_per_event_column": pvalue_cold_ns,
            "monitor_ns_per_event_column": monitor_ns,
            "scipy_recompute_ns_per_event": scipy_event_ns, "scipy_same_cadence_ns_per_event": scipy_event_ns / every,
            "river_kswin_ns_per_event": river_ns, "speedup_vs_scipy": scipy_event_ns / monitor_ns,
            "speedup_vs_scipy_same_cadence": scipy_event_ns / every / monitor_ns,
            "speedup_vs_river": river_ns / monitor_ns}


def bench_sliding_chi2(window: int, events: int, rng) -> dict:
    import scipy.stats

    from kernels import SlidingChi2

    k = 20
    ref = rng.integers(0, k, 10_000)
    stream = rng.integers(0, k, window + events)
    s = SlidingChi2(ref, window)
    s.update(stream[:window])
    chunks = np.split(stream[window:], events // 1000)
    t = time.perf_counter()
    for chunk in chunks:
        s.update(chunk)
        s.pvalue()
    ours = _per_event(time.perf_counter() - t, events)
    expected = s.frequencies * window
    n = 2000
    t = time.perf_counter()
    for i in range(n):
        w = stream[i + 1 : i + 1 + window]
        scipy.stats.chisquare(np.bincount(w, minlength=k + 1), expected)
    ref_ns = _per_event(time.perf_counter() - t, n)
    return {"kernel": "SlidingChi2", "window": window, "categories": k,
            "update_plus_pvalue_every_1000_ns_per_event": ours, "scipy_recompute_ns_per_event": ref_ns,
            "speedup_vs_scipy": ref_ns / ours}


def bench_hdr(rng) -> dict:
    from hdrh.histogram import HdrHistogram as Reference

    from kernels import HdrHistogram

    values = rng.lognormal(8, 2, 10_000_000).astype(np.int64) % 3_600_000_000
    h = HdrHistogram(1, 3_600_000_000, 3)
    h.record_values(values[:10])
    t = time.perf_counter()
    h.record_values(values)
    ours = _per_event(time.perf_counter() - t, len(values))
    r = Reference(1, 3_600_000_000, 3)
    sample = values[:200_000].tolist()
    t = time.perf_counter()
    for v in sample:
        r.record_value(v)
    theirs = _per_event(time.perf_counter() - t, len(sample))
    return {"kernel": "HdrHistogram", "record_ns_per_value": ours, "hdrhistogram_record_value_ns": theirs,
            "speedup": theirs / ours}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events per sliding benchmark")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(SEED)
    results = {"seed": SEED, "events": args.events, "compile": compile_times(), "runs": []}
    print(f"compile: first call {results['compile']['first_call_compile_s']:.1f} s (empty cache), "
          f"{results['compile']['cached_load_s']:.2f} s with the cache", flush=True)
    for window in (1_000, 10_000):
        r = bench_sliding_ks(window, args.events, rng)
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
    for every in (100, 1_000):
        r = bench_three_windows(args.events, rng, every)
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
    for window in (1_000, 10_000):
        r = bench_sliding_chi2(window, args.events, rng)
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
    r = bench_hdr(rng)
    results["runs"].append(r)
    print(json.dumps(r), flush=True)
    print()
    print(markdown(results))
    if args.json:  # the Markdown beside it, so that the two never disagree
        write_json(args.json, results, f"# Kernel benchmark, {time.strftime('%Y-%m-%d')}\n\nCommand: "
                   f"`python -m bench.kernels_bench --json {args.json}` (all rows from one run, {args.events:,} events "
                   f"per sliding row, seed {SEED}).\n\n{markdown(results)}\n")
    return 0


def markdown(results: dict) -> str:
    c = results["compile"]
    lines = [f"first-call compile (empty Numba cache): {c['first_call_compile_s']:.1f} s; "
             f"import + first calls with the cache: {c['cached_load_s']:.2f} s", "",
             "| kernel | window | ours ns/event | SciPy recompute ns/event | x SciPy | river KSWIN ns/event | x river |",
             "|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        if r["kernel"] == "SlidingKS":
            lines.append(f"| SlidingKS (update + p-value every 1,000, cold) | {r['window']:,} | "
                         f"{r['update_plus_pvalue_every_1000_ns_per_event']:.0f} | {r['scipy_recompute_ns_per_event']:,.0f} | "
                         f"{r['speedup_vs_scipy']:,.0f} | {r['river_kswin_ns_per_event']:,.0f} | {r['speedup_vs_river']:,.0f} |")
        elif r["kernel"] == "SlidingKS x3":
            lines.append(f"| 3 windows ({', '.join(f'{w:,}' for w in r['windows'])}), evaluated every {r['every']:,}: "
                         f"drift monitor, 8 columns (kernel {r['kernel_ns_per_event_column']:.0f} + p-values "
                         f"{r['pvalues_ns_per_event_column']:.0f}; p-values cold: "
                         f"{r['pvalues_cold_ns_per_event_column']:.0f}) | 3 windows | "
                         f"{r['monitor_ns_per_event_column']:.0f} | {r['scipy_recompute_ns_per_event']:,.0f} "
                         f"(every {r['every']:,}: {r['scipy_same_cadence_ns_per_event']:,.0f}) | "
                         f"{r['speedup_vs_scipy']:,.0f} ({r['speedup_vs_scipy_same_cadence']:,.0f}) | "
                         f"{r['river_kswin_ns_per_event']:,.0f} (3 detectors) | {r['speedup_vs_river']:,.0f} |")
        elif r["kernel"] == "SlidingChi2":
            lines.append(f"| SlidingChi2 (update + p-value every 1,000), {r['categories']} categories | {r['window']:,} | "
                         f"{r['update_plus_pvalue_every_1000_ns_per_event']:.0f} | {r['scipy_recompute_ns_per_event']:,.0f} | "
                         f"{r['speedup_vs_scipy']:,.0f} | | |")
        else:
            lines.append(f"| HdrHistogram.record_values (per value) | | {r['record_ns_per_value']:.1f} | "
                         f"hdrhistogram record_value: {r['hdrhistogram_record_value_ns']:,.0f} | {r['speedup']:,.0f} | | |")
    lines.append("")
    for r in results["runs"]:
        if r["kernel"] == "SlidingKS":
            lines.append(f"SlidingKS window {r['window']:,}: update alone {r['update_ns_per_event']:.0f} ns/event; "
                         f"with p-values every 1,000 once the shared cache is warm (a second stream) "
                         f"{r['update_plus_pvalue_steady_ns_per_event']:.0f} ns/event; "
                         f"p-value cached {r['pvalue_cached_us']:.2f} us, first time at a new statistic value "
                         f"median {r['pvalue_first_hit_median_us'] or 0:,.0f} us, max {r['pvalue_first_hit_max_us'] or 0:,.0f} us")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
