"""Drift state per model and column; the statistics themselves are the kernels'.

Each monitored column (an input feature, or an output column for prediction drift) has a
sliding window of its last `window` values: two-sample KS against the reference for
continuous columns (kernels.SlidingKS), chi-squared on integer category codes for
categorical ones (kernels.SlidingChi2; NaN and codes the reference never saw fall in its
"other" bin). Every `every` events, once the window is full, all columns are evaluated
together: p-values corrected across columns (Bonferroni, family-wise alpha; or
Benjamini-Hochberg), and a column drifts when it is significant AND its effect size
(KS D, or PSI) reaches `min_effect` -- on large windows tiny shifts are "significant".
Hysteresis: an alert is raised after `consecutive` drifting evaluations in a row and
cleared after as many clean ones; each raise and clear is a DriftEvent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.codec.validate import ModelSchema
from engine.settings import MonitorSettings
from kernels import KSColumns, SlidingChi2, SlidingKS
from kernels.sliding_ks import gather_columns


class MonitorConfigError(ValueError):
    """A monitor that cannot be built; the message names the model and the problem."""


def load_reference(path: Path) -> dict[str, np.ndarray]:
    """Columns of a Parquet or NPZ reference file, by name (NPZ is read without pickle)."""
    path = Path(path)
    if not path.is_file():
        raise MonitorConfigError(f"reference file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


@dataclass
class Column:
    name: str
    categorical: bool
    tensor: str
    index: int | None  # column of a 2-D tensor, or None for a 1-D one
    from_output: bool
    kernel: object = None

    def values(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> np.ndarray:
        """This column's values (integer codes for a categorical one; NaN and +-inf -> -1)."""
        array = (outputs if self.from_output else inputs)[self.tensor]
        column = array if self.index is None else array[:, self.index]
        if self.categorical:
            return np.where(np.isfinite(column), np.rint(column), -1).astype(np.int64) if column.dtype.kind == "f" \
                else column.astype(np.int64, copy=False)
        return column


@dataclass
class ColumnState:
    statistic: float = 0.0
    pvalue: float = 1.0
    effect: float = 0.0
    drifting: bool = False
    alert: bool = False
    streak: int = 0  # consecutive evaluations disagreeing with the alert state


@dataclass(frozen=True)
class DriftEvent:
    kind: str  # "raise" or "clear"
    model: str
    feature: str
    statistic: float
    pvalue: float
    effect: float
    events: int  # rows observed by the monitor when it happened
    time_ns: int = field(default_factory=time.time_ns)


def corrected_significance(pvalues: np.ndarray, alpha: float, method: str) -> np.ndarray:
    """Which p-values are significant at family-wise (Bonferroni) or false-discovery (BH) level alpha."""
    k = len(pvalues)
    if method == "bonferroni":
        return pvalues <= alpha / k
    order = np.argsort(pvalues, kind="stable")
    thresholds = alpha * np.arange(1, k + 1) / k
    passed = np.flatnonzero(pvalues[order] <= thresholds)
    significant = np.zeros(k, dtype=bool)
    if passed.size:
        significant[order[: passed[-1] + 1]] = True
    return significant


class DriftMonitor:
    def __init__(self, model: str, settings: MonitorSettings, schema: ModelSchema, reference: dict[str, np.ndarray]):
        self.model = model
        self.settings = settings
        self._schema = schema
        self.features = list(settings.features) if settings.features is not None else [
            name for name in reference if name not in settings.outputs]
        unknown = [c for c in settings.categorical if c not in self.features]
        if unknown:
            raise MonitorConfigError(f"model {model}: monitor.categorical lists {unknown}, which are not features "
                                     f"({len(self.features)} of them, from "
                                     f"{'monitor.features' if settings.features else 'the reference columns'})")
        self.columns = self._columns(schema)
        missing = [c.name for c in self.columns if c.name not in reference]
        if missing:
            raise MonitorConfigError(f"model {model}: reference has no column {missing} (it has {sorted(reference)})")
        for column in self.columns:
            ref = np.asarray(reference[column.name])
            if column.categorical:
                codes = ref.astype(np.int64) if ref.dtype.kind in "iub" else np.rint(ref).astype(np.int64)
                if codes.min() < 0:
                    raise MonitorConfigError(f"model {model}: categorical reference '{column.name}' has negative codes")
                column.kernel = SlidingChi2(codes, settings.window)
            else:
                column.kernel = SlidingKS(ref.astype(np.float64), settings.window)
        self._continuous = [i for i, c in enumerate(self.columns) if not c.categorical]
        # where the continuous columns' block rows come from: per tensor, its columns and their rows
        self._sources: dict[tuple[bool, str], tuple[list[int | None], list[int]]] = {}
        for row, i in enumerate(self._continuous):
            c = self.columns[i]
            columns, rows = self._sources.setdefault((c.from_output, c.tensor), ([], []))
            columns.append(c.index)
            rows.append(row)
        self._ks = KSColumns([self.columns[i].kernel for i in self._continuous]) if self._continuous else None
        self.state = {c.name: ColumnState() for c in self.columns}
        self.events = 0
        self.evaluations = 0
        self._since = 0
        # every evaluation, for [monitoring] events_dir (kind=evaluation): taken by take_history()
        self.keep_history = False
        self._history: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = []

    def _columns(self, schema: ModelSchema) -> list[Column]:
        s = self.settings
        inputs = {t.name: t for t in schema.inputs}
        outputs = {t.name: t for t in schema.outputs}
        tensor = s.input or schema.inputs[0].name
        if tensor not in inputs:
            raise MonitorConfigError(f"model {self.model}: monitor.input '{tensor}' is not an input ({list(inputs)})")
        spec = inputs[tensor]
        width = spec.shape[1] if len(spec.shape) == 2 else (1 if len(spec.shape) == 1 else None)
        if width is None or (width >= 0 and width != len(self.features)):
            raise MonitorConfigError(
                f"model {self.model}: monitor.features names {len(self.features)} columns, but input '{tensor}' "
                f"has shape {list(spec.shape)}" + ("" if s.features is not None else
                " (features default to the reference's columns less the outputs: name them in monitor.features)")
            )
        columns = [
            Column(name, name in s.categorical, tensor, None if len(spec.shape) == 1 else i, False)
            for i, name in enumerate(self.features)
        ]
        for entry in s.outputs:
            name, _, col = entry.partition(":")
            if name not in outputs:
                raise MonitorConfigError(f"model {self.model}: monitor.outputs '{entry}': no output '{name}' ({list(outputs)})")
            shape = outputs[name].shape
            index = int(col) if col else None
            if (index is None) != (len(shape) == 1):
                raise MonitorConfigError(
                    f"model {self.model}: monitor.outputs '{entry}': output '{name}' has shape {list(shape)}; "
                    "use 'name' for a [rows] output and 'name:column' for a [rows, k] one"
                )
            columns.append(Column(entry, outputs[name].datatype in ("INT64", "INT32", "BOOL"), name, index, True))
        return columns

    def warm_up(self) -> None:
        """Load (on a fresh machine: compile, seconds) every kernel `observe` calls, before the
        server says ready: batches arriving during a first compile would fill the monitor's
        queue and be dropped. Windows and alert states are left as they were."""
        specs = {(False, t.name): t for t in self._schema.inputs} | {(True, t.name): t for t in self._schema.outputs}
        for key, (columns, _) in self._sources.items():
            spec = specs[key]
            if len(spec.shape) == 2:
                gather_columns(np.zeros((1, max(columns) + 1), dtype=spec.dtype), [0], np.zeros((1, 1)), [0])
        if self._ks is not None:
            self._ks.warm_up()
        if any(c.categorical for c in self.columns):
            probe = SlidingChi2(np.array([0, 1]), 2)
            probe.update(np.array([0, 5], dtype=np.int64))
            _ = probe.statistic, probe.pvalue(), probe.psi()

    @property
    def tensors(self) -> tuple[set[str], set[str]]:
        """The input and output tensors the columns come from (the rest need not be gathered)."""
        return ({c.tensor for c in self.columns if not c.from_output},
                {c.tensor for c in self.columns if c.from_output})

    @property
    def pending_history(self) -> int:
        """Evaluations kept since the last take_history()."""
        return len(self._history)

    def take_history(self) -> list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
        """The evaluations since the last call: (time ns, events observed, statistics, p-values,
        effects), one value per column in the order of `columns`."""
        history, self._history = self._history, []
        return history

    @property
    def window_rows(self) -> int:
        return self.columns[0].kernel.n

    @property
    def full(self) -> bool:
        return self.columns[0].kernel.n == self.settings.window

    def observe(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> list[DriftEvent]:
        """Update every column with a scored batch; evaluate at each `every` boundary.

        The batch is cut into pieces ending at the boundaries. The continuous columns take
        all pieces in one KSColumns call (each column's window state comes into cache once
        per batch, and Python runs once per batch, not once per column and piece); the
        categorical ones take them column by column. The statistics seen at each boundary
        are then evaluated across columns, exactly as if all columns had moved in step."""
        first = self.columns[0]
        rows = len((outputs if first.from_output else inputs)[first.tensor])
        ends, marks, since, end = [], [], self._since, 0  # pieces, each ending at a boundary or the batch's end
        while end < rows:
            take = min(rows - end, self.settings.every - since)
            end += take
            since = (since + take) % self.settings.every
            ends.append(end)
            marks.append(since == 0)
        # [columns, boundaries]: statistic, effect (KS D, or PSI) and window length at each
        # boundary; p-values are computed only at the boundaries evaluated (a p-value not
        # yet cached can cost milliseconds while a window fills)
        cols, marked = len(self.columns), sum(marks)
        statistic, effect = np.zeros((cols, marked)), np.zeros((cols, marked))
        length, pvalue = np.zeros((cols, marked), dtype=np.int64), np.ones((cols, marked))
        ks = None
        if self._continuous:
            block = np.empty((len(self._continuous), rows))
            for (from_output, tensor), (columns, block_rows) in self._sources.items():
                array = (outputs if from_output else inputs)[tensor]
                if array.ndim == 1:
                    block[block_rows] = array
                else:
                    gather_columns(array, columns, block, block_rows)
            ks = self._ks.advance(block, np.array(ends, dtype=np.int64), np.array(marks, dtype=np.bool_))
            statistic[self._continuous] = effect[self._continuous] = ks.statistic
            length[self._continuous] = ks.n
        for i, column in enumerate(self.columns):
            if column.categorical:
                kernel, v, start, b = column.kernel, column.values(inputs, outputs), 0, 0
                for end, mark in zip(ends, marks):
                    kernel.update(v[start:end])
                    start = end
                    if mark:
                        statistic[i, b], pvalue[i, b], effect[i, b], length[i, b] = \
                            kernel.statistic, kernel.pvalue(), kernel.psi(), kernel.n
                        b += 1
        self._since = since
        events: list[DriftEvent] = []
        done = self.events
        b = 0
        for end, mark in zip(ends, marks):
            if not mark:
                continue
            if length[0, b] == self.settings.window:  # evaluated once the (first column's) window is full
                if ks is not None:
                    pvalue[self._continuous, b] = ks.pvalues(b)
                events.extend(self._evaluate(statistic[:, b], pvalue[:, b], effect[:, b], done + end))
            b += 1
        self.events += rows  # last: a reader that sees the rows counted sees their evaluations too
        return events

    def _evaluate(self, statistics: np.ndarray, pvalues: np.ndarray, effects: np.ndarray,
                  events_so_far: int) -> list[DriftEvent]:
        """One boundary's statistic, p-value and effect (KS D, or PSI) per column."""
        s = self.settings
        self.evaluations += 1
        if self.keep_history:
            self._history.append((time.time_ns(), events_so_far, statistics.copy(), pvalues.copy(), effects.copy()))
        drifting = corrected_significance(pvalues, s.alpha, s.correction) & (effects >= s.min_effect)
        events = []
        for column, p, effect, stat, drift in zip(self.columns, pvalues, effects, statistics, drifting):
            st = self.state[column.name]
            st.statistic, st.pvalue, st.effect, st.drifting = float(stat), float(p), float(effect), bool(drift)
            st.streak = st.streak + 1 if drift != st.alert else 0
            if st.streak >= s.consecutive:
                st.alert = not st.alert
                st.streak = 0
                event = DriftEvent("raise" if st.alert else "clear", self.model, column.name, float(stat), float(p),
                                   float(effect), events_so_far)
                events.append(event)
        return events
