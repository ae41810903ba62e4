"""Builds the components from settings; start, drain, stop."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import signal
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2

from engine.batching.batcher import Batcher
from engine.errors import UsageError
from engine.codec.validate import Limits
from engine.ingress.auth import HEALTH_METHODS, TokenAuth, load_tokens, server_credentials
from engine.frontdoor import FrontDoor
from engine.ingress.grpc import InferenceServicer, add_health, build_health, set_health
from engine.ingress.http2 import Server as Http2Server, ssl_context as http2_ssl_context
from engine.ingress.rest import RestIngress
from engine.monitor.export import serving_families
from engine.batching.batch import ScoredBatch
from engine.pipeline import Pipeline
from engine.ready import Ready, write as write_ready
from engine.rollout import state as rollout_state
from engine.routing.router import Route, Router, check_compatible, route_changes
from engine.runtime.registry import Registry, Served
from engine.runtime.session import ModelLoadError, OnnxModel, WarmupError
from engine.settings import RouteSettings, Settings, SettingsError, load_settings
from engine.sink import LocalSink, Sink

if TYPE_CHECKING:  # imported where a config has streams: Kafka's client and the JSON kernel (Numba)
    from engine.ingress.kafka import KafkaStream  # cost a process 40 MiB it need not pay without them
    from engine.ingress.kafka.feedback import FeedbackReader

log = logging.getLogger("scorewire")

QUIET_S = 0.1  # drain: no request in flight or arriving for this long ends the quiet phase
LOG_FLUSH_S = 2.0  # drain: the scoring log's least time to write what it holds


def _serving(ok: bool):
    return health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING

class App:
    """One serving path: gRPC, REST and Kafka in through the front door, batchers and
    sessions, answers out; each scored batch goes to the sink (engine/sink.py). With the
    LocalSink (the default) it is the whole server (`workers = 1`): the Observer runs in this
    process and /metrics is served here. With a worker's Link (engine/processes/worker.py) it is
    one of several worker processes: scored batches and counters go to the observer process,
    which watches and serves /metrics."""

    def __init__(self, settings: Settings, config_path: Path | None = None, sink: Sink | None = None):
        self.settings = settings
        self.config_path = config_path  # read again on SIGHUP
        self.sink = sink if sink is not None else LocalSink(settings)
        self.registry = Registry()
        self.router = Router(self.registry)
        self.pipeline = Pipeline(self.registry, self.router)
        self._reload_lock = asyncio.Lock()
        self._rollouts_seen: dict[str, object] = {}  # model -> the rollout state its routes were built from
        self._follower: asyncio.Task | None = None
        self._unloaded: set[tuple[str, str]] = set()  # versions a promoted rollout unloaded here
        self.requests_by_code: collections.Counter = collections.Counter()
        server = settings.server
        self.front = FrontDoor(self.pipeline, server.max_message_bytes, server.max_inflight_bytes, count=self._count,
                               put_labels=self.sink.put_labels)
        self.server: Http2Server | grpc.aio.Server | None = None
        self.health = None
        self.grpc_port = 0
        self.metrics_port = 0
        self.streams: list[KafkaStream] = []
        self.feedback: list[FeedbackReader] = []  # [[feedback]] topics
        self._background: set[asyncio.Task] = set()
        self._draining = False
        self.rest: RestIngress | None = None
        self.http_port = 0
        self._say = self.sink.say

    def _on_scored(self, name: str, version: str):
        sink, router = self.sink.put, self.router

        def on_scored(batch, outputs, enqueued, start, end, origins) -> None:
            scored = ScoredBatch(name, version, router.role_of(name, version), batch.inputs, outputs,
                                 (start - enqueued) // 1000, (end - enqueued) // 1000, (end - start) // 1000,
                                 batch.rows, batch.bounds, origins, time.time_ns())
            sink(scored)

        return on_scored

    def families(self) -> list:
        """This process's metric families (the serving path's, and the observer's if here)."""
        return (serving_families(self.registry, self.requests_by_code, self.streams, self.front.labels_refused,
                                 self.pipeline.failures, self.feedback)
                + self.sink.families())

    def _build_routes(self, routes: list[RouteSettings]) -> dict[str, Route]:
        """Routes for `routes` (as their rollouts make them now: engine/rollout/state.py),
        after checking every version a route names fits its champion."""
        built = {}
        for rs in routes:
            if rs.rollout is not None:
                saved = rollout_state.read(rs)
                self._rollouts_seen[rs.model] = saved
                rs = rollout_state.effective(rs, saved)
            elif rs.split_policy == "thompson":
                rs = rollout_state.effective(rs, None)
            champion = self.registry.get(rs.model, rs.champion)
            loaded = set(self.registry.versions(rs.model))  # a challenger may have failed its warm-up
            for version in dict.fromkeys([*rs.challengers, *rs.split, *([rs.rollout.candidate] if rs.rollout else [])]):
                if version != rs.champion and version in loaded:
                    other = self.registry.get(rs.model, version).model
                    try:
                        check_compatible(champion.model.schema, other.schema, other.label, champion.model.label)
                    except ValueError as exc:
                        raise ModelLoadError(f"route of model {rs.model!r}: {exc}") from None
            built[rs.model] = Route.build(rs)
        self._check_fallbacks()
        return built

    def _check_fallbacks(self) -> None:
        """A guarded version's fallback takes its inputs and gives every output it gives."""
        for served in self.registry.all():
            guards = served.model.guards
            if guards is None or guards.action != "fallback":
                continue
            label = served.model.label
            if guards.fallback_version not in self.registry.versions(served.name):
                raise ModelLoadError(f"{label}: guards.fallback_version {guards.fallback_version!r} is not loaded")
            other = self.registry.get(served.name, guards.fallback_version).model
            ins = [(t.name, t.datatype, tuple(t.shape)) for t in served.model.schema.inputs]
            theirs = {(t.name, t.datatype, tuple(t.shape)) for t in other.schema.outputs}
            if [(t.name, t.datatype, tuple(t.shape)) for t in other.schema.inputs] != ins:
                raise ModelLoadError(f"{label}: its fallback {other.label} takes other inputs")
            missing = [t.name for t in served.model.schema.outputs
                       if t.name != "scorewire_guard" and (t.name, t.datatype, tuple(t.shape)) not in theirs]
            if missing:
                raise ModelLoadError(f"{label}: its fallback {other.label} does not give outputs {missing} alike "
                                     "(same name, type and shape)")

    def _load_model(self, ms) -> Served:
        model = OnnxModel(ms)
        if ms.warmup or model.io_binding is not None:  # IO binding is checked even without warm-up
            model.warm_up(full=ms.warmup)
        self.sink.add_model(ms, model)
        batcher = Batcher(model.label, ms.batching, model.run, max_in_flight=ms.instances,
                          on_scored=self._on_scored(ms.name, ms.version))
        limits = Limits(max_rows=ms.max_rows_per_request, allow_non_finite=ms.allow_non_finite)
        self._say(f"model {model.label} loaded on {model.provider} ({ms.instances} instance(s), "
                  f"{model.binding_description})")
        return Served(model, batcher, limits)

    def load_models(self) -> None:
        self.sink.warm_up()
        answering = {(r.model, v) for r in self.settings.routes
                     for v in [r.champion, *r.split, *([r.rollout.candidate] if r.rollout else [])]}
        shadow_only = {(r.model, v) for r in self.settings.routes for v in r.challengers} - answering
        unloaded = rollout_state.unloaded(self.settings.routes)
        for ms in self.settings.models:
            if (ms.name, ms.version) in unloaded:
                self._unloaded.add((ms.name, ms.version))
                self._say(f"model {ms.name}:{ms.version} not loaded: its rollout promoted the candidate")
                continue
            try:
                self.registry.add(self._load_model(ms))
            except WarmupError as exc:
                if (ms.name, ms.version) not in shadow_only:
                    raise
                # a broken challenger must not keep its champion from serving
                log.error("%s; the challenger is left out of its route", exc)
                self._say(f"challenger {ms.name}:{ms.version} left out: {exc}")
        self.router.install(self._build_routes(self.settings.routes))
        self.sink.install_shadows(rollout_state.effective_routes(self.settings.routes))  # none yet: none retired
        for route in self.settings.routes:
            self._say(f"route {route.model}: champion {route.champion}"
                      + (f", challengers {', '.join(route.challengers)}" if route.challengers else "")
                      + (f", split {dict(route.split)} by {route.sticky_key!r}" if route.split else "")
                      + (f", rollout of {route.rollout.candidate} (now: {self._rollout_said(route)})"
                         if route.rollout else ""))
        self.sink.open_scorelog()

    async def start(self) -> None:
        server_settings = self.settings.server
        await asyncio.get_running_loop().run_in_executor(None, self.load_models)
        _tune_gc()
        for served in self.registry.all():
            served.batcher.start()
        interceptors = []
        auth = server_settings.auth
        if auth is not None:
            interceptors.append(TokenAuth(load_tokens(auth), HEALTH_METHODS if auth.open_health else frozenset(),
                                          on_denied=self._count_unauthenticated))
        if server_settings.grpc_transport == "scorewire":
            self.server = self._own_transport(interceptors)
        else:
            self.server = self._grpcio_transport(interceptors)
        servicer = InferenceServicer(self.front, server_settings.stream_max_in_flight)
        self.server.add_generic_rpc_handlers((servicer.handler(),))
        self.health = build_health()
        add_health(self.server, self.health)
        port, http_port = self.sink.ports(server_settings)
        address = f"{server_settings.host}:{port}"
        try:
            if server_settings.tls is not None:
                self.grpc_port = self.server.add_secure_port(address, self._credentials())
            else:
                self.grpc_port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc.aio: "Failed to bind to address"
            self.grpc_port = 0
        if self.grpc_port == 0:
            raise UsageError(f"cannot bind gRPC to {address}: the port is in use or the host is not this "
                             "machine's; change [server] grpc_port (0: any free port) or host")
        await self.server.start()
        self.rest = RestIngress(self.front, server_settings.host, http_port,
                                reuse_port=self.sink.shares_ports, tls=server_settings.tls,
                                auth=interceptors[0] if interceptors else None,
                                open_health=auth.open_health if auth is not None else True,
                                on_denied=self._count_unauthenticated)
        self.http_port = await self.rest.start()
        self.metrics_port = await self.sink.start(self)  # 0: the observer process serves /metrics
        # alone: ready now; a worker: once every process of the server is (engine/processes/worker.py)
        self.front.ready = not self.sink.shares_ports
        await set_health(self.health, self.front.ready, [s.name for s in self.registry.all()])
        tls = server_settings.tls
        self._say("gRPC security: " + ("plaintext" if tls is None else "mTLS" if tls.client_ca_file else "TLS")
                  + (", bearer tokens" if auth is not None else ""))
        self._say("gRPC transport: " + ("scorewire's own HTTP/2" if server_settings.grpc_transport == "scorewire"
                                        else "grpcio (gRPC's C core)"))
        self._say(f"gRPC listening on {server_settings.host}:{self.grpc_port}")
        self._say(f"HTTP listening on {server_settings.host}:{self.http_port}")
        if self.metrics_port:
            self._say(f"metrics on http://{server_settings.metrics_bind}:{self.metrics_port}/metrics")
        if self.settings.streams:
            from engine.ingress.kafka import KafkaStream
        for stream_settings in self.settings.streams:
            model, version = stream_settings.model, stream_settings.version
            stream = KafkaStream(stream_settings, self.front, self.router.answering(model, version),
                                 member=self.sink.member, split=self.router.split_of(model, version) is not None)
            stream.on_down = self._stream_down
            stream.on_reachable = self._stream_reachable
            await stream.start()
            self.streams.append(stream)
            await self.health.set(stream.health_name, _serving(stream.up and stream.brokers_reachable))
            self._say(f"stream {stream.label} consuming as group {stream_settings.group_id!r} "
                      f"from {stream_settings.bootstrap_servers}")
        if self.settings.feedback:
            from engine.ingress.kafka.feedback import FeedbackReader
        for feedback_settings in self.settings.feedback:
            reader = FeedbackReader(feedback_settings, self.front)
            reader.start(asyncio.get_running_loop())
            self.feedback.append(reader)
            self._say(f"{reader.label}: labels from {feedback_settings.bootstrap_servers}, group "
                      f"{feedback_settings.group_id!r}")
        self._followed = rollout_state.Follower(self.settings.routes)  # a reload may add a rollout: always on
        self._follower = asyncio.get_running_loop().create_task(self._follow_rollouts())
        self.sink.ready()

    def _own_transport(self, interceptors) -> Http2Server:
        server = self.settings.server
        return Http2Server(interceptors, max_receive_message_length=min(2 * server.max_message_bytes, 2**31 - 1),
                           max_concurrent_streams=server.max_concurrent_streams, reuse_port=self.sink.shares_ports,
                           max_connection_age_s=server.max_connection_age_s if self.sink.shares_ports else 0.0,
                           max_buffered_bytes=server.max_inflight_bytes)

    def _grpcio_transport(self, interceptors) -> grpc.aio.Server:
        server_settings = self.settings.server
        limit = server_settings.max_message_bytes
        return grpc.aio.server(
            interceptors=interceptors,
            options=[
                # Twice the limit: requests in between are read only to be refused with a
                # message naming the limit (INVALID_ARGUMENT); beyond it the transport refuses.
                ("grpc.max_receive_message_length", min(2 * limit, 2**31 - 1)),
                ("grpc.max_send_message_length", -1),
                ("grpc.max_concurrent_streams", server_settings.max_concurrent_streams),
                # Calls the transport accepted but the event loop has not picked up yet. gRPC's
                # defaults (1,000, then random early drops up to 3,000) cancel bursts of requests
                # silently, before scorewire sees them; admission is the batchers' job (their
                # bounded queues answer RESOURCE_EXHAUSTED), so only a hard bound stays here.
                ("grpc.server.max_pending_requests", server_settings.max_pending_calls),
                ("grpc.server.max_pending_requests_hard_limit", server_settings.max_pending_calls),
                # Workers share the port: the kernel spreads connections over them.
                ("grpc.so_reuseport", int(self.sink.shares_ports)),
                *_moving_connections(server_settings.max_connection_age_s, self.sink.shares_ports),
            ]
        )

    def _credentials(self):
        tls = self.settings.server.tls
        if self.settings.server.grpc_transport == "grpcio":
            return server_credentials(tls)
        try:
            return http2_ssl_context(tls.cert_file, tls.key_file, tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"server.tls: cannot load the certificate, key or client CA: {exc}") from None

    def _rollout_said(self, route: RouteSettings) -> str:
        saved = self._rollouts_seen.get(route.model)
        return "not started" if saved is None else f"{saved.state}, {saved.weight:g}% of the traffic"

    async def _follow_rollouts(self) -> None:
        """Route as each rollout's state file says (the observer decides; every worker follows
        within ROLLOUT_POLL_S)."""
        while True:
            await asyncio.sleep(rollout_state.ROLLOUT_POLL_S)
            if self._followed.changed():
                try:
                    async with self._reload_lock:
                        await self._follow_change()
                except Exception:  # the routes stay as they were; said once a change
                    log.exception("could not follow a rollout's change")

    async def _follow_change(self) -> None:
        """A rollout stepped, rolled back or was promoted: route by it; a promoted one's old
        champion becomes a challenger (its shadows start) or is unloaded, as configured."""
        loop = asyncio.get_running_loop()
        self.router.install(self._build_routes(self.settings.routes))
        retired = self.sink.install_shadows(rollout_state.effective_routes(self.settings.routes))
        await asyncio.gather(*(loop.run_in_executor(None, sh.close, self.settings.server.drain_timeout_s)
                               for sh in retired))
        for name, version in rollout_state.unloaded(self.settings.routes):
            if version in self.registry.versions(name) and not self._pinned(name, version):
                served = self.registry.remove(name, version)
                await served.batcher.close()  # scores what it queued
                self.sink.remove_model((name, version))
                served.model.close()
                self._unloaded.add((name, version))
                self._say(f"model {name}:{version} unloaded: its rollout promoted the candidate")

    def _pinned(self, name: str, version: str) -> bool:
        """A Kafka stream scores with this version by name: it stays loaded."""
        return any(s.model == name and s.version == version for s in self.settings.streams)

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def set_ready(self, ready: bool) -> None:
        """ServerReady and health: a worker is not ready while one of its peers is down."""
        if self._draining or self.front.ready == ready:
            return
        self.front.ready = ready
        await set_health(self.health, ready, [s.name for s in self.registry.all()])

    async def reload(self, new: Settings | None = None) -> str | None:
        """Apply the models and routes of `new` (default: the config file read again, on
        SIGHUP) without dropping requests: new versions are loaded and warmed before the new
        routes are installed (one swap); removed versions leave the routes first, then finish
        what they queued. Settings.reloaded says what else takes effect on restart. A reload
        that fails changes nothing; returns why (None when it succeeded)."""
        async with self._reload_lock:
            try:
                await self._reload(new)
            except Exception as exc:  # the running config stays
                log.error("reload failed, the running config stays: %s", exc)
                self._say(f"reload failed: {exc}")
                return str(exc) or type(exc).__name__
        return None

    async def _reload(self, new: Settings | None) -> None:
        loop = asyncio.get_running_loop()
        if new is None:
            new = load_settings(self.config_path)
        old = self.settings
        for warning in old.reload_warnings(new):
            log.warning("reload: %s", warning)
        reloaded = old.reloaded(new)
        old_models = {(m.name, m.version): m for m in old.models}
        new_models = {(m.name, m.version): m for m in reloaded.models}
        unloaded = rollout_state.unloaded(new.routes)  # a promoted rollout's old champion stays out
        loaded = {(s.name, s.version) for s in self.registry.all()}
        removed = [key for key in old_models if key in loaded and (key not in new_models or key in unloaded)]
        added = []
        try:
            for key, ms in new_models.items():
                # new versions, and a promoted rollout's old champion brought back (the config
                # changed the rollout); not a challenger that failed its warm-up at start
                if key not in unloaded and (key not in old_models or (key in self._unloaded and key not in loaded)):
                    served = await loop.run_in_executor(None, self._load_model, ms)
                    served.batcher.start()
                    self.registry.add(served)
                    added.append(served)
            routes = self._build_routes(new.routes)
        except BaseException:
            for served in added:
                self.registry.remove(served.name, served.version)
                self.sink.remove_model((served.name, served.version))
                await served.batcher.close()
                served.model.close()
            raise
        self.router.install(routes)
        self._unloaded = (self._unloaded - {(s.name, s.version) for s in added}) | (set(removed) & unloaded)
        self._followed = rollout_state.Follower(new.routes)
        self.settings = reloaded
        self.sink.set_settings(self.settings)
        retired = self.sink.install_shadows(rollout_state.effective_routes(new.routes))
        gone = []
        for name, version in removed:
            served = self.registry.remove(name, version)
            await served.batcher.close()  # scores what it queued
            self.sink.remove_model((name, version))
            gone.append(served)
        # Challengers that left the routes finish what they were offered; then the sessions go.
        await asyncio.gather(*(loop.run_in_executor(None, sh.close, self.settings.server.drain_timeout_s)
                               for sh in retired))
        for served in gone:
            served.model.close()
        changes = (route_changes(old.routes, new.routes)
                   + ([f"loaded {', '.join(s.model.label for s in added)}"] if added else [])
                   + ([f"unloaded {', '.join(f'{n}:{v}' for n, v in removed)}"] if removed else []))
        self._say("reloaded: " + ("; ".join(changes) if changes else "no model or route changed"))

    def _stream_down(self, stream: KafkaStream, reason: str) -> None:
        self._say(f"stream {stream.label} stopped: {reason}")
        self.spawn(self.health.set(stream.health_name, health_pb2.HealthCheckResponse.NOT_SERVING))

    def _stream_reachable(self, stream: KafkaStream, reachable: bool) -> None:
        if stream in self.streams and not self._draining:  # not yet in: start() sets its health
            self.spawn(self.health.set(stream.health_name, _serving(reachable and stream.up)))

    def _count_unauthenticated(self) -> None:
        self.requests_by_code[("(unknown)", "unauthenticated")] += 1

    def _count(self, model: str, code: str) -> None:
        # Only served names become labels: a client cannot grow the counter without bound.
        if model not in self.registry:
            model = "(unknown)"
        self.requests_by_code[(model, code)] += 1

    async def _quiesce(self, until: float) -> None:
        """Answer whatever reaches the front door -- requests the transport accepted before the
        signal among them -- until none has been in flight or arrived for QUIET_S, or `until`
        (monotonic s). Health already says NOT_SERVING, so balancers send no more."""
        while time.monotonic() < until:
            quiet = self.front.quiet_for_ns()
            if quiet is not None and quiet >= QUIET_S * 1e9:
                return
            await asyncio.sleep(0.01)

    async def drain(self) -> None:
        """Stop taking requests, answer every one already sent, finish batches, then stop, all
        within drain_timeout_s: health NOT_SERVING and a grace of drain_grace_s (ending once
        quiet), then new calls are refused (UNAVAILABLE) and the listeners close while the ones
        in flight finish; challengers, the monitor and the log get what is left (the log at
        least LOG_FLUSH_S, to write what it holds)."""
        self._say("draining")
        self._draining = True
        if self._follower is not None:
            self._follower.cancel()
        deadline = time.monotonic() + self.settings.server.drain_timeout_s
        self.front.ready = False
        if self.health is not None:
            await set_health(self.health, False, [s.name for s in self.registry.all()])
        server = self.settings.server
        await self._quiesce(time.monotonic() + min(server.drain_grace_s, server.drain_timeout_s / 2))
        self.front.closing = True  # what still reaches the front door is refused, not cancelled
        await self._quiesce(time.monotonic() + min(1.0, self.settings.server.drain_timeout_s / 4))
        stopping = [stream.stop() for stream in self.streams] + [reader.stop() for reader in self.feedback]
        if self.server is not None:
            stopping.append(self.server.stop(grace=max(0.0, deadline - time.monotonic())))
        if self.rest is not None:
            stopping.append(self.rest.stop())
        await asyncio.gather(*stopping)
        for served in self.registry.all():
            await served.batcher.close()
        # every batch is in the sink: challengers, the monitor and the log finish (a worker: the
        # counters follow, final)
        await self.sink.finish(self, lambda: deadline - time.monotonic(), LOG_FLUSH_S)
        for served in self.registry.all():
            served.model.close()
        self._say("stopped")


def _moving_connections(age_s: float, shares_ports: bool) -> list[tuple[str, int]]:
    """gRPC options that make each connection move after about `age_s` (none with one worker,
    or 0): the kernel's SO_REUSEPORT hash picks a worker per connection, blind to load, so few
    long-lived connections can all sit on one worker; asked to go (GOAWAY), a client connects
    again and the new connection is hashed afresh. No grace limit: a call in flight, a
    ModelStreamInfer stream too, always finishes on the old connection."""
    if not shares_ports or age_s <= 0:
        return []
    return [("grpc.max_connection_age_ms", max(1, round(age_s * 1000)))]


def _tune_gc() -> None:
    """Everything loaded so far (modules, models, settings) lives as long as the server:
    freeze it out of the collector's scans, and collect the young generation less often (the
    hot paths allocate many short-lived containers; a gen-0 pass every 700 was measurable)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def serve(settings: Settings, config_path: Path | None = None, link=None, ready_file: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT (a worker: SIGTERM only, from its supervisor), then drain.
    SIGHUP reloads the config file's models and routes; a worker reloads what its supervisor
    sends instead (engine/processes/child.py's Orders)."""
    app = App(settings, config_path, link)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM,) if link is not None else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    if ready_file is not None:  # after the "ready" line: the ports it bound, for the program that started it
        write_ready(ready_file, Ready(os.getpid(), app.grpc_port, app.http_port, app.metrics_port))
    reloads: set[asyncio.Task] = set()
    orders = None
    if link is not None:
        from engine.processes.child import Orders

        orders = Orders(f"worker {link.slot}", link.conn, app.reload)
    elif config_path is not None:
        def on_hup() -> None:
            task = loop.create_task(app.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    if reloads:
        await asyncio.gather(*reloads, return_exceptions=True)
    if orders is not None:
        await orders.done()
    await app.drain()
