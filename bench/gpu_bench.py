"""GPU path benchmark: the hand-written onnxruntime loop vs scorewire serving the same model,
rows/s at several request sizes, and what limited each figure.

    python -m bench.gpu_bench                       # on a machine with a GPU (onnxruntime-gpu + CUDA)
    python -m bench.gpu_bench --provider cpu        # the same on CPU (a smoke run; no GPU needed)

Raw ("the hand-written loop"): one session, IO binding with outputs on the device and copied
to the host each run, back to back for --seconds per batch size, once with inputs staged in
pinned host memory and once bound from pageable numpy arrays; the faster is the ceiling.
scorewire: `scorewire serve` with the model on the same provider, max_batch_size = the
batch size (64 for one-row requests), --instances sessions; load from `bench.loadgen`,
closed loop, --concurrency callers over --procs processes, each request one full batch
(or one row: the real-time case, batched by the server).
While scorewire is measured, the server's event-loop thread and whole process CPU, the
busiest load process's CPU, the whole machine's CPU and the GPU's utilisation are sampled;
the `limit` column names what was saturated (>= 85%, in that order): the GPU, the server's
event loop, the server's GIL (the loop below 85% while the process uses more than 1.4 cores:
session threads hold the GIL between native calls and the loop waits for it; an inference,
not a measurement), the client, or the machine's cores (server and load sharing too few).
The share (scorewire rows/s / raw rows/s) is the number to read; the issue asks >= 80% at
batch 1024 and >= 50% at batch 64 on CUDA.

On the device machine (no internet): carry the wheels the image lacks (see the device tool's
README), install them with --target and put that folder first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.loadgen import Load, run
from bench.report import write_json
from bench.servers import serve, stop
from engine.harness.config import Config, model_table, server_table


SATURATED = 0.85
ONE_ROW_BATCH = 64  # the server's max_batch_size when callers send one row each


def _device_outputs(session, batch: int, device: str):
    import onnxruntime as ort

    from engine.codec.dtypes import OIP_TO_NUMPY, ORT_TO_OIP

    outputs = {}
    for out in session.get_outputs():
        shape = [batch if not isinstance(d, int) or d < 0 else d for d in out.shape]
        dtype = OIP_TO_NUMPY[ORT_TO_OIP[out.type]]
        outputs[out.name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0)
    return outputs


def raw_onnxruntime(path: Path, input_name: str, features: int, batch: int, provider: str, seconds: float) -> dict:
    """The loop a user would write around onnxruntime, at its best on this device."""
    import onnxruntime as ort

    from engine.runtime.iobinding import _HostBuffer, pinned_memory

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    if provider == "cpu":
        options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=providers)
    used = session.get_providers()[0]
    device = "cuda" if used == "CUDAExecutionProvider" else "cpu"
    x = np.random.default_rng(0).normal(size=(batch, features)).astype(np.float32)
    ways = {"pageable": None}
    if device == "cuda":
        host, why = pinned_memory(0)
        if host is not None:
            ways["pinned"] = host
        else:
            print(f"raw: no pinned staging ({why})", flush=True)
    by_way = {}
    for way, host in ways.items():
        binding = session.io_binding()
        outputs = _device_outputs(session, batch, device)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        staged = _HostBuffer(ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), np.float32, memory_info=host)) \
            if host is not None else None

        def once() -> None:
            if staged is not None:
                staged.fill(x)
                binding.bind_ortvalue_input(input_name, staged.value)
            else:
                binding.bind_cpu_input(input_name, x)
            session.run_with_iobinding(binding)
            for value in outputs.values():
                value.numpy()  # to the host: what a caller needs

        for _ in range(5):
            once()
        latencies = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            once()
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        lat = np.array(latencies) * 1000
        by_way[way] = {"rows_per_s": round(len(latencies) * batch / elapsed),
                       "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3)}
    best = max(by_way, key=lambda w: by_way[w]["rows_per_s"])
    return {"provider": used, "staging": best, **by_way[best],
            "by_staging": {w: r["rows_per_s"] for w, r in by_way.items()}}


class Sampler(threading.Thread):
    """Samples a process's CPU time (its main thread -- the event loop -- and all threads)
    and the GPU's utilisation every 0.2 s, to tell afterwards what was saturated."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple] = []  # wall, loop s, process s, gpu %, machine busy s, machine total s
        self._stop_event = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._gpu = _gpu_reader()

    def _cpu(self, stat: str) -> float:
        with open(stat) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime

    def _machine(self) -> tuple[float, float]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return (sum(ticks) - idle) / self._tick, sum(ticks) / self._tick

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append((time.time(), self._cpu(f"/proc/{self.pid}/task/{self.pid}/stat"),
                                     self._cpu(f"/proc/{self.pid}/stat"), self._gpu() if self._gpu else None,
                                     *self._machine()))
            except OSError:
                return
            self._stop_event.wait(0.2)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)

    def usage(self, start: float, end: float) -> dict:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {}
        (w0, l0, p0, _, b0, t0), (w1, l1, p1, _, b1, t1) = inside[0], inside[-1]
        gpu = [s[3] for s in inside if s[3] is not None]
        return {"server_loop": round((l1 - l0) / (w1 - w0), 3), "server_process": round((p1 - p0) / (w1 - w0), 3),
                "machine": round((b1 - b0) / max(t1 - t0, 1e-9), 3),
                "gpu": round(float(np.mean(gpu)) / 100, 3) if gpu else None}


def _gpu_reader():
    """A function returning the GPU's utilisation in percent (NVML), or None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:
        return None


def limit_of(usage: dict, client_cpu: float) -> str:
    if usage.get("gpu") is not None and usage["gpu"] >= SATURATED:
        return "GPU"
    if usage.get("server_loop", 0) >= SATURATED:
        return "server event loop"
    if usage.get("server_process", 0) >= 1.0 + SATURATED / 2:
        return "server GIL"  # the loop waits for the GIL that session threads hold between native calls
    if client_cpu >= SATURATED:
        return "client"
    if usage.get("machine", 0) >= SATURATED:
        return "machine CPU"  # server and load processes share too few cores
    return "none saturated"


def scorewire(path: Path, name: str, rows: int, batch: int, provider: str, seconds: float, concurrency: int,
              procs: int, instances: int, staging: str, directory: Path) -> dict:
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    batching = {"max_batch_size": batch, "max_queue_delay_us": 200,
                "queue_capacity": max(batch, rows) * 8 + concurrency * rows}
    config = Config(server_table(workers=1, max_message_bytes=268435456),
                    [model_table(name, path, providers=providers, instances=instances, io_binding_staging=staging,
                                 max_rows_per_request=100000, batching=batching)])
    served = serve(config.write(directory / f"{name}-{rows}-{batch}-{instances}.toml"))
    proc, url = served.proc, served.url
    loaded = next((line for line in served.startup if f"model {name}:1 loaded" in line), "")
    sampler = Sampler(proc.pid)
    sampler.start()
    warmup = 1.0
    try:
        called = time.time()
        result = run(Load(url=url, model=name, rows=rows, closed_loop=True, concurrency=concurrency, procs=procs,
                          connections=concurrency, duration_s=seconds, warmup_s=warmup))
    finally:
        sampler.stop()
        stop(proc)
    if result.errors:
        raise RuntimeError(f"scorewire answered errors: {result.errors}")
    start = called + 1.0 + 0.3 * procs + warmup  # loadgen's measured window (its start_at + warm-up)
    usage = sampler.usage(start, start + seconds)
    lat = result.latency_us
    return {"rows_per_s": round(result.achieved_rps * rows), "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000,
            "loaded": loaded.split(" loaded ", 1)[-1], **usage, "client_cpu": result.client_cpu,
            "limit": limit_of(usage, result.client_cpu)}


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| model | rows/request | server batch | instances | raw rows/s (pinned / pageable) | scorewire rows/s | "
             "share | p50 / p99 ms | server loop / process CPU | client CPU | machine CPU | GPU | limit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        raw, sw = r["raw"], r["scorewire"]
        ways = " / ".join(f"{raw['by_staging'][w]:,}" if w in raw["by_staging"] else "-" for w in ("pinned", "pageable"))
        lines.append(f"| {r['model']} | {r['rows']} | {r['batch']} | {r['instances']} | {ways} | {sw['rows_per_s']:,} | "
                     f"{r['share']:.0%} | {sw['p50_ms']:.2f} / {sw['p99_ms']:.2f} | {_pct(sw.get('server_loop'))} / "
                     f"{_pct(sw.get('server_process'))} | {_pct(sw['client_cpu'])} | {_pct(sw.get('machine'))} | "
                     f"{_pct(sw.get('gpu'))} | "
                     f"{sw['limit']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--batches", default="1,64,1024",
                        help="rows per request; 1 is the real-time case (the server batches up to 64)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop callers, over all load processes")
    parser.add_argument("--procs", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                        help="load processes (default: half the cores, at most 8)")
    parser.add_argument("--models", default="mlp,wide")
    parser.add_argument("--instances", default="2", help="sessions per model; a list measures each")
    parser.add_argument("--staging", choices=["pinned", "pageable"], default="pageable",
                        help="scorewire's io_binding_staging")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from engine.harness.models import WIDE_FEATURES, build_models, build_wide_mlp

    directory = Path(tempfile.mkdtemp(prefix="scorewire-gpu-bench-"))
    paths = {"wide": (build_wide_mlp(directory / "models" / "wide.onnx"), "features", WIDE_FEATURES)}
    if "mlp" in args.models.split(","):
        paths["mlp"] = (build_models(directory)["mlp"], "float_input", 32)
    rows_out = []
    for name in args.models.split(","):
        path, input_name, features = paths[name]
        for rows in (int(b) for b in args.batches.split(",")):
            batch = ONE_ROW_BATCH if rows == 1 else rows
            raw = raw_onnxruntime(path, input_name, features, rows, args.provider, args.seconds)
            for instances in (int(i) for i in args.instances.split(",")):
                served = scorewire(path, name, rows, batch, args.provider, args.seconds, args.concurrency, args.procs,
                                   instances, args.staging, directory)
                row = {"model": name, "rows": rows, "batch": batch, "instances": instances, "raw": raw,
                       "scorewire": served, "share": round(served["rows_per_s"] / raw["rows_per_s"], 3)}
                rows_out.append(row)
                print(json.dumps(row), flush=True)
    header = (f"GPU path, {platform.machine()}, {os.cpu_count()} cores, provider asked: {args.provider}; closed loop, "
              f"{args.concurrency} callers over {args.procs} processes; raw = the hand-written onnxruntime loop at "
              "the request's size (one row per run for 1-row requests)")
    text = table(rows_out, header)
    print(text)
    if args.json:
        write_json(args.json, rows_out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
