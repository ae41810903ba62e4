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
from engine.errors import EngineError, ErrorCode, UserFacing
from engine.runtime.iobinding import BoundRunner, PlainRunner, pinned_memory
from engine.settings import ModelSettings

log = logging.getLogger(__name__)

_fallbacks_told: set[str] = set()  # providers whose fallback this process has logged


def has_gpu_device() -> bool:
    """Whether this machine shows an NVIDIA GPU (its device files)."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*"))


def _fell_back(label: str, wanted: str, used: str) -> None:
    """A provider that could not start: a warning where a GPU is present (something is wrong
    with its libraries), else one INFO line per process -- falling back to the CPU on a
    machine without a GPU is what the default provider list is for (the 'loaded on' line says
    which provider each model got)."""
    if wanted == "CUDAExecutionProvider" and has_gpu_device():
        log.warning("%s: %s could not start although this machine has a GPU (CUDA libraries missing or of the "
                    "wrong version?); running on %s", label, wanted, used)
    elif wanted not in _fallbacks_told:
        _fallbacks_told.add(wanted)
        log.info("%s is not usable here (no GPU); models run on %s", wanted, used)

# onnxruntime's own logger prints a multi-line error when CUDA libraries are missing; the
# fallback is reported in one line by open_session instead. Fatal errors still show.
ort.set_default_logger_severity(4)


class ModelLoadError(RuntimeError, UserFacing):
    """A model that cannot be served; the message names the model and file."""


class WarmupError(ModelLoadError):
    """A model that loads but fails (or hangs in) its warm-up runs."""


def _spec(arg, label: str, what: str) -> TensorSpec:
    datatype = ORT_TO_OIP.get(arg.type)
    if datatype is None:
        hint = ""
        if str(arg.type).startswith("seq(map"):  # skl2onnx's ZipMap: one dict per row
            hint = ("; it is skl2onnx's ZipMap: convert the classifier with "
                    "options={id(model): {'zipmap': False}} to get the probabilities as a tensor")
        elif arg.type == "tensor(string)" and what == "output":  # a classifier fitted on string labels
            hint = ("; string class labels: fit the classifier on integer labels (e.g. sklearn's LabelEncoder) "
                    "so its label output is int64, and map the codes back to names in the client")
        elif arg.type == "tensor(string)":
            hint = "; encode strings as numbers before the model (e.g. one-hot or ordinal codes in the pipeline)"
        raise ModelLoadError(f"{label}: {what} '{arg.name}' has type {arg.type}, which scorewire cannot serve{hint}")
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


class ModelShape:
    """What a watching process needs of a model it does not run: its label and schema."""

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.label = f"{settings.name}:{settings.version}"
        path = Path(settings.path)
        if not path.is_file():
            raise ModelLoadError(f"{self.label}: model file {path} does not exist")
        # A CPU session with no graph optimisation, dropped at once: not the serving sessions
        # (no device memory, no optimised graph, no warm-up) -- onnxruntime reads the graph's
        # inputs and outputs only through a session.
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"{self.label}: cannot load {path}: {exc}") from None
        self.schema = schema_of(session, self.label)

    def close(self) -> None:
        pass


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


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    if np.issubdtype(want.dtype, np.floating):
        return bool(np.allclose(got, want, rtol=1e-4, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(got, want))


def open_session(path: Path, settings: ModelSettings, label: str,
                 requested: list[str] | None = None) -> tuple[ort.InferenceSession, str]:
    """One session on the best provider that actually starts; returns it and that provider."""
    wanted = list(settings.providers) if requested is None else requested
    providers = choose_providers(wanted, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(path), sess_options=_session_options(settings), providers=providers)
    except Exception as exc:
        if providers == ["CPUExecutionProvider"]:
            raise ModelLoadError(f"{label}: cannot load {path}: {exc}") from None
        try:
            session = ort.InferenceSession(
                str(path), sess_options=_session_options(settings), providers=["CPUExecutionProvider"]
            )
        except Exception as cpu_exc:  # the file itself (corrupt, unsupported): no provider is to blame
            raise ModelLoadError(f"{label}: cannot load {path}: {cpu_exc}") from None
        # the CPU took it: the failure was the accelerator's (where there is none, _fell_back says so once)
        log.log(logging.WARNING if has_gpu_device() else logging.DEBUG,
                "%s: session on %s failed (%s); falling back to CPUExecutionProvider", label, providers[0], exc)
    return session, session.get_providers()[0]


class OnnxModel:
    """The sessions (instances) of one model version, and how to run a batch on them.

    Warm-up is also where the way of running is settled: IO binding, then plain
    `session.run` on the same provider, then the CPU provider. A step that fails (or, with
    IO binding, answers differently from `session.run`) is logged in one warning naming its
    cause and the next is tried, so a model onnxruntime itself can run always serves."""

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.label = f"{settings.name}:{settings.version}"
        self.path = Path(settings.path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.label}: model file {self.path} does not exist")
        self._open(list(settings.providers))
        self.schema = self.onnx_schema = schema_of(self.sessions[0], self.label)  # served; the graph's own
        self.conformal = self._conformal(settings)
        self.guards = self._guards(settings)
        self._use(self._plain_runners())
        if settings.io_binding == "on" or (settings.io_binding == "auto" and self.provider == "CUDAExecutionProvider"):
            try:
                self._use(self._bound_runners())
            except Exception as exc:
                log.warning("%s: IO binding is not available: %s; running with session.run on %s", self.label, exc,
                            self.provider)
        self._pool = ThreadPoolExecutor(max_workers=settings.instances, thread_name_prefix=f"ort-{settings.name}")
        self.inline = settings.execution == "inline"
        self.full_batch_us: float | None = None  # measured by warm_up
        log.info("%s: loaded %s on %s x%d, %s", self.label, self.path.name, self.provider, settings.instances,
                 self.binding_description)

    # -- how batches run -----------------------------------------------------------------
    def _open(self, providers: list[str]) -> None:
        settings = self.settings
        chosen = choose_providers(providers, ort.get_available_providers())  # says once what is missing
        opened = [open_session(self.path, settings, self.label, chosen) for _ in range(settings.instances)]
        self.sessions = [s for s, _ in opened]
        self.provider = opened[0][1]
        if self.provider != chosen[0]:
            _fell_back(self.label, chosen[0], self.provider)
        self._free = list(self.sessions)

    def _bound_runners(self) -> list:
        device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        host = None
        if device == "cuda" and self.settings.io_binding_staging == "pinned":
            host, why = pinned_memory(0)
            if host is None:
                raise RuntimeError(f"pinned input staging is not available: {why}")
        return [BoundRunner(s, self.onnx_schema, device, host_memory=host) for s in self.sessions]

    def _plain_runners(self) -> list:
        return [PlainRunner(s, self.onnx_schema) for s in self.sessions]

    def _use(self, runners: list) -> None:
        self._runners = {id(r.session): r for r in runners}
        self.io_binding = None if runners[0].binding == "off" else runners[0].binding  # "cuda", "cpu" or None
        self.staging = runners[0].staging  # "pinned" or "pageable" for inputs on CUDA; None otherwise

    @property
    def binding_description(self) -> str:
        if self.io_binding is None:
            return "session.run"
        if self.io_binding == "cuda":
            return f"IO binding (cuda, {self.staging} inputs)"
        return f"IO binding ({self.io_binding})"

    def _fall_back(self, cause: str) -> bool:
        """Take the next way of running after `cause`; False when none is left."""
        if self.io_binding is not None:
            log.warning("%s: IO binding (%s) failed in warm-up: %s; running with session.run on %s", self.label,
                        self.io_binding, cause, self.provider)
            self._use(self._plain_runners())
            return True
        if self.provider != "CPUExecutionProvider":
            log.warning("%s: %s failed in warm-up: %s; falling back to CPUExecutionProvider", self.label,
                        self.provider, cause)
            self._open(["CPUExecutionProvider"])
            self._use(self._plain_runners())
            return True
        return False

    # -- warm-up ---------------------------------------------------------------------------
    def warm_up(self, full: bool = True) -> None:
        """Check every session with a 1-row batch; with `full`, also run a batch of
        max_batch_size zero rows through each and time it, which decides where batches run
        when execution = "auto". A run that fails takes the next way of running (see the
        class); one that outlives warmup_timeout_s (stopped through onnxruntime's terminate
        flag), or a failure with no way left, is a WarmupError."""
        while True:
            options = ort.RunOptions()
            options.log_severity_level = 4
            timer = threading.Timer(self.settings.warmup_timeout_s, lambda: setattr(options, "terminate", True))
            timer.daemon = True
            timer.start()
            try:
                self._warm(options, full)
                break
            except Exception as exc:
                if options.terminate:
                    raise WarmupError(f"{self.label}: warm-up took longer than warmup_timeout_s = "
                                      f"{self.settings.warmup_timeout_s}") from None
                if not self._fall_back(str(exc)):
                    raise WarmupError(f"{self.label}: warm-up failed: {exc}") from None
            finally:
                timer.cancel()
        if not full:
            return
        s = self.settings
        if s.execution == "auto":
            self.inline = s.instances == 1 and self.full_batch_us <= s.inline_threshold_us
        log.info("%s: a full batch (%d rows) takes %.0f us; batches run %s", self.label,
                 s.batching.max_batch_size, self.full_batch_us, "inline on the event loop" if self.inline else "on threads")

    def _feed(self, rows: int, fill) -> dict[str, np.ndarray]:
        return {t.name: np.full((rows, *[d if d >= 0 else 1 for d in t.shape[1:]]), fill, dtype=t.dtype)
                for t in self.schema.inputs}

    def _warm(self, options: ort.RunOptions, full: bool) -> None:
        if self.io_binding is not None:
            self._check_binding(options)
        sizes = sorted({1, self.settings.batching.max_batch_size}) if full else [1]
        for rows in sizes:
            feed = self._feed(rows, 0)
            for session in self.sessions:
                self.run_sync(session, feed, options)
            if rows == self.settings.batching.max_batch_size and full:
                timings = []
                for _ in range(5):
                    start = time.perf_counter_ns()
                    self.run_sync(self.sessions[0], feed, options)
                    timings.append((time.perf_counter_ns() - start) / 1000)
                self.full_batch_us = float(np.median(timings))

    def _check_binding(self, options: ort.RunOptions) -> None:
        """IO binding must answer what session.run answers, for every session: a 2-row batch
        of ones (of zeros where the model refuses ones, as an index input may)."""
        for fill in (1, 0):
            feed = self._feed(2, fill)
            try:
                want = PlainRunner(self.sessions[0], self.onnx_schema).run(feed, options)
            except Exception:
                if fill == 0 or options.terminate:
                    raise
                continue
            break
        for session in self.sessions:
            got = self.run_sync(session, feed, options)
            for name, expected in want.items():
                if not _same(got[name], expected):
                    raise RuntimeError(f"output '{name}' differs from session.run's "
                                       f"({np.ravel(got[name])[:4]} vs {np.ravel(expected)[:4]})")

    def run_sync(self, session: ort.InferenceSession, inputs: dict[str, np.ndarray],
                 options: ort.RunOptions | None = None) -> dict[str, np.ndarray]:
        return self._runners[id(session)].run(inputs, options)

    def _conformal(self, settings: ModelSettings):
        """[models.conformal]: its predictor, and its output in the schema (ModelMetadata lists it)."""
        from engine.performance.conformal import for_version

        try:
            conformal = for_version(settings)
        except ValueError as exc:  # a reference that cannot be used (BadReference)
            raise ModelLoadError(f"{self.label}: conformal: {exc}") from None
        if conformal is None:
            return None
        output = next((o for o in self.schema.outputs if o.name == conformal.output), None)
        if output is None:
            raise ModelLoadError(f"{self.label}: conformal reads output {conformal.output!r}, which the model does not "
                                 f"have ({list(self.schema.output_names)})")
        self.schema = ModelSchema(self.schema.inputs, (*self.schema.outputs, conformal.spec(output)))
        return conformal

    def _guards(self, settings: ModelSettings):
        """[models.guards]: its checks, and with action "flag" its output in the schema."""
        from engine.guards import for_version

        try:
            guards = for_version(settings, self.schema.inputs)
        except ValueError as exc:
            raise ModelLoadError(f"{self.label}: guards: {exc}") from None
        if guards is not None and guards.action in ("flag", "fallback"):  # fallback: the pipeline adds it
            self.schema = ModelSchema(self.schema.inputs, (*self.schema.outputs, guards.spec()))
        return guards

    async def run(self, batch: Batch) -> dict[str, np.ndarray]:
        """Score a batch on a free session (the batcher never has more in flight than instances);
        with [models.conformal], its prediction sets (intervals) added."""
        session = self._free.pop()
        try:
            if self.inline:
                outputs = self.run_sync(session, batch.inputs)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(self._pool, self.run_sync, session,
                                                                           batch.inputs)
            if self.conformal is not None:
                outputs = {**outputs, self.conformal.name: self.conformal.derive(outputs)}
            if self.guards is not None and self.guards.action == "flag":
                flags = self.guards.flags(batch.inputs, outputs)
                self.guards.count(flags, "flag")
                outputs = {**outputs, "scorewire_guard": flags}
            return outputs
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(ErrorCode.INTERNAL, f"model {self.label} failed on a batch of {batch.rows} rows: {exc}") from exc
        finally:
            self._free.append(session)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
