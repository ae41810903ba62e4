"""The one bounded hand-off inside a process: from the scoring path to a background thread
that works in ticks (the monitor, each challenger, the scoring log's writer).

`put` is one length check and one deque append under an uncontended lock (tens of
nanoseconds): no wake-up, so the event loop pays next to nothing per scored batch. The lock
keeps the bounds and the counts exact when several threads put (the event loop and the
challengers' threads all feed the monitor). The consumer wakes every `tick_s`, takes
everything queued, and handles it in one go: many small batches cost it a few large calls
instead of many small ones, and it competes with the event loop for the GIL a few times per
tick instead of once per batch.

Past `capacity` items or `max_rows` rows, `put` refuses and counts (the caller drops), unless
it is given `wait_s`: then it waits up to that long for the consumer to make room -- a thread
in a real wait, an event loop never: there the item is parked (at most `max_rows` more rows,
or `capacity` more items) and the consumer, woken at once, takes it on its next pass if its
wait has not run out by then; an item whose wait ran out is refused and counted then (and
handed to `on_refused`, so that its owner can let go of it).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Mailbox:
    def __init__(self, capacity: int, tick_s: float, max_rows: int | None = None, on_refused=None):
        """At most `capacity` items and (when given) `max_rows` rows; an item alone is
        always taken, whatever its rows. `on_refused(item)`: an item put() had accepted to wait
        for room was refused after all."""
        self.capacity = capacity
        self.on_refused = on_refused
        self.max_rows = max_rows
        self.tick_s = tick_s
        self.refused = 0  # items refused (full, or their wait ran out)...
        self.refused_rows = 0  # ...and the rows they held (the `rows` given to put)
        self.accepted_rows = 0  # rows queued, parked ones once taken in time
        self._items: collections.deque = collections.deque()
        self._rows = 0
        self._parked: collections.deque = collections.deque()  # (deadline, item, rows)
        self._parked_rows = 0
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # notified when the consumer has taken
        self._wake = threading.Event()
        self._closing = threading.Event()

    def _fits(self, items: collections.deque, queued_rows: int, rows: int) -> bool:
        """Whether one more item of `rows` fits; the caller holds the lock."""
        if len(items) >= self.capacity:
            return False
        return self.max_rows is None or not items or queued_rows + rows <= self.max_rows

    def _admit(self, item, rows: int) -> bool:
        if not self._fits(self._items, self._rows, rows):
            return False
        self._items.append(item)
        self._rows += rows
        self.accepted_rows += rows
        return True

    def _refuse(self, rows: int) -> None:
        self.refused += 1
        self.refused_rows += rows

    def put(self, item, rows: int = 1, wait_s: float = 0.0) -> bool:
        """Queue an item. When the mailbox is full: False, nothing queued, the refusal
        counted -- or, with wait_s, first wait that long for room (parked on an event loop)."""
        with self._lock:
            if self._admit(item, rows):
                return True
            if wait_s <= 0:
                self._refuse(rows)
                return False
        if _on_event_loop():
            return self._park(item, rows, wait_s)
        return self._wait_for_room(item, rows, wait_s)

    def _park(self, item, rows: int, wait_s: float) -> bool:
        with self._lock:
            if not self._fits(self._parked, self._parked_rows, rows):
                self._refuse(rows)
                return False
            self._parked.append((time.monotonic() + wait_s, item, rows))
            self._parked_rows += rows
        self._wake.set()
        return True

    def _wait_for_room(self, item, rows: int, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        self._wake.set()
        with self._room:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing.is_set():
                    self._refuse(rows)
                    return False  # the caller learns it: not handed to on_refused
                self._room.wait(remaining)
                if self._admit(item, rows):
                    return True

    def __len__(self) -> int:
        return len(self._items) + len(self._parked)

    @property
    def rows(self) -> int:
        """Rows queued and parked now."""
        return self._rows + self._parked_rows

    def take(self) -> tuple[list, bool]:
        """Wait one tick (or until woken or closed), then (everything queued and the parked
        items still within their wait -- all of them when closing, whether closing)."""
        if not self._closing.is_set():
            self._wake.wait(self.tick_s)
            self._wake.clear()
        closing = self._closing.is_set()
        refused = []
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._rows = 0
            now = time.monotonic()
            while self._parked:
                deadline, item, rows = self._parked.popleft()
                self._parked_rows -= rows
                if closing or deadline >= now:
                    items.append(item)
                    self.accepted_rows += rows
                else:
                    self._refuse(rows)
                    refused.append(item)
            self._room.notify_all()
        if self.on_refused is not None:
            for item in refused:
                self.on_refused(item)
        return items, closing

    def close(self) -> None:
        """The consumer's next take() returns at once, with closing = True; waiting puts give up."""
        self._closing.set()
        self._wake.set()
        with self._room:
            self._room.notify_all()
