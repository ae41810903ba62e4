"""A bounded hand-off from the scoring path to a background thread that works in ticks.

`put` is one length check and one deque append under an uncontended lock (tens of
nanoseconds): no wake-up, so the event loop pays next to nothing per scored batch. The lock
keeps the bound and the refusal counts exact when several threads put (the event loop and
the challengers' threads all feed the monitor). The consumer wakes every `tick_s`, takes
everything queued, and handles it in one go: many small batches cost it a few large calls
instead of many small ones, and it competes with the event loop for the GIL a few times per
tick instead of once per batch. Past `capacity` items, `put` refuses and counts (the caller
drops).
"""

from __future__ import annotations

import collections
import threading


class Mailbox:
    def __init__(self, capacity: int, tick_s: float, max_rows: int | None = None):
        """At most `capacity` items and (when given) `max_rows` rows; an item alone is
        always taken, whatever its rows."""
        self.capacity = capacity
        self.max_rows = max_rows
        self._rows = 0
        self.tick_s = tick_s
        self.refused = 0  # items refused because the mailbox was full...
        self.refused_rows = 0  # ...and the rows they held (the `rows` given to put)
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def put(self, item, rows: int = 1) -> bool:
        """Queue an item; False (nothing queued, the refusal counted) when the mailbox is full."""
        with self._lock:
            if len(self._items) >= self.capacity or (
                    self.max_rows is not None and self._items and self._rows + rows > self.max_rows):
                self.refused += 1
                self.refused_rows += rows
                return False
            self._items.append(item)
            self._rows += rows
            return True

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> tuple[list, bool]:
        """Wait one tick (or until close), then (everything queued, whether closing)."""
        closing = self._closing.wait(self.tick_s)
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._rows = 0
        return items, closing

    def close(self) -> None:
        """The consumer's next take() returns at once, with closing = True."""
        self._closing.set()
