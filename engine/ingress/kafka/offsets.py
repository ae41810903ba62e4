"""What may be committed: pure bookkeeping of chunk ends per partition, no client.

A partition's offset is committed only up to the end of the longest prefix of its chunks
that are settled: a chunk settled out of order waits for the ones consumed before it, and an
abandoned chunk holds its partition back until the reader consumes it again (the tracker is
cleared then). The event loop settles chunks; the reader thread takes what is ready to commit,
under one lock.
"""

from __future__ import annotations

import collections
import threading

from engine.ingress.kafka.chunk import Chunk, State


_DONE = (State.SETTLED, State.ABANDONED)


class OffsetTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[int, collections.deque[Chunk]] = {}  # unsettled chunks per partition (loop)
        self._ready: dict[int, int] = {}  # partition -> offset to commit (loop writes, reader takes)
        self._settled: dict[int, int] = {}  # partition -> end of its settled prefix (loop writes)

    # -- the loop --------------------------------------------------------------------------
    def add(self, chunk: Chunk) -> None:
        """A chunk now in flight, in consume order."""
        for p in chunk.ends:
            self._queues.setdefault(p, collections.deque()).append(chunk)

    def settled(self, chunk: Chunk) -> dict[int, int]:
        """`chunk` is settled: move each of its partitions' settled prefix on. Returns the
        partitions whose end moved, and to where."""
        moved = {}
        for p in chunk.ends:
            queue = self._queues.get(p)
            end = None
            while queue and queue[0].state is State.SETTLED:
                end = queue.popleft().ends[p]
            if end is not None:
                moved[p] = end
        if moved:
            with self._lock:
                self._ready.update(moved)
                self._settled.update(moved)
        return moved

    def committed(self, chunks: list[Chunk], offsets: dict[int, int]) -> None:
        """Exactly-once: `chunks` (every chunk of a transaction, settled) were committed with
        `offsets` in their transaction."""
        for chunk in chunks:
            for p in chunk.ends:
                queue = self._queues.get(p)
                if queue and queue[0] is chunk:
                    queue.popleft()
        with self._lock:
            self._settled.update(offsets)

    def in_flight(self) -> list[Chunk]:
        """Every chunk not yet out of the tracker (each once)."""
        seen: dict[int, Chunk] = {}
        for queue in self._queues.values():
            for chunk in queue:
                seen.setdefault(id(chunk), chunk)
        return list(seen.values())

    def busy(self, partitions: set[int] | None) -> bool:
        """Does a chunk of `partitions` (None: any) still wait to settle? (A settled chunk kept
        behind an abandoned one does not: it waits for nothing.)"""
        queues = self._queues.values() if partitions is None else [self._queues.get(p, ()) for p in partitions]
        return any(c.state not in _DONE for q in queues for c in q)

    def forget(self, partitions: set[int] | None) -> None:
        """Stop tracking the chunks of `partitions` (None: all): settled, given up, or revoked."""
        if partitions is None:
            self._queues.clear()
        for p in partitions or ():
            self._queues.pop(p, None)

    # -- the reader ------------------------------------------------------------------------
    def take_ready(self) -> dict[int, int]:
        """What settled since the last take: partition -> offset to commit."""
        with self._lock:
            ready, self._ready = self._ready, {}
        return ready

    def settled_upto(self, partitions: set[int] | None = None) -> dict[int, int]:
        """The end of each partition's settled prefix (None: all). Taken from the ready ones:
        a synchronous commit of these covers them."""
        with self._lock:
            ends = {p: o for p, o in self._settled.items() if partitions is None or p in partitions}
            for p in ends:
                self._ready.pop(p, None)
        return ends

    def settled_copy(self) -> dict[int, int]:
        with self._lock:
            return dict(self._settled)

    def let_go(self, partitions: set[int]) -> None:
        """Partitions revoked or lost: nothing of theirs is committed by this worker any more."""
        with self._lock:
            for p in partitions:
                self._settled.pop(p, None)
                self._ready.pop(p, None)
