"""The scoring log with labels: what `scorewire evaluate` and `scorewire compare` share.

`read_log`: a model's rows. `read_labels`: a Parquet or CSV file with `request_id`, a label
column and optionally `row` (0 when absent), checked: numbers, one label per row. `Score`:
the out_ columns a task scores, named as [models.performance] score names them ("OUTPUT" or
"OUTPUT:COLUMN"; the log's own column name is taken too). `join_labels`: each logged row with
its label, by (request_id, row), as the live join matches them (engine/performance/join.py):

- a row scored from Kafka (its request_id the event's source, `topic/partition/offset`; one
  row per event, logged as row 0: a log written before that holds its place in the piece of
  the consumed batch instead, read as 0 here) is joined by its source id (row 0), or by its
  message key (the log's routing_key) when no label names its source. An event labelled live by its JSON "id" cannot be joined
  here: the log keeps the source and the key, not the "id" (unless the id is the key).
- a label by message key joins every event of that key in the log (live: those within
  label_ttl_s of it).
- rows logged twice under one id (a reused request id, an event read again) each join the
  label, as they do live.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from engine.errors import clip, listed
from engine.scorelog.files import STREAM_SUFFIX

log = logging.getLogger(__name__)

KEY = ["request_id", "row"]
PARTITIONING = ds.partitioning(pa.schema([("model", pa.string()), ("role", pa.string()), ("date", pa.string())]),
                               flavor="hive")
TASKS = ("binary", "multiclass", "regression")
# The request_id of a row scored from Kafka (engine/batching/batch.py's source_id; a topic
# name has no "/").
KAFKA_SOURCE = r"^[^/]+/\d+/\d+$"


class LogError(ValueError):
    """Nothing to read, or an option that does not fit the log or the labels; the message
    says which (the commands print it as one line and exit 2)."""


DEFAULT_FILE_AGE_S = 60  # ScoreLogSettings.max_file_age_s's default


def still_written(log_dir: Path, now: dt.datetime | None = None) -> str | None:
    """What the files in progress under log_dir (engine/scorelog/files.py: hidden Arrow streams
    named by the UTC time they were opened) are, and when the first will be published; None
    when there are none."""
    opened = []
    for path in Path(log_dir).glob(f"**/.part-*{STREAM_SUFFIX}"):
        try:
            stamp = dt.datetime.strptime(path.name.split("-")[1], "%Y%m%dT%H%M%S%f")
        except (IndexError, ValueError):
            continue
        opened.append(stamp.replace(tzinfo=dt.timezone.utc))
    if not opened:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    due = min(opened) + dt.timedelta(seconds=DEFAULT_FILE_AGE_S)
    when = (f"with the default max_file_age_s = {DEFAULT_FILE_AGE_S} s the first appears at {due:%H:%M:%S} UTC, in "
            f"about {max(1, round((due - now).total_seconds()))} s" if due > now else
            f"the first was opened at {min(opened):%H:%M:%S} UTC: max_file_age_s is longer than the default "
            f"{DEFAULT_FILE_AGE_S} s, or the server writing it is not running (its next start publishes it)")
    return (f"{len(opened)} file{'s are' if len(opened) > 1 else ' is'} still being written (a file is published "
            f"max_file_age_s after it was opened, at max_rows_per_file rows, or when the server stops): {when}")


def read_log(log_dir: Path, model: str) -> pa.Table:
    """The model's rows of the dataset under log_dir (with the model/role/date partition columns)."""
    open_files = still_written(log_dir)
    if not any(Path(log_dir).glob("**/*.parquet")):
        raise LogError(f"no scoring log files under {log_dir}" + (f" yet: {open_files}" if open_files else ""))
    if open_files:
        log.warning("scoring log under %s: %s; their rows are not read now", log_dir, open_files)
    dataset = ds.dataset(log_dir, format="parquet", partitioning=PARTITIONING, exclude_invalid_files=False)
    table = dataset.to_table(filter=ds.field("model") == model)
    if table.num_rows == 0:
        known = sorted(set(dataset.to_table(columns=["model"]).column("model").to_pylist()))
        raise LogError(f"the log under {log_dir} has no rows of model {model!r} (models: {known})")
    return table


def outputs(table: pa.Table) -> list[str]:
    return [c for c in table.column_names if c.startswith("out_")]


# -- labels ------------------------------------------------------------------------------------
def read_labels(path: Path, label_column: str = "label") -> pa.Table:
    """Columns request_id (string), row (int32), label (float64): one label per row, numbers."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"labels file {path}: no such file")
    try:
        table = (pq.read_table(path) if path.suffix == ".parquet" else  # CSV ids as written ("007", not 7)
                 pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={"request_id": pa.string()})))
    except (OSError, pa.ArrowException) as exc:
        raise LogError(f"cannot read the labels file {path}: {_line(exc)}") from None
    missing = [c for c in ("request_id", label_column) if c not in table.column_names]
    if missing:
        raise LogError(f"labels file {path} lacks columns {missing} (has {table.column_names})")
    label = table.column(label_column)
    kind = label.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        shown = listed(dict.fromkeys(v for v in label.to_pylist() if v is not None), 3)
        raise LogError(f"labels file {path}: column {label_column!r} holds {kind} values ({shown}), not numbers")
    values = label.cast(pa.float64()).to_numpy(zero_copy_only=False)
    empty = int(np.sum(~np.isfinite(values)))  # nulls come back as NaN
    if empty:
        raise LogError(f"labels file {path}: {empty} of column {label_column!r}'s values are empty, NaN or "
                       "infinite, not numbers")
    rows = (table.column("row").cast(pa.int32()) if "row" in table.column_names
            else pa.array(np.zeros(table.num_rows, dtype=np.int32)))
    found = pa.table({"request_id": table.column("request_id").cast(pa.string()), "row": rows,
                      "label": pa.array(values)})
    counts = found.group_by(KEY).aggregate([("label", "count")])
    twice = counts.filter(pc.greater(counts.column("label_count"), 1))
    if twice.num_rows:
        first = twice.slice(0, 1).to_pylist()[0]
        raise LogError(f"labels file {path}: {twice.num_rows} (request_id, row) pairs have more than one label "
                       f"(e.g. {clip(first['request_id'])!r} row {first['row']}); give one label per row")
    return found


def check_labels(task: str, labels: np.ndarray, score: "Score") -> None:
    """The labels fit the task: binary 0 or 1; multiclass a column of the probability matrix."""
    if task == "binary":
        wrong = labels[(labels != 0) & (labels != 1)]
        if len(wrong):
            raise LogError(f"--task binary takes labels 0 or 1; the labels file has {_examples(wrong)} too "
                           "(class indices: --task multiclass; numbers: --task regression)")
    elif task == "multiclass":
        k = len(score.columns)
        wrong = labels[(labels != np.round(labels)) | (labels < 0) | (labels >= k)]
        if len(wrong):
            raise LogError(f"--task multiclass takes class indices 0 to {k - 1} (the {k} columns of "
                           f"{score.columns[0][:-2]}_<j>); the labels file has {_examples(wrong)} too")


def _examples(values: np.ndarray) -> str:
    distinct = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in distinct[:5])
    return shown + (f" and {len(distinct) - 5} more values" if len(distinct) > 5 else "")


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- scores ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    """The out_ columns a task scores: one (binary: P(class 1); regression: the prediction),
    or the probability matrix's in class order (multiclass)."""

    text: str  # as the user gave it (or as the default was found)
    columns: tuple[str, ...]

    def values(self, table: pa.Table, suffix: str = "") -> np.ndarray:
        """float64: a vector, or a rows x classes matrix."""
        arrays = [table.column(c + suffix).to_numpy(zero_copy_only=False).astype(np.float64) for c in self.columns]
        return arrays[0] if len(arrays) == 1 else np.column_stack(arrays)


def find_score(task: str, text: str, table: pa.Table) -> Score:
    """`text` ("OUTPUT" or "OUTPUT:COLUMN", or a column of the log) as the task's out_ columns."""
    name, _, column = text.partition(":")
    if not name or (column and not column.isdigit()):
        raise LogError(f"--score {text}: write it as OUTPUT or OUTPUT:COLUMN (a column number)")
    have = outputs(table)
    if task == "multiclass" and column:
        raise LogError(f"--score {text}: --task multiclass scores the whole probability matrix; name the output "
                       f"alone (--score {name})")
    for candidate in (name, name[4:]) if name.startswith("out_") else (name,):
        found = _columns(task, candidate, column, set(have))
        if found:
            return Score(text, found)
    hint = (f"; a matrix: name its column, e.g. --score {name}:1" if task != "multiclass"
            and not column and f"out_{name.removeprefix('out_')}_0" in have else "")
    raise LogError(f"--score {text}: the log has no such output column for --task {task} (its out_ columns: "
                   f"{', '.join(have) or 'none'}){hint}")


def _columns(task: str, name: str, column: str, have: set[str]) -> tuple[str, ...]:
    if column:
        if f"out_{name}_{column}" in have:
            return (f"out_{name}_{column}",)
        return (f"out_{name}",) if column == "0" and f"out_{name}" in have else ()
    if task == "multiclass":
        found = []
        while f"out_{name}_{len(found)}" in have:
            found.append(f"out_{name}_{len(found)}")
        return tuple(found) if len(found) >= 2 else ()
    if f"out_{name}" in have:
        return (f"out_{name}",)
    if f"out_{name}_0" in have and f"out_{name}_1" not in have:  # a [rows, 1] output
        return (f"out_{name}_0",)
    return ()


def default_score(task: str, table: pa.Table) -> Score:
    """The score when --score is not given, where the log leaves one choice: binary the `_1`
    column of a two-column output; multiclass the one float matrix; regression the one float
    column."""
    have = outputs(table)
    floats = [c for c in have if pa.types.is_floating(table.schema.field(c).type)]
    if task == "binary":
        found = [c for c in have if c.endswith("_1") and c[:-2] + "_0" in have and c[:-2] + "_2" not in have]
        found = [Score(f"{c[4:-2]}:1", (c,)) for c in found[:1]]
    elif task == "multiclass":
        names = [c[4:-2] for c in floats if c.endswith("_0") and c[:-2] + "_1" in floats]
        found = [find_score(task, n, table) for n in names]
    else:
        found = [Score(c[4:-2] if c.endswith("_0") and c[:-2] + "_1" not in have else c[4:], (c,)) for c in floats]
    if len(found) != 1:
        wide = task == "binary" and any(c.endswith("_2") for c in have)
        raise LogError(f"cannot tell which output --task {task} scores among {have}; pass --score OUTPUT[:COLUMN]"
                       + (" (a probability matrix of 3 or more columns: --task multiclass)" if wide else ""))
    return found[0]


def check_scores(task: str, score: Score, table: pa.Table) -> None:
    """A binary score is a probability: a column with values outside [0, 1] is not one."""
    if task != "binary" or table.num_rows == 0:
        return
    bounds = pc.min_max(table.column(score.columns[0])).as_py()
    low, high = bounds["min"], bounds["max"]
    if low is not None and (low < 0 or high > 1):
        raise LogError(f"--score {score.text}: {score.columns[0]} holds values from {low:g} to {high:g}, not "
                       "probabilities of class 1 in [0, 1] (a prediction: --task regression)")


# -- the join ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Joined:
    table: pa.Table  # the labelled rows, in log order, with a `label` column (float64)
    labels: int  # in the file
    unmatched: int  # labels that joined no row
    by_key: int  # labels joined by a Kafka message key
    key_rows: int  # rows joined so


def join_labels(table: pa.Table, labels: pa.Table) -> Joined:
    """Each row of `table` that has a label, with it (see the module's docstring)."""
    kafka = pc.fill_null(pc.match_substring_regex(table.column("request_id"), KAFKA_SOURCE), False)
    keys = pa.table({"_at": pa.array(np.arange(table.num_rows, dtype=np.int64)),
                     "request_id": table.column("request_id"),
                     "_row": pc.if_else(kafka, pa.scalar(0, pa.int32()), table.column("row").cast(pa.int32())),
                     "routing_key": table.column("routing_key")})
    right = pa.table({"_id": labels.column("request_id"), "_lrow": labels.column("row"),
                      "label": labels.column("label"),
                      "_label_at": pa.array(np.arange(labels.num_rows, dtype=np.int64))})
    direct = keys.join(right, keys=["request_id", "_row"], right_keys=["_id", "_lrow"], join_type="inner")
    events = keys.filter(kafka)
    keyed = events.join(right.filter(pc.equal(right.column("_lrow"), 0)), keys="routing_key", right_keys="_id",
                        join_type="inner")
    keyed = keyed.filter(pc.invert(pc.is_in(keyed.column("_at"), direct.column("_at"))))
    wanted = ["_at", "label", "_label_at"]
    matched = pa.concat_tables([direct.select(wanted), keyed.select(wanted)]).sort_by("_at")
    joined = table.take(matched.column("_at")).append_column("label", matched.column("label"))
    used = np.unique(matched.column("_label_at").to_numpy())
    return Joined(joined, labels.num_rows, labels.num_rows - len(used),
                  len(np.unique(keyed.column("_label_at").to_numpy())), keyed.num_rows)
