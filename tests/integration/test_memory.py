"""What each process of a server of several workers costs: each reported in /metrics and
`scorewire status`, workers that never load what only watching needs (Numba, LLVM, pyarrow,
SciPy), an observer that loads none of it while nothing is watched but latency, and no
challengers process where no route has challengers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.harness.config import Config, model_table, server_table
from engine.harness.models import N_FEATURES
from engine.monitor.status import status
from tests.integration.kafka_helpers import wait_for
from tests.integration.workers_helpers import base, infer, launch_workers, pids

# Shared objects of what a worker must not load, as their paths in /proc/PID/maps name them
WATCHING_ONLY = {"llvmlite": "/llvmlite/", "numba": "/numba/", "pyarrow": "/pyarrow/", "scipy": "/scipy/"}


def _files(pid: int) -> set[str]:
    """The files the process has mapped (its shared objects: what costs memory)."""
    return {line.split(maxsplit=5)[5] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if len(line.split(maxsplit=5)) == 6}


def _mapped(pid: int) -> set[str]:
    """Which of WATCHING_ONLY the process has mapped."""
    paths = _files(pid)
    return {name for name, part in WATCHING_ONLY.items() if any(part in p for p in paths)}


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        out |= {int(c) for c in (task / "children").read_text().split()}
    return out


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_each_process_reports_its_memory_and_workers_load_nothing_of_the_watching(model_dir, rng):
    server = launch_workers(model_dir, base(2), "memory.toml")
    try:
        workers, observer = pids(server)
        x = rng.normal(size=(64, N_FEATURES)).astype(np.float32)
        for i in range(30):  # served: sessions run, batches went through the rings to the observer
            infer(server.url, x[i % 64:i % 64 + 1 + i])
        # no route has challengers: no challengers process (the supervisor's children are the
        # workers, the observer and multiprocessing's resource tracker)
        assert any(line.endswith(f"1 observer (pids {', '.join(map(str, [*workers, observer]))})")
                   for line in server.startup), server.startup
        others = _children(server.proc.pid) - {*workers, observer}
        assert len(others) == 1 and "resource_tracker" in _cmdline(others.pop())
        # workers map none of Numba, LLVM, pyarrow or SciPy, nor does the observer of a server
        # that watches nothing but latency (no drift monitor, log, label join or events); the
        # check sees a library where it is: ONNX Runtime in the workers, not in the observer
        for pid in workers:
            assert _mapped(pid) == set(), f"worker {pid} maps {_mapped(pid)}"
            assert any("/onnxruntime/" in p for p in _files(pid))
        assert _mapped(observer) == set(), f"the observer maps {_mapped(observer)}"
        assert not any("/onnxruntime/" in p for p in _files(observer))
        # /metrics: RSS and PSS of each process by role and slot, read by the observer every few seconds
        expected = {("supervisor", ""): server.proc.pid, ("worker", "0"): workers[0], ("worker", "1"): workers[1],
                    ("observer", "2"): observer}
        gauges = [f'scorewire_process_pss_bytes{{process="{p}",slot="{s}"}}' for p, s in expected]
        m = wait_for(lambda: all(g in (v := server.metrics()) for g in gauges) and v, 15,
                     what="the memory gauges of every process (read every 5 s)")
        for (process, slot), pid in expected.items():
            labels = f'{{process="{process}",slot="{slot}"}}'
            rss, pss = m[f"scorewire_process_rss_bytes{labels}"], m[f"scorewire_process_pss_bytes{labels}"]
            assert 0 < pss <= rss < 1 << 30, (process, rss, pss)
            assert (1 << 20) < rss  # a Python process is more than a MiB
        assert not any('process="challengers"' in k for k in m if k.startswith("scorewire_process_"))
        # the observer, with nothing to watch but latency, costs less than a worker (it runs no
        # model): what it left out is real memory
        worker_pss = m['scorewire_process_pss_bytes{process="worker",slot="0"}']
        assert m['scorewire_process_pss_bytes{process="observer",slot="2"}'] < worker_pss
        # status shows the same, one line per process and the total
        shown = status(f"127.0.0.1:{server.metrics_port}")
        table = shown[shown.index("process  "):].splitlines()
        rows = {line.split("  ")[0].strip(): line.split() for line in table[2:]}
        assert {"supervisor", "worker 0", "worker 1", "observer"} <= set(rows), table
        assert "all" in "".join(rows), table
    finally:
        assert server.stop() == 0


def test_a_watching_observer_leaves_out_pandas_and_scipys_linear_algebra(model_dir, rng):
    """With drift and the scoring log on, the observer maps Numba and pyarrow, which it uses,
    but not pandas (pyarrow would import it to ask whether an array is one of pandas') nor
    SciPy's linear algebra and its OpenBLAS (Numba would import them to probe for BLAS):
    ~60 MiB of the observer between them (bench/memory_bench.py)."""
    import pandas  # noqa: F401  installed here (nannyml's): the check below is not vacuous
    import pyarrow as pa
    import pyarrow.parquet as pq

    reference = {f"f{i}": rng.normal(size=500) for i in range(N_FEATURES)}
    pq.write_table(pa.table(reference), model_dir / "ref-memory.parquet")
    monitor = {"features": list(reference), "reference": "ref-memory.parquet", "window": 100, "every": 50}
    config = Config(server_table(workers=2), [model_table("mlp", "models/mlp.onnx", monitor=monitor)],
                    scorelog={"dir": "memory-log"})
    server = launch_workers(model_dir, config, "memory-watching.toml")
    try:
        _, observer = pids(server)
        x = rng.normal(size=(64, N_FEATURES)).astype(np.float32)
        for i in range(8):
            infer(server.url, x)
        wait_for(lambda: server.metrics().get('scorewire_drift_events_observed_total{model="mlp",version="1"}', 0)
                 >= 8 * 64, 15, what="the drift monitor saw every row")
        paths = _files(observer)
        assert any("/numba/" in p or "/llvmlite/" in p for p in paths) and any("/pyarrow/" in p for p in paths)
        assert not [p for p in paths if "/pandas/" in p]
        assert not [p for p in paths if "/scipy/linalg/" in p or "/scipy.libs/" in p]  # (numpy has an OpenBLAS of its own)
    finally:
        assert server.stop() == 0
