"""The watching side of the data plane: every scored batch goes to `Observer.put`, which hands
it on without waiting -- to the monitor (latency histograms, drift), the Parquet scoring log
and the champion's challengers (whose results come back to the monitor and the log).

With `workers = 1` it runs inside the serving process; with several workers it runs in the
observer process, fed from the workers' shared-memory rings (engine/processes/observer.py).
Either way the serving path only calls `put`, and nothing behind it can slow or fail an
answer: full queues drop and count.

The drift and quality monitors, the scoring log and the challengers are imported when a
model first needs them: Numba (the drift kernels), pyarrow's Parquet writer and ONNX Runtime
cost a process tens of MiB each, which a server that does not use them need not carry.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from engine.batching.batch import ScoredBatch
from engine.handoff.ring import Receipt
from engine.monitor.guardwatch import GuardWatch
from engine.monitor.events import EVALUATIONS_EVERY_S, write_evaluations, write_events
from engine.monitor.latency import LatencyMonitor
from engine.monitor.rule import event_line
from engine.monitor.tap import MonitorTap
from engine import audit
from engine.errors import UserFacing
from engine.performance.join import Labels, PerformanceMonitor
from engine.settings import ModelSettings, RouteSettings, Settings

if TYPE_CHECKING:
    from engine.monitor.drift import DriftMonitor
    from engine.monitor.quality import QualityMonitor
    from engine.routing.shadow import Shadow
    from engine.runtime.session import ModelShape, OnnxModel
    from engine.scorelog.parquet import ScoreLog

log = logging.getLogger("scorewire")


Key = tuple[str, str]  # (model name, version)


class Observer:
    def __init__(self, settings: Settings, announce: Callable[[str], None],
                 shadow_results: Callable[[ScoredBatch], None] | None = None):
        """`shadow_results`: where challengers' results go (default: this observer's monitor
        and log; the challengers process sends them to the observer process instead)."""
        self.settings = settings
        self._announce = announce
        self._shadow_results = shadow_results
        self._evaluations_written = time.monotonic()
        self.latency = LatencyMonitor()
        self.drift: dict[Key, DriftMonitor] = {}
        self.quality: dict[Key, QualityMonitor] = {}  # data quality of the drift monitors' input features
        self.models: dict[Key, OnnxModel | ModelShape] = {}  # monitored versions and challengers (sessions: to shadow)
        self.shadows: dict[Key, tuple[Shadow, ...]] = {}  # champion -> its challengers
        self.scorelog: ScoreLog | None = None
        self.provenance: dict[Key, tuple[str | None, str]] = {}  # (model, version) -> (ONNX file, settings) sha256
        # labels joined with scored rows (engine/performance/); rollouts decided by the observer
        # only, not by the challengers process (which hands its results to the observer)
        self.performance = PerformanceMonitor(settings, rollouts=shadow_results is None)
        self.performance.drift_alerts = self._drift_alerts
        self.guards = GuardWatch(settings)  # the guards' alert (its counts: set by the observer's owner)
        monitors = [m.monitor for m in settings.models if m.monitor]
        # Every batch is stamped with its place in its version's rows (ScoredBatch.seq) before
        # the monitor and the log get it: they drop, gather and reorder independently, and a
        # drift event names the rows its window held by (run, seq), which the log stores per
        # row. `run` tells this observer's rows from a previous one's (a restart counts from 0).
        self.run = uuid.uuid4().hex[:16]
        self._seq: dict[Key, int] = {}
        self._seq_lock = threading.Lock()  # put (serving or ring thread) and the challengers' threads
        self.tap = MonitorTap(self._monitor, max([m.queue_batches for m in monitors] or [16_384]),
                              max_rows=max([m.queue_rows for m in monitors] or [262_144]))

    def _drift_alerts(self, model: str, version: str) -> set[str]:
        """The columns of a version's drift monitor with an alert raised now (any thread)."""
        monitor = self.drift.get((model, version))
        return set() if monitor is None else {name for name, st in list(monitor.state.items()) if st.alert}

    # -- set-up -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        self.latency.warm_up()

    def add_model(self, ms: ModelSettings, model: OnnxModel | ModelShape) -> None:
        """A loaded version: its drift monitor (if it has one), and its session for shadowing."""
        self.models[(ms.name, ms.version)] = model
        if ms.monitor is not None:
            from engine.monitor.drift import DriftMonitor, load_reference
            from engine.monitor.quality import QualityMonitor

            reference = load_reference(ms.monitor.reference)
            monitor = DriftMonitor(model.label, ms.monitor, model.schema, reference)
            monitor.warm_up()
            monitor.keep_history = self.settings.monitoring.events_dir is not None
            quality = QualityMonitor(monitor, model.schema, reference)
            quality.warm_up()
            self.quality[(ms.name, ms.version)] = quality
            self.drift[(ms.name, ms.version)] = monitor

    def remove_model(self, key: Key) -> None:
        self.models.pop(key, None)
        self.drift.pop(key, None)
        self.quality.pop(key, None)

    def _track(self, settings: Settings, event: str) -> None:
        """Every version's provenance (the ONNX file's and its settings' sha256: the scoring
        log's columns) and, from the observer only (the challengers process serves the same
        versions), an audit row (events_dir, kind=audit) for each version loaded, changed
        or unloaded."""
        old = self.provenance
        new = {(m.name, m.version): audit.provenance(m) for m in settings.models}
        self.provenance = new
        if self.scorelog is not None:
            self.scorelog.provenance = dict(new)
        directory = settings.monitoring.events_dir
        if directory is None or self._shadow_results is not None:
            return
        paths = {(m.name, m.version): str(m.path) for m in settings.models}
        rows: dict[str, list] = {}
        for key, (sha, config) in new.items():
            if old.get(key) != (sha, config):
                detail = "" if key not in old else f"from model {old[key][0]} settings {old[key][1]}"
                rows.setdefault(key[0], []).append({"event": event, "version": key[1], "model_sha256": sha,
                                                    "config_sha256": config, "path": paths[key], "detail": detail})
        for key in old.keys() - new.keys():
            rows.setdefault(key[0], []).append({"event": "unload", "version": key[1], "model_sha256": old[key][0],
                                                "config_sha256": old[key][1], "detail": "removed by a reload"})
        for model, items in rows.items():
            try:
                audit.write(directory, model, items)
            except OSError:
                log.exception("could not write the audit trail to %s", directory)

    def open_scorelog(self) -> None:
        if self.settings.scorelog is not None:
            from engine.scorelog.parquet import ScoreLog

            self.scorelog = ScoreLog(self.settings.scorelog, self.feature_names())
            self.scorelog.run = self.run
            self._announce(f"scoring log in {self.settings.scorelog.dir}")
        self._track(self.settings, "load")

    def feature_names(self) -> dict[tuple[str, str], list[str]]:
        """Log column names of monitored inputs: the features the monitor config names."""
        names = {}
        for ms in self.settings.models:
            model = self.models.get((ms.name, ms.version))
            monitor = self.drift.get((ms.name, ms.version))
            if monitor is not None and model is not None:
                names[(ms.name, ms.monitor.input or model.schema.inputs[0].name)] = monitor.features
        return names

    def install_shadows(self, routes: list[RouteSettings]) -> list[Shadow]:
        """Start the challengers of `routes` (those loaded); returns the running ones no longer
        used, for the caller to close once the new ones are in place. A challenger that did
        not change keeps running."""
        from engine.routing.shadow import Shadow

        current = {(sh.name, champion[1], sh.version): sh for champion, group in self.shadows.items() for sh in group}
        shadows, retired = {}, []
        for rs in routes:
            group = []
            for version in rs.challengers:
                model = self.models.get((rs.model, version))
                if model is None:  # failed its warm-up: left out of the route
                    continue
                shadow = current.pop((rs.model, rs.champion, version), None)
                if (shadow is None or shadow.model is not model or shadow.timeout_s != rs.shadow_timeout_s
                        or shadow.capacity != rs.shadow_queue_batches):
                    if shadow is not None:
                        retired.append(shadow)
                    shadow = Shadow(model, rs.shadow_queue_batches, rs.shadow_timeout_s, self._shadow_scored)
                group.append(shadow)
            if group:
                shadows[(rs.model, rs.champion)] = tuple(group)
        self.shadows = shadows
        if self.scorelog is not None:
            self.scorelog.feature_names = self.feature_names()
        return retired + list(current.values())

    # -- the data plane ---------------------------------------------------------------------
    def put(self, batch: ScoredBatch, receipt: Receipt | None = None) -> None:
        """A batch the serving path scored. Never blocks. `receipt` (a ring record's) is done
        once the log has committed the batch's rows or given them up (at once without a log)."""
        batch = self._stamp(batch)
        self.tap.put(batch)
        self.performance.put(batch)
        if self.scorelog is not None:
            self.scorelog.put(batch, receipt)
        elif receipt is not None:
            receipt.done = True
        if self.shadows:
            self.offer_shadows(batch)

    def _stamp(self, batch: ScoredBatch) -> ScoredBatch:
        """The batch with its first row's place among its version's rows this run."""
        key = (batch.model, batch.version)
        with self._seq_lock:
            seq = self._seq.get(key, 0)
            self._seq[key] = seq + batch.rows
        return batch.stamped(seq)

    def put_labels(self, labels: Labels) -> None:
        """Labels sent back (any thread; never blocks)."""
        self.performance.put_labels(labels)

    def reloaded(self, settings: Settings) -> None:
        self.settings = settings
        self.guards = self.guards.reloaded(settings)
        self._track(settings, "reload")
        try:
            self.performance.install(settings)
        except UserFacing as exc:  # the reload's probe read it; it changed since
            log.error("performance monitoring keeps its previous references: %s", exc)

    def offer_shadows(self, batch: ScoredBatch) -> None:
        for shadow in self.shadows.get((batch.model, batch.version), ()):
            shadow.offer(batch)

    def _shadow_scored(self, batch: ScoredBatch) -> None:
        """On a challenger's thread: its results go to the monitor and the log."""
        if self._shadow_results is not None:
            self._shadow_results(batch)
            return
        batch = self._stamp(batch)
        self.tap.put(batch)
        self.performance.put(batch)
        if self.scorelog is not None:
            self.scorelog.put(batch)

    def _monitor(self, batches: list[ScoredBatch]) -> None:
        """On the monitor thread: latency histograms, then drift and data quality, per model
        version on the concatenation of the batches queued (in their order)."""
        groups: dict[tuple[str, str, str], list[ScoredBatch]] = {}
        for batch in batches:
            groups.setdefault((batch.model, batch.version, batch.role), []).append(batch)
            self.latency.record_batch(batch.model, batch.version, batch.rows)
            if batch.role != "challenger":
                self.guards.rows(batch.model, batch.version, batch.rows)
        self.guards.check()
        for (model, version, role), group in groups.items():
            self.latency.record(model, version, role, "queue", np.concatenate([b.queue_us for b in group]))
            total_us = np.concatenate([b.total_us for b in group])
            self.latency.record(model, version, role, "total", total_us)
            self.latency.record_durations(model, version, role, total_us)
            self.latency.record(model, version, role, "inference", np.array([b.inference_us for b in group]))
            monitor = self.drift.get((model, version))
            if monitor is None:
                continue
            from engine.monitor.quality import said as quality_said  # loaded with the first drift monitor

            if len(group) == 1:
                inputs, outputs = group[0].inputs, group[0].outputs
            else:  # only the tensors the monitor reads
                wanted_in, wanted_out = monitor.tensors
                inputs = {k: np.concatenate([b.inputs[k] for b in group]) for k in wanted_in}
                outputs = {k: np.concatenate([b.outputs[k] for b in group]) for k in wanted_out}
            # data quality first: a reader that sees drift's rows counted
            # (scorewire_drift_events_observed) sees their quality shares too
            quality = self.quality.get((model, version))
            quality_events = quality.observe(inputs) if quality is not None else []
            events = monitor.observe(inputs, outputs, [(b.seq, b.rows) for b in group])
            if events and self.settings.monitoring.events_dir is not None:
                try:
                    write_events(self.settings.monitoring.events_dir, events, self.run)
                except OSError:
                    log.exception("could not write drift events to %s", self.settings.monitoring.events_dir)
            for event in events:  # a raise is a warning; a clear is news, said with its reason
                log.log(logging.WARNING if event.kind == "raise" else logging.INFO, "%s",
                        event_line(event, monitor.settings.min_effect, monitor.settings.consecutive,
                                   len(monitor.sizes) > 1))
            quality_said(quality_events, monitor.settings.consecutive, self.settings.monitoring.events_dir)
        self._write_evaluations(force=False)

    def _write_evaluations(self, force: bool) -> None:
        """The evaluations since the last write, every EVALUATIONS_EVERY_S or 100 evaluations
        (or now, when forced): a few files an hour, not one per evaluation."""
        directory = self.settings.monitoring.events_dir
        if directory is None:
            return
        pending = sum(m.pending_history for m in self.drift.values())
        if not pending or not (force or pending >= 100 or time.monotonic() - self._evaluations_written >= EVALUATIONS_EVERY_S):
            return
        self._evaluations_written = time.monotonic()
        for monitor in list(self.drift.values()):
            try:
                write_evaluations(directory, monitor, monitor.take_history())
            except OSError:
                log.exception("could not write drift evaluations to %s", directory)

    # -- shutdown ---------------------------------------------------------------------------
    def all_shadows(self) -> Iterable[Shadow]:
        return [sh for group in self.shadows.values() for sh in group]

    def close_shadows(self, until: Callable[[], float]) -> None:
        """Challengers finish what they were offered (in parallel, within `until()` s), and
        say what they did."""
        shadows = self.all_shadows()
        for sh in shadows:
            sh.begin_close()
        for sh in shadows:
            sh.close(max(0.0, until()))
        for sh in shadows:
            st = sh.stats
            self._announce(f"challenger {sh.model.label}: {st.rows_scored} rows scored, {st.rows_dropped} dropped, "
                           f"{st.rows_failed} failed (errors {st.errors}, wrong shape {st.bad_shape}, "
                           f"timeouts {st.timeouts})")

    def close(self, until: Callable[[], float], log_flush_s: float) -> None:
        """Challengers finish what they were offered, then the monitor, then the log writes
        everything and closes its files; `until()` is the time left (s). Blocking: run it off
        the event loop."""
        self.close_shadows(until)
        self.tap.close(max(0.1, until()))
        self.performance.close(max(0.1, until()))
        self._write_evaluations(force=True)
        tap = self.tap
        evaluations = sum(m.evaluations for m in self.drift.values())
        self._announce(f"monitor: {tap.rows_handled} rows observed, {tap.rows_dropped} dropped, {tap.rows_failed} "
                       f"failed ({evaluations} drift evaluations)")
        if self.scorelog is not None:
            self.scorelog.close(max(log_flush_s, until()))
            st = self.scorelog.stats
            self._announce(f"scoring log: {st.rows_written} rows written in {st.files_closed} files, "
                           f"{st.rows_dropped} dropped, {st.rows_failed} failed")
