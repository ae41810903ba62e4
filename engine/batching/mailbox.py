"""A bounded hand-off from the scoring path to a background thread that works in ticks.

`put` is one length check and one deque append (both atomic under the GIL): no lock, no
wake-up, so the event loop pays next to nothing per scored batch. The consumer wakes every
`tick_s`, takes everything queued, and handles it in one go: many small batches cost it a few
large calls instead of many small ones, and it competes with the event loop for the GIL a few
times per tick instead of once per batch. Past `capacity` items, `put` refuses (the caller
drops and counts).
"""

from __future__ import annotations

import collections
import threading


class Mailbox:
    def __init__(self, capacity: int, tick_s: float):
        self.capacity = capacity
        self.tick_s = tick_s
        self._items: collections.deque = collections.deque()
        self._closing = threading.Event()

    def put(self, item) -> bool:
        """Queue an item; False (and nothing queued) when the mailbox is full."""
        if len(self._items) >= self.capacity:
            return False
        self._items.append(item)
        return True

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> tuple[list, bool]:
        """Wait one tick (or until close), then (everything queued, whether closing)."""
        closing = self._closing.wait(self.tick_s)
        items = []
        popleft = self._items.popleft
        for _ in range(len(self._items)):
            items.append(popleft())
        return items, closing

    def close(self) -> None:
        """The consumer's next take() returns at once, with closing = True."""
        self._closing.set()
