"""The Parquet scoring log: one row per scored row, written by a thread of its own.

Dataset layout (Hive partitions): DIR/model=NAME/role=ROLE/date=YYYY-MM-DD/part-*.parquet.
Columns: time (UTC, when the batch was scored), request_id, row (index inside the request),
routing_key, version, routing (default | sticky | random | pinned), one column per input
feature (in_*) and per output column (out_*), queue_us, inference_us, total_us.

A file is written under a hidden temporary name (.part-*.parquet.tmp) and renamed when it is
closed (after fsync of the file, then of its folder), so a reader of `**/*.parquet` only ever
sees complete files, even after a crash. Files rotate by rows and by age; `close()` writes
everything queued and closes every file. The queue is bounded in rows: when the writer falls
behind, new rows are dropped and counted, or (when_full = "block") the caller waits up to
block_timeout_ms first.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.batching.batch import ScoredBatch
from engine.settings import ScoreLogSettings

log = logging.getLogger(__name__)

# A tensor wider than this (per row) is logged as one list column, not one column per value.
MAX_EXPANDED_COLUMNS = 1024


@dataclass(slots=True)
class ScoreLogStats:
    rows_queued: int = 0
    rows_written: int = 0
    rows_dropped: int = 0  # queue full
    rows_failed: int = 0  # the write failed (disk full, permissions): logged
    files_closed: int = 0


@dataclass(slots=True)
class _OpenFile:
    tmp: Path
    final: Path
    writer: pq.ParquetWriter
    schema: pa.Schema
    opened: float
    rows: int = 0


@dataclass(slots=True)
class _Queue:
    items: collections.deque = field(default_factory=collections.deque)
    rows: int = 0
    closing: bool = False


def tensor_columns(prefix: str, name: str, array: np.ndarray, names: list[str] | None) -> list[tuple[str, pa.Array]]:
    """Columns of one tensor: one per value of a row (named after `names` when given),
    or a single list column when a row holds more than MAX_EXPANDED_COLUMNS values."""
    rows = array.shape[0]
    flat = array.reshape(rows, -1) if array.ndim != 1 else array.reshape(rows, 1)
    width = flat.shape[1]
    if array.ndim == 1:
        return [(f"{prefix}{name}", pa.array(array))]
    if width > MAX_EXPANDED_COLUMNS:
        values = pa.array(np.ascontiguousarray(flat).reshape(-1))
        return [(f"{prefix}{name}", pa.FixedSizeListArray.from_arrays(values, width))]
    if names is None or len(names) != width:
        names = [f"{name}_{j}" for j in range(width)]
    columns = np.ascontiguousarray(flat.T)  # one contiguous row per column: zero-copy into Arrow
    return [(f"{prefix}{n}", pa.array(columns[j])) for j, n in enumerate(names)]


def _member_column(origins, counts: np.ndarray, member_of_row: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """request_id and routing_key per row, from the members' origins."""
    if all(o is None or o.topic is None for o in origins):  # gRPC members: one id and key each
        ids = pa.array([None if o is None else o.request_id for o in origins], type=pa.string())
        keys = pa.array([None if o is None else o.routing_key for o in origins], type=pa.string())
        take = pa.array(member_of_row)
        return pc.take(ids, take), pc.take(keys, take)
    id_parts, key_parts = [], []
    for o, n in zip(origins, counts.tolist()):
        if o is not None and o.topic is not None:  # Kafka piece: the source is the id
            index = pa.array(o.index)
            id_parts.append(pc.binary_join_element_wise(
                o.topic, pa.array(o.partitions[o.index]).cast(pa.string()),
                pa.array(o.offsets[o.index]).cast(pa.string()), "/"))
            raw = pc.take(pa.array(o.keys, type=pa.binary()), index)
            try:
                key_parts.append(raw.cast(pa.string()))
            except pa.ArrowInvalid:  # keys that are not UTF-8: logged as hex
                key_parts.append(pa.array([None if k is None else k.hex() for k in raw.to_pylist()], type=pa.string()))
        else:
            id_parts.append(pa.array([None if o is None else o.request_id] * n, type=pa.string()))
            key_parts.append(pa.array([None if o is None else o.routing_key] * n, type=pa.string()))
    return pa.concat_arrays(id_parts), pa.concat_arrays(key_parts)


def to_table(batch: ScoredBatch, feature_names: dict[str, list[str]]) -> tuple[pa.Table, np.ndarray]:
    """The batch's log rows, and the role of each row (members of one batch may differ)."""
    n = batch.rows
    bounds = np.asarray(batch.bounds or (0, n), dtype=np.int64)
    counts = np.diff(bounds)
    members = len(counts)
    origins = batch.origins or (None,) * members
    member_of_row = np.repeat(np.arange(members, dtype=np.int64), counts)
    request_id, routing_key = _member_column(origins, counts, member_of_row)
    if batch.role == "challenger":
        roles = np.full(n, "challenger", dtype=object)
        routing = pa.array(["shadow"] * members, type=pa.string())
    else:
        roles = np.array([batch.role if o is None else o.role for o in origins], dtype=object)[member_of_row]
        routing = pa.array(["default" if o is None else o.routing for o in origins], type=pa.string())
    columns: list[tuple[str, pa.Array]] = [
        ("time", pa.array(np.full(n, batch.wall_ns // 1000, dtype=np.int64), type=pa.timestamp("us", tz="UTC"))),
        ("request_id", request_id),
        ("row", pa.array((np.arange(n, dtype=np.int64) - bounds[:-1][member_of_row]).astype(np.int32))),
        ("routing_key", routing_key),
        ("version", pa.array(np.full(n, batch.version, dtype=object), type=pa.string())),
        ("routing", pc.take(routing, pa.array(member_of_row))),
    ]
    for name, array in batch.inputs.items():
        columns += tensor_columns("in_", name, array, feature_names.get(name))
    for name, array in batch.outputs.items():
        columns += tensor_columns("out_", name, array, None)
    columns += [
        ("queue_us", pa.array(np.asarray(batch.queue_us, dtype=np.int64)[member_of_row])),
        ("inference_us", pa.array(np.full(n, batch.inference_us, dtype=np.int64))),
        ("total_us", pa.array(np.asarray(batch.total_us, dtype=np.int64)[member_of_row])),
    ]
    return pa.table(dict(columns)), roles


class ScoreLog:
    def __init__(self, settings: ScoreLogSettings, feature_names: dict[tuple[str, str], list[str]] | None = None):
        """feature_names: (model name, input name) -> names of the input's columns."""
        self.settings = settings
        self.root = Path(settings.dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.feature_names = feature_names or {}
        self.stats = ScoreLogStats()
        self._cond = threading.Condition()
        self._queue = _Queue()
        self._files: dict[tuple[str, str, str], _OpenFile] = {}
        self._seq = itertools.count()
        self._compression = None if settings.compression == "none" else settings.compression
        self._thread = threading.Thread(target=self._run, name="scorewire-scorelog", daemon=True)
        self._thread.start()

    # -- the scoring side ------------------------------------------------------------------------
    def put(self, batch: ScoredBatch) -> None:
        """Queue a scored batch. Never waits unless when_full = "block" (then at most block_timeout_ms)."""
        limit = self.settings.queue_rows
        with self._cond:
            q = self._queue
            if q.rows + batch.rows > limit and q.rows > 0:
                if self.settings.when_full == "block" and self.settings.block_timeout_ms > 0:
                    self._cond.wait_for(lambda: q.rows + batch.rows <= limit or q.rows == 0,
                                        self.settings.block_timeout_ms / 1000)
                if q.rows + batch.rows > limit and q.rows > 0:
                    self.stats.rows_dropped += batch.rows
                    return
            q.items.append(batch)
            q.rows += batch.rows
            self.stats.rows_queued += batch.rows
            if len(q.items) == 1:
                self._cond.notify_all()

    @property
    def queued_rows(self) -> int:
        return self._queue.rows

    # -- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        q = self._queue
        while True:
            with self._cond:
                self._cond.wait_for(lambda: q.items or q.closing, timeout=self._tick())
                items = list(q.items)
                q.items.clear()
                q.rows = 0
                closing = q.closing
                self._cond.notify_all()  # room for blocked callers
            if items:
                self._write(items)
            self._rotate(force=closing)
            if closing:
                return

    def _tick(self) -> float:
        return min(1.0, self.settings.max_file_age_s / 4)

    def _write(self, items: list[ScoredBatch]) -> None:
        groups: dict[tuple[str, str, str], list[pa.Table]] = {}
        for batch in items:
            try:
                names = {i: self.feature_names.get((batch.model, i)) for i in batch.inputs}
                table, roles = to_table(batch, {k: v for k, v in names.items() if v})
            except Exception:
                self.stats.rows_failed += batch.rows
                log.exception("scoring log: cannot convert a batch of %s:%s", batch.model, batch.version)
                continue
            date = dt.datetime.fromtimestamp(batch.wall_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d")
            first = roles[0]
            if (roles == first).all():
                groups.setdefault((batch.model, first, date), []).append(table)
            else:
                for role in dict.fromkeys(roles.tolist()):
                    picked = table.filter(pa.array(roles == role))
                    groups.setdefault((batch.model, role, date), []).append(picked)
        for key, tables in groups.items():
            try:
                table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="none")
            except pa.ArrowInvalid:  # versions with different columns: write them one by one
                for t in tables:
                    self._append(key, t)
                continue
            self._append(key, table)

    def _append(self, key: tuple[str, str, str], table: pa.Table) -> None:
        try:
            while table.num_rows:
                f = self._files.get(key)
                if f is not None and not f.schema.equals(table.schema):
                    self._finalize(key)
                    f = None
                if f is None:
                    f = self._open(key, table.schema)
                room = self.settings.max_rows_per_file - f.rows
                part = table.slice(0, room) if table.num_rows > room else table
                f.writer.write_table(part)
                f.rows += part.num_rows
                self.stats.rows_written += part.num_rows
                table = table.slice(part.num_rows)
                if f.rows >= self.settings.max_rows_per_file:
                    self._finalize(key)
        except OSError:
            self.stats.rows_failed += table.num_rows
            log.exception("scoring log: cannot write %d rows under %s", table.num_rows, self.root)

    def _open(self, key: tuple[str, str, str], schema: pa.Schema) -> _OpenFile:
        model, role, date = key
        folder = self.root / f"model={model}" / f"role={role}" / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        stem = f"part-{stamp}-{os.getpid()}-{next(self._seq):06d}"
        tmp = folder / f".{stem}.parquet.tmp"
        writer = pq.ParquetWriter(tmp, schema, compression=self._compression)
        f = _OpenFile(tmp, folder / f"{stem}.parquet", writer, schema, time.monotonic())
        self._files[key] = f
        return f

    def _finalize(self, key: tuple[str, str, str]) -> None:
        f = self._files.pop(key)
        try:
            f.writer.close()
            fd = os.open(f.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(f.tmp, f.final)
            dir_fd = os.open(f.final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self.stats.files_closed += 1
        except OSError:
            self.stats.rows_failed += f.rows
            self.stats.rows_written -= f.rows
            log.exception("scoring log: cannot close %s", f.tmp)

    def _rotate(self, force: bool) -> None:
        now = time.monotonic()
        for key in [k for k, f in self._files.items() if force or now - f.opened >= self.settings.max_file_age_s]:
            self._finalize(key)

    def close(self, timeout_s: float = 60.0) -> None:
        """Write everything queued, close every file, stop the thread."""
        with self._cond:
            self._queue.closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("scoring log: the writer did not finish within %.0f s", timeout_s)
