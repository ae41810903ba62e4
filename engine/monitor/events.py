"""Drift events to Parquet, as their own kind of record:

    EVENTS_DIR/kind=drift/model=NAME/date=YYYY-MM-DD/part-<time_ns>-<n>.parquet

Every evaluation's statistic, p-value and effect per column go beside them, as

    EVENTS_DIR/kind=evaluation/model=NAME/date=YYYY-MM-DD/part-<time_ns>-<n>.parquet

written every EVALUATIONS_EVERY_S or 100 evaluations, and at shutdown (`scorewire report`
plots them).

One small file per evaluation that raised or cleared something (events are rare), written
under a temporary name, checked and published like the scoring log's files (fsync, rename,
fsync of the folder), so a reader never sees a partial file; a write that fails (a full disk)
leaves nothing behind. DuckDB:
read_parquet('EVENTS_DIR/kind=drift/**/*.parquet', hive_partitioning = 1) (one kind at a time:
the kinds' columns differ).
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.monitor.rule import DriftEvent
from engine.scorelog.files import write_parquet

if TYPE_CHECKING:
    import pyarrow as pa

EVALUATIONS_EVERY_S = 60.0  # drift evaluations reach events_dir this late at most (and at shutdown)

_sequence = itertools.count()


# pyarrow is imported when a file is first written: a server that writes no events (no
# events_dir, or nothing to report) never loads it (~30 MiB a process)
@functools.cache
def time_type() -> pa.DataType:
    import pyarrow as pa

    return pa.timestamp("us", tz="UTC")  # microseconds: what Python's datetime holds (to_pylist() needs no pandas)


@functools.cache
def schema() -> pa.Schema:
    """The drift events' columns."""
    import pyarrow as pa

    return pa.schema([
        ("time", time_type()),
        ("event", pa.string()),  # raise | clear
        ("version", pa.string()),
        ("feature", pa.string()),
        ("statistic", pa.float64()),
        ("pvalue", pa.float64()),
        ("effect", pa.float64()),
        ("events_observed", pa.int64()),
        ("window", pa.int64()),  # the size of the window whose statistic, p-value and effect these are
        ("windows_fired", pa.list_(pa.int64())),  # the windows that fired (a raise), with theirs:
        ("window_statistics", pa.list_(pa.float64())),
        ("window_pvalues", pa.list_(pa.float64())),
        # the lead window's rows in the scoring log: those of observer run `run` whose seq is in
        # [seq_from[i], seq_to[i]) for some i (engine/monitor/rowmap.py); empty: not known
        ("run", pa.string()),
        ("seq_from", pa.list_(pa.int64())),
        ("seq_to", pa.list_(pa.int64())),
    ])


@functools.cache
def evaluation_schema() -> pa.Schema:
    """The drift evaluations' columns."""
    import pyarrow as pa

    return pa.schema([
        ("time", time_type()),
        ("version", pa.string()),
        ("feature", pa.string()),
        ("test", pa.string()),  # ks | chi2
        ("statistic", pa.float64()),
        ("pvalue", pa.float64()),
        ("effect", pa.float64()),
        ("events_observed", pa.int64()),
        ("window", pa.int64()),
        ("reference", pa.string()),
        ("threshold", pa.float64()),  # the statistic a full window needed to fire (NaN: BH, see level)
        ("level", pa.float64()),  # the p-value a window needed at this evaluation (after the correction)
    ])


def publish(directory: Path, kind: str, model: str, time_ns: int, table: pa.Table) -> Path:
    """One events file, EVENTS_DIR/kind=KIND/model=NAME/date=YYYY-MM-DD/part-<time_ns>-<n>.parquet
    (the date of `time_ns`, UTC), published whole (engine/scorelog/files.py write_parquet)."""
    day = dt.datetime.fromtimestamp(time_ns / 1e9, dt.timezone.utc).date().isoformat()
    folder = Path(directory) / f"kind={kind}" / f"model={model}" / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"part-{int(time_ns)}-{next(_sequence)}.parquet"
    import pyarrow.parquet as pq

    write_parquet(final, lambda tmp: pq.write_table(table, tmp), table.num_rows)
    return final


def write_evaluations(directory: Path, monitor, history: list) -> list[Path]:
    """Every evaluation of `monitor` in `history` (DriftMonitor.take_history()), one row per
    column and window (NaN: a window not yet full):
    EVENTS_DIR/kind=evaluation/model=NAME/date=YYYY-MM-DD/part-*.parquet."""
    if not history:
        return []
    import pyarrow as pa

    model, version = monitor.model.split(":", 1)
    columns = monitor.columns
    sizes = monitor.sizes
    n = len(columns) * len(sizes)
    times = np.repeat(np.array([h[0] for h in history], dtype=np.int64), n)
    written = []
    days = np.array([dt.datetime.fromtimestamp(t / 1e9, dt.timezone.utc).date().isoformat() for t in times])
    table = pa.table({
        "time": pa.array(times // 1000, time_type()),
        "version": [version] * len(times),
        "feature": [c.name for _ in history for c in columns for _ in sizes],
        "test": ["chi2" if c.categorical else "ks" for _ in history for c in columns for _ in sizes],
        "statistic": np.concatenate([h[2].ravel() for h in history]).astype(np.float64),
        "pvalue": np.concatenate([h[3].ravel() for h in history]).astype(np.float64),
        "effect": np.concatenate([h[4].ravel() for h in history]).astype(np.float64),
        "events_observed": np.repeat(np.array([h[1] for h in history], dtype=np.int64), n),
        "window": np.tile(np.array(sizes, dtype=np.int64), len(history) * len(columns)),
        "reference": [str(monitor.settings.reference)] * len(times),
        "threshold": np.tile(monitor.needed.ravel(), len(history)),
        "level": np.repeat(np.array([h[5] for h in history], dtype=np.float64), n),
    }, schema=evaluation_schema())
    for day in sorted(set(days.tolist())):
        at = days == day
        written.append(publish(directory, "evaluation", model, int(times[at][0]), table.filter(pa.array(at))))
    return written


def write_events(directory: Path, events: list[DriftEvent], run: str | None = None) -> list[Path]:
    """`run`: the observer run whose stamps the events' rows are (Observer.run)."""
    import pyarrow as pa

    written = []
    groups: dict[tuple[str, str], list[DriftEvent]] = {}
    for e in events:
        day = dt.datetime.fromtimestamp(e.time_ns / 1e9, dt.timezone.utc).date().isoformat()
        groups.setdefault((e.model.split(":")[0], day), []).append(e)
    for (model, day), group in groups.items():
        table = pa.table({
            "time": pa.array([e.time_ns // 1000 for e in group], time_type()),
            "event": [e.kind for e in group],
            "version": [e.model.split(":", 1)[1] for e in group],
            "feature": [e.feature for e in group],
            "statistic": [e.statistic for e in group],
            "pvalue": [e.pvalue for e in group],
            "effect": [e.effect for e in group],
            "events_observed": [e.events for e in group],
            "window": [e.window for e in group],
            "windows_fired": [list(e.windows) for e in group],
            "window_statistics": [list(e.statistics) for e in group],
            "window_pvalues": [list(e.pvalues) for e in group],
            "run": [run if e.rows else None for e in group],
            "seq_from": [[a for a, _ in e.rows] for e in group],
            "seq_to": [[b for _, b in e.rows] for e in group],
        }, schema=schema())
        written.append(publish(directory, "drift", model, group[0].time_ns, table))
    return written
