"""Ray Serve (2.60) serving the ONNX MLP as its docs show: a deployment class holding an
onnxruntime session, its HTTP handler awaiting a method under @serve.batch (max_batch_size,
batch_wait_timeout_s), `num_replicas` replicas, Ray's own HTTP proxy in front. The body is
free-form JSON, {"inputs": [[...], ...]}; the answer {"probabilities": [[...], ...]}.

This script is the driver: ray.init starts the local cluster (GCS, raylet, workers: all its
descendants, so the bench's process-tree accounting sees them), serve.run deploys, and SIGTERM
shuts the cluster down.

Run by bench/peers_bench.py in Ray's own venv:
    python bench/peers/ray_server.py --model mlp.onnx --http-port P --workers 2 --max-batch 64 --delay-us 2000
"""

import signal
import threading

import numpy as np
import ray
from ray import serve
from starlette.requests import Request

import peer_args  # bench/peers/peer_args.py: this script's folder is on its path


def deployment(args):
    @serve.deployment(num_replicas=args.workers, ray_actor_options={"num_cpus": 0})
    class Mlp:
        def __init__(self, model: str) -> None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            self.input = self.session.get_inputs()[0].name

        @serve.batch(max_batch_size=args.max_batch, batch_wait_timeout_s=args.delay_us / 1e6)
        async def predict(self, parts: list[np.ndarray]) -> list[np.ndarray]:
            probabilities = self.session.run(["probabilities"], {self.input: np.concatenate(parts)})[0]
            return np.split(probabilities, np.cumsum([len(p) for p in parts])[:-1])

        async def __call__(self, request: Request) -> dict:
            x = np.asarray((await request.json())["inputs"], np.float32)
            return {"probabilities": (await self.predict(x)).tolist()}

    return Mlp.bind(args.model)


if __name__ == "__main__":
    args = peer_args.parse(__doc__, grpc=False)
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.http_port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    serve.run(deployment(args), name="mlp", route_prefix="/predict")
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
