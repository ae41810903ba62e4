"""The supervisor: the process `scorewire serve` runs when there are several workers.

It reserves the gRPC port, creates the shared memory (a ring per worker, two between the
observer and the challengers, the control table), starts the observer, the challengers
process and the workers (multiprocessing's spawn: fresh interpreters, nothing inherited but
what is passed), and says `ready` once every one of them is. The challengers process and its
two rings exist only while a route has challengers (or a rollout that keeps its old champion
as one): a server without them would pay a whole Python process with onnxruntime for nothing
(about 100 MiB). A reload that brings the first challengers makes their rings and starts the
process (engine/processes/messages.py's CHALLENGERS tells the observer). The supervisor
imports none of what its children run (engine/processes/specs.py). Then it
watches: a child that dies is started again after a backoff (logged; counted in /metrics as
scorewire_process_restarts_total), and while it is down the others say not-ready.

Signals: SIGTERM or SIGINT drains -- the workers first (each answers every request it
accepted and hands its last batches to its ring); once the observer has read their rings
and forwarded what the challengers get, the challengers (they score it and send their
results back); then the observer (it reads the rings to the end; the monitor and the
scoring log finish) -- and exits 0.

SIGHUP reloads the config's models and routes: the supervisor reads and validates it, tries the
reload once in a probe process (engine/processes/probe.py: the added versions load and warm up,
the changed routes fit), and only then sends it to every process on its pipe and starts later
ones with it. A reload that fails anywhere changes nothing anywhere; a process that fails a
reload the probe passed (it ran out of memory, say) is restarted, so it runs what its peers run.

Lines on stdout are the ones a single process prints: the supervisor's own, the observer's,
the challengers' and the first worker's; other workers' lines are logged.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from engine.errors import cannot_bind
from engine.handoff.ring import Ring, SharedMemoryFull
from engine.processes import probe as probe_proc
from engine.processes.board import Board
from engine.processes.control import PID, RESTARTS, UP, Control
from engine.processes.messages import Kind, Message
from engine.processes.reserve import challenger_rings, needs_challengers, reserve_port
from engine.processes.specs import ChallengersSpec, ObserverSpec, WorkerSpec, launch
from engine.ready import Ready, write as write_ready
from engine.settings import Settings, SettingsError, load_settings

log = logging.getLogger("scorewire")

BACKOFF_S = (0.5, 10.0)  # a child that keeps dying waits longer each time: from, up to
HEALTHY_S = 30.0  # a child that ran this long starts again at the shortest backoff
KILL_AFTER_S = 15.0  # drain: past drain_timeout_s plus this, a child is killed
_QUIET = ("draining", "stopped")  # children's lines the supervisor says once for all


def _say(text: str) -> None:
    print(f"scorewire: {text}", flush=True)


@dataclass
class Child:
    slot: int
    process: multiprocessing.Process
    conn: Connection
    started: float
    ready: bool = False
    answers_ready: bool = False  # a worker: it says ready to clients (ANSWERS_READY)
    failed: str | None = None


class Supervisor:
    def __init__(self, settings: Settings, config_path: Path | None, workers: int, log_level: str,
                 ports: tuple[int, int], rings: list[Ring], challenger_rings: tuple[Ring, Ring] | None, control: Control,
                 board: Board, ready_file: Path | None = None):
        self.settings = settings
        self.ready_file = ready_file  # written once every process is ready (engine/ready.py)
        self.config_path = config_path
        self.workers = workers
        self.log_level = log_level
        self.port, self.http_port = ports  # gRPC, HTTP
        self.rings = rings
        self.challenger_rings = challenger_rings  # observer -> challengers, challengers -> observer; None: no process
        self.control = control
        self.board = board
        self.observer_slot = workers
        self.challengers_slot = workers + 1
        self.metrics_port = settings.server.metrics_port
        self.children: dict[int, Child] = {}
        self.backoff: dict[int, float] = {}
        self.restart_at: dict[int, float] = {}
        self.ctx = multiprocessing.get_context("spawn")
        self.stopping = False
        self.started = False  # every child was ready once
        self.failures: list[str] = []  # why children failed to start
        self.hup = False
        self.probe: tuple[multiprocessing.Process, Connection, Settings] | None = None  # a reload being tried
        # Reloads sent: per process, those it has not answered yet; and the "reloaded" lines held
        # until every process has answered every one (said earlier, a client could still reach
        # a worker on the old config after reading it)
        self.reloading: dict[int, int] = {}
        self.held: list[str] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- children ---------------------------------------------------------------------------
    def _name(self, slot: int) -> str:
        return {self.observer_slot: "observer", self.challengers_slot: "challengers"}.get(slot, f"worker {slot}")

    def _start(self, slot: int) -> None:
        ours, theirs = self.ctx.Pipe()  # lines and failures come back, reloads go out
        to_challengers, from_challengers = ((None, None) if self.challenger_rings is None
                                            else (r.name for r in self.challenger_rings))
        if slot == self.observer_slot:
            module = "engine.processes.observer"
            spec = ObserverSpec(self.settings, tuple(r.name for r in self.rings), self.control.name, self.board.name,
                                self.metrics_port, self.log_level, to_challengers, from_challengers)
        elif slot == self.challengers_slot:
            module = "engine.processes.challengers"
            spec = ChallengersSpec(self.settings, slot, to_challengers, from_challengers, self.board.name,
                                   self.log_level)
        else:
            module = "engine.processes.worker"
            spec = WorkerSpec(slot, self.settings, (self.port, self.http_port), self.rings[slot].name,
                              self.control.name, self.board.name, self.log_level)
        process = self.ctx.Process(target=launch, args=(module, spec, theirs), name=f"scorewire-{self._name(slot).replace(' ', '-')}")
        process.start()
        theirs.close()
        self.control.table[slot, PID] = process.pid
        self.children[slot] = Child(slot, process, ours, time.monotonic())

    def _message(self, child: Child) -> bool:
        """Handle one message from `child`; False when its end of the pipe is closed."""
        try:
            message = child.conn.recv()
        except (EOFError, OSError):
            return False
        kind, value = message.kind, message.value
        if kind is Kind.ANSWERS_READY:
            child.answers_ready = True
        elif kind is Kind.READY:
            child.ready = True
            self.control.table[child.slot, UP] = 1
            if self._all_ready() and self.started:
                log.info("%s is ready again", self._name(child.slot))
        elif kind is Kind.SAY:
            if value in _QUIET or value.startswith(("gRPC listening", "gRPC security", "HTTP listening")):
                pass
            elif self.stopping and not self.started:  # a start that failed: its reason alone is said
                log.debug("%s: %s", self._name(child.slot), value)
            elif self.reloading and value.startswith("reloaded"):
                if child.slot == 0:  # one line for all: worker 0's, once every process reloaded
                    self.held.append(value)
            elif child.slot in (0, self.observer_slot, self.challengers_slot):
                _say(value)
            else:
                log.info("%s: %s", self._name(child.slot), value)
        elif kind is Kind.METRICS:
            self.metrics_port = value
        elif kind is Kind.RELOADED:
            if value is not None and not self.stopping:
                # the probe passed, this process did not: restarted, it runs what its peers run
                log.error("%s failed a reload the others made (%s); restarting it", self._name(child.slot), value)
                child.process.terminate()
            self._answered_reload(child.slot, 1)
        elif kind is Kind.FAILED:
            child.failed = value
            if self.started:  # while starting, the reason is printed once, as the start-up's failure
                log.error("%s: %s", self._name(child.slot), value)
        return True

    def _answered_reload(self, slot: int, reloads: int | None = None) -> None:
        """`slot` answered `reloads` reloads (None: all; it is gone, and restarts on the
        settings of the last): once every process has answered every one, the held
        "reloaded" lines are said."""
        left = 0 if reloads is None else self.reloading.get(slot, 0) - reloads
        if left > 0:
            self.reloading[slot] = left
        else:
            self.reloading.pop(slot, None)
        if not self.reloading:
            for line in self.held:
                _say(line)
            self.held = []

    def _exited(self, child: Child) -> None:
        child.process.join()
        self._answered_reload(child.slot)  # restarted, it starts on the settings of the last reload
        self.control.table[child.slot, UP] = 0
        code = child.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        del self.children[child.slot]
        if self.stopping:  # stopped by us (a drain, or a start-up that failed elsewhere)
            return
        if not self.started:
            self.failures.append(child.failed or f"{self._name(child.slot)} stopped with {how} while starting")
            return
        ran = time.monotonic() - child.started
        delay = BACKOFF_S[0] if ran >= HEALTHY_S else min(self.backoff.get(child.slot, 0) * 2 or BACKOFF_S[0],
                                                          BACKOFF_S[1])
        self.backoff[child.slot] = delay
        self.restart_at[child.slot] = time.monotonic() + delay
        self.control.table[child.slot, RESTARTS] += 1
        log.error("%s (pid %d) stopped with %s after %.1f s; starting it again in %.1f s",
                  self._name(child.slot), child.process.pid, how, ran, delay)

    @property
    def _slots(self) -> int:
        """Processes the server runs: the workers, the observer, and the challengers if any."""
        return self.workers + (1 if self.challenger_rings is None else 2)

    def _all_ready(self) -> bool:
        return len(self.children) == self._slots and all(c.ready for c in self.children.values())

    # -- signals ----------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            self.hup = True
        else:
            self.stopping = True

    def _try_reload(self) -> None:
        """SIGHUP: read the config, then try the reload in a probe process (see the module)."""
        self.hup = False
        if self.config_path is None:
            return
        if self.probe is not None:  # one at a time: this one follows
            self.hup = True
            return
        try:
            new = load_settings(self.config_path)
            adopted = self.settings.reloaded(new)
        except SettingsError as exc:
            _say(f"reload failed, nothing changed: {exc}")
            return
        for warning in self.settings.reload_warnings(new):
            log.warning("reload: %s", warning)
        ours, theirs = self.ctx.Pipe()
        process = self.ctx.Process(target=probe_proc.main, name="scorewire-reload-check",
                                   args=(self.settings.snapshot(), adopted.snapshot(), theirs, self.log_level))
        process.start()
        theirs.close()
        self.probe = (process, ours, adopted)

    def _probed(self) -> None:
        """The probe answered (or died): send the reload everywhere, or change nothing."""
        process, conn, adopted = self.probe
        self.probe = None
        try:
            problem = conn.recv().value if conn.poll() else None
        except (EOFError, OSError):
            problem = None
        process.join()
        conn.close()
        if problem is None and process.exitcode != 0:
            problem = f"the reload check stopped with exit code {process.exitcode}"
        if problem is not None:
            _say(f"reload failed, nothing changed: {problem}")
            return
        first_challengers = self.challenger_rings is None and needs_challengers(adopted)
        if first_challengers:
            try:
                self.challenger_rings = challenger_rings(adopted.ring_bytes())
            except SharedMemoryFull as exc:
                _say(f"reload failed, nothing changed: the challengers' rings: {exc.strerror}")
                return
            observer = self.children.get(self.observer_slot)
            if observer is not None:  # (one not running now starts with the rings)
                observer.conn.send(Message(Kind.CHALLENGERS, tuple(r.name for r in self.challenger_rings)))
        self.settings = adopted  # processes started from now on run it too
        snapshot = adopted.snapshot()
        for child in self.children.values():
            try:
                child.conn.send(Message(Kind.RELOAD, snapshot))
                self.reloading[child.slot] = self.reloading.get(child.slot, 0) + 1
            except OSError:  # it is exiting; it starts again with the new settings
                pass
        if first_challengers:
            self._start(self.challengers_slot)

    # -- the loop ---------------------------------------------------------------------------
    def _step(self, timeout: float) -> None:
        waitables = [self._wake_r]
        for child in list(self.children.values()):
            waitables += [child.conn, child.process.sentinel]
        if self.probe is not None:
            waitables.append(self.probe[0].sentinel)
        for ready in wait(waitables, timeout):
            if self.probe is not None and ready is self.probe[0].sentinel:
                self._probed()
                continue
            if ready is self._wake_r:
                try:
                    while self._wake_r.recv(512):
                        pass
                except BlockingIOError:
                    pass
                continue
            for child in list(self.children.values()):
                if ready is child.conn:
                    self._message(child)
        # messages first: a child's last words (why it failed) come before its exit
        for child in list(self.children.values()):
            if not child.process.is_alive():
                while child.conn.poll() and self._message(child):
                    pass
                self._exited(child)

    def run(self) -> int:
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        # The observer first: its metrics port is the server's, and it must be reading the
        # rings before the workers fill them.
        watchers = [self.observer_slot] + ([self.challengers_slot] if self.challenger_rings is not None else [])
        for slot in watchers:
            self._start(slot)
        if not self._wait_ready(watchers):
            return self._abort()
        for slot in range(self.workers):
            self._start(slot)
        if not self._wait_ready(list(range(self.workers))):
            return self._abort()
        host = self.settings.server.host
        others = "1 observer, 1 challengers process" if self.challenger_rings is not None else "1 observer"
        _say(f"{self.workers} workers on the gRPC port, {others} (pids "
             f"{', '.join(str(c.process.pid) for c in sorted(self.children.values(), key=lambda c: c.slot))})")
        _say(f"gRPC listening on {host}:{self.port}")
        _say(f"HTTP listening on {host}:{self.http_port}")
        _say(f"metrics on http://{self.settings.server.metrics_bind}:{self.metrics_port}/metrics")
        self.started = True
        self.control.started = True
        if not self._wait_answering_ready():
            return self._abort()
        _say("ready")
        if self.ready_file is not None:
            write_ready(self.ready_file, Ready(os.getpid(), self.port, self.http_port, self.metrics_port))
        while not self.stopping:
            now = time.monotonic()
            for slot, at in list(self.restart_at.items()):
                if at <= now:
                    del self.restart_at[slot]
                    self._start(slot)
            if self.hup:
                self._try_reload()
            timeout = min([at - now for at in self.restart_at.values()] + [1.0])
            self._step(max(0.0, timeout))
        return self._drain()

    def _wait_ready(self, slots: list[int]) -> bool:
        while not self.stopping:
            children = [self.children.get(s) for s in slots]
            if any(c is None for c in children):  # one exited before it was ready
                return False
            if all(c.ready for c in children):
                return True
            self._step(1.0)
        return False

    def _wait_answering_ready(self) -> bool:
        """Every worker says ready to clients (they do once the table says all were ready)."""
        while not self.stopping:
            workers = [self.children.get(s) for s in range(self.workers)]
            if any(c is None for c in workers):
                return False
            if all(c.answers_ready for c in workers):
                return True
            self._step(1.0)
        return False

    def _abort(self) -> int:
        """Start-up failed (or was interrupted): stop what runs, say why, exit 2."""
        interrupted = self.stopping
        self.stopping = True
        for child in list(self.children.values()):
            child.process.terminate()
        self._wait_gone(list(self.children), 10.0)
        reasons = list(dict.fromkeys(self.failures))
        for reason in reasons:
            print(f"scorewire: {reason}", file=sys.stderr, flush=True)
        return 0 if interrupted and not reasons else 2

    def _wait_gone(self, slots: list[int], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(s in self.children for s in slots) and time.monotonic() < deadline:
            self._step(min(0.5, max(0.0, deadline - time.monotonic())))
        for slot in slots:
            child = self.children.get(slot)
            if child is not None:
                log.error("%s did not stop in time; killing it", self._name(slot))
                child.process.kill()
                self._step(1.0)

    def _drain(self) -> int:
        _say("draining")
        self.restart_at.clear()
        if self.probe is not None:  # a reload being tried is not made
            self.probe[0].kill()
            self.probe[0].join()
            self.probe = None
        timeout = self.settings.server.drain_timeout_s + KILL_AFTER_S
        workers = [s for s in self.children if s < self.workers]
        for slot in workers:
            self.children[slot].process.terminate()
        self._wait_gone(workers, timeout)
        # the observer reads what the workers left and forwards the challengers their share
        deadline = time.monotonic() + timeout
        read_by_observer = [*self.rings, *(self.challenger_rings or ())[:1]]
        while (self.observer_slot in self.children and time.monotonic() < deadline
               and any(r.used for r in read_by_observer)):
            self._step(0.05)
        if self.challengers_slot in self.children:
            self.children[self.challengers_slot].process.terminate()
            self._wait_gone([self.challengers_slot], timeout)
        if self.observer_slot in self.children:
            self.children[self.observer_slot].process.terminate()
            self._wait_gone([self.observer_slot], timeout)
        _say("stopped")
        return 0

    def close(self) -> None:
        """After run(), however it ended: a child still running (the supervisor failed, not a
        drain) is killed, so that the server does not outlive its supervisor half alive, unready
        and deaf to SIGTERM (multiprocessing's exit would wait for it forever)."""
        for child in list(self.children.values()):
            if child.process.is_alive():
                log.error("%s still runs as the supervisor exits; killing it", self._name(child.slot))
                child.process.kill()
                child.process.join(5.0)
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()


def supervise(settings: Settings, config_path: Path | None, workers: int, log_level: str,
              ready_file: Path | None = None) -> int:
    server = settings.server
    keepers = []
    for what, key, port in (("gRPC", "grpc_port", server.grpc_port), ("HTTP", "http_port", server.http_port)):
        try:
            keepers.append(reserve_port(server.host, port))
        except OSError as exc:
            print(f"scorewire: {cannot_bind(what, server.host, port, key, exc)}", file=sys.stderr)
            for keeper in keepers:
                keeper.close()
            return 2
    made: list = []  # every segment, reserved whole now: none can run out of room later (SIGBUS)
    try:
        for i in range(workers):
            made.append(Ring.create(settings.ring_bytes(), f"worker {i}'s ring"))
        if needs_challengers(settings):
            made += challenger_rings(settings.ring_bytes())
        made.append(Control.create(workers))
        made.append(Board.create(workers + 2))
    except SharedMemoryFull as exc:
        print(f"scorewire: {exc.strerror}", file=sys.stderr)
        for segment in made:
            segment.close()
        for keeper in keepers:
            keeper.close()
        return 2
    rings, control, board = made[:workers], made[-2], made[-1]
    shadowing = (made[workers], made[workers + 1]) if len(made) == workers + 4 else None  # the challengers' rings
    supervisor = Supervisor(settings, config_path, workers, log_level,
                            (keepers[0].getsockname()[1], keepers[1].getsockname()[1]), rings, shadowing, control,
                            board, ready_file)
    try:
        return supervisor.run()
    finally:
        supervisor.close()
        for keeper in keepers:
            keeper.close()
        for segment in made:
            segment.close()
        if supervisor.challenger_rings is not None and shadowing is None:  # made by a reload
            for ring in supervisor.challenger_rings:
                ring.close()
