"""Where an App's scored batches go, and what that decides about its process: one protocol.

`LocalSink` (workers = 1): the Observer runs in this process, on batches handed over in
memory, and /metrics is served here. `engine/processes/worker.py`'s `Link` (a worker of
several): batches go into the worker's shared-memory ring for the observer process, counters
to the supervisor's board, the gRPC and HTTP ports are the ones the workers share, and the
observer process serves /metrics. The App calls the same methods either way.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

from engine.batching.batch import ScoredBatch
from engine.monitor.export import MetricsServer, observer_families, text
from engine.processes import memory
from engine.settings import ModelSettings, RouteSettings, ServerSettings, Settings


def announce(text: str) -> None:
    """Lines on stdout that people and tests read ("listening on", "ready")."""
    print(f"scorewire: {text}", flush=True)


class Sink(Protocol):
    member: int  # the process's number among the workers (its Kafka transactional.id's last part)
    shares_ports: bool  # SO_REUSEPORT: the workers listen on the same ports

    def put(self, batch: ScoredBatch) -> None:
        """On the serving path: never waits, never fails a response."""

    def say(self, text: str) -> None: ...

    def put_labels(self, labels) -> None:
        """Labels sent back (engine/performance/join.py's Labels), for the join: never waits."""

    def ready(self) -> None:
        """The App serves (a worker tells its supervisor; alone, the "ready" line)."""

    def ports(self, server: ServerSettings) -> tuple[int, int]:
        """(gRPC, HTTP) ports to listen on."""

    # the watching side's models (none in a worker: the observer process has its own)
    def warm_up(self) -> None: ...

    def add_model(self, ms: ModelSettings, model) -> None: ...

    def remove_model(self, key: tuple[str, str]) -> None: ...

    def install_shadows(self, routes: list[RouteSettings]) -> list:
        """The challengers of `routes`; returns those retired (to close)."""

    def open_scorelog(self) -> None: ...

    def set_settings(self, settings: Settings) -> None: ...

    def families(self) -> list:
        """Metric families of the watching side, for this process's /metrics."""

    async def start(self, app) -> int:
        """The App serves: start what this mode adds (returns the metrics port, 0 if none)."""

    async def finish(self, app, until, log_flush_s: float) -> None:
        """The App drained (every batch put): hand on the rest, then stop."""


class LocalSink:
    """workers = 1: the Observer here, /metrics here."""

    member = 0
    shares_ports = False

    def __init__(self, settings: Settings):
        from engine.observer import Observer  # here: a worker of several never watches (memory)

        self.observer = Observer(settings, announce)
        self.put = self.observer.put
        self.put_labels = self.observer.put_labels
        self.say = announce
        self.metrics: MetricsServer | None = None
        pid = os.getpid()  # the whole server: its memory as the workers' supervisor reports theirs
        self.memory = memory.Gauges(pid, lambda: {pid: ("server", "")})

    def ports(self, server: ServerSettings) -> tuple[int, int]:
        return server.grpc_port, server.http_port

    def ready(self) -> None:
        announce("ready")

    def warm_up(self) -> None:
        self.observer.warm_up()

    def add_model(self, ms: ModelSettings, model) -> None:
        self.observer.add_model(ms, model)

    def remove_model(self, key: tuple[str, str]) -> None:
        self.observer.remove_model(key)

    def install_shadows(self, routes: list[RouteSettings]) -> list:
        return self.observer.install_shadows(routes)

    def open_scorelog(self) -> None:
        self.observer.open_scorelog()

    def set_settings(self, settings: Settings) -> None:
        self.observer.reloaded(settings)

    def families(self) -> list:
        self.memory.refresh()  # (at most every memory.READ_S: a scrape, not a request, pays it)
        return observer_families(self.observer) + self.memory.families()

    async def start(self, app) -> int:
        server = app.settings.server

        def requests(model: str, version: str) -> tuple[int, int]:  # a rollout's error guard reads these
            return app.registry.get(model, version).batcher.stats.requests, app.pipeline.failures.get((model, version), 0)

        self.observer.performance.requests = requests

        def guard_counts() -> dict:  # the guards' alert reads these
            return {(s.name, s.version, g, a): n for s in app.registry.all() if s.model.guards is not None
                    for (g, a), n in list(s.model.guards.counts.items())}

        self.observer.guards.counts = guard_counts
        self.metrics = MetricsServer(server.metrics_bind, server.metrics_port, lambda: text(app.families()))
        return await self.metrics.start()

    async def finish(self, app, until, log_flush_s: float) -> None:
        # challengers, then the monitor, then the log
        await asyncio.get_running_loop().run_in_executor(None, self.observer.close, until, log_flush_s)
        if self.metrics is not None:
            await self.metrics.stop()
