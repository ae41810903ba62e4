"""A version's realized performance against its reference's: the baseline, and an alert when
the version is significantly worse.

The reference (`[models.performance] reference`) is a Parquet file with a `label` column and
the version's scores on the same rows, in columns named as `score` names them ("probabilities:1",
"variable"; multiclass: "probabilities:0" ... "probabilities:K-1"), as `scorewire reference
--model M --outputs ...` writes them. Its realized metrics are the baseline.

Every `every` labelled rows, once a version's window is full, each metric that is a mean
over rows (metrics.PER_ROW) is tested, one-sided, window against reference: Welch's t-test
on the per-row values (scipy.stats.ttest_ind's, equal_var=False; the reference's mean and
variance computed once), Bonferroni-corrected over
the metrics (alpha / their number), and it counts only when the window is also worse by at
least `min_effect` in the metric's own units (accuracy 0.02 = two points; rmse on rmse itself).
As drift alerts do, an alert is raised after `consecutive` such evaluations in a row and
cleared after as many clean ones (labels that come in bulk are evaluated once, over the last
window, and that evaluation counts once for every `every` new rows in it); each raise and clear is an event (events_dir,
kind=performance) and a log line. AUC has no per-row value: it is shown, not alerted on.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import UserFacing
from engine.performance.metrics import LOWER_IS_BETTER, PER_ROW, per_row, realized
from engine.monitor.events import publish

if TYPE_CHECKING:
    import pyarrow as pa


class BadReference(ValueError, UserFacing):
    """A performance reference that cannot be used; the message names the file and the problem."""

    prefix = "config error:\n"


@dataclass(frozen=True, slots=True)
class Reference:
    scores: np.ndarray  # rows (binary, regression) or rows x classes (multiclass)
    labels: np.ndarray  # float64


def load_reference(path: Path, task: str, score: str) -> Reference:
    """The reference's labels and scores (see the module's docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = f"performance reference {path}"
    try:
        table = pq.ParquetFile(path).read()  # not read_table: see engine/monitor/drift.py load_reference
    except (OSError, pa.ArrowInvalid) as exc:
        raise BadReference(f"{where}: not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    names = table.column_names
    if "label" not in names:
        raise BadReference(f"{where}: no 'label' column (it has {names[:10]})")

    def column(name: str) -> np.ndarray:
        values = table.column(name).to_numpy(zero_copy_only=False)
        if values.dtype.kind not in "biuf":
            raise BadReference(f"{where}: column {name!r} is not numeric ({table.schema.field(name).type})")
        return values.astype(np.float64)

    labels = column("label")
    if task == "multiclass":
        output = score.split(":", 1)[0]
        k = 0
        while f"{output}:{k}" in names:
            k += 1
        if k < 2:
            raise BadReference(f"{where}: multiclass needs the columns {output}:0, {output}:1, ... (one per "
                                 f"class, as `scorewire reference --outputs` names them); it has {names[:10]}")
        scores = np.column_stack([column(f"{output}:{j}") for j in range(k)])
        if np.any((labels < 0) | (labels >= k) | (labels != np.rint(labels))):
            raise BadReference(f"{where}: labels must be class indices 0..{k - 1}")
    else:
        if score not in names:
            raise BadReference(f"{where}: no {score!r} column (the version's score; it has {names[:10]})")
        scores = column(score)
        if task == "binary" and not np.all((labels == 0) | (labels == 1)):
            raise BadReference(f"{where}: binary labels must be 0 or 1")
    finite = np.isfinite(labels) & np.isfinite(scores if scores.ndim == 1 else scores.sum(axis=1))
    if finite.sum() < 100:
        raise BadReference(f"{where}: {int(finite.sum())} rows with a finite label and score; at least 100 needed")
    return Reference(scores[finite], labels[finite])


@dataclass(frozen=True, slots=True)
class PerformanceEvent:
    time_ns: int
    kind: str  # raise | clear
    model: str
    version: str
    role: str
    metric: str
    value: float  # the window's
    baseline: float  # the reference's
    pvalue: float
    rows: int  # labelled rows joined so far (this version and role)


class Alerting:
    """The baseline of one version and its alerts per role and metric."""

    def __init__(self, model: str, version: str, settings, reference: Reference):
        self.model, self.version, self.settings = model, version, settings
        task = settings.task
        self.metrics = PER_ROW[task]
        self.baseline = realized(task, reference.scores, reference.labels)
        self._reference = {m: per_row(task, m, reference.scores, reference.labels) for m in self.metrics}
        self._moments = {m: (float(v.mean()), float(v.var(ddof=1)), len(v)) for m, v in self._reference.items()}
        self.streak: dict[tuple[str, str], int] = {}  # (role, metric) -> evaluations in a row against the state
        self.raised: set[tuple[str, str]] = set()
        self.evaluated: dict[str, int] = {}  # role -> rows joined at its last evaluation
        self.last: dict[tuple[str, str], float] = {}  # (role, metric) -> last p-value

    def due(self, role: str, rows_ever: int, full: bool) -> bool:
        return full and rows_ever - self.evaluated.get(role, -self.settings.every) >= self.settings.every

    def evaluate(self, role: str, scores: np.ndarray, labels: np.ndarray, rows_ever: int, now_ns: int) -> list:
        s = self.settings
        last = self.evaluated.get(role)
        # labels in bulk: one evaluation over the window stands for each `every` new rows in it
        new = rows_ever if last is None else rows_ever - last
        weight = max(1, min(new // s.every, max(1, s.window // s.every)))
        self.evaluated[role] = rows_ever
        level = s.alpha / len(self.metrics)
        values = realized(s.task, scores, labels)
        events = []
        for metric in self.metrics:
            lower = metric in LOWER_IS_BETTER
            x = per_row(s.task, metric, scores, labels)
            p = self._welch(x, metric, lower)
            worse_by = (values[metric] - self.baseline[metric]) * (1 if lower else -1)
            bad = p < level and worse_by >= s.min_effect
            key = (role, metric)
            self.last[key] = p
            raised = key in self.raised
            self.streak[key] = self.streak.get(key, 0) + weight if bad != raised else 0
            if self.streak[key] >= s.consecutive:
                self.streak[key] = 0
                (self.raised.add if bad else self.raised.discard)(key)
                events.append(PerformanceEvent(now_ns, "raise" if bad else "clear", self.model, self.version, role,
                                               metric, values[metric], self.baseline[metric], p, rows_ever))
        return events


    def _welch(self, x: np.ndarray, metric: str, greater: bool) -> float:
        """One-sided p-value of Welch's t-test, window x against the reference (scipy's
        ttest_ind(equal_var=False) computed from the reference's moments)."""
        m2, v2, n2 = self._moments[metric]
        n1 = len(x)
        m1, v1 = float(x.mean()), float(x.var(ddof=1))
        a, b = v1 / n1, v2 / n2
        if a + b == 0:
            return 0.0 if (m1 > m2 if greater else m1 < m2) else 1.0
        t = (m1 - m2) / np.sqrt(a + b)
        df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
        # imported here: scipy.stats costs a process 45 MiB, and only a performance alert needs it
        from scipy.stats import t as student_t

        return float(student_t.sf(t, df) if greater else student_t.cdf(t, df))


@functools.cache
def schema() -> pa.Schema:
    """The performance events' columns (pyarrow: imported with the first event written)."""
    import pyarrow as pa

    return pa.schema([
        ("time", pa.timestamp("ns", tz="UTC")),
        ("event", pa.string()),  # raise | clear
        ("version", pa.string()),
        ("role", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("baseline", pa.float64()),
        ("pvalue", pa.float64()),
        ("rows", pa.int64()),
    ])


def write_events(directory: Path, events: list[PerformanceEvent]) -> list[Path]:
    """EVENTS_DIR/kind=performance/model=NAME/date=YYYY-MM-DD/part-*.parquet, published as the
    drift events are (engine/monitor/events.py)."""
    import pyarrow as pa

    groups: dict[tuple[str, str], list[PerformanceEvent]] = {}
    for e in events:
        day = dt.datetime.fromtimestamp(e.time_ns / 1e9, dt.timezone.utc).date().isoformat()
        groups.setdefault((e.model, day), []).append(e)
    written = []
    for (model, day), group in groups.items():
        table = pa.table({
            "time": pa.array([e.time_ns for e in group], pa.timestamp("ns", tz="UTC")),
            "event": [e.kind for e in group], "version": [e.version for e in group],
            "role": [e.role for e in group], "metric": [e.metric for e in group],
            "value": [e.value for e in group], "baseline": [e.baseline for e in group],
            "pvalue": [e.pvalue for e in group], "rows": [e.rows for e in group],
        }, schema=schema())
        written.append(publish(directory, "performance", model, group[0].time_ns, table))
    return written


@functools.cache
def history_schema() -> pa.Schema:
    """The performance snapshots' columns."""
    import pyarrow as pa

    return pa.schema([
        ("time", pa.timestamp("ns", tz="UTC")),
        ("version", pa.string()),
        ("role", pa.string()),
        ("metric", pa.string()),  # a performance metric, or one of QUALITY_FIGURES (its value in realized)
        ("realized", pa.float64()),  # over the last `window` labelled rows (NaN: none yet)
        ("labelled", pa.int64()),  # rows in that window
        ("estimated", pa.float64()),  # CBPE over the last `window` scored rows (NaN: no estimate)
    ])


# beside the metrics in the snapshots (join.py's _snapshot_quality); `labelled` holds the labelled
# rows of the conformal window, the scored rows of the fairness window (role "any")
QUALITY_FIGURES = ("conformal_coverage", "conformal_set_size", "conformal_target", "fairness_spd", "fairness_dir",
                   "fairness_alert")


def write_history(directory: Path, model: str, history: list[tuple]) -> list[Path]:
    """Snapshots of a model's performance, (time_ns, version, role, metric, realized, labelled,
    estimated) rows, as EVENTS_DIR/kind=performance_history/model=NAME/date=YYYY-MM-DD/part-*.parquet
    (`scorewire report` plots them)."""
    import pyarrow as pa

    by_day: dict[str, list[tuple]] = {}
    for row in history:
        day = dt.datetime.fromtimestamp(row[0] / 1e9, dt.timezone.utc).date().isoformat()
        by_day.setdefault(day, []).append(row)
    written = []
    for rows in by_day.values():
        table = pa.table(dict(zip(history_schema().names, map(list, zip(*rows))))).cast(history_schema())
        written.append(publish(directory, "performance_history", model, rows[0][0], table))
    return written


__all__ = ["Alerting", "PerformanceEvent", "QUALITY_FIGURES", "Reference", "BadReference", "load_reference",
           "write_events", "write_history"]
