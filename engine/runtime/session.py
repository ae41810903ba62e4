"""ONNX Runtime sessions for one model version.

Providers come from config in order of preference; those the installed onnxruntime does not
offer are skipped, and a session that cannot start on CUDA (no GPU, no CUDA libraries) is
rebuilt on CPU. The provider actually used is what the session reports, logged and exposed
in ModelMetadata. Sessions run on a small thread pool (ONNX Runtime releases the GIL).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.batching.batch import Batch
from engine.codec.dtypes import OIP_TO_NUMPY, ORT_TO_OIP
from engine.codec.validate import ModelSchema, TensorSpec
from engine.errors import EngineError, ErrorCode
from engine.runtime.iobinding import BoundRunner
from engine.settings import ModelSettings

log = logging.getLogger(__name__)

# onnxruntime's own logger prints a multi-line error when CUDA libraries are missing; the
# fallback is reported in one line by open_session instead. Fatal errors still show.
ort.set_default_logger_severity(4)


class ModelLoadError(RuntimeError):
    """A model that cannot be served; the message names the model and file."""


class WarmupError(ModelLoadError):
    """A model that loads but fails (or hangs in) its warm-up runs."""


def _spec(arg, label: str, what: str) -> TensorSpec:
    datatype = ORT_TO_OIP.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"{label}: {what} '{arg.name}' has type {arg.type}, which scorewire cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, OIP_TO_NUMPY[datatype], shape)


def schema_of(session: ort.InferenceSession, label: str) -> ModelSchema:
    inputs = tuple(_spec(a, label, "input") for a in session.get_inputs())
    outputs = tuple(_spec(a, label, "output") for a in session.get_outputs())
    for spec in inputs:
        if not spec.shape or spec.shape[0] != -1:
            raise ModelLoadError(
                f"{label}: input '{spec.name}' has shape {list(spec.shape)}; scorewire batches along the "
                "first dimension, which must be variable (re-export the model with a dynamic batch axis)"
            )
    return ModelSchema(inputs, outputs)


def choose_providers(requested: list[str], available: list[str]) -> list[str]:
    """The requested providers this onnxruntime offers, in order, CPU always last resort."""
    chosen = [p for p in requested if p in available]
    for p in requested:
        if p not in available:
            log.info("provider %s is not available in this onnxruntime build (have: %s); skipping it",
                     p, ", ".join(available))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _session_options(settings: ModelSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: a CUDA fallback is reported by us, once
    return options


def open_session(path: Path, settings: ModelSettings, label: str) -> tuple[ort.InferenceSession, str]:
    """One session on the best provider that actually starts; returns it and that provider."""
    providers = choose_providers(list(settings.providers), ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(path), sess_options=_session_options(settings), providers=providers)
    except Exception as exc:
        if providers == ["CPUExecutionProvider"]:
            raise ModelLoadError(f"{label}: cannot load {path}: {exc}") from None
        log.warning("%s: session on %s failed (%s); falling back to CPUExecutionProvider", label, providers[0], exc)
        try:
            session = ort.InferenceSession(
                str(path), sess_options=_session_options(settings), providers=["CPUExecutionProvider"]
            )
        except Exception as cpu_exc:
            raise ModelLoadError(f"{label}: cannot load {path}: {cpu_exc}") from None
    used = session.get_providers()[0]
    if used != providers[0]:
        log.warning("%s: %s could not start (no GPU or CUDA libraries?); running on %s", label, providers[0], used)
    return session, used


class OnnxModel:
    """The sessions (instances) of one model version, and how to run a batch on them."""

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.label = f"{settings.name}:{settings.version}"
        path = Path(settings.path)
        if not path.is_file():
            raise ModelLoadError(f"{self.label}: model file {path} does not exist")
        opened = [open_session(path, settings, self.label) for _ in range(settings.instances)]
        self.sessions = [s for s, _ in opened]
        self.provider = opened[0][1]
        self.schema = schema_of(self.sessions[0], self.label)
        self._output_names = list(self.schema.output_names)
        self._free = list(self.sessions)
        bind = settings.io_binding == "on" or (settings.io_binding == "auto" and self.provider == "CUDAExecutionProvider")
        device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self._bound = {id(s): BoundRunner(s, self.schema, device) for s in self.sessions} if bind else {}
        self.io_binding = device if bind else None
        self._pool = ThreadPoolExecutor(max_workers=settings.instances, thread_name_prefix=f"ort-{settings.name}")
        self.inline = settings.execution == "inline"
        self.full_batch_us: float | None = None  # measured by warm_up
        log.info("%s: loaded %s on %s x%d%s", self.label, path.name, self.provider, settings.instances,
                 f", IO binding ({device})" if bind else "")

    def warm_up(self) -> None:
        """Run a batch of 1 and of max_batch_size zero rows through every session; time the
        full batch, which decides where batches run when execution = "auto". A run that
        fails, or outlives warmup_timeout_s (stopped through onnxruntime's terminate flag),
        is a ModelLoadError."""
        options = ort.RunOptions()
        options.log_severity_level = 4
        timer = threading.Timer(self.settings.warmup_timeout_s, lambda: setattr(options, "terminate", True))
        timer.daemon = True
        timer.start()
        try:
            for rows in sorted({1, self.settings.batching.max_batch_size}):
                feed = {
                    t.name: np.zeros((rows, *[d if d >= 0 else 1 for d in t.shape[1:]]), dtype=t.dtype)
                    for t in self.schema.inputs
                }
                for session in self.sessions:
                    self.run_sync(session, feed, options)
                if rows == self.settings.batching.max_batch_size:
                    timings = []
                    for _ in range(5):
                        start = time.perf_counter_ns()
                        self.run_sync(self.sessions[0], feed, options)
                        timings.append((time.perf_counter_ns() - start) / 1000)
                    self.full_batch_us = float(np.median(timings))
        except Exception as exc:
            why = (f"took longer than warmup_timeout_s = {self.settings.warmup_timeout_s}" if options.terminate
                   else f"failed: {exc}")
            raise WarmupError(f"{self.label}: warm-up {why}") from None
        finally:
            timer.cancel()
        s = self.settings
        if s.execution == "auto":
            self.inline = s.instances == 1 and self.full_batch_us <= s.inline_threshold_us
        log.info("%s: a full batch (%d rows) takes %.0f us; batches run %s", self.label,
                 s.batching.max_batch_size, self.full_batch_us, "inline on the event loop" if self.inline else "on threads")

    def run_sync(self, session: ort.InferenceSession, inputs: dict[str, np.ndarray],
                 options: ort.RunOptions | None = None) -> dict[str, np.ndarray]:
        bound = self._bound.get(id(session))
        if bound is not None:
            return bound.run(inputs, options)
        outputs = session.run(self._output_names, inputs, options)
        return dict(zip(self._output_names, outputs))

    async def run(self, batch: Batch) -> dict[str, np.ndarray]:
        """Score a batch on a free session (the batcher never has more in flight than instances)."""
        session = self._free.pop()
        try:
            if self.inline:
                return self.run_sync(session, batch.inputs)
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.run_sync, session, batch.inputs)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(ErrorCode.INTERNAL, f"model {self.label} failed on a batch of {batch.rows} rows: {exc}") from exc
        finally:
            self._free.append(session)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
