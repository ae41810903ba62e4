"""A chunk: one consume() call's messages, from decoding to the broker's acknowledgements."""

from __future__ import annotations

import enum

import numpy as np

from engine.codec.kafka import Decoded


class State(enum.Enum):
    """Where a chunk is. CONSUMED -> SCORED -> PRODUCED -> SETTLED; ABANDONED from any state
    before SETTLED (not scored because the engine is stopping, or given up by a producer
    restart or an aborted transaction): an abandoned chunk's offsets are never committed,
    its events are consumed again."""

    CONSUMED = "consumed"  # decoded, being scored
    SCORED = "scored"  # results and dead letters encoded, waiting for its turn to be produced
    PRODUCED = "produced"  # handed to the producer (at-least-once: reports pending; exactly-once: in a transaction)
    SETTLED = "settled"  # every result and dead letter acknowledged (or committed in a transaction)
    ABANDONED = "abandoned"


class Chunk:
    __slots__ = ("size", "consumed_ns", "values", "keys", "partitions", "offsets", "decoded", "ends", "state",
                 "counted", "pending", "results", "dead", "generation", "result_rows", "_sources", "owner")

    def __init__(self, values, keys, partitions: np.ndarray, offsets: np.ndarray, consumed_ns: int,
                 generation: int = 0):
        self.generation = generation  # the producer generation it was consumed in (see Delivery.restart)
        self.size = len(values)
        self.values = values
        self.keys = keys
        self.partitions = partitions
        self.offsets = offsets
        self.consumed_ns = consumed_ns
        self.decoded: Decoded | None = None
        # partition -> offset after its last message here (offsets grow within a partition)
        reverse = partitions[::-1]
        present, last = np.unique(reverse, return_index=True)
        self.ends: dict[int, int] = dict(zip(present.tolist(), (offsets[::-1][last] + 1).tolist()))
        self.state = State.CONSUMED
        self.counted = False  # counted as no longer in flight (the stream's `_finish`)
        self.pending = 0  # at-least-once: delivery reports still to come
        self.results: list[tuple[bytes | None, bytes]] = []
        self.result_rows: list[np.ndarray] = []  # the message index of each result, in pieces
        self.dead: list[tuple[bytes | None, bytes, list]] = []
        self._sources: dict[bytes, int] | None = None
        self.owner = None  # at-least-once: the delivery its reports go to

    # Delivery reports (at-least-once), one per produced message, on the event loop
    # (producer.poll()). Two copies of the same few lines on purpose: `delivered` runs once per
    # result, and one more Python call per message is measurable at 200k+ events/s.
    def delivered(self, err, msg) -> None:
        if err is not None:
            self.owner.failed(self, err, msg, None)
            return
        self.pending -= 1
        if not self.pending:
            self.owner.settled(self)

    def delivered_dead(self, headers, err, msg) -> None:
        if err is not None:
            self.owner.failed(self, err, msg, headers)
            return
        self.pending -= 1
        if not self.pending:
            self.owner.settled(self)

    @property
    def abandoned(self) -> bool:
        return self.state is State.ABANDONED

    def abandon(self) -> bool:
        """Give the chunk up; False when it was settled or given up already."""
        if self.state in (State.SETTLED, State.ABANDONED):
            return False
        self.state = State.ABANDONED
        return True

    def source_of(self, result: bytes) -> int:
        """The index of the message a result was scored from (built on first use: failures only)."""
        if self._sources is None:
            rows = np.concatenate(self.result_rows).tolist() if self.result_rows else []
            self._sources = {value: row for (_, value), row in zip(self.results, rows)}
        return self._sources[result]

    def release(self) -> None:
        """Let its data go (settled or abandoned: only the offsets are needed any more)."""
        self.values = self.decoded = self.results = self.dead = None
        self.result_rows = []
        self._sources = None
