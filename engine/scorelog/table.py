"""Scored batches -> Arrow tables of log rows: one row per scored row.

Columns: time (UTC, when the batch was scored), request_id, row (index inside the request:
0 for a Kafka event, a request of one row whose id is its source),
routing_key, version, model_sha256 (of the ONNX file that answered) and config_sha256 (of
that version's effective settings; engine/audit.py), routing (default | sticky | random |
pinned | shadow), one column per input
feature (in_*) and per output column (out_*), queue_us, inference_us, total_us; and, for
batches the observer stamped, run and seq: the row's place among its version's rows that
observer run took in -- a drift event names its window's rows by them (engine/observer.py),
as neither time nor the monitor's own count can (the monitor lags, drops and restarts). The writer
(engine/scorelog/parquet.py) calls `to_table` on its own thread, never on the request path.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.batching.batch import SOURCE_SEP, ScoredBatch

# A tensor wider than this (per row) is logged as one list column, not one column per value.
MAX_EXPANDED_COLUMNS = 1024


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
            id_parts.append(pc.binary_join_element_wise(
                o.topic, pa.array(o.partitions).cast(pa.string()), pa.array(o.offsets).cast(pa.string()), SOURCE_SEP))
            raw = pa.array(o.keys, type=pa.binary())
            try:
                key_parts.append(raw.cast(pa.string()))
            except pa.ArrowInvalid:  # keys that are not UTF-8: logged as hex
                key_parts.append(pa.array([None if k is None else k.hex() for k in raw.to_pylist()], type=pa.string()))
        else:
            id_parts.append(pa.array([None if o is None else o.request_id] * n, type=pa.string()))
            key_parts.append(pa.array([None if o is None else o.routing_key] * n, type=pa.string()))
    return pa.concat_arrays(id_parts), pa.concat_arrays(key_parts)


def _rows(origins, bounds: np.ndarray, member_of_row: np.ndarray) -> np.ndarray:
    """Each row's index inside its request (int32): a request's rows count from 0; a Kafka
    piece's rows are each an event of one row (engine/codec/kafka.py), its own request
    (request_id its source), so row 0 -- not its place in the piece of the consumed batch."""
    n = len(member_of_row)
    rows = np.arange(n, dtype=np.int64) - bounds[:-1][member_of_row]
    kafka = np.fromiter((o is not None and o.topic is not None for o in origins), dtype=bool, count=len(origins))
    if kafka.any():
        rows[kafka[member_of_row]] = 0
    return rows.astype(np.int32)


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def to_table(batches: list[ScoredBatch], feature_names: dict[str, list[str]],
             provenance: tuple[str | None, str | None] = (None, None), run: str | None = None) -> tuple[pa.Table, list]:
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
        ("row", pa.array(_rows(origins, bounds, member_of_row))),
        ("routing_key", routing_key),
        ("version", pa.repeat(pa.scalar(first.version, pa.string()), n)),
        ("model_sha256", pa.repeat(pa.scalar(provenance[0], pa.string()), n)),
        ("config_sha256", pa.repeat(pa.scalar(provenance[1], pa.string()), n)),
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
    if run is not None and all(b.seq >= 0 for b in batches):
        seq = np.concatenate([np.arange(b.seq, b.seq + b.rows, dtype=np.int64) for b in batches])
        columns += [("run", pa.repeat(pa.scalar(run, pa.string()), n)), ("seq", pa.array(seq))]
    return pa.table(dict(columns)), _row_roles(roles, member_of_row)


def _row_roles(member_roles: list[str], member_of_row: np.ndarray) -> list[tuple[str, np.ndarray | None]]:
    """(role, row mask or None for all rows) per role present."""
    distinct = list(dict.fromkeys(member_roles))
    if len(distinct) == 1:
        return [(distinct[0], None)]
    codes = np.array([distinct.index(r) for r in member_roles])[member_of_row]
    return [(role, codes == i) for i, role in enumerate(distinct)]
