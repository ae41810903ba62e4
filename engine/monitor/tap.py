"""The monitor tap: scored batches are handed to a thread of their own, never handled on
the request path. When its mailbox is full the batch is dropped and counted: monitoring
never slows or fails a response."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from engine.batching.batch import ScoredBatch
from engine.batching.mailbox import Mailbox

log = logging.getLogger(__name__)


class MonitorTap:
    """`handle` gets lists of batches: everything queued during one tick (`tick_s`), so that
    a busy server's many small batches cost the monitor a few large calls instead of many
    small ones (its Python work holds the GIL against the event loop per call, not per row)."""

    def __init__(self, handle: Callable[[list[ScoredBatch]], None], capacity: int, tick_s: float = 0.05):
        self._handle = handle
        self._box = Mailbox(capacity, tick_s)
        self.dropped = 0
        self.handled = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="scorewire-monitor", daemon=True)
        self._thread.start()

    def put(self, batch: ScoredBatch) -> None:
        """Never blocks: a full mailbox drops the batch (counted)."""
        if not self._box.put(batch):
            self.dropped += 1

    def _run(self) -> None:
        while True:
            items, closing = self._box.take()
            if items:
                try:
                    self._handle(items)
                    self.handled += len(items)
                except Exception:  # a monitoring bug must not stop monitoring, nor scoring
                    self.failed += len(items)
                    log.exception("monitor failed on %d batches", len(items))
            if closing and not len(self._box):
                return

    def close(self, timeout_s: float = 30.0) -> None:
        """Handle what is queued, then stop the thread."""
        self._box.close()
        self._thread.join(timeout_s)
