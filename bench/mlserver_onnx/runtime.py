"""The peer for bench/workers_bench.py: MLServer 1.7 serving an ONNX model with a custom
runtime (MLServer ships none for ONNX). Decoding and encoding are MLServer's own NumpyCodec;
one onnxruntime session (1 intra-op thread, as scorewire's default), parallel_workers = 0
(inference in the server process: MLServer's inference pool adds a process hop per request).

Loaded by `mlserver start` from a folder bench/workers_bench.py writes; not part of the engine.
"""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(self.settings.parameters.uri, options,
                                             providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, results)],
        )
