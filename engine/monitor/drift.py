"""Drift state per model and column; the statistics themselves are the kernels', the rule's
parts that hold no window (column state, events, correction, thresholds) engine/monitor/rule.py's.

Each monitored column (an input feature, or an output column for prediction drift) has one
sliding window per size in `monitor.windows` (or the one `monitor.window`) of its last
values: two-sample KS against the reference for continuous columns (kernels.SlidingKS: all
sizes in one kernel, sharing the reference's placement and one ring), chi-squared on
integer category codes for categorical ones (kernels.SlidingChi2 per size; NaN and codes
the reference never saw fall in its "other" bin).

Every `every` events, once the smallest window is full, all columns x windows are tested
together: alpha is corrected over all of them (Bonferroni, family-wise; or
Benjamini-Hochberg), windows not yet full count in the correction but are not tested: they
have no statistic, p-value or effect until they are full. A window fires when it is
significant AND its effect size (KS D, or PSI) reaches `min_effect` -- on large windows tiny
shifts are "significant"; a column drifts when any of its windows fires. Hysteresis: an alert is raised after `consecutive` drifting evaluations
in a row and cleared after as many clean ones; each raise and clear is a DriftEvent that
names the windows that fired, with each one's statistic and p-value.

Cost. A KS window is decided against an exact critical statistic (times n*m: computed once
per size), so a quiet window is only tested against it -- no exact statistic, no p-value
(kernels.KSColumns.advance with thresholds). Exact statistics and p-values are computed
where they are needed: windows that reach their threshold, columns with an alert or a
streak, every evaluation when the history is kept, and all windows' statistics at the first
evaluation and every REFRESH_EVENTS events (what /metrics and `status` show) -- at fixed
event counts, so what is seen does not depend on how the stream was cut into batches --,
their p-values when first read (ColumnState.pvalues).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.codec.validate import ModelSchema
from engine.errors import UserFacing
from engine.monitor.rowmap import RowMap
from engine.monitor.rule import (ColumnState, DriftEvent, chi2_critical, corrected_significance, effect_h,
                                 needed_level)
from engine.settings import MonitorSettings
from kernels import KSColumns, SlidingChi2, SlidingKS
from kernels.pvalues import chi2_sf
from kernels.sliding_ks import gather_columns

REFRESH_EVENTS = 10_000  # exact statistics and p-values of every window at least this often (events)


class MonitorConfigError(ValueError, UserFacing):
    """A monitor that cannot be built; the message names the model and the problem."""

    prefix = "config error:\n"


def load_reference(path: Path) -> dict[str, np.ndarray]:
    """Columns of a Parquet or NPZ reference file, by name (NPZ is read without pickle)."""
    path = Path(path)
    if not path.is_file():
        raise MonitorConfigError(f"reference file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    import pyarrow.parquet as pq

    # ParquetFile, not read_table: read_table loads pyarrow.dataset for one file (~4 MiB a process)
    table = pq.ParquetFile(path).read()
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


class DriftMonitor:
    def __init__(self, model: str, settings: MonitorSettings, schema: ModelSchema, reference: dict[str, np.ndarray]):
        self.model = model
        self.settings = settings
        self.sizes = settings.sizes
        self._schema = schema
        self.features = list(settings.features) if settings.features is not None else [
            name for name in reference if name not in settings.outputs]
        outputs = [c for c in settings.categorical if c in settings.outputs]
        if outputs:
            raise MonitorConfigError(f"model {model}: monitor.categorical lists {outputs}, which are outputs: leave "
                                     "them out (an integer output, a class label, is tested with chi-squared anyway; "
                                     "a float one with KS)")
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
                column.kernel = [SlidingChi2(codes, size) for size in self.sizes]
            else:
                column.kernel = SlidingKS(ref.astype(np.float64), self.sizes)
        self._continuous = [i for i, c in enumerate(self.columns) if not c.categorical]
        self._categorical = [i for i, c in enumerate(self.columns) if c.categorical]
        # where the continuous columns' block rows come from: per tensor, its columns and their rows
        self._sources: dict[tuple[bool, str], tuple[list[int | None], list[int]]] = {}
        for row, i in enumerate(self._continuous):
            c = self.columns[i]
            columns, rows = self._sources.setdefault((c.from_output, c.tensor), ([], []))
            columns.append(c.index)
            rows.append(row)
        self._ks = KSColumns([self.columns[i].kernel for i in self._continuous]) if self._continuous else None
        # the tests: columns x windows. Each has a candidate threshold on its score (KS: h,
        # the statistic times n*m, exact; chi-squared: the statistic): below it, its
        # p-value cannot be significant (Bonferroni: p <= alpha/tests, and for KS D >=
        # min_effect too; BH: p <= alpha), so it needs no p-value. Computed once per size.
        self.tests = len(self.columns) * len(self.sizes)
        s = settings
        level = s.alpha / self.tests if s.correction == "bonferroni" else s.alpha
        self._threshold = np.zeros((len(self.columns), len(self.sizes)))
        for i, column in enumerate(self.columns):
            for j, size in enumerate(self.sizes):
                if column.categorical:
                    self._threshold[i, j] = chi2_critical(level, column.kernel[j].k) * (1 - 1e-9)
                else:
                    kernel = column.kernel
                    self._threshold[i, j] = kernel.critical_h(level, size) if s.correction == "bh" else max(
                        kernel.critical_h(level, size), effect_h(s.min_effect, size, kernel.m))
        # what a full window's statistic had to reach to fire (KS D, chi-squared; the report
        # draws it): Bonferroni's is fixed; BH's depends on the other p-values (NaN: its
        # p-value bound is each evaluation's `level`)
        self.needed = np.full(self._threshold.shape, np.nan)
        if s.correction == "bonferroni":
            for i, column in enumerate(self.columns):
                for j, size in enumerate(self.sizes):
                    self.needed[i, j] = (chi2_critical(level, column.kernel[j].k) if column.categorical
                                         else self._threshold[i, j] / (size * column.kernel.m))
        self._sizes = np.array(self.sizes, dtype=np.int64)
        self._watching = False  # any column with an alert or a streak
        self.state = {c.name: ColumnState(self.sizes, None if c.categorical else c.kernel.pvalue_at)
                      for c in self.columns}
        self.events = 0
        self.evaluations = 0
        self._since = 0
        # every evaluation, for [monitoring] events_dir (kind=evaluation): taken by take_history()
        self.keep_history = False
        self._history: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, float]] = []
        self.rows = RowMap()  # which logged rows (ScoredBatch.seq) the windows hold

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
        if self._categorical:
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

    def take_history(self) -> list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, float]]:
        """The evaluations since the last call: (time ns, events observed, statistics, p-values,
        effects, the p-value a window needed), each array [columns, windows] in the order of
        `columns` and `sizes` (NaN: a window not yet full)."""
        history, self._history = self._history, []
        return history

    @property
    def window_lengths(self) -> list[int]:
        """Rows in each window now (of the first column), in the order of `sizes`."""
        kernel = self.columns[0].kernel
        return [k.n for k in kernel] if isinstance(kernel, list) else [kernel.length(size) for size in self.sizes]

    @property
    def window_rows(self) -> int:
        """Rows in the largest window now."""
        return self.window_lengths[-1]

    @property
    def full(self) -> bool:
        """Whether the largest window is full."""
        return self.window_rows == self.sizes[-1]

    def observe(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                seqs: Sequence[tuple[int, int]] | None = None) -> list[DriftEvent]:
        """Update every column with a scored batch; evaluate at each `every` boundary.
        `seqs`: (ScoredBatch.seq, rows) of the batches concatenated, in order: each event
        then names its window's rows in the scoring log.

        The batch is cut into pieces ending at the boundaries. The continuous columns take
        all pieces in one KSColumns call (each column's window state comes into cache once
        per batch, and Python runs once per batch, not once per column and piece); the
        categorical ones take them column by column. The statistics seen at each boundary
        are then evaluated across columns and windows, exactly as if all had moved in step."""
        first = self.columns[0]
        rows = len((outputs if first.from_output else inputs)[first.tensor])
        self.rows.add(self.events, seqs, rows)
        every, smallest = self.settings.every, self.sizes[0]
        ends, marks, since, end = [], [], self._since, 0  # pieces, each ending at a boundary or the batch's end
        while end < rows:
            take = min(rows - end, every - since)
            end += take
            since = (since + take) % every
            ends.append(end)
            marks.append(since == 0)
        done = self.events
        at = [done + e for e, mark in zip(ends, marks) if mark]  # events observed at each boundary
        evaluated = [e >= smallest for e in at]
        # exact values everywhere: when the history is kept, else at the first evaluation and
        # every REFRESH_EVENTS
        refresh = max(1, REFRESH_EVENTS // every)
        exact = [ev and (self.keep_history or (e // every) % refresh == 0 or e - every < smallest)
                 for e, ev in zip(at, evaluated)]
        cols, windows, marked = len(self.columns), len(self.sizes), len(at)
        h = np.full((cols, windows, marked), -1, dtype=np.int64)  # KS: statistic times n*m, -1 unknown
        length = np.zeros((cols, windows, marked), dtype=np.int64)
        chi2 = np.zeros((cols, windows, marked))
        psi = np.full((cols, windows, marked), np.nan)  # categorical effect, where it may be needed
        if self._continuous:
            block = np.empty((len(self._continuous), rows))
            for (from_output, tensor), (columns, block_rows) in self._sources.items():
                array = (outputs if from_output else inputs)[tensor]
                if array.ndim == 1:
                    block[block_rows] = array
                else:
                    gather_columns(array, columns, block, block_rows)
            # columns with an alert or a streak are watched: all their windows exact
            watched = np.array([self.state[self.columns[i].name].alert or self.state[self.columns[i].name].streak > 0
                                for i in self._continuous])
            thresholds = np.where(watched[:, None], 1, self._threshold[self._continuous].astype(np.int64))
            ks = self._ks.advance(block, np.array(ends, dtype=np.int64), np.array(marks, dtype=np.bool_),
                                  np.array(exact, dtype=np.bool_), thresholds)
            h[self._continuous], length[self._continuous] = ks.h, ks.n
        for i in self._categorical:
            column = self.columns[i]
            v = column.values(inputs, outputs)
            watched = self._watched(i)
            for j, kernel in enumerate(column.kernel):
                start, b = 0, 0
                for end, mark in zip(ends, marks):
                    kernel.update(v[start:end])
                    start = end
                    if mark:
                        chi2[i, j, b], length[i, j, b] = kernel.statistic, kernel.n
                        if exact[b] or watched or chi2[i, j, b] >= self._threshold[i, j]:
                            psi[i, j, b] = kernel.psi()
                        b += 1
        self._since = since
        # every test's candidacy at every boundary at once; the usual case: no window is a
        # candidate, and the boundary is only counted
        score = h.astype(np.float64)
        if self._categorical:
            score[self._categorical] = chi2[self._categorical]
        full = length == self._sizes[None, :, None]
        candidate = full & (score >= self._threshold[:, :, None])
        near = candidate.any(axis=(0, 1))
        events: list[DriftEvent] = []
        for b, (events_so_far, ev) in enumerate(zip(at, evaluated)):
            if not ev:
                continue
            if not (exact[b] or near[b] or self._watching):  # nothing near drifting, nothing to report
                self.evaluations += 1
                continue
            events.extend(self._evaluate(h[:, :, b], chi2[:, :, b], psi[:, :, b], length[:, :, b], full[:, :, b],
                                         candidate[:, :, b], exact[b], events_so_far))
        self.events += rows  # last: a reader that sees the rows counted sees their evaluations too
        self.rows.forget_before(self.events - self.sizes[-1])
        return events

    def _evaluate(self, h: np.ndarray, chi2: np.ndarray, psi: np.ndarray, length: np.ndarray, full: np.ndarray,
                  candidate: np.ndarray, exact: bool, events_so_far: int) -> list[DriftEvent]:
        """One boundary: per column and window, KS h (-1: below its threshold) or the
        chi-squared statistic and PSI (NaN: not computed, below its threshold), the window's
        length, whether it is full, and whether it reaches its candidate threshold."""
        s = self.settings
        self.evaluations += 1
        ks, cat = self._continuous, self._categorical
        statistic, pvalue, effect = np.full(h.shape, np.nan), np.full(h.shape, np.nan), np.full(h.shape, np.nan)
        # a window not yet full is not evaluated: no statistic (nor p-value, nor effect), though
        # the kernels may have computed one (a value would read as an evaluation's)
        if ks:
            m = np.array([self.columns[i].kernel.m for i in ks])[:, None]
            statistic[ks] = np.where(full[ks] & (h[ks] >= 0), h[ks] / np.maximum(length[ks] * m, 1), np.nan)
            effect[ks] = statistic[ks]
        if cat:
            statistic[cat] = np.where(full[cat], chi2[cat], np.nan)
        watched = np.array([self._watched(i) for i in range(len(self.columns))])
        known = full & ~np.isnan(statistic)
        wanted = known & (candidate | watched[:, None] | self.keep_history)  # p-values computed now
        if cat:
            wanted[cat] = known[cat]  # cheap
        later = known & exact & ~wanted  # when read
        for i, j in zip(*np.nonzero(wanted)):
            column = self.columns[i]
            if column.categorical:
                pvalue[i, j] = chi2_sf(chi2[i, j], column.kernel[j].k)
            else:
                pvalue[i, j] = column.kernel.pvalue_at(int(length[i, j]), int(h[i, j]))
        tested = np.where(candidate, pvalue, 1.0)  # windows not full, or below the threshold, never significant
        significant = corrected_significance(tested.ravel(), s.alpha, s.correction).reshape(h.shape) & candidate
        if cat:
            effect[cat] = np.where(full[cat], psi[cat], np.nan)
        fired = significant & (effect >= s.min_effect)
        if self.keep_history:
            self._history.append((time.time_ns(), events_so_far, statistic.copy(), pvalue.copy(), effect.copy(),
                                  needed_level(tested.ravel(), s.alpha, s.correction)))
        events = []
        for i, column in enumerate(self.columns):
            st = self.state[column.name]
            if exact or watched[i]:  # a full refresh
                st.statistics, st.effects = statistic[i], effect[i]
                st._p = (pvalue[i], [(j, int(length[i, j]), int(h[i, j])) for j in np.flatnonzero(later[i])])
            elif candidate[i].any():  # the windows near drifting, others as last known
                new = ~np.isnan(pvalue[i])
                st.statistics = np.where(new, statistic[i], st.statistics)
                st.effects = np.where(new, effect[i], st.effects)
                values, lazy = st._p
                st._p = (np.where(new, pvalue[i], values), [entry for entry in lazy if not new[entry[0]]])
            drift = bool(fired[i].any())
            st.fired, st.drifting = fired[i], drift
            st.streak = st.streak + 1 if drift != st.alert else 0
            if st.streak >= s.consecutive:
                st.alert = not st.alert
                st.streak = 0
                lead = st.lead
                which = np.flatnonzero(fired[i])
                events.append(DriftEvent(
                    "raise" if st.alert else "clear", self.model, column.name, float(st.statistics[lead]),
                    float(st.pvalues[lead]), float(st.effects[lead]), events_so_far, self.sizes[lead],
                    tuple(self.sizes[j] for j in which), tuple(float(statistic[i, j]) for j in which),
                    tuple(float(pvalue[i, j]) for j in which),
                    self.rows.ranges(events_so_far, self.sizes[lead])))
        self._watching = any(self._watched(i) for i in range(len(self.columns)))
        return events

    def _watched(self, i: int) -> bool:
        st = self.state[self.columns[i].name]
        return st.alert or st.streak > 0
