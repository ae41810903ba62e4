"""The challengers process: shadow-scores the champions' batches, apart from the workers
and from the observer.

The observer forwards each champion batch that has challengers (the ring record as it came
from the worker, not decoded again) into this process's inbound ring; each challenger scores
on a thread of its own (engine/routing/shadow.py: bounded queue, timeout, errors counted),
and its results go back to the observer through the outbound ring, for the monitor and the
scoring log; this process's counts go to its slot of the supervisor's board every
STATS_INTERVAL_S. A challenger that is slow,
hangs or crashes this process costs the workers nothing; the observer's forwarding never
waits (a full ring drops and counts).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from multiprocessing.connection import Connection

from engine.batching.batch import ScoredBatch
from engine.handoff.ring import Ring
from engine.handoff.wire import decode, encode_batch
from engine.monitor.export import shadow_families
from engine.observer import Observer
from engine.processes import child
from engine.processes.board import Board, Counts
from engine.processes.specs import ChallengersSpec
from engine.rollout import state as rollout_state
from engine.runtime.session import OnnxModel, WarmupError
from engine.settings import Settings

log = logging.getLogger("scorewire")

STATS_INTERVAL_S = 0.25
TICK_S = 0.01  # between passes over the inbound ring
IDLE_TICK_S = 0.1  # ...growing to this while passes find nothing


class Challengers:
    def __init__(self, settings: Settings, slot: int, inbound: Ring, outbound: Ring, board: Board, say):
        self.settings = settings
        self.slot = slot
        self.counts = Counts(board, slot)
        self.inbound, self.outbound = inbound, outbound
        self._out_lock = threading.Lock()  # one ring, one producer: the challengers' threads take turns
        self.observer = Observer(settings, say, shadow_results=self._send)
        self.observer.tap.close(0)  # this process monitors nothing: the observer process does
        self.encode_failures = 0
        self.rollouts = rollout_state.Follower(settings.routes)
        self._applying = threading.Lock()  # a reload (off the loop) and following a rollout take turns

    def _send(self, batch: ScoredBatch) -> None:
        with self._out_lock:  # stamped in the order they go in
            try:
                parts = encode_batch(batch, time.monotonic_ns())
            except Exception:
                self.encode_failures += 1
                log.exception("a challenger's batch could not be handed to the observer")
                return
            self.outbound.put(parts, batch.rows)

    def publish(self) -> None:
        self.counts.publish(shadow_families(self.observer))

    def _load(self, settings: Settings) -> None:
        versions = {(r.model, v) for r in rollout_state.effective_routes(settings.routes) for v in r.challengers}
        for ms in settings.models:
            key = (ms.name, ms.version)
            if key not in versions or key in self.observer.models:
                continue
            # one session; its drift (if monitored) is the observer process's business
            model = OnnxModel(ms.model_copy(update={"instances": 1, "monitor": None}))
            try:
                if ms.warmup or model.io_binding is not None:
                    model.warm_up(full=ms.warmup)
            except WarmupError as exc:  # the workers leave it out of its route too
                log.error("%s; the challenger is left out of its route", exc)
                model.close()
                continue
            self.observer.add_model(ms.model_copy(update={"monitor": None}), model)

    def load(self) -> None:
        self._load(self.settings)
        self.observer.install_shadows(rollout_state.effective_routes(self.settings.routes))

    def reload(self, new: Settings) -> None:
        """A reload (engine/processes/child.py's Orders): the challengers the routes name now."""
        with self._applying:
            self._apply(self.settings.reloaded(new))
            self.rollouts = rollout_state.Follower(self.settings.routes)

    def follow_rollouts(self) -> None:
        """A promoted rollout that keeps its old champion as a challenger: shadow with it."""
        with self._applying:
            if self.rollouts.changed():
                self._apply(self.settings)

    def _apply(self, settings: Settings) -> None:
        self._load(settings)
        self.settings = settings
        self.observer.settings = settings
        retired = self.observer.install_shadows(rollout_state.effective_routes(settings.routes))
        for sh in retired:
            sh.close(settings.server.drain_timeout_s)
        in_use = {sh.model for sh in self.observer.all_shadows()}
        for key, model in list(self.observer.models.items()):
            if model not in in_use:
                self.observer.remove_model(key)
                model.close()

    def poll(self) -> int:
        n = 0
        for record in self.inbound.take():
            try:
                _, batch = decode(record)
            except Exception:
                log.exception("the challengers could not read a forwarded batch")
                continue
            if isinstance(batch, ScoredBatch):
                self.observer.offer_shadows(batch)
                n += 1
        return n


async def _run(settings: Settings, slot: int, inbound: Ring, outbound: Ring, board: Board, conn: Connection) -> None:
    say = child.say_to(conn)
    host = Challengers(settings, slot, inbound, outbound, board, say)
    await asyncio.get_running_loop().run_in_executor(None, host.load)
    signals = child.Signals()
    orders = child.Orders("challengers", conn, child.off_loop(host.reload))
    child.ready(conn)
    next_stats, next_follow = [0.0], [0.0]

    def stats_now_and_then() -> None:
        if time.monotonic() >= next_follow[0]:
            next_follow[0] = time.monotonic() + rollout_state.ROLLOUT_POLL_S
            host.follow_rollouts()
        if time.monotonic() >= next_stats[0]:
            host.publish()
            next_stats[0] = time.monotonic() + STATS_INTERVAL_S

    # The supervisor stops this process once the observer forwarded the workers' last batches.
    await child.poll_until(signals.stop, host.poll, TICK_S, stats_now_and_then, IDLE_TICK_S)
    await orders.done()
    deadline = time.monotonic() + settings.server.drain_timeout_s
    await asyncio.get_running_loop().run_in_executor(None, host.observer.close_shadows,
                                                     lambda: deadline - time.monotonic())
    host.publish()


def main(spec: ChallengersSpec, conn: Connection) -> None:
    """The challengers process (multiprocessing's spawn target)."""
    inbound, outbound = Ring.attach(spec.inbound), Ring.attach(spec.outbound)
    board = Board.attach(spec.board)

    def cleanup() -> None:
        inbound.close()
        outbound.close()
        board.close()

    child.run("challengers", spec.log_level, conn,
              lambda: _run(spec.settings, spec.slot, inbound, outbound, board, conn), cleanup,
              off_the_request_path=True)
