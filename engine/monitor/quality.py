"""Data quality per monitored input feature, as Evidently's data-quality checks: over the
monitor's smallest window of rows, the share of

    missing          non-finite values (NaN, +-inf; they reach the monitor only where the
                     model has allow_non_finite = true), any feature;
    out_of_range     finite values outside the reference's [min, max] (both ends inside),
                     continuous features;
    unseen_category  categories (integer codes, rint of the value: what chi-squared counts)
                     the reference never had, categorical features.

The reference's min, max and categories are taken once, from the drift reference (its finite
values), when the monitor is built. The shares move with every scored batch in one Numba pass
over the input tensor as it came (kernels.quality), on the monitor thread right after drift;
/metrics shows them as `scorewire_data_quality_share{model,version,feature,check}`.

Alerts ([models.monitor.quality]): at the drift's evaluation boundaries (every `every` rows,
once the smallest window is full) each (feature, check) with a threshold is above it or not;
as drift does, an alert is raised after `consecutive` evaluations above and cleared after as
many at or below -- so what is decided does not depend on how the stream was cut into
batches. Each raise and clear is a log line (which feature, check, share, threshold), an
event (events_dir, kind=quality), an audit row, and `scorewire_data_quality_alert`.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine import audit
from engine.codec.validate import ModelSchema
from engine.monitor.domain import reference_domain
from engine.monitor.drift import DriftMonitor, MonitorConfigError
from engine.monitor.events import publish, time_type
from kernels.quality import QualityWindow

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("scorewire")

CHECKS = ("missing", "out_of_range", "unseen_category")  # the kernel's counts' columns, in order


@functools.cache
def schema() -> pa.Schema:
    """The data-quality events' columns (pyarrow: imported with the first event written)."""
    import pyarrow as pa

    return pa.schema([
        ("time", time_type()),
        ("event", pa.string()),  # raise | clear
        ("version", pa.string()),
        ("feature", pa.string()),
        ("check", pa.string()),  # missing | out_of_range | unseen_category
        ("share", pa.float64()),  # over the window, at the evaluation that decided
        ("threshold", pa.float64()),
        ("window", pa.int64()),
        ("events_observed", pa.int64()),
    ])


@dataclass(frozen=True)
class QualityEvent:
    kind: str  # "raise" or "clear"
    model: str
    version: str
    feature: str
    check: str
    share: float
    threshold: float
    window: int  # rows the share is over
    events: int  # rows observed by the monitor when it happened
    time_ns: int = field(default_factory=time.time_ns)

    def line(self, consecutive: int) -> str:
        """The log line: which feature, which check, the share and the threshold."""
        where = (f"model {self.model}:{self.version} feature {self.feature} check {self.check}: share "
                 f"{self.share:.4g} of the last {self.window} rows")
        if self.kind == "raise":
            return (f"data quality raise: {where} is above max_{self.check} {self.threshold:g} "
                    f"({consecutive} evaluation{'s' * (consecutive > 1)} in a row) after {self.events} events")
        return (f"data quality clear: {where} is at or below max_{self.check} {self.threshold:g} "
                f"({consecutive} evaluation{'s' * (consecutive > 1)} in a row) after {self.events} events")


class QualityMonitor:
    def __init__(self, drift: DriftMonitor, schema: ModelSchema, reference: dict[str, np.ndarray]):
        """The input features of `drift` (a version's drift monitor, built on `schema`), their
        domain from its reference (the columns by name, as load_reference reads them)."""
        model, self.version = drift.model.split(":", 1)
        self.model = model
        self.settings = drift.settings
        columns = [c for c in drift.columns if not c.from_output]
        self.features = [c.name for c in columns]
        self.categorical = np.array([c.categorical for c in columns], dtype=bool)
        self.tensor = columns[0].tensor
        self.size = drift.sizes[0]
        self._dtype = next(t.dtype for t in schema.inputs if t.name == self.tensor)
        lo, hi, categories, empty = reference_domain(reference, self.features, list(self.categorical), self._dtype)
        if empty:
            raise MonitorConfigError(f"model {drift.model}: reference column '{empty[0]}' has no finite value: "
                                     "its range (data quality) cannot be read from it")
        self.lo, self.hi = lo, hi
        self.window = QualityWindow(self.size, lo, hi, categories)
        # per feature and check: its threshold, NaN where it is not alerted (or does not apply)
        q = self.settings.quality
        self.thresholds = np.full((len(columns), len(CHECKS)), np.nan)
        if q is not None:
            for i, limit in enumerate((q.max_missing, q.max_out_of_range, q.max_unseen_category)):
                if limit is not None:
                    self.thresholds[:, i] = limit
            self.thresholds[self.categorical, 1] = np.nan
            self.thresholds[~self.categorical, 2] = np.nan
        self.alert = np.zeros(self.thresholds.shape, dtype=bool)
        self._streak = np.zeros(self.thresholds.shape, dtype=np.int64)
        self.events = 0
        self.evaluations = 0
        self._since = 0  # rows since the last `every` boundary
        self.latest: tuple[np.ndarray, int] = (np.full(self.thresholds.shape, np.nan), 0)  # (shares, window rows)

    def checks(self, j: int) -> tuple[str, str]:
        """The checks that apply to feature j."""
        return ("missing", "unseen_category") if self.categorical[j] else ("missing", "out_of_range")

    def warm_up(self) -> None:
        """Compile (a fresh machine: seconds) the kernel for the input's dtype before serving."""
        probe = QualityWindow(2, self.lo, self.hi, [np.zeros(1) if c else None for c in self.categorical])
        probe.advance(np.zeros((1, len(self.features)), dtype=self._dtype))

    def observe(self, inputs: dict[str, np.ndarray]) -> list[QualityEvent]:
        """A scored batch (its tensors by name; the version's rows in scoring order)."""
        x = inputs[self.tensor]
        rows = len(x)
        every = self.settings.every
        ends = np.arange(every - self._since, rows + 1, every, dtype=np.int64)  # rows at each boundary
        counts, lengths = self.window.advance(x if x.ndim == 2 else x.reshape(-1, 1), ends)
        self._since = (self._since + rows) % every
        length = self.window.length
        self.latest = (self.window.counts / length if length else np.full(self.thresholds.shape, np.nan), length)
        events: list[QualityEvent] = []
        for end, c, n in zip(ends, counts, lengths):
            if n == self.size:
                events.extend(self._evaluate(c / n, self.events + int(end)))
        self.events += rows
        return events

    def _evaluate(self, shares: np.ndarray, events_so_far: int) -> list[QualityEvent]:
        self.evaluations += 1
        watched = ~np.isnan(self.thresholds)
        if not watched.any():
            return []
        above = shares > self.thresholds  # NaN thresholds: never
        self._streak = np.where(watched & (above != self.alert), self._streak + 1, 0)
        flip = self._streak >= self.settings.consecutive
        if not flip.any():
            return []
        self.alert ^= flip
        self._streak[flip] = 0
        return [QualityEvent("raise" if self.alert[j, i] else "clear", self.model, self.version, self.features[j],
                             CHECKS[i], float(shares[j, i]), float(self.thresholds[j, i]), self.size, events_so_far)
                for j, i in zip(*np.nonzero(flip))]


def said(events: list[QualityEvent], consecutive: int, events_dir: Path | None) -> None:
    """Log lines (a raise a warning, a clear news), and with `events_dir` the events
    (kind=quality) and an audit row each."""
    for e in events:
        log.log(logging.WARNING if e.kind == "raise" else logging.INFO, "%s", e.line(consecutive))
    if events_dir is None or not events:
        return
    import pyarrow as pa

    try:
        for model in sorted({e.model for e in events}):
            group = [e for e in events if e.model == model]
            publish(events_dir, "quality", model, group[0].time_ns, pa.table({
                "time": pa.array([e.time_ns // 1000 for e in group], time_type()),
                "event": [e.kind for e in group], "version": [e.version for e in group],
                "feature": [e.feature for e in group], "check": [e.check for e in group],
                "share": [e.share for e in group], "threshold": [e.threshold for e in group],
                "window": [e.window for e in group], "events_observed": [e.events for e in group]}, schema=schema()))
            audit.write(events_dir, model, [{
                "event": "quality_alert", "version": e.version,
                "detail": f"{'raised' if e.kind == 'raise' else 'cleared'}: feature {e.feature} check {e.check} "
                          f"share {e.share:.4g} of the last {e.window} rows (max_{e.check} {e.threshold:g})"}
                for e in group])
    except OSError:
        log.exception("could not write data-quality events to %s", events_dir)


def families(observer, family, labels) -> None:
    """`scorewire_data_quality_share` of every monitored version's input features (once it has
    rows), `scorewire_data_quality_window_rows`, and `scorewire_data_quality_alert` where a
    check has a threshold."""
    monitors = sorted(observer.quality.items())
    shares, alerts = [], []
    for (model, version), q in monitors:
        values, rows = q.latest
        alert = q.alert.copy()
        for j, feature in enumerate(q.features):
            for check in q.checks(j):
                i = CHECKS.index(check)
                if rows:
                    shares.append((labels(model=model, version=version, feature=feature, check=check),
                                   float(values[j, i])))
                if not np.isnan(q.thresholds[j, i]):
                    alerts.append((labels(model=model, version=version, feature=feature, check=check),
                                   int(alert[j, i])))
    family("scorewire_data_quality_share", "gauge", "Share of an input feature's values in the monitor's smallest "
           "window that are missing (non-finite), out_of_range (outside the reference's [min, max]; continuous "
           "features) or an unseen_category (categorical features); absent before the first row.", shares)
    family("scorewire_data_quality_window_rows", "gauge", "Rows those shares are over (up to the smallest window).",
           [(labels(model=model, version=version), q.latest[1]) for (model, version), q in monitors])
    family("scorewire_data_quality_alert", "gauge", "1 while a data-quality alert is raised for the feature and "
           "check ([models.monitor.quality]: only checks with a threshold).", alerts)
