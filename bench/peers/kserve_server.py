"""KServe's ModelServer (the `kserve` package, 0.21) serving the ONNX MLP as its docs show for a
custom model: a kserve.Model subclass whose load() opens the onnxruntime session and whose
predict() takes the Open Inference Protocol InferRequest (REST or gRPC alike) and returns an
InferResponse; ModelServer(workers=N) runs N uvicorn processes for REST and its gRPC server in
the main process; the per-request latency log line off. KServe has no batcher of its own (its
batching is a Knative sidecar), so none.

Outputs are raw bytes where the request sent raw inputs over gRPC (KServe's use_binary_outputs),
JSON numbers over REST, as KServe's own runtimes answer.

Run by bench/peers_bench.py in KServe's own venv:
    python bench/peers/kserve_server.py --model mlp.onnx --http-port P --grpc-port Q --workers 2
"""

import sys

import peer_args  # bench/peers/peer_args.py: this script's folder is on its path

if __name__ == "__main__":
    ARGS = peer_args.parse(__doc__, grpc=True, batcher=False)
    # kserve parses the command line at import: leave it only its own flag for the per-request
    # latency log line, off (a tuned deployment's setting; scorewire logs no line per request)
    sys.argv = [sys.argv[0], "--enable_latency_logging", "false"]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402
from kserve.utils.numpy_codec import from_np_dtype  # noqa: E402
from kserve.utils.utils import generate_uuid  # noqa: E402


class OnnxModel(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    # workers > 1: ModelServer pickles the model into each REST process (spawn); a session does
    # not pickle, so each process opens its own
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "session"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.load()

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        outputs = []
        for name, value in zip(self.outputs, self.session.run(self.outputs, {self.input: x})):
            out = InferOutput(name=name, shape=list(value.shape), datatype=from_np_dtype(value.dtype))
            out.set_data_from_numpy(value, binary_data=payload.use_binary_outputs)
            outputs.append(out)
        return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=outputs,
                             use_binary_outputs=payload.use_binary_outputs)


if __name__ == "__main__":
    ModelServer(http_port=ARGS.http_port, grpc_port=ARGS.grpc_port, workers=ARGS.workers,
                enable_docs_url=False).start([OnnxModel("mlp", ARGS.model)])
