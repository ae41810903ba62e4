"""LitServe (0.2) serving the ONNX MLP as its docs show: a LitAPI with batching on
(max_batch_size, batch_timeout), `workers_per_device` inference workers on the CPU, its
uvicorn front end. The request body is LitServe's free-form JSON, here {"inputs": [[...], ...]}
(rows of floats); the answer {"probabilities": [[...], ...]}.

batch/unbatch are written out because LitServe's default stacks the requests' arrays along a new
axis (k, rows, 32), which is not one batch of rows when a request carries several rows.

Run by bench/peers_bench.py with the python of LitServe's own venv:
    python bench/peers/litserve_server.py --model mlp.onnx --http-port P --workers 2 --max-batch 64 --delay-us 2000
"""


import litserve as ls
import numpy as np
import onnxruntime as ort

import peer_args  # bench/peers/peer_args.py: this script's folder is on its path


class OnnxApi(ls.LitAPI):
    def __init__(self, model: str, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def setup(self, device):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def decode_request(self, request):
        return np.asarray(request["inputs"], np.float32)

    def batch(self, inputs):
        return list(inputs)

    def predict(self, x):
        parts = x if isinstance(x, list) else [x]
        probabilities = self.session.run(["probabilities"], {self.input: np.concatenate(parts)})[0]
        answers = np.split(probabilities, np.cumsum([len(p) for p in parts])[:-1])
        return answers if isinstance(x, list) else answers[0]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return {"probabilities": output.tolist()}


if __name__ == "__main__":
    args = peer_args.parse(__doc__, grpc=False)
    api = OnnxApi(args.model, max_batch_size=args.max_batch, batch_timeout=args.delay_us / 1e6)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.http_port, log_level="warning", generate_client_file=False)
