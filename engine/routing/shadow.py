"""Shadow scoring: a challenger scores the batches its champion scored, on a thread of its
own, and its results go to the taps (scoring log, latency, drift), never to a caller.
Batches queued together run together (up to the challenger's max_batch_size rows), so a
challenger's queue and inference latency are those of its shadow runs, not what it would
show answering callers.

Isolation: `offer` never blocks (a full mailbox drops the batch, counted); a run that raises
or returns outputs of the wrong shape is counted and logged; a run longer than the timeout
is stopped through onnxruntime's terminate flag and counted. None of it reaches the
champion, whose response was sent before the batch was offered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort

from engine.batching.batch import ScoredBatch
from engine.batching.mailbox import Mailbox
from engine.routing.router import Role
from engine.runtime.session import OnnxModel

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ShadowStats:
    """Batches and rows by outcome (the outcomes are exclusive)."""

    scored: int = 0
    dropped: int = 0  # the queue was full, or the server stopped before their turn
    errors: int = 0  # the challenger raised
    bad_shape: int = 0  # outputs missing or not one row per input row
    timeouts: int = 0
    rows_scored: int = 0
    rows_dropped: int = 0
    rows_failed: int = 0  # rows of errors, bad_shape and timeouts


class Shadow:
    def __init__(self, model: OnnxModel, capacity: int, timeout_s: float,
                 deliver: Callable[[ScoredBatch], None]):
        self.model = model
        self.name = model.settings.name
        self.version = model.settings.version
        self.timeout_s = timeout_s
        self._deliver = deliver
        # session.run, not model.run_sync: the model's IO-binding buffers belong to its own
        # batches, which may run on this session at the same time (onnxruntime's run is
        # thread-safe, a shared binding is not)
        self._session = model.sessions[0]
        # Champion batches queued during one tick run together, up to the challenger's own
        # batch size: one onnxruntime call instead of several (the per-call cost dominates
        # small batches). Their latency in the log is that of the run they shared.
        self.max_rows = model.settings.batching.max_batch_size
        self._output_names = list(model.schema.output_names)
        self._box = Mailbox(capacity, tick_s=0.02)
        self._running: tuple[ort.RunOptions, float] | None = None
        self._abandon = threading.Event()  # close() ran out of time: count what is left as dropped
        self._last_log = 0.0
        self._stats = ShadowStats()  # written by the challenger's thread only; refusals are the mailbox's
        self._thread = threading.Thread(target=self._work, name=f"shadow-{model.label}", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name=f"shadow-watch-{model.label}", daemon=True)
        self._thread.start()
        self._watchdog.start()

    def offer(self, batch: ScoredBatch) -> None:
        """Called on the scoring path: never blocks."""
        self._box.put((batch, time.monotonic_ns()), batch.rows)  # full: refused and counted there

    @property
    def stats(self) -> ShadowStats:
        """The counts so far: the challenger's own, plus the batches its full mailbox refused."""
        s = self._stats
        return replace(s, dropped=s.dropped + self._box.refused,
                                   rows_dropped=s.rows_dropped + self._box.refused_rows)

    def _complain(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_log >= 10.0:  # one line per 10 s per challenger, the counts say the rest
            self._last_log = now
            log.warning("challenger %s: %s (shadow stats: %s)", self.model.label, what, self.stats)

    def _work(self) -> None:
        while True:
            items, closing = self._box.take()
            i = 0
            while i < len(items):  # coalesce consecutive batches up to the challenger's batch size
                group, rows = [items[i]], items[i][0].rows
                i += 1
                while i < len(items) and rows + items[i][0].rows <= self.max_rows:
                    group.append(items[i])
                    rows += items[i][0].rows
                    i += 1
                if self._abandon.is_set():
                    self._stats.dropped += len(group)
                    self._stats.rows_dropped += rows
                else:
                    self._score(group, rows)
            if closing and not len(self._box):
                return

    def _failed(self, group: list, rows: int, kind: str, what: str) -> None:
        setattr(self._stats, kind, getattr(self._stats, kind) + len(group))
        self._stats.rows_failed += rows
        self._complain(what)

    def _score(self, group: list[tuple[ScoredBatch, int]], rows: int) -> None:
        batches = [b for b, _ in group]
        if len(batches) == 1:
            inputs = batches[0].inputs
        else:
            try:
                inputs = {name: np.concatenate([b.inputs[name] for b in batches]) for name in batches[0].inputs}
            except ValueError:  # trailing dimensions differ between batches: one run each
                for item in group:
                    self._score([item], item[0].rows)
                return
        options = ort.RunOptions()
        options.log_severity_level = 4  # failures are counted and reported by us, once per 10 s
        start = time.monotonic_ns()
        self._running = (options, time.monotonic() + self.timeout_s)
        try:
            arrays = self._session.run(self._output_names, inputs, options)
        except Exception as exc:
            if options.terminate:
                self._failed(group, rows, "timeouts", f"a run of {rows} rows took longer than {self.timeout_s} s; stopped")
            else:
                self._failed(group, rows, "errors", f"failed on a run of {rows} rows: {exc}")
            return
        finally:
            self._running = None
        end = time.monotonic_ns()
        outputs = dict(zip(self._output_names, arrays))
        bad = [f"{name} {list(a.shape)}" for name, a in outputs.items() if a.ndim == 0 or a.shape[0] != rows]
        if bad:
            self._failed(group, rows, "bad_shape", f"returned outputs of the wrong shape for {rows} rows: {', '.join(bad)}")
            return
        self._stats.scored += len(group)
        self._stats.rows_scored += rows
        took_us = (end - start) // 1000
        wall_ns = time.time_ns()
        at = 0
        for batch, queued_ns in group:
            part = outputs if len(group) == 1 else {n: a[at:at + batch.rows] for n, a in outputs.items()}
            at += batch.rows
            waited_us = (start - queued_ns) // 1000
            members = len(batch.queue_us)
            self._deliver(ScoredBatch(
                self.name, self.version, Role.CHALLENGER, batch.inputs, part,
                np.full(members, waited_us, np.int64), np.full(members, waited_us + took_us, np.int64), took_us,
                batch.rows, batch.bounds, batch.origins, wall_ns))

    def _watch(self) -> None:
        """Stop a run that outlives the timeout (onnxruntime checks the flag between kernels)."""
        tick = max(0.01, min(0.25, self.timeout_s / 4))
        while self._thread.is_alive():
            running = self._running
            if running is not None and time.monotonic() > running[1]:
                running[0].terminate = True
            time.sleep(tick)

    @property
    def queued(self) -> int:
        return len(self._box)

    @property
    def capacity(self) -> int:
        return self._box.capacity

    def begin_close(self) -> None:
        """Take no more batches; score what is queued (close() waits for it)."""
        self._box.close()

    def close(self, timeout_s: float) -> None:
        """Score what is queued (up to timeout_s), then stop; what is left is counted as dropped."""
        self._box.close()
        self._thread.join(timeout_s)
        if self._thread.is_alive():  # hung, or too much queued: stop the run, count the rest
            self._abandon.set()
            running = self._running
            if running is not None:
                running[0].terminate = True
            self._thread.join(1.0)
