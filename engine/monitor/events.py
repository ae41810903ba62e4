"""Drift events to Parquet, as their own kind of record:

    EVENTS_DIR/kind=drift/model=NAME/date=YYYY-MM-DD/part-<time_ns>-<n>.parquet

One small file per evaluation that raised or cleared something (events are rare), written
under a temporary name and published like the scoring log's files (fsync, rename, fsync of
the folder), so a reader never sees a partial file. DuckDB:
read_parquet('EVENTS_DIR/**/*.parquet', hive_partitioning = 1).
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.monitor.drift import DriftEvent
from engine.scorelog.parquet import publish

SCHEMA = pa.schema([
    ("time", pa.timestamp("ns", tz="UTC")),
    ("event", pa.string()),  # raise | clear
    ("version", pa.string()),
    ("feature", pa.string()),
    ("statistic", pa.float64()),
    ("pvalue", pa.float64()),
    ("effect", pa.float64()),
    ("events_observed", pa.int64()),
])
_sequence = itertools.count()


def write_events(directory: Path, events: list[DriftEvent]) -> list[Path]:
    written = []
    groups: dict[tuple[str, str], list[DriftEvent]] = {}
    for e in events:
        day = dt.datetime.fromtimestamp(e.time_ns / 1e9, dt.timezone.utc).date().isoformat()
        groups.setdefault((e.model.split(":")[0], day), []).append(e)
    for (model, day), group in groups.items():
        folder = Path(directory) / "kind=drift" / f"model={model}" / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table({
            "time": pa.array([e.time_ns for e in group], pa.timestamp("ns", tz="UTC")),
            "event": [e.kind for e in group],
            "version": [e.model.split(":", 1)[1] for e in group],
            "feature": [e.feature for e in group],
            "statistic": [e.statistic for e in group],
            "pvalue": [e.pvalue for e in group],
            "effect": [e.effect for e in group],
            "events_observed": [e.events for e in group],
        }, schema=SCHEMA)
        final = folder / f"part-{group[0].time_ns}-{next(_sequence)}.parquet"
        tmp = folder / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        publish(tmp, final)
        written.append(final)
    return written
