"""Builds the components from settings; start, drain, stop."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import signal

import grpc
import numpy as np

from engine.batching.batcher import Batcher
from engine.codec.validate import Limits
from engine.ingress.kafka import KafkaStream
from engine.ingress.auth import HEALTH_METHODS, TokenAuth, load_tokens, server_credentials
from engine.ingress.grpc import InferenceServicer, add_health, build_health, set_health
from engine.monitor.drift import DriftMonitor, load_reference
from engine.monitor.events import write_events
from engine.monitor.export import MetricsServer, render
from engine.monitor.latency import LatencyMonitor
from engine.monitor.tap import MonitorTap, ScoredBatch
from engine.pipeline import Pipeline
from engine.runtime.registry import Registry, Served
from engine.runtime.session import OnnxModel
from engine.settings import Settings

log = logging.getLogger("scorewire")


def _announce(text: str) -> None:
    """Lines on stdout that people and tests read ("listening on", "ready")."""
    print(f"scorewire: {text}", flush=True)


class App:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = Registry()
        self.pipeline = Pipeline(self.registry)
        self.requests_by_code: collections.Counter = collections.Counter()
        self.servicer: InferenceServicer | None = None
        self.server: grpc.aio.Server | None = None
        self.health = None
        self.metrics: MetricsServer | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self.latency = LatencyMonitor()
        self.drift: dict[tuple[str, str], DriftMonitor] = {}
        self.streams: list[KafkaStream] = []
        capacity = max([m.monitor.queue_batches for m in settings.models if m.monitor] or [1024])
        self.tap = MonitorTap(self._monitor, capacity)

    def _monitor(self, batches: list[ScoredBatch]) -> None:
        """On the monitor thread: latency histograms, then drift, per model version on the
        concatenation of the batches queued (in their order)."""
        groups: dict[tuple[str, str, str], list[ScoredBatch]] = {}
        for batch in batches:
            groups.setdefault((batch.model, batch.version, batch.role), []).append(batch)
            self.latency.record_batch(batch.model, batch.rows)
        for (model, version, role), group in groups.items():
            self.latency.record(model, role, "queue", np.concatenate([b.queue_us for b in group]))
            self.latency.record(model, role, "total", np.concatenate([b.total_us for b in group]))
            self.latency.record(model, role, "inference", np.array([b.inference_us for b in group]))
            monitor = self.drift.get((model, version))
            if monitor is None:
                continue
            if len(group) == 1:
                inputs, outputs = group[0].inputs, group[0].outputs
            else:
                inputs = {k: np.concatenate([b.inputs[k] for b in group]) for k in group[0].inputs}
                outputs = {k: np.concatenate([b.outputs[k] for b in group]) for k in group[0].outputs}
            events = monitor.observe(inputs, outputs)
            if events and self.settings.monitoring.events_dir is not None:
                try:
                    write_events(self.settings.monitoring.events_dir, events)
                except OSError:
                    log.exception("could not write drift events to %s", self.settings.monitoring.events_dir)
            for event in events:
                log.warning("drift %s: model %s feature %s statistic %.4g p-value %.3g effect %.4g after %d events",
                            event.kind, event.model, event.feature, event.statistic, event.pvalue, event.effect,
                            event.events)

    def _on_scored(self, name: str, version: str):
        tap = self.tap

        def on_scored(batch, outputs, enqueued, start, end) -> None:
            tap.put(ScoredBatch(name, version, "champion", batch.inputs, outputs, (start - enqueued) // 1000,
                                (end - enqueued) // 1000, (end - start) // 1000, batch.rows))

        return on_scored

    def load_models(self) -> None:
        self.latency.warm_up()
        for ms in self.settings.models:
            model = OnnxModel(ms)
            if ms.warmup:
                model.warm_up()
            if ms.monitor is not None:
                self.drift[(ms.name, ms.version)] = DriftMonitor(
                    model.label, ms.monitor, model.schema, load_reference(ms.monitor.reference))
            batcher = Batcher(model.label, ms.batching, model.run, max_in_flight=ms.instances,
                              on_scored=self._on_scored(ms.name, ms.version))
            limits = Limits(max_rows=ms.max_rows_per_request, allow_non_finite=ms.allow_non_finite)
            self.registry.add(Served(model, batcher, limits))
            _announce(f"model {model.label} loaded on {model.provider} ({ms.instances} instance(s))")

    async def start(self) -> None:
        server_settings = self.settings.server
        await asyncio.get_running_loop().run_in_executor(None, self.load_models)
        _tune_gc()
        for served in self.registry.all():
            served.batcher.start()
        limit = server_settings.max_message_bytes
        interceptors = []
        auth = server_settings.auth
        if auth is not None:
            interceptors.append(TokenAuth(load_tokens(auth), HEALTH_METHODS if auth.open_health else frozenset(),
                                          on_denied=self._count_unauthenticated))
        credentials = server_credentials(server_settings.tls) if server_settings.tls is not None else None
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                # Twice the limit: requests in between are read only to be refused with a
                # message naming the limit (INVALID_ARGUMENT); beyond it the transport refuses.
                ("grpc.max_receive_message_length", min(2 * limit, 2**31 - 1)),
                ("grpc.max_send_message_length", -1),
                ("grpc.max_concurrent_streams", server_settings.max_concurrent_streams),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.servicer = InferenceServicer(
            self.pipeline, limit, server_settings.stream_max_in_flight, count=self._count
        )
        self.server.add_generic_rpc_handlers((self.servicer.handler(),))
        self.health = build_health()
        add_health(self.server, self.health)
        address = f"{server_settings.host}:{server_settings.grpc_port}"
        if credentials is not None:
            self.grpc_port = self.server.add_secure_port(address, credentials)
        else:
            self.grpc_port = self.server.add_insecure_port(address)
        if self.grpc_port == 0:
            raise RuntimeError(f"cannot bind gRPC to {address}")
        await self.server.start()
        self.metrics = MetricsServer(server_settings.host, server_settings.metrics_port,
                                     lambda: render(self.registry, self.requests_by_code, self))
        self.metrics_port = await self.metrics.start()
        self.servicer.ready = True
        await set_health(self.health, True, [s.name for s in self.registry.all()])
        tls = server_settings.tls
        _announce("gRPC security: " + ("plaintext" if tls is None else "mTLS" if tls.client_ca_file else "TLS")
                  + (", bearer tokens" if auth is not None else ""))
        _announce(f"gRPC listening on {server_settings.host}:{self.grpc_port}")
        _announce(f"metrics on http://{server_settings.host}:{self.metrics_port}/metrics")
        for stream_settings in self.settings.streams:
            stream = KafkaStream(stream_settings, self.pipeline,
                                 self.registry.get(stream_settings.model, stream_settings.version))
            await stream.start()
            self.streams.append(stream)
            _announce(f"stream {stream.label} consuming as group {stream_settings.group_id!r} "
                      f"from {stream_settings.bootstrap_servers}")
        _announce("ready")

    def _count_unauthenticated(self) -> None:
        self.requests_by_code[("(unknown)", "unauthenticated")] += 1

    def _count(self, model: str, code: str) -> None:
        # Only served names become labels: a client cannot grow the counter without bound.
        if model not in self.registry:
            model = "(unknown)"
        self.requests_by_code[(model, code)] += 1

    async def drain(self) -> None:
        """Stop accepting, finish in-flight requests and batches, then stop."""
        _announce("draining")
        if self.servicer is not None:
            self.servicer.ready = False
        if self.health is not None:
            await set_health(self.health, False, [s.name for s in self.registry.all()])
        stopping = [stream.stop() for stream in self.streams]
        if self.server is not None:
            stopping.append(self.server.stop(grace=self.settings.server.drain_timeout_s))
        await asyncio.gather(*stopping)
        for served in self.registry.all():
            await served.batcher.close()
            served.model.close()
        await asyncio.get_running_loop().run_in_executor(None, self.tap.close)
        if self.metrics is not None:
            await self.metrics.stop()
        _announce("stopped")


def _tune_gc() -> None:
    """Everything loaded so far (modules, models, settings) lives as long as the server:
    freeze it out of the collector's scans, and collect the young generation less often (the
    hot paths allocate many short-lived containers; a gen-0 pass every 700 was measurable)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    await app.drain()
