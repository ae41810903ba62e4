"""Running a session through ONNX Runtime's IO binding.

On CUDA, `session.run(feed)` copies every input from pageable host memory to the GPU and
every output back, allocating both each time. Bound instead:
- inputs are copied once into page-locked ("cuda_pinned") host buffers, from which the
  device copy is a fast DMA; outputs are bound to buffers allocated on the device;
- the buffers are made once per batch size seen (an LRU of `cached_sizes`) and reused, so a
  steady load allocates nothing; the batcher never exceeds max_batch_size rows;
- each instance is its own session, and ONNX Runtime's CUDA provider gives each session its
  own compute stream: instances run concurrently on one GPU.
The same code runs on CPU (device "cpu"), which is how the tests check it without a GPU.
Inputs or outputs with a variable dimension besides the batch are bound per call instead.
"""

from __future__ import annotations

import collections

import numpy as np
import onnxruntime as ort

from engine.codec.validate import ModelSchema


class BoundRunner:
    def __init__(self, session: ort.InferenceSession, schema: ModelSchema, device: str, device_id: int = 0,
                 cached_sizes: int = 32):
        if device not in ("cuda", "cpu"):
            raise ValueError(f"IO binding device must be 'cuda' or 'cpu', not {device!r}")
        self.session = session
        self.schema = schema
        self.device = device
        self.device_id = device_id
        self.host = "cuda_pinned" if device == "cuda" else "cpu"
        self.binding = session.io_binding()
        self._cache: collections.OrderedDict[int, tuple[dict, dict]] = collections.OrderedDict()
        self._cached_sizes = cached_sizes
        self._fixed_in = {t.name: all(d >= 0 for d in t.shape[1:]) for t in schema.inputs}
        self._fixed_out = {t.name: all(d >= 0 for d in t.shape[1:]) for t in schema.outputs}

    def _buffers(self, rows: int) -> tuple[dict, dict]:
        """Input (host, pinned on CUDA) and output (device) buffers for batches of `rows`."""
        hit = self._cache.get(rows)
        if hit is not None:
            self._cache.move_to_end(rows)
            return hit
        inputs = {t.name: ort.OrtValue.ortvalue_from_shape_and_type([rows, *t.shape[1:]], t.dtype, self.host,
                                                                    self.device_id)
                  for t in self.schema.inputs if self._fixed_in[t.name]}
        outputs = {t.name: ort.OrtValue.ortvalue_from_shape_and_type([rows, *t.shape[1:]], t.dtype, self.device,
                                                                     self.device_id)
                   for t in self.schema.outputs if self._fixed_out[t.name]}
        self._cache[rows] = (inputs, outputs)
        if len(self._cache) > self._cached_sizes:
            self._cache.popitem(last=False)
        return inputs, outputs

    def run(self, feed: dict[str, np.ndarray], options=None) -> dict[str, np.ndarray]:
        rows = next(iter(feed.values())).shape[0]
        in_buffers, out_buffers = self._buffers(rows)
        binding = self.binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for spec in self.schema.inputs:
            array = feed[spec.name]
            buffer = in_buffers.get(spec.name)
            if buffer is not None:
                buffer.update_inplace(np.ascontiguousarray(array))
                binding.bind_ortvalue_input(spec.name, buffer)
            else:
                binding.bind_cpu_input(spec.name, np.ascontiguousarray(array))
        for spec in self.schema.outputs:
            buffer = out_buffers.get(spec.name)
            if buffer is not None:
                binding.bind_ortvalue_output(spec.name, buffer)
            else:
                binding.bind_output(spec.name, self.device, self.device_id)
        self.session.run_with_iobinding(binding, options)
        results = {}
        allocated = None
        for k, spec in enumerate(self.schema.outputs):
            value = out_buffers.get(spec.name)
            if value is not None:
                array = value.numpy()  # from the device: a new host array; on CPU: a view of the buffer,
                results[spec.name] = array.copy() if self.device == "cpu" else array  # which the next batch reuses
            else:
                if allocated is None:
                    allocated = binding.copy_outputs_to_cpu()
                results[spec.name] = allocated[k]
        return results
