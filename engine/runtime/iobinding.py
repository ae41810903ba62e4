"""Running a session through ONNX Runtime's IO binding, with only calls its Python API accepts.

On CUDA, `session.run(feed)` allocates every output on the device, copies it to a new host
array and frees it, each time. Bound instead:
- outputs are bound to device buffers made once per batch size seen (an LRU of
  `cached_sizes`; the batcher never exceeds max_batch_size rows) and copied to the host once,
  into the array the response is built from;
- inputs are "pageable" or "pinned". Pageable (the default): the batch's own array is bound
  (`bind_cpu_input`, no host copy) and onnxruntime copies it to the device. Pinned: copied
  into page-locked host buffers (reused like the outputs). The page-locked memory is the
  one the CUDA execution provider publishes (`OrtEpDevice.memory_info(HOST_ACCESSIBLE)`) or
  a pinned allocator registered for it; there is no device *name* for it ("cuda_pinned" is
  refused by `OrtDevice.make`). Measured on an H200, pinned is no faster and often slower
  (onnxruntime reports such values as on the "cuda" device; our reading, not profiled, is
  that its kernels then read them across PCIe instead of copying them once);
- each instance is its own session, and ONNX Runtime's CUDA provider gives each session its
  own compute stream: instances run concurrently on one GPU.
Every device name is resolved through `ort.OrtDevice.make` when the runner is built, so a
name the installed onnxruntime refuses fails there (and in the CPU tests), not at a GPU
user's first request. The same code runs on CPU (device "cpu"), which is how the tests run
it without a GPU. Inputs or outputs with a variable dimension besides the batch are bound
per call instead of from the cache.
"""

from __future__ import annotations

import collections

import numpy as np
import onnxruntime as ort

from engine.codec.validate import ModelSchema


class PlainRunner:
    """`session.run`: onnxruntime moves inputs and outputs itself."""

    binding = "off"
    staging = None

    def __init__(self, session: ort.InferenceSession, schema: ModelSchema):
        self.session = session
        self._names = list(schema.output_names)

    def run(self, feed: dict[str, np.ndarray], options=None) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self.session.run(self._names, feed, options)))


_PINNED: dict[int, tuple[ort.OrtMemoryInfo | None, str]] = {}


def _allocates(info: ort.OrtMemoryInfo) -> None:
    ort.OrtValue.ortvalue_from_shape_and_type([1], np.float32, memory_info=info)


def pinned_memory(device_id: int = 0) -> tuple[ort.OrtMemoryInfo | None, str]:
    """Page-locked host memory for CUDA device `device_id` that onnxruntime allocates
    OrtValues in, or None and why there is none. Two public routes, in order: the CUDA
    execution provider's device (`get_ep_devices()`) publishes its HOST_ACCESSIBLE memory;
    else a pinned allocator is registered with the environment
    (`create_and_register_allocator_v2("CUDAExecutionProvider", <HOST_ACCESSIBLE info>)`).
    Settled once per device and process."""
    if device_id in _PINNED:
        return _PINNED[device_id]
    reasons = []
    try:
        cuda = [d for d in ort.get_ep_devices() if d.ep_name == "CUDAExecutionProvider"]
        info = cuda[device_id].memory_info(ort.OrtDeviceMemoryType.HOST_ACCESSIBLE) if len(cuda) > device_id else None
        if info is None:
            reasons.append(f"no HOST_ACCESSIBLE memory among {len(cuda)} CUDA execution-provider device(s)")
        else:
            _allocates(info)
            _PINNED[device_id] = (info, "")
            return _PINNED[device_id]
    except Exception as exc:
        reasons.append(f"the CUDA device's memory: {exc}".strip())
    try:
        info = ort.OrtMemoryInfo.create_v2("CudaPinned", ort.OrtMemoryInfoDeviceType.GPU, int(ort.OrtDeviceVendorId.NVIDIA),
                                           device_id, ort.OrtDeviceMemoryType.HOST_ACCESSIBLE, 0,
                                           ort.OrtAllocatorType.ORT_DEVICE_ALLOCATOR)
        try:
            ort.create_and_register_allocator_v2("CUDAExecutionProvider", info, {}, ort.OrtArenaCfg(0, -1, -1, -1))
        except Exception as exc:
            if "already" not in str(exc).lower():
                raise
        _allocates(info)
        _PINNED[device_id] = (info, "")
    except Exception as exc:
        reasons.append(f"registering a pinned allocator: {str(exc).strip()}")
        _PINNED[device_id] = (None, "; ".join(reasons))
    return _PINNED[device_id]


class _HostBuffer:
    """A host-accessible OrtValue and how to write into it: through a numpy view of its
    memory when onnxruntime gives one, else through `OrtValue.update_inplace`."""

    __slots__ = ("value", "view")

    def __init__(self, value: ort.OrtValue):
        self.value = value
        try:
            view = value.numpy()
        except Exception:  # memory onnxruntime will not show to numpy
            view = None
        self.view = view if view is not None and view.size and view.ctypes.data == value.data_ptr() else None

    def fill(self, array: np.ndarray) -> None:
        if self.view is not None:
            np.copyto(self.view, array)
        else:
            self.value.update_inplace(array)


class BoundRunner:
    """One session run through IO binding on `device` ("cuda" or "cpu"). Not thread-safe:
    its buffers belong to the one thread that runs the session at a time."""

    def __init__(self, session: ort.InferenceSession, schema: ModelSchema, device: str, device_id: int = 0,
                 host_memory: ort.OrtMemoryInfo | None = None, cached_sizes: int = 32):
        """`host_memory`: where inputs are staged (pinned_memory()); None binds the batch's
        own arrays (pageable)."""
        if device not in ("cuda", "cpu"):
            raise ValueError(f"IO binding device must be 'cuda' or 'cpu', not {device!r}")
        ort.OrtDevice.make(device, device_id)  # the names this runner passes to onnxruntime, checked now
        self.session = session
        self.schema = schema
        self.device = device
        self.device_id = device_id
        self.binding = device
        self._host = host_memory
        self.staging = "pinned" if host_memory is not None else "pageable" if device == "cuda" else None
        self.io = session.io_binding()
        self._cache: collections.OrderedDict[int, tuple[dict, dict]] = collections.OrderedDict()
        self._cached_sizes = cached_sizes
        self._fixed_in = {t.name for t in schema.inputs if all(d >= 0 for d in t.shape[1:])}
        self._fixed_out = {t.name for t in schema.outputs if all(d >= 0 for d in t.shape[1:])}

    def _buffers(self, rows: int) -> tuple[dict, dict]:
        """Pinned input buffers (when staging is pinned) and device output buffers for `rows`."""
        hit = self._cache.get(rows)
        if hit is not None:
            self._cache.move_to_end(rows)
            return hit
        new = ort.OrtValue.ortvalue_from_shape_and_type
        inputs = {}
        if self._host is not None:
            inputs = {t.name: _HostBuffer(new([rows, *t.shape[1:]], t.dtype, memory_info=self._host))
                      for t in self.schema.inputs if t.name in self._fixed_in}
        outputs = {t.name: new([rows, *t.shape[1:]], t.dtype, self.device, self.device_id)
                   for t in self.schema.outputs if t.name in self._fixed_out}
        self._cache[rows] = (inputs, outputs)
        if len(self._cache) > self._cached_sizes:
            self._cache.popitem(last=False)
        return inputs, outputs

    def run(self, feed: dict[str, np.ndarray], options=None) -> dict[str, np.ndarray]:
        rows = next(iter(feed.values())).shape[0]
        in_buffers, out_buffers = self._buffers(rows)
        io = self.io
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        for spec in self.schema.inputs:
            array = np.ascontiguousarray(feed[spec.name])
            buffer = in_buffers.get(spec.name)
            if buffer is not None:
                buffer.fill(array)  # the one host copy: into page-locked memory
                io.bind_ortvalue_input(spec.name, buffer.value)
            else:
                io.bind_cpu_input(spec.name, array)  # no host copy; onnxruntime copies it to the device
        for spec in self.schema.outputs:
            buffer = out_buffers.get(spec.name)
            if buffer is not None:
                io.bind_ortvalue_output(spec.name, buffer)
            else:
                io.bind_output(spec.name, self.device, self.device_id)
        self.session.run_with_iobinding(io, options)
        results = {}
        allocated = None
        for k, spec in enumerate(self.schema.outputs):
            value = out_buffers.get(spec.name)
            if value is not None:
                array = value.numpy()  # from the device: a new host array; on CPU: a view of the buffer,
                results[spec.name] = array.copy() if self.device == "cpu" else array  # which the next batch reuses
            else:
                if allocated is None:
                    allocated = io.copy_outputs_to_cpu()
                results[spec.name] = allocated[k]
        return results
