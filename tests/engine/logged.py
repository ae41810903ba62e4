"""Scoring logs written by the engine's own writer (engine/scorelog/parquet.py) from
ScoredBatch objects, for the commands that read them (evaluate, compare), with what each
logged row holds kept beside for the tests' own reckoning."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.batching.batch import Origin, ScoredBatch, source_id
from engine.scorelog.parquet import ScoreLog
from engine.settings import ScoreLogSettings


@dataclass(frozen=True)
class Row:
    version: str
    role: str
    request_id: str
    row: int  # as logged: inside the request (0 for a Kafka event, a request of one row)
    key: str | None
    outputs: dict  # output name -> this row's value (a number or a vector)


class LogBuilder:
    def __init__(self, model: str = "m"):
        self.model = model
        self.batches: list[ScoredBatch] = []
        self.rows: list[Row] = []

    def requests(self, version: str, role: str, ids: list[str], counts: list[int], outputs: dict[str, np.ndarray],
                 keys: list[str | None] | None = None) -> None:
        """One batch of requests (gRPC or REST): request i has counts[i] rows."""
        keys = keys or [None] * len(ids)
        origins = tuple(Origin(role, "sticky" if k else "default", rid, k) for rid, k in zip(ids, keys))
        bounds = tuple(int(b) for b in np.concatenate([[0], np.cumsum(counts)]))
        self._batch(version, role, bounds, origins, outputs)
        for rid, key, a, b in zip(ids, keys, bounds[:-1], bounds[1:]):
            for r in range(b - a):
                self.rows.append(Row(version, role, rid, r, key, {n: v[a + r] for n, v in outputs.items()}))

    def events(self, version: str, role: str, topic: str, offsets: list[int], keys: list[str | None],
               outputs: dict[str, np.ndarray], piece: int = 10) -> None:
        """Events of partition 0 scored from Kafka, in pieces of `piece` rows (one member each)."""
        n = len(offsets)
        bounds = tuple(range(0, n, piece)) + (n,)
        origins = tuple(Origin(role, "sticky", topic=topic, partitions=np.zeros(b - a, np.int32),
                               offsets=np.asarray(offsets[a:b], np.int64),
                               keys=[None if k is None else k.encode() for k in keys[a:b]])
                        for a, b in zip(bounds[:-1], bounds[1:]))
        self._batch(version, role, bounds, origins, outputs)
        for i, (offset, key) in enumerate(zip(offsets, keys)):
            self.rows.append(Row(version, role, source_id(topic, 0, offset), 0, key,  # an event: row 0 of its own
                                 {name: v[i] for name, v in outputs.items()}))

    def _batch(self, version: str, role: str, bounds: tuple, origins: tuple, outputs: dict[str, np.ndarray]) -> None:
        rows, members = bounds[-1], len(bounds) - 1
        self.batches.append(ScoredBatch(
            self.model, version, role, {"x": np.zeros((rows, 1), np.float32)}, outputs,
            np.zeros(members, np.int64), np.full(members, 100, np.int64), 50, rows, bounds, origins, time.time_ns()))

    def write(self, root: Path) -> Path:
        log = ScoreLog(ScoreLogSettings(dir=root))
        for batch in self.batches:
            log.put(batch)
        log.close()
        assert log.stats.rows_written == len(self.rows)
        return root
