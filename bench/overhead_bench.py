"""What scorewire's serving path costs above the work no server can skip, in one process and
without a transport: the CPU of one ModelInfer request through a worker's path (parse,
decode, the front door, routing, validation, the batcher, the model, the hand-off record
for the observer, the response) beside the hand-written floor's work on the same message
(parse, np.frombuffer, session.run, the response; bench/peers/floor_server.py). Requests go
one at a time on uvloop, so every batch holds one request: the per-request and per-batch
costs the transport adds nothing to and hides nothing of. Measured as process CPU time over
--requests requests, the two alternating --rounds times in one run (medians, and their ratio).

    python -m bench.overhead_bench [--rows 1 64] [--requests 20000] [--rounds 5]

gRPC itself (grpc.aio's own per-call work, the same for scorewire and the floor) is not here:
bench/peers_bench.py measures the whole servers side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.servers import prepare_demo
from engine.harness.config import Config, model_table, server_table

DESCRIPTION = __doc__


def _request(rows: int) -> bytes:
    from engine.ingress._pb import open_inference_grpc_pb2 as pb

    x = np.random.default_rng(0).normal(size=(rows, 32)).astype(np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="float_input", datatype="FP32", shape=[rows, 32])
    return pb.ModelInferRequest(model_name="mlp", inputs=[tensor], raw_input_contents=[x.tobytes()]).SerializeToString()


def _app(config: Path):
    """A worker's serving path: the App with a sink that encodes each scored batch as the
    worker does for its ring (engine/processes/worker.py), and drops it."""
    from engine.app import App
    from engine.handoff.wire import encode_batch
    from engine.settings import load_settings
    from engine.sink import LocalSink

    class Handoff(LocalSink):
        def __init__(self, settings):
            super().__init__(settings)
            self.put = lambda batch: encode_batch(batch, time.monotonic_ns())

    settings = load_settings(config)
    app = App(settings, sink=Handoff(settings))
    app.load_models()
    return app


async def _measure(app, data: bytes, requests: int, rounds: int) -> tuple[list[float], list[float]]:
    from bench.peers.floor_server import answer, pb
    from engine.ingress.grpc import InferenceServicer

    for served in app.registry.all():
        served.batcher.start()
    servicer = InferenceServicer(app.front, 16)
    session = next(iter(app.registry.all())).model.sessions[0]
    name, names = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]

    async def ours(n: int) -> None:
        for _ in range(n):
            held = servicer._parse_infer(data)
            (await servicer._infer(held, None)).SerializeToString()

    def floor(n: int) -> None:  # bench/peers/floor_server.py's handler, as its server runs it
        for _ in range(n):
            answer(session, name, names, pb.ModelInferRequest.FromString(data)).SerializeToString()

    await ours(requests // 10)  # warm-up
    floor(requests // 10)
    mine, theirs = [], []
    for _ in range(rounds):
        start = time.process_time()
        await ours(requests)
        mine.append((time.process_time() - start) / requests * 1e6)
        start = time.process_time()
        floor(requests)
        theirs.append((time.process_time() - start) / requests * 1e6)
    return mine, theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64], help="rows per request")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round and path")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare_demo(work)
        config = Config(server_table(workers=1), [model_table("mlp", "models/mlp.onnx")]).write(work / "one.toml")
        app = _app(config)
        print("| rows | scorewire's path, CPU us/request | the floor's work | ratio | above the floor, us |")
        print("|---|---|---|---|---|")
        for rows in args.rows:
            mine, theirs = uvloop.run(_measure(app, _request(rows), args.requests, args.rounds))
            m, t = statistics.median(mine), statistics.median(theirs)
            print(f"| {rows} | {m:.1f} | {t:.1f} | {m / t:.2f}x | {m - t:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
