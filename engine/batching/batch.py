"""An immutable batch: the concatenated inputs of several requests and their row ranges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    inputs: dict[str, np.ndarray]
    bounds: tuple[int, ...]  # row offsets: member i owns rows bounds[i]:bounds[i+1]

    @classmethod
    def concat(cls, members: list[dict[str, np.ndarray]]) -> "Batch":
        """Concatenate the members' inputs along the row axis (no copy for one member)."""
        bounds = [0]
        for inputs in members:
            first = next(iter(inputs.values()))
            bounds.append(bounds[-1] + first.shape[0])
        if len(members) == 1:
            return cls(dict(members[0]), tuple(bounds))
        names = members[0].keys()
        joined = {name: np.concatenate([m[name] for m in members]) for name in names}
        return cls(joined, tuple(bounds))

    @property
    def rows(self) -> int:
        return self.bounds[-1]

    @property
    def members(self) -> int:
        return len(self.bounds) - 1

    def split(self, outputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Slice batch outputs back to each member (views, row axis first)."""
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != self.rows:
                raise ValueError(
                    f"output '{name}' has shape {list(array.shape)}; expected {self.rows} rows first"
                )
        b = self.bounds
        if len(b) == 2:  # one member: all of it
            return [outputs]
        return [{name: array[b[i] : b[i + 1]] for name, array in outputs.items()} for i in range(len(b) - 1)]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a batch member came from, for the scoring log: a gRPC request (one id and key
    for its rows) or a piece of a Kafka chunk (the partition, offset and key of each of its
    rows, and no more). The log builds per-row columns from it on its own thread, never on
    the request path."""

    role: str = "champion"  # a Role: champion | arm | direct (challenger rows are logged by the shadow)
    routing: str = "default"  # a Routing: default | sticky | random | pinned
    request_id: str | None = None
    routing_key: str | None = None
    topic: str | None = None
    partitions: np.ndarray | None = None  # per row
    offsets: np.ndarray | None = None  # per row
    keys: list | None = None  # Kafka message keys (bytes or None), per row
    ids: list | None = None  # the JSON token of each row's "id" (bytes, None when absent), when the join wants them

    def rows(self, a: int, b: int) -> "Origin":
        """The origin of rows a:b of this member (a request's is the same for every row)."""
        if self.topic is None:
            return self
        return Origin(self.role, self.routing, self.request_id, self.routing_key, self.topic,
                      self.partitions[a:b], self.offsets[a:b], self.keys[a:b],
                      None if self.ids is None else self.ids[a:b])


SOURCE_SEP = "/"


def source_id(topic: str, partition, offset) -> str:
    """A Kafka event's id: `topic/partition/offset`. Dead letters' scorewire.source header
    says it; the scoring log's request_id of Kafka rows and a result's "source" are built
    column-wise with the same SOURCE_SEP."""
    return f"{topic}{SOURCE_SEP}{partition}{SOURCE_SEP}{offset}"


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """A batch after scoring, as the taps (monitor, shadows, log) receive it."""

    model: str  # name
    version: str
    role: str  # the role of the version: champion, or challenger for shadow results
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    queue_us: np.ndarray  # per member
    total_us: np.ndarray  # per member
    inference_us: int  # the batch's run
    rows: int
    bounds: tuple[int, ...] = ()  # member row offsets, as Batch.bounds
    origins: tuple[Origin | None, ...] = ()  # per member
    wall_ns: int = 0  # time.time_ns() when the batch was scored
    # the position of its first row among its version's rows this observer run took in
    # (Observer.put stamps it; -1 before): the key by which a drift window is found in the log
    seq: int = -1

    def stamped(self, seq: int) -> ScoredBatch:
        """This batch with `seq` (built field by field: dataclasses.replace costs ~25 us)."""
        return ScoredBatch(self.model, self.version, self.role, self.inputs, self.outputs, self.queue_us,
                           self.total_us, self.inference_us, self.rows, self.bounds, self.origins, self.wall_ns, seq)
