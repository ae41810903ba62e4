"""GPU path benchmark: raw onnxruntime (CUDA, IO binding) vs scorewire serving the same model,
rows/s and latency at several batch sizes, both for the demo MLP and the wide MLP.

    python -m bench.gpu_bench                       # on a machine with a GPU (onnxruntime-gpu + CUDA)
    python -m bench.gpu_bench --provider cpu        # the same on CPU (a smoke run; no GPU needed)

Raw: one session, inputs in page-locked host buffers and outputs on the device (IO binding),
back to back for --seconds per batch size: the model's own ceiling on this device.
scorewire: `scorewire serve` with the model on the same provider (IO binding on by default
on CUDA), max_batch_size = the batch size, 2 instances; load from `bench.loadgen`, closed
loop, each request one full batch, --concurrency callers over 2 processes.
The share (scorewire rows/s / raw rows/s) is the number to read; the issue asks >= 80% at
batch 64 and 1024 on CUDA.

On the device machine (no internet): carry the wheels the image lacks (see the device tool's
README), e.g. `pip download -d wheels onnxruntime-gpu tritonclient[grpc] ...` here, then
`pip install --no-index --find-links wheels -e '.[bench]'` there.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.grpc_bench import _stop, serve
from bench.loadgen import Load, run
from bench.report import write_json

CONFIG = """\
[server]
host = "127.0.0.1"
grpc_port = 0
metrics_port = 0
max_message_bytes = 268435456

[[models]]
name = "{name}"
path = "{path}"
providers = {providers}
instances = {instances}
max_rows_per_request = 100000
[models.batching]
max_batch_size = {batch}
max_queue_delay_us = 200
queue_capacity = {capacity}
"""


def raw_onnxruntime(path: Path, input_name: str, features: int, batch: int, provider: str, seconds: float) -> dict:
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    if provider == "cpu":
        options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=providers)
    used = session.get_providers()[0]
    device = "cuda" if used == "CUDAExecutionProvider" else "cpu"
    x = np.random.default_rng(0).normal(size=(batch, features)).astype(np.float32)
    binding = session.io_binding()
    host = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), np.float32, "cuda_pinned" if device == "cuda"
                                                     else "cpu", 0)
    host.update_inplace(x)
    binding.bind_ortvalue_input(input_name, host)
    for out in session.get_outputs():
        binding.bind_output(out.name, device, 0)
    for _ in range(3):
        session.run_with_iobinding(binding)
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        host.update_inplace(x)
        session.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"provider": used, "rows_per_s": round(len(latencies) * batch / elapsed),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3)}


def scorewire(path: Path, name: str, batch: int, provider: str, seconds: float, concurrency: int,
              directory: Path) -> dict:
    providers = '["CUDAExecutionProvider", "CPUExecutionProvider"]' if provider == "cuda" else '["CPUExecutionProvider"]'
    config = directory / f"{name}-{batch}.toml"
    config.write_text(CONFIG.format(name=name, path=path, providers=providers, instances=2 if provider == "cuda" else 1,
                                    batch=batch, capacity=batch * 8))
    proc, url = serve(config)
    try:
        result = run(Load(url=url, model=name, rows=batch, closed_loop=True, concurrency=concurrency, procs=2,
                          connections=concurrency, duration_s=seconds, warmup_s=1.0))
    finally:
        _stop(proc)
    if result.errors:
        raise RuntimeError(f"scorewire answered errors: {result.errors}")
    lat = result.latency_us
    return {"rows_per_s": round(result.achieved_rps * batch), "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--batches", default="64,1024")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--models", default="mlp,wide")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from engine.demo import WIDE_FEATURES, build_models, build_wide_mlp

    directory = Path(tempfile.mkdtemp(prefix="scorewire-gpu-bench-"))
    paths = {"mlp": (build_models(directory)["mlp"], "float_input", 32),
             "wide": (build_wide_mlp(directory / "models" / "wide.onnx"), "features", WIDE_FEATURES)}
    rows = []
    for name in args.models.split(","):
        path, input_name, features = paths[name]
        for batch in (int(b) for b in args.batches.split(",")):
            raw = raw_onnxruntime(path, input_name, features, batch, args.provider, args.seconds)
            served = scorewire(path, name, batch, args.provider, args.seconds, args.concurrency, directory)
            row = {"model": name, "batch": batch, "raw": raw, "scorewire": served,
                   "share": round(served["rows_per_s"] / raw["rows_per_s"], 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = [f"GPU path, {platform.machine()}, provider asked: {args.provider}; closed loop, {args.concurrency} "
             "callers, one full batch per request", "",
             "| model | batch | raw ORT rows/s | raw p50 ms | scorewire rows/s | scorewire p50 / p99 ms | share |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['raw']['rows_per_s']:,} ({r['raw']['provider']}) | "
                     f"{r['raw']['p50_ms']} | {r['scorewire']['rows_per_s']:,} | {r['scorewire']['p50_ms']:.2f} / "
                     f"{r['scorewire']['p99_ms']:.2f} | {r['share']:.0%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.json:
        write_json(args.json, rows, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
