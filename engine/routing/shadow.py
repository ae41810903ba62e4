"""Shadow scoring: a challenger scores the batches its champion scored, on a thread of its
own, and its results go to the taps (scoring log, latency, drift), never to a caller.

Isolation: `offer` never blocks (a full queue drops the batch, counted); a run that raises
or returns outputs of the wrong shape is counted and logged; a run longer than the timeout
is stopped through onnxruntime's terminate flag and counted. None of it reaches the
champion, whose response was sent before the batch was offered.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from engine.batching.batch import ScoredBatch
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
        self.capacity = capacity
        self._deliver = deliver
        self._session = model.sessions[0]
        self._output_names = list(model.schema.output_names)
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._running: tuple[ort.RunOptions, float] | None = None
        self._closing = threading.Event()
        self._last_log = 0.0
        self.stats = ShadowStats()
        self._thread = threading.Thread(target=self._work, name=f"shadow-{model.label}", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name=f"shadow-watch-{model.label}", daemon=True)
        self._thread.start()
        self._watchdog.start()

    def offer(self, batch: ScoredBatch) -> None:
        """Called on the scoring path: never blocks."""
        try:
            self._queue.put_nowait((batch, time.monotonic_ns()))
        except queue.Full:
            self.stats.dropped += 1
            self.stats.rows_dropped += batch.rows

    def _complain(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_log >= 10.0:  # one line per 10 s per challenger, the counts say the rest
            self._last_log = now
            log.warning("challenger %s: %s (shadow stats: %s)", self.model.label, what, self.stats)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._score(*item)

    def _score(self, batch: ScoredBatch, queued_ns: int) -> None:
        options = ort.RunOptions()
        options.log_severity_level = 4  # failures are counted and reported by us, once per 10 s
        start = time.monotonic_ns()
        self._running = (options, time.monotonic() + self.timeout_s)
        try:
            arrays = self._session.run(self._output_names, batch.inputs, options)
        except Exception as exc:
            if options.terminate:
                self.stats.timeouts += 1
                self._complain(f"a batch of {batch.rows} rows took longer than {self.timeout_s} s; stopped")
            else:
                self.stats.errors += 1
                self._complain(f"failed on a batch of {batch.rows} rows: {exc}")
            self.stats.rows_failed += batch.rows
            return
        finally:
            self._running = None
        end = time.monotonic_ns()
        outputs = dict(zip(self._output_names, arrays))
        bad = [f"{name} {list(a.shape)}" for name, a in outputs.items() if a.ndim == 0 or a.shape[0] != batch.rows]
        if bad:
            self.stats.bad_shape += 1
            self.stats.rows_failed += batch.rows
            self._complain(f"returned outputs of the wrong shape for {batch.rows} rows: {', '.join(bad)}")
            return
        self.stats.scored += 1
        self.stats.rows_scored += batch.rows
        waited_us = (start - queued_ns) // 1000
        took_us = (end - start) // 1000
        members = len(batch.queue_us)
        self._deliver(ScoredBatch(
            self.name, self.version, "challenger", batch.inputs, outputs,
            np.full(members, waited_us, np.int64), np.full(members, waited_us + took_us, np.int64), took_us,
            batch.rows, batch.bounds, batch.origins, time.time_ns()))

    def _watch(self) -> None:
        """Stop a run that outlives the timeout (onnxruntime checks the flag between kernels)."""
        tick = min(0.05, self.timeout_s / 4)
        while not (self._closing.is_set() and not self._thread.is_alive()):
            running = self._running
            if running is not None and time.monotonic() > running[1]:
                running[0].terminate = True
            time.sleep(tick)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float) -> None:
        """Score what is queued (up to timeout_s), then stop; what is left is counted as dropped."""
        self._closing.set()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(None, timeout=0.05)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():  # hung or too much queued: stop the run, count the rest
            running = self._running
            if running is not None:
                running[0].terminate = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self.stats.dropped += 1
                    self.stats.rows_dropped += item[0].rows
            self._queue.put(None)
            self._thread.join(5.0)
