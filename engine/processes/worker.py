"""A worker process: one whole serving path (engine/app.py's App) on the shared gRPC port,
whose scored batches go to the observer through its shared-memory ring, and its counters
through its slot of the supervisor's board.

Nothing on the request path waits for the observer: `Link.put` encodes the batch and copies
it into the ring, or counts it dropped when the ring is full.
"""

from __future__ import annotations

import asyncio
import logging
import time
from multiprocessing.connection import Connection

from engine.batching.batch import ScoredBatch
from engine.handoff.ring import Ring
from engine.handoff.wire import encode_batch, encode_labels
from engine.processes import child
from engine.processes.board import Board, Counts
from engine.processes.control import Control
from engine.processes.messages import Kind, Message
from engine.processes.specs import WorkerSpec

log = logging.getLogger("scorewire")

STATS_INTERVAL_S = 0.25  # a worker's counters reach /metrics this late at most


class Link:
    """A worker App's sink (engine/sink.py): the ring to the observer process, the board."""

    shares_ports = True

    def __init__(self, slot: int, ports: tuple[int, int], ring: Ring, control: Control, board: Board,
                 conn: Connection):
        self.slot, self.ring, self.control = slot, ring, control
        self.member = slot
        self.counts = Counts(board, slot)  # a restarted worker's counters go on from its predecessor's
        self.conn = conn  # the supervisor's pipe: lines out, orders (reloads) in
        self._ports = ports  # gRPC and HTTP, shared by the workers (SO_REUSEPORT)
        self.say = child.say_to(conn)  # a line for the supervisor
        self.encode_failures = 0
        self._last_failure_log = 0.0

    def put_labels(self, labels) -> None:
        """Labels sent to this worker, into its ring for the observer's join (full: dropped, counted)."""
        self.ring.put(encode_labels(labels, time.monotonic_ns()), labels.rows)

    def ports(self, server) -> tuple[int, int]:
        return self._ports

    # The observer process watches: nothing of it runs here.
    def warm_up(self) -> None:
        pass

    def add_model(self, ms, model) -> None:
        pass

    def remove_model(self, key) -> None:
        pass

    def install_shadows(self, routes) -> list:
        return []

    def open_scorelog(self) -> None:
        pass

    def set_settings(self, settings) -> None:
        pass

    def families(self) -> list:
        return []

    def put(self, batch: ScoredBatch) -> None:
        """On the serving path: never waits (a full ring drops the batch and counts it)."""
        try:
            parts = encode_batch(batch, time.monotonic_ns())
        except Exception:  # e.g. an output of Python objects: the answer went out; count, say why
            self.encode_failures += 1
            now = time.monotonic()
            if now - self._last_failure_log > 60:
                self._last_failure_log = now
                log.exception("worker %d: a scored batch of %s:%s could not be handed to the observer "
                              "(%d so far)", self.slot, batch.model, batch.version, self.encode_failures)
            return
        self.ring.put(parts, batch.rows)

    def publish(self, app) -> None:
        """This worker's counters, for the observer's /metrics."""
        families = app.families()
        families.append(["scorewire_worker_requests_total", "counter",
                         "gRPC inference requests answered by each worker (the kernel spreads connections).",
                         [[f'{{worker="{self.slot}"}}', sum(app.requests_by_code.values())]]])
        families.append(["scorewire_handoff_encode_failures_total", "counter",
                         "Scored batches a worker could not encode for the observer (logged).",
                         [["", self.encode_failures]]])
        self.counts.publish(families)

    async def start(self, app) -> int:
        app.spawn(self._run(app))
        return 0  # the observer process serves /metrics

    async def _run(self, app) -> None:
        """Every STATS_INTERVAL_S: this worker's counters, and its readiness from its peers'
        (not ready while any process of the server is down, nor before all were ready once).
        Until it first says ready it looks often, and tells the supervisor when it does, so
        that the server's "ready" comes after every worker says so."""
        told = False
        while True:
            self.publish(app)
            up = self.control.all_up()
            await app.set_ready(up)
            if up and not told:
                told = True
                child.send(self.conn, Message(Kind.ANSWERS_READY))
            await asyncio.sleep(STATS_INTERVAL_S if told else 0.01)

    def ready(self) -> None:
        child.ready(self.conn)

    async def finish(self, app, until, log_flush_s: float) -> None:
        """Drain: the last counters, after the last batch."""
        self.publish(app)


def main(spec: WorkerSpec, conn: Connection) -> None:
    """The worker process (multiprocessing's spawn target)."""
    from engine.app import serve

    board = Board.attach(spec.board)
    link = Link(spec.slot, spec.ports, Ring.attach(spec.ring), Control.attach(spec.control), board, conn)

    def cleanup() -> None:
        link.ring.close()
        link.control.close()
        board.close()

    child.run(f"worker {spec.slot}", spec.log_level, conn, lambda: serve(spec.settings, None, link), cleanup)
