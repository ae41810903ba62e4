"""The observer process: reads every worker's ring, hands the scored batches to one
Observer (drift, latency, scoring log) in the order they were scored, forwards the batches
of champions that have challengers to the challengers process (and reads their results
back), and serves the one /metrics of the whole server (every process's counters, read from
the supervisor's board, engine/processes/board.py, merged).

Order: each pass takes everything every ring holds, then sorts it by the time the batches
were scored (one monotonic clock for the machine). A request sent after another was
answered was scored after it, and its batch was in its worker's ring before that answer
went out -- so requests that arrive one at a time reach the drift monitor in their order,
whatever worker served them, and drift is the same as with one worker.

Nothing answered is lost when this process is killed: a record stays in its ring (the
worker's write-ahead log) until the scoring log has committed its rows, and the next observer
reads on from the position the log's journal gives for each ring (engine/scorelog/files.py):
what was committed is not logged twice, what was not is read again. The batches of champions
with challengers are forwarded as they are handed on (waiting for the log's commits would send
the challengers a tick's worth at once, more than their queues hold), and each ring keeps how
far it was forwarded (its mark), so a restart forwards none twice.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import os
import re
import time
from multiprocessing.connection import Connection

from engine.handoff.ring import Receipt, Ring, unlink_shm
from engine.handoff.wire import decode
from engine.monitor.export import MetricsServer, merge, observer_families, text
from engine.observer import Observer
from engine.performance.join import Labels
from engine.processes import child, memory
from engine.processes.board import CARRIED, Board, Counts
from engine.processes.control import RESTARTS, UP, Control
from engine.processes.messages import Kind, Message
from engine.processes.specs import ObserverSpec
from engine.rollout import state as rollout_state
from engine.settings import Settings

LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')  # name="value" in a sample's labels

log = logging.getLogger("scorewire")

TICK_S = 0.01  # between passes over the rings
IDLE_TICK_S = 0.1  # ...growing to this while passes find nothing (a first record then waits up to 0.1 s)
# A record is handed on once it is this old: every record stamped before it has been put in
# its ring by then (a put follows its stamp by microseconds; 50 ms covers a descheduled worker)
HOLD_NS = 50_000_000
LOG_FLUSH_S = 2.0
PUBLISH_S = 1.0  # this process's counters reach the board (for a successor) this often
ORPHAN_MARGIN_S = 5.0  # the supervisor died: the workers' drain is waited for this much past drain_timeout_s


def _alive(pid: int) -> bool:
    """A process that has not exited (a zombie has: its parent died, nobody reaped it yet)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class Watch:
    def __init__(self, settings: Settings, rings: list[Ring], control: Control, board: Board, say,
                 to_challengers: Ring | None = None, from_challengers: Ring | None = None):
        self.settings = settings
        self.rings = rings  # the workers'
        self.to_challengers, self.from_challengers = to_challengers, from_challengers
        self.control = control
        self.forward: set[tuple[str, str]] = set()  # champions whose batches the challengers get
        self.say = say
        self.observer = Observer(settings, say)
        self.board = board
        self.counts = Counts(board, control.observer)  # this process's counters go on from its predecessor's
        # what the join of a predecessor held when it last published: lost with it, counted
        pending = self.counts.left.get("scorewire_performance_waiting_rows")
        self.observer.performance.lost_at_restart = int(sum(v for _, v in pending[3])) if pending else 0
        self.observer.performance.requests = self._requests  # a rollout's error guard reads the workers'
        self.observer.guards.counts = self._guard_counts  # and the guards' alert their guards' counts
        self.decode_failures = 0
        self._held: list = []  # (stamp, ring, end, batch or None, record) read, not handed on (see poll)
        self._last_stamp: dict[str, int] = {}  # per ring: the stamp of the last record read
        self._receipts: dict[str, collections.deque] = {}  # per ring: records handed on, in order, not released
        self.memory = memory.Gauges(os.getppid(), self._named)  # every process's RSS and PSS, for /metrics

    def _named(self) -> dict[int, tuple[str, str]]:
        """pid -> (process, slot) of the supervisor and the processes in its table."""
        control = self.control
        named = {self.memory.root: ("supervisor", "")}
        for slot, pid in enumerate(control.pids(range(control.workers + 2))):
            if pid:
                named[pid] = ("worker" if slot < control.workers else "observer" if slot == control.observer
                              else "challengers", str(slot))
        return named

    def attach_challengers(self, to_challengers: Ring, from_challengers: Ring) -> None:
        """A reload gave the server its first challengers: the supervisor made their rings (and
        starts their process); batches are forwarded from now on."""
        self.to_challengers, self.from_challengers = to_challengers, from_challengers

    def _worker_samples(self, family: str):
        """(labels by name, value) of each sample of a family, over the workers (as each last
        wrote its counters on the board)."""
        for slot in range(self.control.workers):
            for name, _, _, samples in self.board.read(slot):
                if name == family:
                    for labels, value in samples:
                        yield dict(LABEL.findall(labels)), value

    def _requests(self, model: str, version: str) -> tuple[int, int]:
        """(requests scored, requests the model failed) of one version, over the workers."""
        ok = failed = 0
        for labels, value in self._worker_samples("scorewire_version_requests_total"):
            if labels.get("model") == model and labels.get("version") == version:
                if labels.get("outcome") == "failed":
                    failed += value
                else:
                    ok += value
        return int(ok), int(failed)

    def _guard_counts(self) -> dict[tuple[str, str, str, str], int]:
        """(model, version, guard, action) -> rows, over the workers."""
        counts: dict = {}
        for labels, value in self._worker_samples("scorewire_guard_rows_total"):
            key = tuple(labels.get(k, "") for k in ("model", "version", "guard", "action"))
            counts[key] = counts.get(key, 0) + int(value)
        return counts

    # -- models -----------------------------------------------------------------------------
    @staticmethod
    def _wanted(settings: Settings) -> dict:
        """The monitored versions (the monitor needs their schema, not their sessions)."""
        return {(m.name, m.version): m for m in settings.models if m.monitor is not None}

    def _load(self, ms) -> None:
        from engine.runtime.session import ModelShape  # ONNX Runtime: only where a version is monitored

        self.observer.add_model(ms, ModelShape(ms))

    def _forwarding(self) -> None:
        self.forward = {(r.model, r.champion) for r in rollout_state.effective_routes(self.settings.routes)
                        if r.challengers}

    def follow_rollouts(self) -> None:
        """A promoted rollout that keeps its old champion as a challenger: forward the new
        champion's batches to the challengers process."""
        if self.rollouts.changed():
            self._forwarding()

    def load(self) -> None:
        from kernels import _compile

        self.observer.warm_up()
        for ms in self._wanted(self.settings).values():
            self._load(ms)
        _compile.done()  # the kernels' compile helper of a cold start (~230 MiB) goes before ready, not 5 s on
        self.rollouts = rollout_state.Follower(self.settings.routes)
        self._forwarding()
        self.observer.open_scorelog()
        if self.observer.scorelog is not None:  # what an observer before this one committed
            for ring in self._sources:
                ring.seek(self.observer.scorelog.rings.get(ring.name, 0))

    @property
    def _sources(self) -> list[Ring]:
        return self.rings if self.from_challengers is None else [*self.rings, self.from_challengers]

    def reload(self, new: Settings) -> None:
        """A reload (engine/processes/child.py's Orders): the models and routes the workers run now."""
        settings = self.settings.reloaded(new)
        wanted = self._wanted(settings)
        for key, ms in wanted.items():
            if key not in self.observer.models:
                self._load(ms)
        self.settings = settings
        self.observer.reloaded(settings)
        if self.observer.scorelog is not None:
            self.observer.scorelog.feature_names = self.observer.feature_names()
        self.rollouts = rollout_state.Follower(settings.routes)
        self._forwarding()
        for key in list(self.observer.models):
            if key not in wanted:
                model = self.observer.models[key]
                self.observer.remove_model(key)
                model.close()

    # -- the rings --------------------------------------------------------------------------
    def poll(self, final: bool = False) -> int:
        """One pass: every record of every ring, handed on in the order they were scored.

        A record is stamped just before its worker puts it in its ring, and the rings are read
        one after another: a record can land in a ring already read in this pass while a later
        one lands in a ring read after it (a descheduled observer makes that gap milliseconds
        long). So only records stamped HOLD_NS before this pass began are handed on; later ones
        wait for the next pass, sorted with what it brings (`final`: everything now). A ring's
        stamps are taken as never going back (a record stamped before the one ahead of it in
        its ring counts as stamped with it), so what is handed on is a prefix of each ring."""
        started = time.monotonic_ns()
        held = self._held
        for ring in self._sources:
            last = self._last_stamp.get(ring.name, 0)
            for record, end in ring.read():
                try:
                    stamp, batch = decode(record)
                    if batch is None:
                        raise ValueError("a record of another wire version (a worker of another scorewire?)")
                except Exception:
                    self.decode_failures += 1
                    log.exception("the observer could not read a record from a worker's ring")
                    stamp, batch = 0, None
                last = max(last, stamp)
                held.append((last, ring, end, batch, record))
            self._last_stamp[ring.name] = last
        if len(held) > 1:
            held.sort(key=lambda item: item[0])  # stable: a ring's records keep their order
        if final:
            ready, self._held = held, []
        else:
            n = bisect.bisect_left(held, started - HOLD_NS, key=lambda item: item[0])
            ready, self._held = held[:n], held[n:]
        put, forward, out = self.observer.put, self.forward, self.to_challengers
        for _, ring, end, batch, record in ready:
            receipt = Receipt(ring.name, end)
            self._receipts.setdefault(ring.name, collections.deque()).append(receipt)
            if batch is None:  # unreadable (counted)
                receipt.done = True
                continue
            if isinstance(batch, Labels):
                self.observer.put_labels(batch)
                receipt.done = True
                continue
            if out is not None and (batch.model, batch.version) in forward and end > ring.mark:
                out.put([record], batch.rows)  # as the worker wrote it; full: dropped, counted
                ring.mark = end
            put(batch, receipt)
        self.release()
        return len(ready)

    @property
    def waiting(self) -> bool:
        """Records read and held back for a later pass (see poll)."""
        return bool(self._held)

    def release(self) -> None:
        """Free the ring space of every record the log is done with (in ring order)."""
        for ring in self._sources:
            receipts = self._receipts.get(ring.name)
            end = None
            while receipts and receipts[0].done:
                end = receipts.popleft().end
            if end is not None:
                ring.release(end)

    @property
    def unreleased(self) -> int:
        """Records handed on whose ring space is not free yet."""
        return sum(len(r) for r in self._receipts.values())

    def families(self) -> list:
        """The server's metric families: every process's, each as it last wrote them."""
        board, control = self.board, self.control
        slots = [*range(control.workers), *([control.challengers] if self.to_challengers is not None else [])]
        others = [board.read(slot) for slot in slots]
        return merge([*others, self.own_families()]) + self._process_families()

    def own_families(self) -> list:
        counts = self.counts
        own = observer_families(self.observer)
        return merge([counts.base, own]) if counts.base else own

    def publish(self) -> None:
        """This process's counters on the board, for the next observer if this one dies (and
        the join's pending rows: what a next observer counts lost)."""
        self.counts.board.write(self.counts.slot, [f for f in self.own_families()
                                                   if f[1] in CARRIED or f[0] == "scorewire_performance_waiting_rows"])

    def _process_families(self) -> list:
        table = self.control.table
        n = self.control.workers
        challengers = self.to_challengers is not None
        worker_label = [f'{{worker="{i}"}}' for i in range(n)]
        return [
            ["scorewire_workers", "gauge", "Serving processes configured.", [["", n]]],
            ["scorewire_workers_up", "gauge", "Serving processes running and ready.",
             [["", self.control.workers_up()]]],
            ["scorewire_process_up", "gauge",
             "1 while the observer or the challengers process runs and is ready (the challengers process runs "
             "only when a route has challengers).",
             [['{process="observer"}', int(table[n, UP])]]
             + ([['{process="challengers"}', int(table[n + 1, UP])]] if challengers else [])],
            ["scorewire_process_pid", "gauge", "The process id each slot runs as now (0: not started).",
             [[f'{{process="{"worker" if slot < n else "observer" if slot == n else "challengers"}",slot="{slot}"}}',
               pid] for slot, pid in enumerate(self.control.pids(range(n + 2 if challengers else n + 1)))]],
            ["scorewire_process_restarts_total", "counter",
             "Processes the supervisor started again after they died (the server log says why).",
             [['{process="worker"}', int(table[:n, RESTARTS].sum())],
              ['{process="observer"}', int(table[n, RESTARTS])]]
             + ([['{process="challengers"}', int(table[n + 1, RESTARTS])]] if challengers else [])],
            ["scorewire_handoff_dropped_batches_total", "counter",
             "Scored batches a worker dropped because its ring to the observer was full (the observer fell "
             "behind: they are missing from drift, latency, the scoring log and the challengers).",
             [[worker_label[i], ring.dropped] for i, ring in enumerate(self.rings)]],
            ["scorewire_handoff_dropped_rows_total", "counter", "Rows of those batches.",
             [[worker_label[i], ring.dropped_rows] for i, ring in enumerate(self.rings)]],
            ["scorewire_handoff_ring_bytes", "gauge", "Bytes waiting in each worker's ring to the observer.",
             [[worker_label[i], ring.used] for i, ring in enumerate(self.rings)]],
            ["scorewire_handoff_to_challengers_dropped_rows_total", "counter",
             "Rows of champion batches not forwarded to the challengers process because its ring was full "
             "(the challengers fell behind).",
             [["", 0 if self.to_challengers is None else self.to_challengers.dropped_rows]]],
            ["scorewire_handoff_decode_failures_total", "counter",
             "Ring records the observer could not read (logged).", [["", self.decode_failures]]],
            ["scorewire_metrics_too_large_total", "counter",
             "Times a process's metrics did not fit its slot of the board (logged; the last that fit are shown).",
             [["", self.board.too_large]]],
            *self.memory.families(),
        ]


async def _observe(settings: Settings, rings: list[Ring], control: Control, board: Board, conn: Connection,
                   metrics_port: int, to_challengers: Ring | None, from_challengers: Ring | None,
                   attached: list[Ring]) -> None:
    loop = asyncio.get_running_loop()
    say = child.say_to(conn)
    watch = Watch(settings, rings, control, board, say, to_challengers, from_challengers)
    await loop.run_in_executor(None, watch.load)
    metrics = MetricsServer(settings.server.metrics_bind, metrics_port, lambda: text(watch.families()))
    port = await metrics.start()
    conn.send(Message(Kind.METRICS, port))
    signals = child.Signals()
    def challengers_started(names: tuple[str, str]) -> None:
        rings = tuple(Ring.attach(name) for name in names)
        attached.extend(rings)
        watch.attach_challengers(*rings)

    orders = child.Orders("observer", conn, child.off_loop(watch.reload), {Kind.CHALLENGERS: challengers_started})
    child.ready(conn)
    next_publish, next_follow = [0.0], [0.0]

    def publish_now_and_then() -> None:
        if time.monotonic() >= next_follow[0]:
            next_follow[0] = time.monotonic() + rollout_state.ROLLOUT_POLL_S
            watch.follow_rollouts()
        watch.memory.refresh()  # every memory.READ_S
        if time.monotonic() >= next_publish[0]:
            watch.observer.guards.check()  # a version whose every row is refused has no batch to check on
            watch.publish()
            next_publish[0] = time.monotonic() + PUBLISH_S

    # The supervisor stops the observer after the workers: what is in the rings is all there is.
    await child.poll_until(signals.stop, watch.poll, TICK_S, publish_now_and_then, IDLE_TICK_S,
                           lambda: watch.waiting)
    if child.orphaned():  # the supervisor died, and every process got SIGTERM: the workers drain meanwhile
        deadline = time.monotonic() + settings.server.drain_timeout_s + ORPHAN_MARGIN_S
        while time.monotonic() < deadline and any(_alive(pid) for pid in control.pids(range(control.workers))):
            watch.poll()
            await asyncio.sleep(TICK_S)
    while watch.poll(final=True):  # what was held back, and anything after it
        pass
    await orders.done()
    deadline = time.monotonic() + settings.server.drain_timeout_s
    await loop.run_in_executor(None, watch.observer.close, lambda: deadline - time.monotonic(), LOG_FLUSH_S)
    watch.publish()
    await metrics.stop()


def main(spec: ObserverSpec, conn: Connection) -> None:
    """The observer process (multiprocessing's spawn target)."""
    rings = [Ring.attach(name) for name in spec.rings]
    attached: list[Ring] = []  # the rings to and from the challengers, when the server has that process
    if spec.to_challengers is not None:
        attached += [Ring.attach(spec.to_challengers), Ring.attach(spec.from_challengers)]
    to_challengers, from_challengers = attached if attached else (None, None)
    control = Control.attach(spec.control)
    board = Board.attach(spec.board)

    def cleanup() -> None:
        segments = (*rings, *attached, control, board)
        if child.orphaned():  # the supervisor would have removed them
            for segment in segments:
                unlink_shm(segment._shm)
        for segment in segments:
            segment.close()

    child.run("observer", spec.log_level, conn,
              lambda: _observe(spec.settings, rings, control, board, conn, spec.metrics_port, to_challengers,
                               from_challengers, attached), cleanup, off_the_request_path=True)
