"""TOML config -> validated, typed settings.

Every field is documented and bounded; unknown keys are errors. `load_settings` raises
`SettingsError` whose message names the file, the field path and what was expected.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from engine.errors import UserFacing

PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


ConfigPath = Annotated[Path, Strict(False)]
"""A path in the config: TOML has no path type, so a string is taken (and resolved later)."""

Pair = Annotated[tuple[float, float], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]
"""[lo, hi] in the config: TOML has no tuple type, so its array is taken (each number strict)."""


class _Strict(BaseModel):
    """Unknown keys are errors, and values are taken as written: `grpc_port = "19001"` (a
    string) or `workers = 2.0` is refused rather than converted, so a config means what it says."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TlsSettings(_Strict):
    cert_file: ConfigPath
    """PEM certificate (chain) the server presents (relative to the config file)."""
    key_file: ConfigPath
    """PEM private key of that certificate."""
    client_ca_file: ConfigPath | None = None
    """mTLS: PEM CA bundle. When set, every client must present a certificate signed by it."""


class AuthSettings(_Strict):
    tokens_file: ConfigPath | None = None
    """File of accepted bearer tokens, one per line ('#' comments). Clients send the gRPC
    metadata `authorization: Bearer <token>`; anything else gets UNAUTHENTICATED."""
    tokens_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Environment variable holding the accepted tokens, comma-separated (instead of a file)."""
    open_health: bool = True
    """Let grpc.health.v1 and ServerLive/ServerReady answer without a token (for probes)."""

    @model_validator(mode="after")
    def _one_source(self) -> "AuthSettings":
        if (self.tokens_file is None) == (self.tokens_env is None):
            raise ValueError("set exactly one of tokens_file and tokens_env")
        return self


class ServerSettings(_Strict):
    host: str = "0.0.0.0"
    """Address the gRPC server binds to. Tests and the demo use 127.0.0.1."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """gRPC port. 0 picks a free port; the chosen one is printed on startup."""
    grpc_transport: Literal["scorewire", "grpcio"] = "scorewire"
    """What speaks gRPC: "scorewire", its own HTTP/2 on the event loop (engine/ingress/http2/,
    about half the server CPU per call of grpcio's), or "grpcio", gRPC's C core through grpc.aio.
    Both serve the same methods, health, TLS and tokens; `max_pending_calls` is grpcio's only."""
    metrics_port: int = Field(8002, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint (0: a free port, printed on startup)."""
    metrics_host: str | None = None
    """Address /metrics binds to. Default: `host`, except with [server.tls] or [server.auth]:
    then 127.0.0.1, since /metrics has neither (it names models, versions, streams and counts).
    Set it (e.g. "0.0.0.0") to let a Prometheus on another machine scrape it, behind a network
    policy or a TLS-terminating proxy."""
    http_port: int = Field(8000, ge=0, le=65535)
    """The Open Inference Protocol over HTTP/REST (Triton's default port; 0: any free port)."""
    max_message_bytes: int = Field(64 * 1024 * 1024, gt=0, le=1024 * 1024 * 1024)
    """Largest ModelInferRequest accepted. Larger ones (up to 2x) get INVALID_ARGUMENT naming
    the limit; beyond 2x the transport refuses them with RESOURCE_EXHAUSTED before reading."""
    max_concurrent_streams: int = Field(1024, gt=0, le=65536)
    """HTTP/2 streams per connection."""
    max_inflight_bytes: int = Field(1 << 30, gt=0, le=1 << 40)
    """Bytes of inference requests being handled at once, all together. A request that would
    pass it is RESOURCE_EXHAUSTED before it is parsed (one request alone is always taken):
    many large requests cannot add up past it, whatever each one's max_message_bytes."""
    max_pending_calls: int = Field(100_000, gt=0, le=10_000_000)
    """grpc_transport = "grpcio": calls accepted by the transport and not yet picked up by the
    server (a burst waits there). Past it, gRPC itself refuses calls; the batchers' queues bound
    the work. scorewire's transport picks up every call as it arrives (max_concurrent_streams
    per connection)."""
    stream_max_in_flight: int = Field(256, gt=0, le=65536)
    """Requests of one ModelStreamInfer stream read and not yet answered on the wire; at the
    bound the stream reads no further messages (a client that stops reading its responses
    stops the server reading its requests)."""
    max_connection_age_s: float = Field(30.0, ge=0, le=86400)
    """With several workers: a gRPC connection is asked to move (HTTP/2 GOAWAY) after about
    this long (gRPC adds +-10% jitter); its client opens a new one, which the kernel hands to a
    worker picked afresh, so a client holding as few long-lived channels as there are workers
    does not keep one worker idle for good (each connection lands on a worker at random,
    SO_REUSEPORT's hash: two land on the same one half of the time). Calls in flight finish on
    the old connection, however long they take (no grace cut-off: streams included); calls the
    client starts meanwhile go to the new one. 0: connections stay where they landed."""
    workers: int | Literal["auto"] = "auto"
    """Serving processes. Each is a whole serving path (gRPC on the shared port, its share of
    each Kafka consumer group, its own batchers and sessions); one more process, the
    observer, runs drift, latency, the scoring log, the challengers and /metrics for all,
    and the process `serve` starts supervises them. "auto": the CPU cores this process may
    use. 1: one process does everything (no observer process)."""
    handoff_ring_bytes: int | None = Field(None, ge=1024 * 1024, le=1 << 34)
    """With several workers: the shared-memory ring each worker hands its scored batches
    (inputs, outputs, timings) to the observer through. When the observer falls this far
    behind, batches are dropped and counted (scorewire_handoff_dropped_*), never waited for.
    The rings live in /dev/shm, which must have room for all of them, and are reserved whole at
    start (a pod's memory limit is charged for them). Unset: sized by what holds records, 32 MiB
    with a [scorelog] (a record stays until the log has committed its rows, every 0.5 s) and
    8 MiB without (a record is freed once the observer has handed it on, within ~60 ms, or
    ~0.1 s for the first after an idle spell: 8 MiB is about a second of 64-row batches of 32
    features at full speed)."""
    drain_timeout_s: float = Field(30.0, gt=0, le=3600)
    """On SIGTERM: the whole drain. Requests already sent are answered (drain_grace_s, then new
    calls get UNAVAILABLE while those in flight finish); challengers and the monitor get what
    is left, the scoring log at least 2 s to write what it holds."""
    drain_grace_s: float = Field(1.0, ge=0, le=600)
    """On SIGTERM, health turns NOT_SERVING at once and new requests are still answered for up
    to this long (less once none has arrived for 0.1 s), so that balancers watching health stop
    sending; then new calls get UNAVAILABLE and the listeners close while those in flight finish.
    Raise it to the health-check period of balancers that only drop a replica on a failed check."""
    model_root: ConfigPath | None = None
    """When set, every model file and drift reference must lie inside this folder (after
    resolving symlinks); a config pointing elsewhere is refused."""
    @field_validator("handoff_ring_bytes")
    @classmethod
    def _whole_words(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8 (records are 8-byte aligned), e.g. {value - value % 8}")
        return value

    @field_validator("workers")
    @classmethod
    def _workers_bounds(cls, value):
        if value != "auto" and not 1 <= value <= 1024:
            raise ValueError("workers must be \"auto\" or a number from 1 to 1024")
        return value

    @property
    def metrics_bind(self) -> str:
        """Where /metrics listens (see metrics_host)."""
        if self.metrics_host is not None:
            return self.metrics_host
        return "127.0.0.1" if self.tls is not None or self.auth is not None else self.host

    def worker_count(self) -> int:
        """The number of serving processes `workers` asks for on this machine."""
        if self.workers == "auto":
            try:
                return max(1, len(os.sched_getaffinity(0)))
            except AttributeError:  # macOS
                return max(1, os.cpu_count() or 1)
        return self.workers

    tls: TlsSettings | None = None
    """gRPC over TLS (and mTLS with client_ca_file). None: plaintext."""
    auth: AuthSettings | None = None
    """Bearer-token authentication of gRPC calls. None: no authentication."""


class BatchingSettings(_Strict):
    max_batch_size: int = Field(64, gt=0, le=1_000_000)
    """A batch closes when it holds this many rows. Requests count by their rows; a request
    is never split, and one larger than this runs as a batch of its own."""
    dispatch: Literal["free_slot", "idle", "delay"] = "free_slot"
    """When a batch goes. Batches never run more at once than the model's `instances`; while
    every instance is busy, waiting requests join the next batch, which goes when one frees
    (a full batch goes as soon as one is free, whatever the choice). The choice is what a
    request does when an instance is free. "free_slot": it goes at once, with whatever is queued (Triton's dynamic batcher with
    max_queue_delay 0): nobody waits for company that may not come, and batches grow by
    themselves when the model is busy. "idle": it goes at once when no batch is running; while
    some run (instances > 1) it waits up to max_queue_delay_us for company first, which buys
    bigger batches under moderate load at the price of that wait. "delay": the first request
    of a batch always waits up to max_queue_delay_us unless the batch fills (Triton's batcher
    with a delay, and scorewire's before): the biggest batches, and a wait on every lone
    request, idle model or not."""
    max_queue_delay_us: int = Field(500, ge=0, le=10_000_000)
    """Longest time the first request of a batch waits for others while an instance is free
    (microseconds): with dispatch = "delay" always, with "idle" while some batch runs; unused
    with "free_slot"."""
    queue_capacity: int = Field(4096, gt=0, le=100_000_000)
    """Rows waiting to be batched. A request that would exceed it gets RESOURCE_EXHAUSTED, unless
    the queue is empty: then it is taken (and runs alone), so any request within
    max_rows_per_request can succeed."""


class QualitySettings(_Strict):
    """Data-quality alerts of the monitored input features (engine/monitor/quality.py): each
    feature's share of missing values, of values outside the reference's [min, max] and of
    categories the reference never had, over the monitor's smallest window of rows. A check
    left out is shown (/metrics, `status`) but never alerts; 0 alerts on any such value."""

    max_missing: float | None = Field(None, ge=0, lt=1)
    """Alert while a feature's share of non-finite values (NaN, +-inf: they reach the monitor
    only where the model has allow_non_finite = true) is above this."""
    max_out_of_range: float | None = Field(None, ge=0, lt=1)
    """Alert while a continuous feature's share of finite values outside the reference's
    [min, max] (both ends inside) is above this."""
    max_unseen_category: float | None = Field(None, ge=0, lt=1)
    """Alert while a categorical feature's share of categories (integer codes, rint of the
    value) that the reference never had is above this."""

    @model_validator(mode="after")
    def _alerts_something(self) -> "QualitySettings":
        if self.max_missing is None and self.max_out_of_range is None and self.max_unseen_category is None:
            raise ValueError("[models.monitor.quality] alerts on nothing: set max_missing, max_out_of_range or "
                             "max_unseen_category (the shares are shown without it)")
        return self


class MonitorSettings(_Strict):
    features: list[str] | None = Field(None, min_length=1)
    """Names of the monitored input tensor's columns, in order (the tensor is [rows, len(features)]).
    Default: the reference file's columns in its order, less those `outputs` names."""
    input: str | None = None
    """The input tensor the features are columns of (default: the model's first input)."""
    categorical: list[str] = Field(default_factory=list)
    """Features tested with chi-squared on integer category codes; the rest with two-sample KS.
    Input features only: outputs need no entry (see `outputs`)."""
    outputs: list[str] = Field(default_factory=list)
    """Prediction drift: output columns as "name" (a [rows] output) or "name:column" (column of
    a [rows, k] output), e.g. "probabilities:1". The reference file has a column of each name.
    An integer or boolean output (a class label) is tested with chi-squared, a float one with KS."""
    reference: ConfigPath
    """Parquet or NPZ file (relative to the config file) with one column per feature/output."""
    window: int = Field(10_000, gt=0, le=10_000_000)
    """Sliding window, events (rows). `windows` gives several instead."""
    windows: list[Annotated[int, Field(gt=0, le=10_000_000)]] | None = Field(None, min_length=1, max_length=8)
    """Several sliding windows per column, e.g. [1000, 2000, 10000], sharing the reference:
    small ones see strong drifts sooner, large ones weak drifts at all. A column drifts when
    any of its windows does; alpha is corrected over columns x windows."""
    every: int = Field(1_000, gt=0, le=10_000_000)
    """Evaluate drift every this many events, once the (smallest) window is full."""
    alpha: float = Field(0.001, gt=0, lt=1)
    """Family-wise significance level of one evaluation over all monitored columns and windows."""
    correction: Literal["bonferroni", "bh"] = "bonferroni"
    """Multiple-testing correction across columns x windows: Bonferroni (family-wise) or
    Benjamini-Hochberg."""
    min_effect: float = Field(0.1, ge=0, le=10)
    """Effect size needed besides significance: KS D (continuous) or PSI (categorical)."""
    consecutive: int = Field(3, gt=0, le=1000)
    """Hysteresis: raise after this many consecutive drifting evaluations, clear after as many clean ones."""
    queue_batches: int = Field(16_384, gt=0, le=1_000_000)
    """Scored batches waiting for the monitor thread; when full, batches are dropped and counted.
    One-row requests make one-row batches: this many is about 10 s of them at 1,500/s (the
    monitor thread may be busy with an evaluation for a second or more on a loaded machine)."""
    queue_rows: int = Field(262_144, gt=0, le=100_000_000)
    """Rows of those batches, all together (bounds the memory they hold; a batch alone is
    always taken). Past either bound, batches are dropped and counted."""
    quality: QualitySettings | None = None
    """Data-quality alerts per input feature (missing, out of range, unseen category); the
    shares themselves are always in /metrics and `status`. An alert is raised after
    `consecutive` evaluations (every `every` rows, once the smallest window is full) above a
    threshold, and cleared after as many at or below it."""

    @property
    def sizes(self) -> tuple[int, ...]:
        """The window sizes, smallest first (`windows`, or `window` alone)."""
        return tuple(sorted(self.windows)) if self.windows else (self.window,)

    @model_validator(mode="after")
    def _one_form_of_window(self) -> "MonitorSettings":
        if self.windows is not None:
            if "window" in self.model_fields_set:
                raise ValueError("give window = N (one window) or windows = [N, ...] (several), not both")
            if len(set(self.windows)) != len(self.windows):
                raise ValueError(f"windows lists a size twice: {self.windows}")
        return self

    @model_validator(mode="after")
    def _categorical_are_features(self) -> "MonitorSettings":
        outputs = [c for c in self.categorical if c in self.outputs]
        if outputs:
            raise ValueError(f"categorical lists {outputs}, which are outputs: leave them out (an integer output, a "
                             "class label, is tested with chi-squared anyway; a float one with KS)")
        if self.quality is not None and self.quality.max_unseen_category is not None and not self.categorical:
            raise ValueError("quality.max_unseen_category needs categorical features (monitor.categorical is empty)")
        if self.features is None:  # the reference's columns: checked when it is read
            return self
        unknown = [c for c in self.categorical if c not in self.features]
        if unknown:
            raise ValueError(f"categorical lists {unknown}, which are not in features")
        if len(set(self.features)) != len(self.features):
            raise ValueError("features lists a name twice")
        return self


class ModelSettings(_Strict):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.\-]+$")
    """Model name clients use."""
    path: ConfigPath
    """ONNX file, relative to the config file's folder."""
    version: str = Field("1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    """Version label. Several [[models]] may share a name with different versions; a request
    without a version gets the highest (numeric order when all are numbers)."""
    providers: list[Literal["CUDAExecutionProvider", "CPUExecutionProvider"]] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"], min_length=1
    )
    """ONNX Runtime execution providers in order of preference. Those not available on the
    machine are skipped with a log line; CPU is always the last resort."""
    instances: int = Field(1, gt=0, le=64)
    """ONNX Runtime sessions for this model; batches run on them concurrently."""
    intra_op_threads: int = Field(1, ge=0, le=256)
    """Threads one session uses inside an operator (0: ONNX Runtime's default, all cores)."""
    inter_op_threads: int = Field(1, ge=0, le=256)
    """Threads one session uses across operators (0: ONNX Runtime's default)."""
    max_rows_per_request: int = Field(65536, gt=0, le=100_000_000)
    """Rows one request may carry; more is INVALID_ARGUMENT."""
    allow_non_finite: bool = False
    """Accept NaN and +-inf in floating-point inputs. When false they are INVALID_ARGUMENT."""
    warmup: bool = True
    """Run a batch of 1 and of max_batch_size rows through each session before serving."""
    warmup_timeout_s: float = Field(120.0, gt=0, le=3600)
    """Longest warm-up. A model whose warm-up fails or takes longer does not start (a
    challenger that only shadows is left out of its route instead, with a log line)."""
    execution: Literal["auto", "inline", "threads"] = "auto"
    """Where batches run. "threads": on a pool of `instances` threads (onnxruntime releases
    the GIL, so inference overlaps request handling). "inline": on the event loop itself,
    saving the thread hand-off (tens of microseconds) but pausing I/O while the model runs.
    "auto": inline when there is one instance and warm-up shows a full batch takes under
    inline_threshold_us; threads otherwise (and when warmup is off)."""
    inline_threshold_us: int = Field(300, ge=0, le=100_000)
    """With execution = "auto": the longest full-batch run time that still runs inline."""
    io_binding: Literal["auto", "on", "off"] = "auto"
    """Run sessions through ONNX Runtime IO binding: outputs in device buffers reused per batch
    size, inputs as io_binding_staging says. "auto": on when the model runs on CUDA. "on" also
    works on CPU (useful to test it); "off": plain session.run. Warm-up checks the binding
    against session.run and falls back to it (then to CPU) with a warning if it fails."""
    io_binding_staging: Literal["pageable", "pinned"] = "pageable"
    """How inputs reach the GPU under IO binding. "pageable": the batch's own arrays are bound
    and onnxruntime copies them to the device. "pinned": copied into page-locked host memory
    that the CUDA provider allocates, then handed to the session; measured slower on an H200
    (wide MLP, 1,024 rows: 1.56M rows/s against 3.93M pageable; onnxruntime reports that memory
    as the device's, so, we take it, kernels read it across PCIe instead of copying it once)."""
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    monitor: MonitorSettings | None = None
    """Drift monitoring of this model's inputs (and outputs); latency is always monitored."""
    performance: PerformanceSettings | None = None
    """Live performance of this version against the labels sent back (POST
    /v2/models/NAME/feedback), joined with its scored rows in the observer."""
    fairness: FairnessSettings | None = None
    """Statistical parity, disparate impact and (with labels) equal opportunity of this
    version's predictions between a protected feature's groups (needs [models.monitor]
    features and [models.performance])."""
    segments: SegmentSettings | None = None
    """Rows, score drift and realized performance per segment of the rows (a feature's code or
    bin; needs [models.monitor] features and [models.performance])."""
    conformal: ConformalSettings | None = None
    """Prediction sets (intervals) with a coverage guarantee, calibrated on the performance
    reference (needs [models.performance] with `reference`)."""
    guards: GuardSettings | None = None
    """Out-of-domain inputs and unconfident or out-of-range predictions refused or flagged."""

    @field_validator("providers")
    @classmethod
    def _no_duplicates(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a provider twice")
        return value

    @model_validator(mode="after")
    def _guards_need(self) -> "ModelSettings":
        g = self.guards
        if g is None:
            return self
        features = self.monitor.features if self.monitor is not None else None
        if (g.input_domain or g.bounds) and not features:
            raise ValueError("guards on inputs name features: they need [models.monitor] with `features`")
        unknown = sorted(set(g.bounds) - set(features or []))
        if unknown:
            raise ValueError(f"guards.bounds names {unknown}, which are not in [models.monitor] features")
        bad = [f for f, (lo, hi) in g.bounds.items() if not lo <= hi]
        if bad:
            raise ValueError(f"guards.bounds of {bad}: lo must not exceed hi")
        if (g.min_confidence is not None or g.interval is not None) and g.score is None and self.performance is None:
            raise ValueError("guards.min_confidence / interval read an output: name it in guards.score "
                             "(or give [models.performance] a score)")
        if not (g.input_domain or g.bounds or g.min_confidence is not None or g.interval is not None):
            raise ValueError("[models.guards] guards nothing: set input_domain, bounds, min_confidence or interval")
        return self

    @model_validator(mode="after")
    def _fairness_needs(self) -> "ModelSettings":
        if self.conformal is not None and (self.performance is None or self.performance.reference is None):
            raise ValueError("conformal is calibrated on the performance reference: it needs [models.performance] "
                             "with `reference` (a Parquet file with `label` and the version's scores)")
        f = self.fairness
        if f is None:
            return self
        if self.performance is None or self.performance.task == "regression":
            raise ValueError("fairness reads the predicted class: it needs [models.performance] with task "
                             "binary or multiclass")
        if self.monitor is None or not self.monitor.features or f.protected not in self.monitor.features:
            raise ValueError(f"fairness.protected {f.protected!r} must be one of [models.monitor] features "
                             "(the names of the input's columns)")
        if not f.dir_band[0] < 1 < f.dir_band[1]:
            raise ValueError(f"fairness.dir_band {list(f.dir_band)} must hold 1 (parity) strictly inside")
        return self

    @model_validator(mode="after")
    def _segments_need(self) -> "ModelSettings":
        s = self.segments
        if s is None:
            return self
        if self.performance is None:
            raise ValueError("segments are watched in the label join: they need [models.performance] (its score "
                             "is what each segment's drift and performance are of)")
        features = self.monitor.features if self.monitor is not None else None
        unknown = [c for c in s.columns if c not in (features or [])]
        if unknown:
            raise ValueError(f"segments.columns names {unknown}, which are not in [models.monitor] features "
                             "(the names of the input's columns)")
        categorical = set(self.monitor.categorical)
        unsplit = [c for c in s.columns if c not in s.bins and c not in categorical]
        if unsplit:
            raise ValueError(f"segments.columns {unsplit} are continuous: give their edges in segments.bins "
                             "(bins = { f2 = [0, 1.5, 3] }), or list them in [models.monitor] categorical")
        return self


class PerformanceSettings(_Strict):
    task: Literal["binary", "multiclass", "regression"]
    """binary: labels 0/1, the score is the probability of class 1; multiclass: labels are
    class indices, the score is the probability matrix; regression: the score is the prediction."""
    score: str = Field(min_length=1)
    """The output scored against the label: "OUTPUT" or "OUTPUT:COLUMN", e.g. "probabilities:1"
    (binary), "probabilities" (multiclass), "variable" (regression)."""
    window: int = Field(1_000, gt=0, le=1_000_000)
    """Labelled rows per window: metrics are over the last `window` joined rows."""
    label_ttl_s: float = Field(3_600.0, gt=0, le=30 * 86_400)
    """How long a scored row waits for its label (and a label for its row) before it is
    counted unmatched and let go."""
    max_pending_rows: int = Field(1_000_000, gt=0, le=100_000_000)
    """Scored rows and labels the join holds for this model, all together (waiting, or joined
    and kept for label_ttl_s so that challengers' rows join too; about 70 bytes a binary row);
    past it the oldest are let go first, and those still waiting are counted (labels: outcome
    "evicted"; rows: scorewire_performance_unlabelled_rows_total)."""
    reference: ConfigPath | None = None
    """Parquet (relative to the config file) with a `label` column and this version's scores on
    the same rows, in columns named as `score` ("probabilities:1"; multiclass "probabilities:0",
    "probabilities:1", ...): the baseline performance, the alert's reference, and what CBPE
    calibrates on to estimate accuracy (and AUC) before the labels come."""
    alpha: float = Field(0.001, gt=0, lt=1)
    """Alert: significance of one evaluation over the tested metrics (Bonferroni)."""
    min_effect: float = Field(0.02, ge=0)
    """Alert: how much worse than the baseline the window must also be, in the metric's units."""
    every: int = Field(100, gt=0, le=10_000_000)
    """Alert: evaluate every this many labelled rows, once the window is full."""
    consecutive: int = Field(3, gt=0, le=1000)
    """Alert: raise after this many significant evaluations in a row, clear after as many clean ones."""
    compare_metric: Literal["accuracy", "log_loss", "brier", "mae", "rmse"] | None = None
    """Champion vs challenger: the metric whose per-row difference the confidence sequence
    follows (default: log_loss, regression: mae)."""
    compare_alpha: float = Field(0.05, gt=0, lt=1)
    """Champion vs challenger: the confidence sequence holds the true difference at every
    moment at once with probability about 1 - compare_alpha."""

    @property
    def decision(self) -> str:
        return self.compare_metric or ("mae" if self.task == "regression" else "log_loss")

    @property
    def output(self) -> str:
        return self.score.split(":", 1)[0]

    @property
    def column(self) -> int | None:
        parts = self.score.split(":", 1)
        return int(parts[1]) if len(parts) == 2 else None

    @field_validator("score")
    @classmethod
    def _output_and_column(cls, value: str) -> str:
        name, _, column = value.partition(":")
        if not name or (column and not column.isdigit()):
            raise ValueError(f"score {value!r}: write it as OUTPUT or OUTPUT:COLUMN (a column number)")
        return value

    @model_validator(mode="after")
    def _metric_of_task(self) -> "PerformanceSettings":
        from engine.performance.metrics import PER_ROW

        if self.compare_metric is not None and self.compare_metric not in PER_ROW[self.task]:
            raise ValueError(f"compare_metric {self.compare_metric!r} is not a {self.task} metric "
                             f"(one of {list(PER_ROW[self.task])})")
        return self


class GuardSettings(_Strict):
    """The model's domain enforced (engine/guards.py): rows outside it are refused, or flagged."""

    input_domain: Literal["reference"] | None = None
    """"reference": a continuous feature outside the drift reference's [min, max] (widened by
    `margin` of the range), or a categorical code the reference never had, violates the domain
    (features named by [models.monitor] features; categorical ones by monitor.categorical)."""
    margin: float = Field(0.0, ge=0, le=10)
    """How far past the reference's range a value may go, as a fraction of the range."""
    bounds: dict[str, Pair] = Field(default_factory=dict)
    """Explicit [lo, hi] per feature (named by monitor.features), instead of or beside the reference's."""
    score: str | None = None
    """The output the confidence and interval guards read (default: [models.performance] score's output)."""
    min_confidence: float | None = Field(None, gt=0, lt=1)
    """Classification: the largest class probability below this violates (bit 2)."""
    interval: Pair | None = None
    """Regression: a prediction outside [lo, hi] violates (bit 4)."""
    action: Literal["reject", "flag", "fallback"] = "reject"
    """reject: the request is refused (INVALID_ARGUMENT / HTTP 400, a dead letter for a Kafka
    event) with one line naming row, feature, value and bound, its batch-mates answered as
    usual; flag: answered as usual with an added output `scorewire_guard` (UINT8 per row: 1
    input domain, 2 confidence, 4 interval); fallback: the violating rows are answered by
    `fallback_version` (rows outside the input domain by it alone; unconfident or
    out-of-interval rows scored again by it), every answer with `scorewire_guard` saying which."""
    fallback_version: str | None = None
    """action "fallback": another version of the same model (its own guards are not applied),
    taking the same inputs and giving the same outputs."""
    alert_share: float | None = Field(None, gt=0, le=1)
    """An alert (an event, kind=guard, and a log line) while a guard's rows are more than this
    share of the version's rows over the monitor's smallest window (1,000 rows without one)."""

    @model_validator(mode="after")
    def _fallback(self) -> "GuardSettings":
        if (self.action == "fallback") != (self.fallback_version is not None):
            raise ValueError('action = "fallback" and fallback_version go together')
        return self


class ConformalSettings(_Strict):
    """Conformal prediction (engine/performance/conformal.py): split conformal, calibrated at
    load on the version's performance reference (its `label` and scores). Classification: an
    output `prediction_set` (BOOL [rows, classes], LAC score); regression: an output
    `prediction_interval` (FP32 [rows, 2]). With exchangeable rows, the set (interval) holds
    the true label with probability at least 1 - alpha."""

    alpha: float = Field(0.1, gt=0, lt=1)
    """Miscoverage: the sets miss the true label at most this often (on exchangeable rows)."""


class FairnessSettings(_Strict):
    """Group fairness of a version's predictions (engine/performance/fairness.py): a protected
    feature's privileged group against the rest; spd and dir over its last `window` scored
    rows, eod (equal opportunity difference) over its last `window` labelled rows."""

    protected: str = Field(min_length=1)
    """The protected feature: a name in [models.monitor] features (its values are group codes)."""
    privileged: float
    """The protected feature's value of the privileged group; every other value is unprivileged."""
    favorable: int = Field(1, ge=0)
    """The favourable predicted class (binary: the score above 0.5 is class 1)."""
    window: int = Field(1_000, gt=0, le=10_000_000)
    """Rows the figures are over: the last scored ones (spd, dir), the last labelled ones (eod)."""
    dir_band: Pair = (0.8, 1.25)
    """Disparate impact outside this band raises an alert (default: the four-fifths rule)."""


class SegmentSettings(_Strict):
    """Segments of a version's rows (engine/performance/segments.py): each column splits them,
    a categorical feature by its code, a continuous one by `bins`; per segment the rows scored,
    the drift of the score and, with labels, the realized performance. Segments do not cross
    columns: there are at most the sum over columns of (max_values + 1) (a binned column: its
    bins + 1), each row in one segment per column."""

    columns: list[str] = Field(min_length=1, max_length=8)
    """Features that split the rows: names in [models.monitor] features; a categorical one
    (in monitor.categorical) by its code, a continuous one by its `bins`."""
    bins: dict[str, list[float]] = Field(default_factory=dict)
    """Edges per continuous column, increasing: `f2 = [0, 1.5, 3]` makes `f2=[0,1.5)` and
    `f2=[1.5,3)`; a value outside [first, last) or NaN is `f2=other` (write -inf and inf as
    the outer edges to leave none out)."""
    max_values: int = Field(10, gt=0, le=1000)
    """Per categorical column: its `max_values` most frequent codes in the drift reference
    ([models.monitor] reference) are a segment each; every other code is `other` (counted)."""

    @model_validator(mode="after")
    def _bins_of_columns(self) -> "SegmentSettings":
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"columns lists a name twice: {self.columns}")
        stray = sorted(set(self.bins) - set(self.columns))
        if stray:
            raise ValueError(f"bins gives edges of {stray}, which are not in columns")
        for name, edges in self.bins.items():
            if not 2 <= len(edges) <= 1001:
                raise ValueError(f"bins.{name}: give 2 to 1001 edges (1 to 1000 bins), not {len(edges)}")
            if any(e != e for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
                raise ValueError(f"bins.{name} {edges}: edges must be numbers, strictly increasing")
        return self


class MonitoringSettings(_Strict):
    events_dir: ConfigPath | None = None
    """Folder (relative to the config file) for drift events as Parquet, Hive-partitioned
    kind=drift/model=/date= (and the other kinds beside them: data quality kind=quality,
    guards kind=guard, audit rows kind=audit, ...). None: events go to the server log only."""


class RolloutSettings(_Strict):
    """A canary that decides (engine/rollout/): the candidate answers `steps` of the route's
    traffic in turn, steps up while its labelled rows show no harm, rolls back as soon as an
    always-valid test shows it worse by more than `margin`, and is promoted past the last step."""

    candidate: str = Field(min_length=1)
    """The version rolled out (it needs [models.performance], as the champion does)."""
    steps: list[Annotated[float, Field(gt=0, le=100)]] = Field(default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
                                                                min_length=1, max_length=20)
    """Percent of the route's traffic the candidate answers, step by step, increasing; a step
    of 100 promotes it."""
    min_labelled_rows: int = Field(500, gt=0, le=100_000_000)
    """Labelled rows each arm needs in a step before the next step."""
    metric: Literal["accuracy", "log_loss", "brier", "mae", "rmse"] | None = None
    """The decision metric, per row (default: the candidate's performance compare_metric)."""
    margin: float = Field(0.0, ge=0)
    """Non-inferiority margin in the metric's units: worse by more than this rolls back."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """The chance, for a candidate as good as the champion, of a rollback over the whole rollout."""
    max_error_rate: float | None = Field(0.01, ge=0, le=1)
    """Guard: the candidate's failed requests over its requests (since the step began) above
    this rolls back (1: off)."""
    max_p99_ratio: float | None = Field(3.0, ge=0)
    """Guard: the candidate's p99 inference time over the champion's (each of its last 200
    batches) above this rolls back (0: off)."""
    rollback_on_drift: bool = True
    """Guard: a drift alert on the candidate's monitor ([models.monitor], e.g. its prediction
    drift) for a column whose alert the champion's monitor has not raised."""
    max_estimated_drop: float | None = Field(None, gt=0, le=1)
    """Guard before labels: the candidate's estimated accuracy (CBPE; both versions need a
    performance reference) below the champion's by more than this. A threshold on two
    estimates, not a test: set it well above their noise (e.g. 0.05)."""
    after_promotion: Literal["unload", "challenger"] = "unload"
    """What becomes of the old champion once the candidate is promoted: "unload" (its session
    is closed in every worker: requests naming its version are refused), or "challenger" (it
    shadows the new champion, scored beside it and logged, its labelled rows compared with the
    new champion's as any challenger's)."""
    state_file: ConfigPath | None = None
    """Where the rollout's state is kept across restarts (relative to the config file;
    default: scorewire-rollout-MODEL.json beside it)."""

    @field_validator("max_p99_ratio")
    @classmethod
    def _ratio(cls, ratio: float | None) -> float | None:
        if ratio is not None and 0 < ratio <= 1:
            raise ValueError(f"max_p99_ratio must be above 1 (or 0: off), got {ratio}")
        return ratio or None

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"steps must increase, got {steps}")
        return steps


class BanditSettings(_Strict):
    """A bandit split (`split_policy = "thompson"`, engine/rollout/bandit.py): every `every_s`
    the observer gives each arm its chance of being the best on the decision metric
    (Thompson sampling over the arms' labelled rows), never less than `floor`."""

    floor: float = Field(5.0, ge=0, lt=100)
    """Percent each arm keeps whatever its rows say: none starves, each keeps being measured."""
    every_s: float = Field(10.0, gt=0, le=86_400)
    """How often the weights move."""
    min_labelled_rows: int = Field(100, gt=1, le=100_000_000)
    """Labelled rows each arm needs before the weights first move from the split's."""
    metric: Literal["accuracy", "log_loss", "brier", "mae", "rmse"] | None = None
    """The metric per row (default: the champion's performance compare_metric)."""
    state_file: ConfigPath | None = None
    """Where the weights are kept across restarts, and the workers read them (relative to the
    config file; default: scorewire-split-MODEL.json beside it)."""


class RouteSettings(_Strict):
    """Which versions of one model answer its requests, and which shadow them."""

    model: str = Field(min_length=1, max_length=256)
    """The model name clients call (several [[models]] entries share it, one per version)."""
    champion: str = Field(min_length=1)
    """Version that answers requests that name no version (unless `split` says otherwise)."""
    challengers: list[str] = Field(default_factory=list)
    """Versions that score every batch the champion scores, in the shadow: their results go
    to the scoring log only, never to the caller."""
    split: dict[str, float] = Field(default_factory=dict)
    """A/B or canary: version -> weight of the requests (naming no version) it answers,
    e.g. {"1" = 95, "2" = 5}. Include the champion. Empty: the champion answers all."""
    sticky_key: str = Field("routing_key", min_length=1)
    """gRPC request parameter holding the routing key: the same key always lands on the same
    arm. Kafka streams use the message key. Without a key, the arm is drawn at random."""
    shadow_queue_batches: int = Field(1024, gt=0, le=100_000)
    """Batches waiting for each challenger; when full, shadow work is dropped and counted."""
    shadow_timeout_s: float = Field(2.0, gt=0, le=3600)
    """A challenger run taking longer is terminated (onnxruntime's terminate flag) and counted."""
    rollout: RolloutSettings | None = None
    """A rollout of a candidate version (it sets the split while it runs: no `split` beside it)."""
    split_policy: Literal["fixed", "thompson"] = "fixed"
    """fixed: `split`'s weights hold; thompson: they start there and move to the arm the
    labels show best (a bandit, [routes.bandit]); every arm needs [models.performance]."""
    bandit: BanditSettings = Field(default_factory=BanditSettings)

    @model_validator(mode="after")
    def _roles(self) -> "RouteSettings":
        if self.champion in self.challengers:
            raise ValueError(f"version {self.champion!r} is the champion and a challenger")
        if self.rollout is not None:
            candidate = self.rollout.candidate
            if self.split:
                raise ValueError("a rollout sets the split itself: remove `split` (or the rollout)")
            if candidate == self.champion or candidate in self.challengers:
                raise ValueError(f"rollout candidate {candidate!r} is the champion or a challenger")
        if len(set(self.challengers)) != len(self.challengers):
            raise ValueError("challengers lists a version twice")
        if self.split:
            if self.champion not in self.split:
                raise ValueError(f"split must give the champion ({self.champion!r}) a weight")
            if any(w <= 0 for w in self.split.values()):
                raise ValueError("split weights must be > 0 (remove a version to give it no traffic)")
            both = sorted(set(self.split) & set(self.challengers))
            if both:
                raise ValueError(f"versions {both} are both split arms and challengers")
        if self.split_policy == "thompson":
            if len(self.split) < 2:
                raise ValueError('split_policy = "thompson" moves the weights of a `split`: give it two arms or more')
            if self.bandit.floor * len(self.split) >= 100:
                raise ValueError(f"bandit floor {self.bandit.floor:g}% for each of {len(self.split)} arms leaves "
                                 "nothing to move: lower it")
        return self


class ScoreLogSettings(_Strict):
    """The Parquet scoring log: one row per scored row, for every model, role and version."""

    dir: ConfigPath
    """Dataset folder (relative to the config file), Hive-partitioned model=/role=/date=."""
    max_rows_per_file: int = Field(1_000_000, gt=0, le=1_000_000_000)
    """A file is closed (and a new one opened) after this many rows..."""
    max_file_age_s: float = Field(60.0, gt=0, le=86_400)
    """...or this many seconds after it was opened, whichever comes first."""
    queue_rows: int = Field(1_000_000, gt=0, le=1_000_000_000)
    """Rows waiting for the writer thread: the bound on the log's memory."""
    when_full: Literal["drop", "block"] = "drop"
    """When the writer falls behind: "drop" (and count) the new rows, or "block": they wait up
    to block_timeout_ms for room (parked for the writer, woken at once; a request never waits
    for it), then are dropped."""
    block_timeout_ms: int = Field(100, ge=0, le=60_000)
    """With when_full = "block": longest wait for room in the queue."""
    compression: Literal["snappy", "lz4", "zstd", "none"] = "snappy"
    """Parquet compression codec. snappy (Parquet's usual default) and lz4 cost a third less
    CPU than zstd; zstd (written at level 1) makes files ~10% smaller."""


class SecretRef(_Strict):
    """A Kafka setting's value read at start-up from the environment or a file, so that the
    config holds no secret: `"sasl.password" = { env = "KAFKA_PASSWORD" }`."""

    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: ConfigPath | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference takes exactly one of env and file")
        return self

    def reveal(self, key: str) -> str:
        """The value; errors name the key and the source, never a value."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SettingsError(f"Kafka setting {key!r} reads environment variable {self.env}, which is not set")
            return value
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise SettingsError(f"Kafka setting {key!r} reads {self.file}: {exc.strerror}") from None

    def __repr__(self) -> str:
        return f"SecretRef(env={self.env!r})" if self.env else f"SecretRef(file={str(self.file)!r})"


KafkaValue = str | int | float | bool | SecretRef

# librdkafka settings the stream worker owns: setting them would break its delivery guarantees.
KAFKA_OWNED = ("bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store",
               "enable.partition.eof", "on_commit", "error_cb", "transactional.id")


class StreamSettings(_Strict):
    model: str = Field(min_length=1, max_length=256)
    """Model (name) that scores this stream."""
    version: str = ""
    """Model version; empty: the highest version served."""
    bootstrap_servers: str = Field(min_length=1)
    """Kafka bootstrap servers, "host:port[,host:port...]"."""
    group_id: str = Field("scorewire", min_length=1)
    """Consumer group. Workers sharing it split the input topic's partitions."""
    input_topic: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._\-]+$")
    output_topic: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._\-]+$")
    """Results, one JSON message per scored input, keyed like the input."""
    dead_letter_topic: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._\-]+$")
    """Messages that cannot be scored: the raw bytes and key, with headers scorewire.error,
    scorewire.source ("topic/partition/offset") and scorewire.model."""
    format: Literal["json", "binary"] = "json"
    """Input message format: "json" ({"id": ..., "<input>": row, ...}) or "binary" (the row's
    inputs as raw little-endian bytes in the model's input order; the key is the id)."""
    max_message_bytes: int = Field(1024 * 1024, gt=0, le=256 * 1024 * 1024)
    """Larger input messages go to the dead-letter topic."""
    consume_batch: int = Field(4096, gt=0, le=1_000_000)
    """Messages taken per consume() call."""
    max_in_flight: int = Field(32768, gt=0, le=10_000_000)
    """Events consumed but not yet settled (scored, produced, acknowledged). Above it the
    worker pauses its partitions; it resumes below half."""
    settle_timeout_s: float = Field(30.0, gt=0, le=3600)
    """On rebalance or shutdown: how long in-flight events may take to settle before the
    worker commits only what was delivered and lets go."""
    stalled_after_s: float = Field(30.0, gt=0, le=3600)
    """A partition assigned this long with events waiting and none consumed is reported
    stalled (a warning naming why, and scorewire_stream_stalled_partitions)."""
    semantics: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """"at_least_once": offsets are committed once their results are acknowledged; a crash
    can produce a result twice (same source id). "exactly_once": results, dead letters and the
    input offsets are committed together in Kafka transactions (one per group of consumed
    batches); consumers of the output reading with isolation.level=read_committed see each
    input's result or dead letter exactly once. Needs brokers with transactions (Kafka 2.5+)."""
    transactional_id: str = Field("", pattern=r"^[A-Za-z0-9._\-]*$", max_length=200)
    """exactly_once only: the prefix of each worker's transactional.id (the worker's number is
    appended). Empty: "scorewire-<group_id>-<input_topic>-<hostname>". It must stay the same
    across restarts of one server (a restarted worker then aborts its predecessor's open
    transaction at once) and differ between servers consuming the same group (a second server
    with the same id fences the first, whose stream stops saying so)."""
    kafka: dict[str, KafkaValue] = Field(default_factory=dict)
    """librdkafka settings for both the consumer and the producer (security.protocol, sasl.*,
    ssl.*, client.id, ...)."""
    consumer: dict[str, KafkaValue] = Field(default_factory=dict)
    """librdkafka settings for the consumer only (session.timeout.ms, auto.offset.reset, ...)."""
    producer: dict[str, KafkaValue] = Field(default_factory=dict)
    """librdkafka settings for the producer only (linger.ms, compression.type, acks, ...)."""

    @model_validator(mode="after")
    def _not_owned(self) -> "StreamSettings":
        for table in ("kafka", "consumer", "producer"):
            owned = [k for k in getattr(self, table) if k in KAFKA_OWNED]
            if owned:
                raise ValueError(f"{table} sets {owned}, which scorewire controls (use the stream's own keys: "
                                 "bootstrap_servers, group_id; offsets are committed by the worker)")
        if len({self.input_topic, self.output_topic, self.dead_letter_topic}) != 3:
            raise ValueError("input_topic, output_topic and dead_letter_topic must be three different topics")
        return self


class FeedbackSettings(_Strict):
    """Labels from a Kafka topic: each message one {"id", "labels"} object, or an array of them
    (the body POST /v2/models/NAME/feedback takes). The workers share the topic's partitions
    as a consumer group; offsets are committed once the labels are handed to the join
    (at least once: a label read twice counts as a duplicate, never joins twice)."""

    model: str = Field(min_length=1)
    """The model the labels are for (a version of it has [models.performance])."""
    bootstrap_servers: str = Field(min_length=1)
    topic: str = Field(min_length=1)
    group_id: str = Field("scorewire-feedback", min_length=1)
    kafka: dict[str, KafkaValue] = Field(default_factory=dict)
    """librdkafka settings of the consumer (security.protocol, sasl.*, ssl.*, client.id,
    session.timeout.ms, ...); secrets as { env = ... } or { file = ... }."""

    @model_validator(mode="after")
    def _not_owned(self) -> "FeedbackSettings":
        owned = [k for k in self.kafka if k in KAFKA_OWNED]
        if owned:
            raise ValueError(f"kafka sets {owned}, which scorewire controls (use bootstrap_servers and group_id)")
        return self


class Settings(_Strict):
    server: ServerSettings = Field(default_factory=ServerSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    models: list[ModelSettings] = Field(min_length=1)
    """One entry per model version served."""
    streams: list[StreamSettings] = Field(default_factory=list)
    """Kafka streams scored by models of this config (none: gRPC only)."""
    feedback: list[FeedbackSettings] = Field(default_factory=list)
    """Kafka topics of labels sent back (besides POST /v2/models/NAME/feedback)."""
    routes: list[RouteSettings] = Field(default_factory=list)
    """Champion/challenger and A/B or canary routing, per model name (none: a request naming
    no version gets the highest version)."""
    scorelog: ScoreLogSettings | None = None
    """The Parquet scoring log (None: no log)."""

    def ring_bytes(self) -> int:
        """The size of each hand-off ring: [server] handoff_ring_bytes, or (unset) what holds
        the records a ring keeps: 32 MiB when they wait for the scoring log's commits, 8 MiB
        when they wait only for the observer's next pass."""
        if self.server.handoff_ring_bytes is not None:
            return self.server.handoff_ring_bytes
        return (32 if self.scorelog is not None else 8) * 1024 * 1024

    @model_validator(mode="after")
    def _unique_versions(self) -> "Settings":
        seen = set()
        for model in self.models:
            key = (model.name, model.version)
            if key in seen:
                raise ValueError(f"model {model.name!r} version {model.version!r} is configured twice")
            seen.add(key)
        for model in self.models:
            fallback = model.guards.fallback_version if model.guards is not None else None
            if fallback is not None:
                versions = [m.version for m in self.models if m.name == model.name]
                if fallback == model.version or fallback not in versions:
                    raise ValueError(f"model {model.name!r} version {model.version!r}: guards.fallback_version "
                                     f"{fallback!r} must be another configured version of it (configured: {versions})")
        for stream in self.streams:
            versions = [m.version for m in self.models if m.name == stream.model]
            if not versions:
                raise ValueError(f"a stream reads {stream.input_topic!r} for model {stream.model!r}, which is not "
                                 "configured in [[models]]")
            if stream.version and stream.version not in versions:
                raise ValueError(f"a stream asks for model {stream.model!r} version {stream.version!r}; "
                                 f"configured: {versions}")
        tasks: dict[str, set] = {}
        for model in self.models:
            if model.performance is not None:
                tasks.setdefault(model.name, set()).add(model.performance.task)
        for table in self.feedback:
            if table.model not in tasks:
                raise ValueError(f"[[feedback]] reads labels of model {table.model!r}, but no version of it has "
                                 "[models.performance]")
        for name, kinds in tasks.items():
            if len(kinds) > 1:
                raise ValueError(f"the versions of model {name!r} have [models.performance] tasks {sorted(kinds)}; "
                                 "labels sent back are of one kind: give them one task")
        routed = set()
        for route in self.routes:
            if route.model in routed:
                raise ValueError(f"model {route.model!r} has two [[routes]]")
            routed.add(route.model)
            versions = [m.version for m in self.models if m.name == route.model]
            rollout = [route.rollout.candidate] if route.rollout is not None else []
            missing = [v for v in [route.champion, *route.challengers, *route.split, *rollout] if v not in versions]
            if missing:
                raise ValueError(f"the route of model {route.model!r} names versions {sorted(set(missing))}, "
                                 f"which are not configured in [[models]] (configured: {versions})")
            if route.split_policy == "thompson":
                performance = {m.version: m.performance for m in self.models if m.name == route.model}
                lacking = [v for v in route.split if performance.get(v) is None]
                if lacking:
                    raise ValueError(f"the bandit split of model {route.model!r} moves on labels: versions {lacking} "
                                     "need [models.performance]")
                from engine.performance.metrics import PER_ROW

                task = performance[route.champion].task
                metric = route.bandit.metric or performance[route.champion].decision
                if metric not in PER_ROW[task]:
                    raise ValueError(f"the bandit split of model {route.model!r}: metric {metric!r} is not a {task} "
                                     f"metric (one of {list(PER_ROW[task])})")
            if rollout:
                performance = {m.version: m.performance for m in self.models if m.name == route.model}
                lacking = [v for v in (route.champion, *rollout) if performance.get(v) is None]
                if lacking:
                    raise ValueError(f"the rollout of model {route.model!r} decides on labels: versions {lacking} "
                                     "need [models.performance]")
                metric = route.rollout.metric or performance[rollout[0]].decision
                from engine.performance.metrics import PER_ROW

                task = performance[rollout[0]].task
                if metric not in PER_ROW[task]:
                    raise ValueError(f"the rollout of model {route.model!r}: metric {metric!r} is not a {task} "
                                     f"metric (one of {list(PER_ROW[task])})")
        return self


    def reloaded(self, new: "Settings") -> "Settings":
        """What a reload to `new` runs (SIGHUP): its models and routes. A version already served
        keeps its settings, and the other sections stay as they are: changes to either take
        effect on restart (`reload_warnings` says which). The same rule in every process, so a
        process started after a reload runs what its peers run. SettingsError when `new` removes
        a model a stream scores."""
        old_models = {(m.name, m.version): m for m in self.models}
        new_keys = {(m.name, m.version) for m in new.models}
        removed = [key for key in old_models if key not in new_keys]
        for stream in self.streams:
            gone = [k for k in removed if k[0] == stream.model and stream.version in ("", k[1])]
            if gone and (stream.version or not any(k[0] == stream.model for k in new_keys)):
                raise SettingsError(f"stream {stream.input_topic!r} scores model {stream.model!r}, which the new "
                                    "config removes; change streams with a restart")
        models = [old_models.get((m.name, m.version), m) for m in new.models]
        return self.model_copy(update={"models": models, "routes": new.routes})

    def reload_warnings(self, new: "Settings") -> list[str]:
        """What a reload to `new` leaves for the next restart."""
        warnings = [f"[{section}] changed; it takes effect on restart"
                    for section in ("server", "streams", "feedback", "monitoring", "scorelog")
                    if getattr(new, section) != getattr(self, section)]
        old_models = {(m.name, m.version): m for m in self.models}
        warnings += [f"settings of model {m.name}:{m.version} changed; they take effect on restart"
                     for m in new.models if (m.name, m.version) in old_models and old_models[(m.name, m.version)] != m]
        return warnings

    def snapshot(self) -> bytes:
        """These settings as JSON, paths resolved: how the supervisor hands a reload to its
        processes (`from_snapshot` reads it back, equal)."""
        return self.model_dump_json(exclude_unset=True).encode()

    @classmethod
    def from_snapshot(cls, data: bytes) -> "Settings":
        return cls.model_validate_json(data)


class SettingsError(ValueError, UserFacing):
    """A config file that cannot be used; the message names the file and the field."""

    prefix = "config error:\n"


def _field_path(loc: tuple, data: dict) -> str:
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and item < len(node) and isinstance(node[item], dict) else None
            parts[-1] = f"{parts[-1]}[{item}]" + (f" (name={name!r})" if name else "")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def _keys_at(loc: tuple) -> list[str]:
    """The keys the settings table at `loc` (a validation error's location) takes."""
    model: type[BaseModel] | None = Settings
    for item in loc:
        if model is None or isinstance(item, int):
            continue
        info = model.model_fields.get(str(item))
        model = None
        if info is not None:
            for kind in (info.annotation, *typing.get_args(info.annotation)):
                kinds = (kind, *typing.get_args(kind))
                model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
                if model is not None:
                    break
    return list(model.model_fields) if model is not None else []


def parse_settings(data: dict, source: str = "<config>", base_dir: Path | None = None) -> Settings:
    """Validate a config mapping; relative model paths are resolved against `base_dir`."""
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = _field_path(loc, data)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                near = difflib.get_close_matches(str(loc[-1]), _keys_at(loc[:-1]), n=1)
                hint = f"did you mean {near[0]!r}? " if near else "check its spelling; "
                msg = f"unknown key ({hint}see configs/example.toml for every key)"
            elif isinstance(err.get("input"), str) and err["type"] in ("int_type", "float_type", "bool_type"):
                msg += f" (got the string {err['input']!r}: write the value without quotes)"
            lines.append(f"{source}: {msg}" if field == "(top level)" else f"{source}: {field}: {msg}")
        raise SettingsError("\n".join(lines)) from None
    if base_dir is not None:
        settings = _resolve_paths(settings, base_dir)
    _check_model_root(settings, source)
    return settings


def _resolve_paths(settings: Settings, base_dir: Path) -> Settings:
    """Relative paths in the config are relative to the config file's folder."""

    def at(path: Path | None) -> Path | None:
        return None if path is None else (base_dir / path).resolve()

    models = []
    for m in settings.models:
        update: dict = {"path": at(m.path)}
        if m.monitor is not None:
            update["monitor"] = m.monitor.model_copy(update={"reference": at(m.monitor.reference)})
        if m.performance is not None and m.performance.reference is not None:
            update["performance"] = m.performance.model_copy(update={"reference": at(m.performance.reference)})
        models.append(m.model_copy(update=update))
    server = settings.server
    server_update: dict = {"model_root": at(server.model_root)}
    if server.tls is not None:
        server_update["tls"] = server.tls.model_copy(update={
            "cert_file": at(server.tls.cert_file), "key_file": at(server.tls.key_file),
            "client_ca_file": at(server.tls.client_ca_file)})
    if server.auth is not None and server.auth.tokens_file is not None:
        server_update["auth"] = server.auth.model_copy(update={"tokens_file": at(server.auth.tokens_file)})
    streams = []
    for stream in settings.streams:
        tables = {}
        for table in ("kafka", "consumer", "producer"):
            tables[table] = {k: (v.model_copy(update={"file": at(v.file)}) if isinstance(v, SecretRef) and v.file
                                 else v) for k, v in getattr(stream, table).items()}
        streams.append(stream.model_copy(update=tables))
    monitoring = settings.monitoring
    if monitoring.events_dir is not None:
        monitoring = MonitoringSettings(events_dir=at(monitoring.events_dir))
    scorelog = settings.scorelog
    if scorelog is not None:
        scorelog = scorelog.model_copy(update={"dir": at(scorelog.dir)})
    routes = []
    for route in settings.routes:
        if route.rollout is not None:
            state_file = route.rollout.state_file or Path(f"scorewire-rollout-{route.model}.json")
            route = route.model_copy(update={"rollout": route.rollout.model_copy(update={"state_file": at(state_file)})})
        if route.split_policy == "thompson":
            state_file = route.bandit.state_file or Path(f"scorewire-split-{route.model}.json")
            route = route.model_copy(update={"bandit": route.bandit.model_copy(update={"state_file": at(state_file)})})
        routes.append(route)
    return settings.model_copy(update={"models": models, "server": server.model_copy(update=server_update),
                                       "streams": streams, "monitoring": monitoring, "scorelog": scorelog,
                                       "routes": routes})


def _check_model_root(settings: Settings, source: str) -> None:
    root = settings.server.model_root
    if root is None:
        return
    root = root.resolve()
    problems = []
    for i, m in enumerate(settings.models):
        files = [("path", m.path)] + ([("monitor.reference", m.monitor.reference)] if m.monitor else [])
        if m.performance is not None and m.performance.reference is not None:
            files.append(("performance.reference", m.performance.reference))
        for field_name, path in files:
            if not path.resolve().is_relative_to(root):
                problems.append(f"{source}: models[{i}] (name={m.name!r}).{field_name}: {path} is outside "
                                f"server.model_root = {root}")
    if problems:
        raise SettingsError("\n".join(problems))


def load_settings(path: str | Path) -> Settings:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    return parse_settings(data, str(path), path.parent.resolve())
