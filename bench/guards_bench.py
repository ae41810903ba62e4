"""One-row serving with guards + conformal sets on vs off, one run; and what they cost a batch.

    python -m bench.guards_bench [--duration S] [--rounds N] [--json FILE] [--check]

Part 1: two `scorewire serve` configs on the demo MLP, one worker each, both with drift
monitoring of the 32 inputs and [models.performance] (the guards name the monitor's features,
the sets calibrate on the performance reference), so that they differ only in what is
measured: "on" adds [models.guards] (input_domain = "reference", min_confidence = 0.6,
action = "flag": every answer gets the scorewire_guard output) and [models.conformal]
(alpha = 0.1: every answer gets prediction_set). The same closed-loop load (32 callers, one
row per request, tritonclient.grpc.aio in 2 processes) runs against each in turns: both
servers up at once, the load on one at a time for --duration seconds, --rounds pairs in ABBA
order (off on, on off, ...), since the machine is shared and its load moves faster than a
server starts. Reported: requests/s of each and their ratio (of the means, and per pair), p99,
server CPU per request, and how many rows the "on" server's guards flagged (/metrics).

One worker: with two, SO_REUSEPORT hashes the load's two connections onto the workers anew in
each run, both onto one worker about half the time (5 of 6 runs looked at here), and that
swings a run's requests/s by more than the guards cost.

Part 2: the guards and the sets alone (engine/guards.py, engine/performance/conformal.py, in
this process, no server): microseconds per batch of 1 and 32 rows beside onnxruntime's run of
the same batch, the work the "on" server adds per batch.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.onoff import finish, interleave, parse_args
from bench.servers import prepare_demo
from engine.harness.config import Config, model_table, server_table

FEATURES = [f"f{i}" for i in range(32)]
MONITOR = {"features": FEATURES, "reference": "ref.parquet"}
PERFORMANCE = {"task": "binary", "score": "probabilities:1", "reference": "ref-labelled-v1.parquet"}
GUARDS = {"input_domain": "reference", "min_confidence": 0.6, "action": "flag"}
CONFORMAL = {"alpha": 0.1}


def configs(work: Path) -> dict[str, Path]:
    """The "off" and "on" config files in `work` (the demo prepared there): the MLP as
    onoff.py's BASE has it, one worker, monitored and with a performance reference; "on"
    guarded, with conformal sets."""
    def mlp(**keys) -> dict:
        return model_table("mlp", "models/mlp.onnx", batching={"max_batch_size": 256}, monitor=MONITOR,
                           performance=PERFORMANCE, **keys)

    Config(server_table(workers=1), [mlp()]).write(work / "off.toml")
    Config(server_table(workers=1), [mlp(guards=GUARDS, conformal=CONFORMAL)]).write(work / "on.toml")
    return {"off": work / "off.toml", "on": work / "on.toml"}


def _settled(server, timeout_s: float = 10.0) -> dict[str, float]:
    """/metrics once two reads a quarter second apart agree on the rows scored (the load is
    over; the workers' counters reach the observer's /metrics a moment later)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        m = server.metrics()
        rows = sum(v for k, v in m.items() if k.startswith("scorewire_rows_total{"))
        if (rows > 0 and rows == last) or time.monotonic() > deadline:
            return m
        last = rows
        time.sleep(0.25)


def guarded(server) -> dict[str, float]:
    """Rows and batches scored, and rows each guard flagged, from a settled /metrics."""
    m = _settled(server)
    out = {"rows": sum(v for k, v in m.items() if k.startswith("scorewire_rows_total{")),
           "batches": sum(v for k, v in m.items() if k.startswith("scorewire_batches_total{"))}
    for k, v in m.items():
        if k.startswith("scorewire_guard_rows_total{"):
            guard = k.split('guard="')[1].split('"')[0]
            out[guard] = out.get(guard, 0.0) + v
    return out


def in_process(model: Path, reference: Path, labelled: Path, repeats: int = 2000) -> dict:
    """Median microseconds per batch of 1 and 32 rows: onnxruntime's run, and the guards'
    bits + the conformal set on its outputs (what the "on" server adds to each batch)."""
    import onnxruntime as ort

    from engine.codec.validate import TensorSpec
    from engine.guards import for_version as guards_for
    from engine.performance.conformal import for_version as conformal_for
    from engine.settings import ModelSettings

    ms = ModelSettings(name="mlp", path=model, monitor={**MONITOR, "reference": reference},
                       performance={**PERFORMANCE, "reference": labelled}, guards=GUARDS, conformal=CONFORMAL)
    guards = guards_for(ms, (TensorSpec("float_input", "FP32", np.dtype(np.float32), (-1, len(FEATURES))),))
    conformal = conformal_for(ms)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    x = np.random.default_rng(0).normal(size=(4096, len(FEATURES))).astype(np.float32)
    out = {}
    for rows in (1, 32):
        ort_us, added_us = [], []
        for i in range(repeats):
            inputs = {"float_input": x[(i * rows) % 4000:(i * rows) % 4000 + rows]}
            t0 = time.perf_counter_ns()
            outputs = dict(zip(names, session.run(None, inputs)))
            t1 = time.perf_counter_ns()
            outputs[conformal.name] = conformal.derive(outputs)
            guards.flags(inputs, outputs)
            t2 = time.perf_counter_ns()
            ort_us.append((t1 - t0) / 1e3)
            added_us.append((t2 - t1) / 1e3)
        out[f"{rows}_rows"] = {"onnxruntime_us": float(np.median(ort_us)), "guards_and_set_us": float(np.median(added_us))}
    return out


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    work = Path(tempfile.mkdtemp(prefix="scorewire-guards-bench-"))
    prepare_demo(work)
    files = configs(work)
    counted: dict[str, dict] = {}

    def before_stop(mode: str, server) -> None:
        counted[mode] = guarded(server)

    load_before = os.getloadavg()[0]  # other work on the machine: the interleaving hits both modes alike
    summary = interleave(files, args.rounds, args.duration, "guards+conformal", rows_per_request=1,
                         before_stop=before_stop)
    summary["guarded_rows"] = counted
    summary["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    cost = summary["in_process"] = in_process(work / "models" / "mlp.onnx", work / "ref.parquet",
                                              work / "ref-labelled-v1.parquet")
    per_batch = "; ".join(f"{k.split('_')[0]} row{'s' if k != '1_rows' else ''}: onnxruntime "
                          f"{v['onnxruntime_us']:.1f} us, guards + set {v['guards_and_set_us']:.1f} us"
                          for k, v in cost.items())
    on = counted.get("on", {"rows": 0})
    flagged = {k: on.get(k, 0) / max(on["rows"], 1) for k in ("input_domain", "confidence")}
    per = {mode: c["rows"] / max(c["batches"], 1) for mode, c in counted.items()}
    extra = (f"\n\nrows the guards flagged in the on runs: input_domain {flagged['input_domain']:.1%}, confidence "
             f"{flagged['confidence']:.1%} (action flag: answered, with scorewire_guard and prediction_set added to "
             f"every response)\n\nrows per batch: off {per.get('off', 0):.2f}, on {per.get('on', 0):.2f} (the "
             f"guards and the set run once a batch)\n\nin process, median per batch: {per_batch}\n\nthe machine's "
             f"1-minute load "
             f"average: {summary['load_average_1m']['before']:.2f} before, {summary['load_average_1m']['after']:.2f} "
             f"after (2 cores; other work besides this bench's)")
    return finish(summary, "guards_bench", "guards + conformal", "input_domain + min_confidence 0.6, flag; alpha 0.1",
                  args.json, args.check, extra, f" --rounds {args.rounds} --duration {args.duration:.0f}")


if __name__ == "__main__":
    sys.exit(main())
