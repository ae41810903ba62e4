"""The Parquet scoring log: one row per scored row, written by a thread of its own.

Dataset layout (Hive partitions): DIR/model=NAME/role=ROLE/date=YYYY-MM-DD/part-*.parquet.
Columns: time (UTC, when the batch was scored), request_id, row (index inside the request),
routing_key, version, routing (default | sticky | random | pinned | shadow), one column per input
feature (in_*) and per output column (out_*), queue_us, inference_us, total_us.

A file is written under a hidden temporary name (.part-*.parquet.tmp) and renamed when it is
closed (after fsync of the file, then of its folder), so a reader of `**/*.parquet` only ever
sees complete files, even after a crash. Files rotate by rows and by age; `close()` writes
everything queued and closes every file. The queue is the mailbox the monitor and the
challengers are fed by too (engine/batching/mailbox.py), bounded in rows: when the writer falls
behind, new rows are dropped and counted, or (when_full = "block") they wait up to
block_timeout_ms for room first -- a thread (a challenger's) in a real wait, the event loop
never: there a batch is parked (at most queue_rows more) and the writer, woken at once, takes
it when it has made room. The writer survives any failure (logged, rows counted as failed).
At start, temporary files left by writers that no longer run (kill -9) are removed.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.batching.batch import ScoredBatch
from engine.batching.mailbox import Mailbox
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
    writer_errors: int = 0  # failures the writer survived (logged)
    stale_removed: int = 0  # temporary files of dead writers removed at start


@dataclass(slots=True)
class _OpenFile:
    tmp: Path
    final: Path
    writer: pq.ParquetWriter
    opened: float
    rows: int = 0


def tensor_columns(prefix: str, name: str, parts: list[np.ndarray], names: list[str] | None) -> list[tuple[str, pa.Array]]:
    """Columns of one tensor, given as consecutive row blocks: one column per value of a row
    (named after `names` when given), or one list column when a row holds more than
    MAX_EXPANDED_COLUMNS values."""
    if parts[0].ndim == 1:
        return [(f"{prefix}{name}", pa.array(_joined(parts)))]
    flat = [p.reshape(p.shape[0], -1) for p in parts]
    width = flat[0].shape[1]
    rows = sum(f.shape[0] for f in flat)
    if width > MAX_EXPANDED_COLUMNS:
        values = pa.array(np.ascontiguousarray(_joined(flat)).reshape(-1))
        return [(f"{prefix}{name}", pa.FixedSizeListArray.from_arrays(values, width))]
    if names is None or len(names) != width:
        names = [f"{name}_{j}" for j in range(width)]
    # Column-major, block by block: small transposes stay in cache (one transpose of the
    # whole matrix is 8x slower); each column is then a contiguous row, zero-copy into Arrow.
    columns = np.empty((width, rows), dtype=flat[0].dtype)
    at = 0
    for f in flat:
        columns[:, at:at + f.shape[0]] = f.T
        at += f.shape[0]
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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Make a finished file visible under its final name: fsync it, rename it, fsync its
    folder (so the rename survives a crash too)."""
    _fsync(tmp)
    os.rename(tmp, final)
    _fsync(final.parent)


def remove_stale(root: Path) -> int:
    """Remove the temporary files under `root` of writers that no longer run (their process id
    is in the name); files of live writers, this process's or another's, stay."""
    removed = 0
    for tmp in root.glob("**/.part-*.parquet.tmp"):
        try:
            pid = int(tmp.name.split("-")[-2])
            os.kill(pid, 0)
            continue  # alive (or not ours to signal): its writer may still rename it
        except ProcessLookupError:
            pass
        except (ValueError, IndexError, PermissionError):
            continue
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            log.warning("scoring log: cannot remove the stale %s", tmp)
    if removed:
        log.warning("scoring log: removed %d temporary file(s) of writers that stopped without closing them",
                    removed)
    return removed


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def to_table(batches: list[ScoredBatch], feature_names: dict[str, list[str]]) -> tuple[pa.Table, list]:
    """Log rows of batches of one model version (in order), and which rows have which role
    (the members of one batch may differ: routed and pinned requests share a version's batches)."""
    members = [len(b.bounds) - 1 if b.bounds else 1 for b in batches]
    offsets = np.cumsum([0] + [b.rows for b in batches])
    n = int(offsets[-1])
    bounds = np.concatenate([np.asarray(b.bounds[:-1] if b.bounds else (0,), dtype=np.int64) + offsets[i]
                             for i, b in enumerate(batches)] + [np.array([n], dtype=np.int64)])
    counts = np.diff(bounds)
    origins = tuple(o for b, m in zip(batches, members) for o in (b.origins or (None,) * m))
    member_of_row = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    request_id, routing_key = _member_column(origins, counts, member_of_row)
    first = batches[0]
    if first.role == "challenger":
        roles = ["challenger"] * len(counts)
        routing = pa.array(["shadow"] * len(counts), type=pa.string())
    else:
        roles = [first.role if o is None else o.role for o in origins]
        routing = pa.array(["default" if o is None else o.routing for o in origins], type=pa.string())
    per_member = np.repeat(np.array([b.wall_ns // 1000 for b in batches], dtype=np.int64), members)
    inference = np.repeat(np.array([b.inference_us for b in batches], dtype=np.int64), members)
    take = pa.array(member_of_row)
    columns: list[tuple[str, pa.Array]] = [
        ("time", pa.array(per_member[member_of_row], type=pa.timestamp("us", tz="UTC"))),
        ("request_id", request_id),
        ("row", pa.array((np.arange(n, dtype=np.int64) - bounds[:-1][member_of_row]).astype(np.int32))),
        ("routing_key", routing_key),
        ("version", pa.repeat(pa.scalar(first.version, pa.string()), n)),
        ("routing", pc.take(routing, take)),
    ]
    for name in first.inputs:
        columns += tensor_columns("in_", name, [b.inputs[name] for b in batches], feature_names.get(name))
    for name in first.outputs:
        columns += tensor_columns("out_", name, [b.outputs[name] for b in batches], None)
    columns += [
        ("queue_us", pa.array(_joined([np.asarray(b.queue_us, dtype=np.int64) for b in batches])[member_of_row])),
        ("inference_us", pa.array(inference[member_of_row])),
        ("total_us", pa.array(_joined([np.asarray(b.total_us, dtype=np.int64) for b in batches])[member_of_row])),
    ]
    return pa.table(dict(columns)), _row_roles(roles, member_of_row)


def _row_roles(member_roles: list[str], member_of_row: np.ndarray) -> list[tuple[str, np.ndarray | None]]:
    """(role, row mask or None for all rows) per role present."""
    distinct = list(dict.fromkeys(member_roles))
    if len(distinct) == 1:
        return [(distinct[0], None)]
    codes = np.array([distinct.index(r) for r in member_roles])[member_of_row]
    return [(role, codes == i) for i, role in enumerate(distinct)]


class ScoreLog:
    def __init__(self, settings: ScoreLogSettings, feature_names: dict[tuple[str, str], list[str]] | None = None):
        """feature_names: (model name, input name) -> names of the input's columns."""
        self.settings = settings
        self.root = Path(settings.dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.feature_names = feature_names or {}
        self._stats = ScoreLogStats()  # written by the writer thread only; the queue counts its own
        self._stats.stale_removed = remove_stale(self.root)
        self._box = Mailbox(settings.queue_rows, tick_s=min(0.5, settings.max_file_age_s / 4),
                            max_rows=settings.queue_rows)
        self._files: dict[tuple[str, str, str], _OpenFile] = {}
        self._seq = itertools.count()
        self._compression = None if settings.compression == "none" else settings.compression
        self._thread = threading.Thread(target=self._run, name="scorewire-scorelog", daemon=True)
        self._thread.start()

    # -- the scoring side ------------------------------------------------------------------------
    def put(self, batch: ScoredBatch) -> None:
        """Queue a scored batch: no wake-up, the writer drains the queue every tick. When the
        queue is full: drop (counted), or with when_full = "block" wait up to block_timeout_ms
        for room -- parked, not waiting, when called on an event loop."""
        wait_s = self.settings.block_timeout_ms / 1000 if self.settings.when_full == "block" else 0.0
        self._box.put(batch, batch.rows, wait_s)

    @property
    def stats(self) -> ScoreLogStats:
        """The writer's counts, with the queue's: rows taken into it, and rows it refused."""
        return replace(self._stats, rows_queued=self._box.accepted_rows, rows_dropped=self._box.refused_rows)

    @property
    def queued_rows(self) -> int:
        return self._box.rows

    # -- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            items, closing = self._box.take()
            try:
                if items:
                    self._write(items)
                self._rotate(force=closing)
            except Exception:  # whatever it was, the writer goes on
                self._stats.writer_errors += 1
                log.exception("scoring log: the writer failed; it goes on")
            if closing:
                return

    def _write(self, items: list[ScoredBatch]) -> None:
        """One table per model version, role and date: the conversion costs per tick, not per batch."""
        groups: dict[tuple[str, str, str, str], list[ScoredBatch]] = {}
        for batch in items:
            try:
                date = dt.datetime.fromtimestamp(batch.wall_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d")
            except (ValueError, OverflowError, OSError):
                self._stats.rows_failed += batch.rows
                log.error("scoring log: a batch of %s:%s has an impossible time (%d ns); its %d rows are not "
                          "logged", batch.model, batch.version, batch.wall_ns, batch.rows)
                continue
            groups.setdefault((batch.model, batch.version, batch.role, date), []).append(batch)
        for (model, _version, _role, date), batches in groups.items():
            names = {i: self.feature_names[(model, i)] for i in batches[0].inputs if (model, i) in self.feature_names}
            try:
                try:
                    converted = [to_table(batches, names)]
                except ValueError:  # shapes differ between batches (dynamic trailing dims): one by one
                    converted = [to_table([b], names) for b in batches]
            except Exception:
                self._stats.rows_failed += sum(b.rows for b in batches)
                log.exception("scoring log: cannot convert %d batches of %s:%s", len(batches), model, _version)
                continue
            for table, roles in converted:
                for role, mask in roles:
                    self._append((model, role, date), table if mask is None else table.filter(pa.array(mask)))

    def _append(self, key: tuple[str, str, str], table: pa.Table) -> None:
        try:
            while table.num_rows:
                f = self._files.get(key)
                if f is not None and not f.writer.schema.equals(table.schema):
                    self._finalize(key)
                    f = None
                if f is None:
                    f = self._open(key, table.schema)
                room = self.settings.max_rows_per_file - f.rows
                part = table.slice(0, room) if table.num_rows > room else table
                f.writer.write_table(part)
                f.rows += part.num_rows
                self._stats.rows_written += part.num_rows
                table = table.slice(part.num_rows)
                if f.rows >= self.settings.max_rows_per_file:
                    self._finalize(key)
        except OSError:
            self._stats.rows_failed += table.num_rows
            log.exception("scoring log: cannot write %d rows under %s", table.num_rows, self.root)

    def _open(self, key: tuple[str, str, str], schema: pa.Schema) -> _OpenFile:
        model, role, date = key
        folder = self.root / f"model={model}" / f"role={role}" / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        stem = f"part-{stamp}-{os.getpid()}-{next(self._seq):06d}"
        tmp = folder / f".{stem}.parquet.tmp"
        # Dictionary pages only where values repeat: on float features they cost time for nothing.
        # zstd at level 1: a third cheaper than its default level, files about as small.
        # Statistics (min/max, for readers' filters) on the bookkeeping columns, not on every
        # feature; large write batches: both measurably cheaper per row.
        keys = [f.name for f in schema if not f.name.startswith(("in_", "out_"))]
        writer = pq.ParquetWriter(tmp, schema, compression=self._compression,
                                  compression_level=1 if self._compression == "zstd" else None,
                                  use_dictionary=["version", "routing", "routing_key"],
                                  write_statistics=keys, write_batch_size=65536)
        f = _OpenFile(tmp, folder / f"{stem}.parquet", writer, time.monotonic())
        self._files[key] = f
        return f

    def _finalize(self, key: tuple[str, str, str]) -> None:
        f = self._files.pop(key)
        try:
            f.writer.close()
            publish(f.tmp, f.final)
            self._stats.files_closed += 1
        except OSError:
            self._stats.rows_failed += f.rows
            self._stats.rows_written -= f.rows
            log.exception("scoring log: cannot close %s", f.tmp)

    def _rotate(self, force: bool) -> None:
        now = time.monotonic()
        for key in [k for k, f in self._files.items() if force or now - f.opened >= self.settings.max_file_age_s]:
            self._finalize(key)

    def close(self, timeout_s: float = 60.0) -> None:
        """Write everything queued, close every file, stop the thread."""
        self._box.close()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("scoring log: the writer did not finish within %.0f s", timeout_s)
