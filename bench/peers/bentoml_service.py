"""BentoML (1.4) serving the ONNX MLP as its docs show: a @bentoml.service class holding an
onnxruntime session, one @bentoml.api with adaptive batching (batchable=True along rows,
max_batch_size; BentoML picks the wait itself, bounded by max_latency_ms), `workers` service
processes. The body is BentoML's JSON for a numpy argument, {"x": [[...], ...]}; the answer is
the probabilities as a JSON array of rows.

The settings come from the environment because the decorators run at import, when `bentoml
serve` loads this file: PEER_MODEL, PEER_WORKERS, PEER_MAX_BATCH.

Run by bench/peers_bench.py in BentoML's own venv:
    bentoml serve bentoml_service:Mlp --working-dir bench/peers --host 127.0.0.1 --port P
"""

import os

import bentoml
import numpy as np
import onnxruntime as ort


@bentoml.service(workers=int(os.environ.get("PEER_WORKERS", "1")), logging={"access": {"enabled": False}})
class Mlp:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.environ["PEER_MODEL"], options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=int(os.environ.get("PEER_MAX_BATCH", "64")))
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {self.input: x.astype(np.float32, copy=False)})[0]
