"""The monitor tap: scored batches go onto a bounded queue and are handled on a thread of
their own, never on the request path. When the queue is full the batch is dropped and
counted: monitoring never slows or fails a response."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from engine.batching.batch import ScoredBatch

log = logging.getLogger(__name__)


class MonitorTap:
    """`handle` gets lists of batches: everything queued at that moment, so that a busy
    server's many small batches cost the monitor a few large calls instead of many small ones."""

    def __init__(self, handle: Callable[[list[ScoredBatch]], None], capacity: int,
                 min_rows: int = 1024, linger_s: float = 0.05):
        self._handle = handle
        # Gather up to min_rows (waiting at most linger_s) before a call: the monitor's
        # Python work, which holds the GIL against the event loop, is per call, not per row.
        self.min_rows = min_rows
        self.linger_s = linger_s
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self.handled = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="scorewire-monitor", daemon=True)
        self._thread.start()

    def put(self, batch: ScoredBatch) -> None:
        """Never blocks: a full queue drops the batch (counted)."""
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            rows = items[0].rows if items[0] is not None else 0
            deadline = time.monotonic() + self.linger_s
            while items[-1] is not None and len(items) < 4096:
                try:
                    if rows >= self.min_rows:
                        items.append(self._queue.get_nowait())
                    else:
                        wait = deadline - time.monotonic()
                        if wait <= 0:
                            break
                        items.append(self._queue.get(timeout=wait))
                except queue.Empty:
                    break
                if items[-1] is not None:
                    rows += items[-1].rows
            if items[-1] is None:
                stop = True
                items.pop()
            if not items:
                continue
            try:
                self._handle(items)
                self.handled += len(items)
            except Exception:  # a monitoring bug must not stop monitoring, nor scoring
                self.failed += len(items)
                log.exception("monitor failed on %d batches", len(items))

    def close(self, timeout_s: float = 30.0) -> None:
        """Handle what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)
