"""Prometheus text exposition on the metrics port (GET /metrics).

Served by a minimal asyncio HTTP responder on the engine's own loop; rendering reads
counters the components already keep, so scraping never touches the request path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.errors import cannot_bind

if TYPE_CHECKING:  # a worker's board imports this module: no onnxruntime for a name
    from engine.runtime.registry import Registry


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels.items())
    return "{" + inner + "}"


Family = list  # [name, kind, help, [[labels, value], ...]]: JSON-able, so workers can send theirs


def text(families: list[Family]) -> str:
    """The Prometheus text exposition of `families`."""
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)
    return "\n".join(lines) + "\n"


def _collector(families: list[Family]):
    def family(name: str, kind: str, help_text: str, samples) -> None:
        families.append([name, kind, help_text, [list(s) for s in samples]])

    return family


# How samples of one name and label set from several processes become one: summed (counters,
# and gauges of quantities: queued rows, events in flight, partitions), except these.
_MAX = frozenset({"scorewire_model_info", "scorewire_stream_input_missing"})  # "this exists" (1)
_MIN = frozenset({"scorewire_stream_up", "scorewire_stream_brokers_reachable"})  # "is it up": 1 only if in every one


def merge(sources: list[list[Family]]) -> list[Family]:
    """Families of several processes as one, in first-seen order: the samples of a name and
    label set summed, or their max (_MAX) or min (_MIN)."""
    merged: dict[str, Family] = {}
    values: dict[str, dict[str, float]] = {}
    for families in sources:
        for name, kind, help_text, samples in families:
            if name not in merged:
                merged[name] = [name, kind, help_text, []]
                values[name] = {}
            into = values[name]
            for labels, value in samples:
                if labels in into:
                    old = into[labels]
                    into[labels] = (max(old, value) if name in _MAX else min(old, value) if name in _MIN
                                    else old + value)
                else:
                    into[labels] = value
    for name, family in merged.items():
        family[3] = [[labels, value] for labels, value in values[name].items()]
    return list(merged.values())


def serving_families(registry: Registry, requests_by_code: dict[tuple[str, str], int], streams=(),
                     labels_refused: dict[str, int] | None = None,
                     failures: dict[tuple[str, str], int] | None = None, feedback=()) -> list[Family]:
    """What a serving process counts: requests, batches, queues, Kafka streams."""
    families: list[Family] = []
    family = _collector(families)
    served = registry.all()
    family("scorewire_model_info", "gauge",
           "Model versions served, the execution provider and the IO binding (device, input staging) in use.",
           [(_labels(model=s.name, version=s.version, provider=s.model.provider, io_binding=s.model.io_binding or "off",
                     staging=s.model.staging or "none"), 1) for s in served])
    family("scorewire_requests_total", "counter", "Inference requests (gRPC and REST) by model and status code.",
           [(_labels(model=m, code=c), n) for (m, c), n in sorted(requests_by_code.items())])
    family("scorewire_version_requests_total", "counter", "Requests each version scored (ok) or whose model run "
           "failed (failed: INTERNAL).",
           [(_labels(model=s.name, version=s.version, outcome="ok"), s.batcher.stats.requests) for s in served]
           + [(_labels(model=m, version=v, outcome="failed"), n) for (m, v), n in sorted((failures or {}).items())])
    family("scorewire_guard_rows_total", "counter", "Rows a guard found outside the model's domain "
           "(input_domain), unconfident (confidence) or out of their interval (interval), by what was done: "
           "reject (the request refused), flag (answered, scorewire_guard output) or fallback (answered by the "
           "fallback version).",
           [(_labels(model=s.name, version=s.version, guard=g, action=a), n) for s in served
            if getattr(s.model, "guards", None) is not None for (g, a), n in sorted(s.model.guards.counts.items())])
    family("scorewire_batches_total", "counter", "Batches scored.",
           [(_labels(model=s.name, version=s.version), s.batcher.stats.batches) for s in served])
    family("scorewire_rows_total", "counter", "Rows scored.",
           [(_labels(model=s.name, version=s.version), s.batcher.stats.rows) for s in served])
    family("scorewire_queue_rows", "gauge", "Rows waiting to be batched.",
           [(_labels(model=s.name, version=s.version), s.batcher.queued_rows) for s in served])
    family("scorewire_expired_total", "counter", "Requests not scored because their deadline passed.",
           [(_labels(model=s.name, version=s.version), s.batcher.stats.expired) for s in served])
    family("scorewire_cancelled_total", "counter", "Requests not scored because the caller went away first.",
           [(_labels(model=s.name, version=s.version), s.batcher.stats.cancelled) for s in served])
    family("scorewire_rejected_total", "counter", "Requests refused because the queue was full.",
           [(_labels(model=s.name, version=s.version), s.batcher.stats.rejected_full) for s in served])
    family("scorewire_feedback_refused_total", "counter", "Label objects refused at the door (400: not an id "
           "with a list of labels of the model's task); the good objects of the same body are taken.",
           [(_labels(model=m), n) for m, n in sorted((labels_refused or {}).items())])
    family("scorewire_feedback_commits_refused_total", "counter", "Commits of a [[feedback]] topic's offsets the "
           "group refused (it was rebalancing): the labels they covered are read again, counted duplicates.",
           [(_labels(model=r.settings.model, topic=r.settings.topic), r.commits_refused) for r in feedback])
    _streams(streams, family)
    return families


def observer_families(observer) -> list[Family]:
    """What the watching side keeps: drift, latency, batch sizes, challengers, the log."""
    from engine.monitor.quality import families as quality_families  # the watching side's: not a worker's

    families: list[Family] = []
    family = _collector(families)
    _monitoring(observer, family)
    quality_families(observer, family, _labels)
    observer.performance.families(family, _labels)
    observer.guards.families(family, _labels)
    return families


def _monitoring(app, family) -> None:  # app: the Observer
    import numpy as np

    from engine.monitor.latency import DURATION_BUCKETS_S, QUANTILES

    _drift(app.drift, family)
    samples = []
    for (model, version, role, stage), h in app.latency.items():
        if h.total_count:
            values = h.percentiles([q * 100 for q in QUANTILES])
            samples.extend((_labels(model=model, version=version, role=role, stage=stage, quantile=str(q)), int(v))
                           for q, v in zip(QUANTILES, values))
    family("scorewire_latency_us", "gauge", "Latency percentiles in microseconds by model version, role and stage "
           "(queue: waiting to be batched; inference: the batch run; total: both).", samples)
    family("scorewire_latency_recent_us", "gauge", "The same percentiles over the last 5 to 10 s only (absent when "
           "nothing was scored then): what a load test reads level by level.",
           [(_labels(model=model, version=version, role=role, stage=stage, quantile=str(q)), int(v))
            for (model, version, role, stage), values in app.latency.recent() for q, v in zip(QUANTILES, values)])
    buckets = []
    for (model, version), counts in sorted(app.latency.batch_rows.items()):
        cumulative = 0
        for b in range(32):
            cumulative += int(counts[b])
            if counts[b:].any() or b == 0:
                buckets.append((_labels(model=model, version=version, le=str(1 << b)), cumulative))
        buckets.append((_labels(model=model, version=version, le="+Inf"), cumulative))
    rows_by_version = sorted(app.latency.batch_rows.items())
    sums = [("_sum" + _labels(model=m, version=v), app.latency.batch_rows_sum.get((m, v), 0))
            for (m, v), _ in rows_by_version]
    counts = [("_count" + _labels(model=m, version=v), int(c.sum())) for (m, v), c in rows_by_version]
    family("scorewire_batch_rows", "histogram", "Rows per scored batch.",
           [(("_bucket" + lbl), v) for lbl, v in buckets] + sums + counts)
    duration = []
    for (model, version, role), counts in sorted(app.latency.durations.items()):
        labels = dict(model=model, version=version, role=role)
        cumulative = np.cumsum(counts)
        duration.extend(("_bucket" + _labels(**labels, le=repr(bound)), int(n))
                        for bound, n in zip(DURATION_BUCKETS_S, cumulative))
        duration.append(("_bucket" + _labels(**labels, le="+Inf"), int(cumulative[-1])))
        duration.append(("_sum" + _labels(**labels), app.latency.durations_sum_us[(model, version, role)] / 1e6))
        duration.append(("_count" + _labels(**labels), int(cumulative[-1])))
    family("scorewire_request_duration_seconds", "histogram", "Each request's time in the server, queue and "
           "inference (stage total), by model version and role: for SLO shares and burn rates across replicas. "
           "Counted by the monitor: a batch it skipped (scorewire_monitor_dropped_batches_total) is not in it.",
           duration)
    family("scorewire_monitor_dropped_batches_total", "counter",
           "Scored batches the monitor skipped because its queue was full.", [("", app.tap.dropped)])
    _shadows(app, family)
    _scorelog(app, family)


def drift_families(monitors: dict) -> list[Family]:
    """The drift monitors' families alone: monitors, (model, version) -> DriftMonitor."""
    families: list[Family] = []
    _drift(monitors, _collector(families))
    return families


def _drift(monitors: dict, family) -> None:
    # labelled by version too: a challenger may be monitored beside its champion
    # Statistic, p-value and effect only once evaluated: a p-value of 1 before the first
    # evaluation would read as a clean one to an alert rule.
    # Per window (label `window`, its size): NaN values -- a window not yet full, or one
    # whose value was not computed at its last evaluation (see engine.monitor.drift) -- are
    # left out.
    drift = [(name, version, m, c) for (name, version), m in monitors.items() for c in m.columns]
    for metric, attr, help_text in (
        ("scorewire_drift_statistic", "statistics", "Drift statistic (KS D or chi-squared) per column and window, "
         "as last computed; absent until the first evaluation."),
        ("scorewire_drift_pvalue", "pvalues", "Drift p-value per column and window (before correction), as last "
         "computed; absent until the first evaluation."),
        ("scorewire_drift_effect", "effects", "Effect size per column and window (KS D or PSI), as last computed; "
         "absent until the first evaluation."),
        ("scorewire_drift_window_fired", "fired", "1 when the window was significant with effect >= min_effect at "
         "the last evaluation (a column drifts when any of its windows fires)."),
    ):
        family(metric, "gauge", help_text,
               [(_labels(model=name, version=version, feature=c.name, window=str(size)), float(value))
                for name, version, m, c in drift if m.evaluations
                for size, value in zip(m.sizes, getattr(m.state[c.name], attr)) if value == value])
    family("scorewire_drift_alert", "gauge", "1 while a drift alert is raised for the column.",
           [(_labels(model=name, version=version, feature=c.name), float(m.state[c.name].alert))
            for name, version, m, c in drift])
    family("scorewire_drift_evaluations_total", "counter", "Drift evaluations so far (the first once the smallest "
           "window is full).", [(_labels(model=name, version=version), m.evaluations)
                                for (name, version), m in monitors.items()])
    family("scorewire_drift_window_rows", "gauge", "Rows in each drift window now (it holds its size).",
           [(_labels(model=name, version=version, window=str(size)), rows) for (name, version), m in monitors.items()
            for size, rows in zip(m.sizes, m.window_lengths)])
    family("scorewire_drift_window_size", "gauge", "Each drift window's size in rows (monitor.window or windows).",
           [(_labels(model=name, version=version, window=str(size)), size) for (name, version), m in monitors.items()
            for size in m.sizes])
    family("scorewire_drift_events_observed_total", "counter", "Rows seen by the drift monitor.",
           [(_labels(model=name, version=version), m.events) for (name, version), m in monitors.items()])


def shadow_families(observer) -> list[Family]:
    """The challengers' counts alone (the challengers process sends these)."""
    families: list[Family] = []
    _shadows(observer, _collector(families))
    return families


def _shadows(app, family) -> None:
    # (labels of a challenger of a champion version, the challenger)
    shadows = [(dict(model=sh.name, champion=champion[1], version=sh.version), sh)
               for champion, group in sorted(app.shadows.items()) for sh in group]
    if shadows:
        outcomes = (("scored", "scored"), ("dropped", "dropped"), ("error", "errors"), ("bad_shape", "bad_shape"),
                    ("timeout", "timeouts"))
        family("scorewire_shadow_batches_total", "counter",
               "Champion batches offered to a challenger, by outcome (dropped: its queue was full).",
               [(_labels(**who, outcome=o), getattr(sh.stats, a)) for who, sh in shadows for o, a in outcomes])
        family("scorewire_shadow_rows_total", "counter", "Rows of those batches, by outcome.",
               [(_labels(**who, outcome=o), getattr(sh.stats, f"rows_{o}"))
                for who, sh in shadows for o in ("scored", "dropped", "failed")])
        family("scorewire_shadow_queue_batches", "gauge", "Batches waiting for a challenger.",
               [(_labels(**who), sh.queued) for who, sh in shadows])


def _scorelog(app, family) -> None:
    log = app.scorelog
    if log is not None:
        st = log.stats
        family("scorewire_scorelog_rows_total", "counter",
               "Rows offered to the Parquet scoring log, by outcome (written: in published files; dropped: the "
               "writer fell behind and the queue was full; failed: not made durable, e.g. a full disk, see the "
               "server log; recovered: committed by an observer that stopped, published by this one).",
               [(_labels(outcome=o), getattr(st, f"rows_{o}")) for o in ("written", "dropped", "failed", "recovered")])
        family("scorewire_scorelog_queue_rows", "gauge", "Rows waiting for the scoring log's writer.",
               [("", log.queued_rows)])
        family("scorewire_scorelog_pending_rows", "gauge",
               "Rows committed (they survive a crash) and not yet in a published Parquet file.",
               [("", log.pending_rows)])
        family("scorewire_scorelog_files_total", "counter", "Scoring log files published (complete, checked, renamed).",
               [("", st.files_closed)])
        family("scorewire_scorelog_publish_failures_total", "counter",
               "Publications that failed and are tried again (e.g. a full disk; each logged).",
               [("", st.publish_failures)])
        family("scorewire_scorelog_writer_errors_total", "counter",
               "Failures the scoring log's writer survived (each logged with its cause).",
               [("", st.writer_errors)])


_STREAM_COUNTERS = (
    ("consumed", "Input messages consumed."),
    ("scored", "Input messages scored; their results were produced."),
    ("dead_lettered", "Input messages sent to the dead-letter topic."),
    ("delivered", "Input messages settled: their result or dead letter acknowledged by the broker."),
    ("delivery_errors", "Failed deliveries of results or dead letters (each is retried)."),
    ("commits", "Offset commits."),
    ("commit_errors", "Offset commits that failed (the next one covers them)."),
    ("pauses", "Times the worker paused its partitions because too many events were in flight."),
    ("rebalances", "Partition assignments received."),
    ("abandoned", "Consumed messages given up -- the engine was stopping, or the producer failed fatally -- and "
     "consumed again later."),
    ("results_refused", "Results the output topic refused for good; their events went to the dead-letter topic."),
    ("producer_restarts", "New producers after a fatal producer error (in-flight events consumed again)."),
    ("decoder_failures", "Batches the decoder failed on, decoded again message by message."),
    ("transactions", "Kafka transactions committed (exactly_once): results, dead letters and input offsets."),
    ("transactions_aborted", "Kafka transactions aborted (exactly_once); their events were consumed again."),
)


def _streams(streams, family) -> None:
    if not streams:
        return
    for name, help_text in _STREAM_COUNTERS:
        family(f"scorewire_stream_{name}_total", "counter", help_text,
               [(_labels(stream=st.name, model=st.model), getattr(st.stats, name)) for st in streams])
    family("scorewire_stream_up", "gauge", "1 while the stream runs; 0 once it stopped (the server log says why).",
           [(_labels(stream=st.name, model=st.model), int(st.up)) for st in streams])
    family("scorewire_stream_brokers_reachable", "gauge", "0 from librdkafka's 'all brokers are down' until a "
           "broker is up again (nothing is consumed meanwhile; the server log says what to check); else 1.",
           [(_labels(stream=st.name, model=st.model), int(st.brokers_reachable)) for st in streams])
    family("scorewire_stream_input_missing", "gauge", "1 while the stream's input topic does not exist (the "
           "stream waits for it; the server log said so).",
           [(_labels(stream=st.name, model=st.model), int(st.input_partitions == 0)) for st in streams])
    family("scorewire_stream_in_flight", "gauge", "Events consumed and not yet settled.",
           [(_labels(stream=st.name, model=st.model), st.in_flight) for st in streams])
    family("scorewire_stream_assigned_partitions", "gauge", "Input partitions assigned to this worker.",
           [(_labels(stream=st.name, model=st.model), len(st.lag)) for st in streams])
    family("scorewire_stream_stalled_partitions", "gauge", "Input partitions assigned for streams[].stalled_after_s "
           "with events waiting and none consumed: the consumer has no position to fetch from (the server log says "
           "why); 0 once they are consumed.",
           [(_labels(stream=st.name, model=st.model), len(st.stalled)) for st in streams])
    family("scorewire_stream_lag_events", "gauge",
           "Per input partition: the broker's high watermark minus this worker's committed offset "
           "(events not yet settled, in flight included; refreshed every second).",
           [(_labels(stream=st.name, model=st.model, partition=str(p)), lag)
            for st in streams for p, lag in sorted(st.lag.items())])


class MetricsServer:
    def __init__(self, host: str, port: int, body: Callable[[], str]):
        self.host, self.port, self._body = host, port, body
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise cannot_bind("/metrics", self.host, self.port, "metrics_port", exc) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                status, payload = b"200 OK", self._body().encode()
            else:
                status, payload = b"404 Not Found", b"try /metrics\n"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n" + payload
            )
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
