"""PyTriton (nvidia-pytriton 0.7) serving the ONNX MLP as its docs show: a Python infer function
under @batch, bound to Triton Inference Server's C++ front end (HTTP and gRPC, the Open Inference
Protocol) with Triton's dynamic batcher (max_batch_size rows, max_queue_delay_microseconds) and
`workers` model instances (one infer callable each, PyTriton's way to run instances in parallel).
The labels go out as [n, 1]: with batching on, Triton's outputs carry the batch dimension.

Run by bench/peers_bench.py in PyTriton's own venv:
    python bench/peers/pytriton_server.py --model mlp.onnx --http-port P --grpc-port Q --workers 2 \
        --max-batch 64 --delay-us 2000
"""

import socket

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

import peer_args  # bench/peers/peer_args.py: this script's folder is on its path


def infer_function(path: str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    @batch
    def infer(float_input: np.ndarray) -> dict:
        label, probabilities = session.run(["label", "probabilities"], {"float_input": float_input})
        return {"label": label.reshape(-1, 1), "probabilities": probabilities}

    return infer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    args = peer_args.parse(__doc__, grpc=True)
    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port, metrics_port=free_port(), allow_gpu_metrics=False)
    with Triton(config=config) as triton:
        triton.bind(model_name="mlp", infer_func=[infer_function(args.model) for _ in range(args.workers)],
                    inputs=[Tensor(name="float_input", dtype=np.float32, shape=(32,))],
                    outputs=[Tensor(name="label", dtype=np.int64, shape=(1,)),
                             Tensor(name="probabilities", dtype=np.float32, shape=(2,))],
                    config=ModelConfig(max_batch_size=args.max_batch, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=args.delay_us)), strict=False)
        triton.serve()
