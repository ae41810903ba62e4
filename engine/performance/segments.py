"""Segments of a version's rows (`[models.segments]`): how the model does for each group of
its rows, not only on average.

Each column of `columns` splits the rows:
- a categorical feature by its code (rounded to an integer, as the drift monitor reads it):
  the `max_values` most frequent codes of the version's drift reference ([models.monitor]
  reference; ties: the smaller code first) are a segment each, written `f5=2`; any other
  code, and a non-finite value, is `f5=other`;
- a continuous feature by its `bins` edges e0 < e1 < ... < ek: `f2=[e0,e1)`, ...,
  `f2=[e(k-1),ek)`; a value outside [e0, ek), or NaN, is `f2=other`.
A row is in one segment per column, and segments do not cross columns (there is no
`f5=2 & f2=[0,1.5)`): a version has at most the sum over its columns of (max_values + 1)
segments (a binned column: its bins + 1), at most 8 x 1001 whatever the traffic.

A scored row's segments are computed once, on the whole batch, when the observer takes it
(np.searchsorted on the kept codes or on the edges; no per-row Python): one int16 per column,
the segment's index in `names`. They travel with the row through the join's pending rows
(pending.py) to its label, so a labelled row counts in the segment it was scored in.

Per segment:
- rows scored (np.bincount per batch): `scorewire_segment_rows_total`;
- data quality: rows with a non-finite monitored feature (NaN, inf: a missing value), per
  segment, `scorewire_segment_nonfinite_rows_total` (over the rows scored: its share). A row
  whose segment column itself is NaN is in that column's `other`;
- with labels, the realized performance over the version's performance window (its last
  `window` labelled rows, per role), on that window's rows of the segment: the version's
  metrics (metrics.realized) and how many rows they are over. A segment with few rows in the
  window has a noisy figure: read it with its row count;
- score drift, when the drift reference also has the version's score (a column named as
  [models.performance] `score`, e.g. "probabilities:1", which [models.monitor] outputs lists;
  binary and regression): the two-sample Kolmogorov-Smirnov statistic D (scipy.stats.ks_2samp's)
  between the segment's scores among the version's last `window` scored rows and the
  reference's scores of its rows in that segment (the reference segmented by the same rule).
  D alone, an effect size (0: the same distribution, 1: disjoint): no p-value and no alert,
  since a segment's sample may be small. Computed at most once a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from engine.performance.alert import BadReference
from engine.performance.metrics import realized
from engine.settings import SegmentSettings

DRIFT_EVERY_S = 1.0
NONE = -1  # the code of a row whose segment is not known (the batch lacked the monitored input)


def _number(x: float) -> str:
    """An edge or a code as a segment's name writes it: 2, 1.5, -inf."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 2 ** 53 else f"{x:g}"


def by_segment(codes: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(segment, the rows in it) for each segment present in `codes` (rows x columns, NONE
    skipped): one stable sort per column and a loop over the segments present, none over rows."""
    for c in range(codes.shape[1]):
        column = codes[:, c]
        order = np.argsort(column, kind="stable")
        present, starts = np.unique(column[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        for segment, a, b in zip(present, starts, ends):
            if segment != NONE:
                yield int(segment), order[a:b]


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample KS statistic of two sorted, non-empty samples (scipy.stats.ks_2samp's)."""
    pooled = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, pooled, side="right") / len(a)
                               - np.searchsorted(b, pooled, side="right") / len(b))))


class Segments:
    """One version's segments: the codes of its rows, rows counted, the score drift state."""

    def __init__(self, settings: SegmentSettings, features: list[str], input_name: str | None, window: int,
                 reference: dict[str, np.ndarray], where: str, score: str | None = None):
        """`reference`: the drift reference's columns by name (`where` names it in errors);
        `score`: the name of the version's score column (binary, regression), whose drift per
        segment is followed when the reference has it; `window`: scored rows it is over."""
        self.settings, self.features, self.input = settings, list(features), input_name
        missing = [c for c in settings.columns if c not in settings.bins and c not in reference]
        if missing:
            raise BadReference(f"{where}: no column {missing} for [models.segments] columns (it has "
                               f"{sorted(reference)[:10]})")
        names: list[str] = []
        self._columns = []  # per column: (feature index, first segment, edges | None, kept codes, their segment, other)
        for name in settings.columns:
            first = len(names)
            edges = settings.bins.get(name)
            kept = index = None
            if edges is not None:
                edges = np.asarray(edges, np.float64)
                names += [f"{name}=[{_number(a)},{_number(b)})" for a, b in zip(edges[:-1], edges[1:])]
            else:
                values = np.rint(np.asarray(reference[name], np.float64))
                codes, counts = np.unique(values[np.isfinite(values)], return_counts=True)
                top = codes[np.lexsort((codes, -counts))[:settings.max_values]]  # most frequent first
                names += [f"{name}={_number(c)}" for c in top]
                order = np.argsort(top)
                kept, index = top[order], (first + order).astype(np.int16)
            names.append(f"{name}=other")
            self._columns.append((self.features.index(name), first, edges, kept, index, len(names) - 1))
        self.names = names
        self.width = len(self._columns)
        self.rows = np.zeros(len(names), np.int64)  # scored, ever (scorewire_segment_rows_total)
        self.nonfinite = np.zeros(len(names), np.int64)  # of those, with a non-finite feature
        self.window = window
        self._scores = np.zeros(window, np.float64)  # the last `window` scored rows, for drift
        self._codes = np.full((window, self.width), NONE, np.int16)
        self._n = 0
        self._drift_s = 0.0
        self._changed = False
        self.drift: dict[str, float] = {}  # segment name -> KS D (swapped whole)
        self.reference: list[np.ndarray] | None = None  # per segment, its reference rows' scores, sorted
        if score is not None and score in reference and all(c in reference for c in settings.columns):
            ref_scores = np.asarray(reference[score], np.float64)
            if ref_scores.ndim == 1:
                ref_codes = self._assign([np.asarray(reference[c]) for c in settings.columns])
                self.reference = [np.zeros(0)] * len(names)
                for segment, rows in by_segment(ref_codes):
                    values = ref_scores[rows]
                    self.reference[segment] = np.sort(values[~np.isnan(values)])

    def _assign(self, columns: list[np.ndarray]) -> np.ndarray:
        """Each row's segment per column (rows x columns, int16), from each column's values."""
        out = np.empty((len(columns[0]) if columns else 0, self.width), np.int16)
        for c, (values, (_, first, edges, kept, index, other)) in enumerate(zip(columns, self._columns)):
            values = np.asarray(values, np.float64)
            if edges is not None:
                at = np.searchsorted(edges, values, side="right") - 1  # NaN sorts last: outside
                out[:, c] = np.where((at >= 0) & (at < len(edges) - 1), first + at, other)
            elif len(kept) == 0:
                out[:, c] = other
            else:
                values = np.rint(values)
                at = np.minimum(np.searchsorted(kept, values), len(kept) - 1)
                out[:, c] = np.where(kept[at] == values, index[at], other)
        return out

    def codes(self, features: np.ndarray) -> np.ndarray:
        """The segments of a batch's rows (its monitored input, rows x features): rows x columns."""
        return self._assign([features[:, j] for j, *_ in self._columns])

    def scored(self, codes: np.ndarray, scores: np.ndarray) -> None:
        """A scored batch's rows: counted per segment, and (with a score reference) kept for drift."""
        known = codes[codes != NONE]
        self.rows += np.bincount(known, minlength=len(self.names))[:len(self.names)]
        if self.reference is None or np.ndim(scores) != 1:
            return
        codes, scores = codes[-self.window:], np.asarray(scores, np.float64)[-self.window:]
        at = (self._n + np.arange(len(codes))) % self.window
        self._codes[at] = codes
        self._scores[at] = scores
        self._n += len(codes)
        self._changed = True

    def quality(self, codes: np.ndarray, features: np.ndarray) -> None:
        """A scored batch's rows with a non-finite monitored feature, counted per segment."""
        incomplete = ~np.isfinite(features).all(axis=1)
        if incomplete.any():
            known = codes[incomplete]
            known = known[known != NONE]
            self.nonfinite += np.bincount(known, minlength=len(self.names))[:len(self.names)]

    def update_drift(self, now_s: float | None = None) -> bool:
        """Each segment's score drift over the last `window` scored rows, when rows came since
        and a second has passed (False: not due)."""
        now_s = time.monotonic() if now_s is None else now_s
        if not self._changed or now_s - self._drift_s < DRIFT_EVERY_S:
            return False
        self._changed, self._drift_s = False, now_s
        n = min(self._n, self.window)
        drift = {}
        for segment, rows in by_segment(self._codes[:n]):
            live = self._scores[rows]
            live = np.sort(live[~np.isnan(live)])
            ref = self.reference[segment]
            if len(live) and len(ref):
                drift[self.names[segment]] = ks_statistic(live, ref)
        self.drift = drift
        return True

    def performance(self, task: str, scores: np.ndarray, labels: np.ndarray,
                    codes: np.ndarray) -> dict[str, tuple[int, dict[str, float]]]:
        """Per segment present among a window's labelled rows (their scores, labels and
        codes): (its rows, the realized metrics over them)."""
        return {self.names[segment]: (len(rows), realized(task, scores[rows], labels[rows]))
                for segment, rows in by_segment(codes[:, :self.width])}


def for_version(ms, window: int) -> Segments:
    """The version's segments ([models.segments]), from its drift reference."""
    from engine.monitor.drift import load_reference

    p = ms.performance
    reference = load_reference(ms.monitor.reference)
    score = p.score if p.task != "multiclass" else None
    return Segments(ms.segments, ms.monitor.features, ms.monitor.input, window, reference,
                    f"drift reference {ms.monitor.reference} (model {ms.name}:{ms.version})", score)


def families(family, labels, segments: list[tuple[str, str, Segments]],
             results: dict[tuple[str, str, str], dict[str, tuple[int, dict[str, float]]]]) -> None:
    """The segments' Prometheus families: rows scored, score drift, realized performance."""
    family("scorewire_segment_rows_total", "counter", "Rows scored per segment ([models.segments]: a column's "
           "code or bin, or its `other`).", [(labels(model=m, version=v, segment=name), int(n))
                                             for m, v, s in segments for name, n in zip(s.names, s.rows)])
    family("scorewire_segment_nonfinite_rows_total", "counter", "Rows scored per segment with a non-finite "
           "monitored feature (a missing value): data quality per segment.",
           [(labels(model=m, version=v, segment=name), int(n)) for m, v, s in segments
            for name, n in zip(s.names, s.nonfinite)])
    family("scorewire_segment_score_drift", "gauge", "Per segment: KS statistic D between its scores among the "
           "version's last performance window of scored rows and the drift reference's scores in the segment.",
           [(labels(model=m, version=v, segment=name), d) for m, v, s in segments
            for name, d in sorted(s.drift.items())])
    ordered = sorted(results.items())
    family("scorewire_segment_performance", "gauge", "Realized performance of each segment's rows among the "
           "version's last `window` labelled rows (the metrics of scorewire_performance).",
           [(labels(model=m, version=v, role=r, segment=name, metric=k), value) for (m, v, r), per in ordered
            for name, (_, metrics) in sorted(per.items()) for k, value in metrics.items() if value == value])
    family("scorewire_segment_performance_rows", "gauge", "Labelled rows of each segment in the version's "
           "performance window (what scorewire_segment_performance is over).",
           [(labels(model=m, version=v, role=r, segment=name), rows) for (m, v, r), per in ordered
            for name, (rows, _) in sorted(per.items())])


__all__ = ["NONE", "Segments", "by_segment", "families", "for_version", "ks_statistic"]
