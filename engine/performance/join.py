"""The join: labels sent back meet the rows their request was scored with, on a thread of
its own in the observer.

Per model (any version with [models.performance]): a scored row waits up to label_ttl_s for
its label, and a label for its rows (labels may come first); a label, once joined, stays for
the same time so that the challengers' rows of its request (scored in the shadow, later)
join it too: champion and challengers are judged on the same rows. What a model's join holds
(pending.py: flat arrays, under 100 bytes a row) is bounded by max_pending_rows: the oldest
go first, waiting labels counted `evicted`, waiting rows unlabelled.
Labels are counted once each: `joined` (when their first rows meet them), `duplicate` (an id
labelled already), `unmatched` (no rows within the TTL), `invalid` (not one label per row).
Rows are matched by request id: the id a gRPC or REST request carried, or the one the
server gave it (in the response); for an event scored from Kafka, its "id" (a JSON string as
is, a number as its JSON text) or, when it has none, its message key (UTF-8): each event is a
request of one row.

Each version (and role: the champion, an arm, a challenger) keeps its last `window` joined
rows; `metrics.realized` computes its numbers once per tick when they changed. With a
`reference`, a version also has its baseline and alerts (alert.py) and, for classification,
an estimate from the scores of its last `window` scored rows, labelled or not (estimate.py).
A version with [models.segments] or [models.fairness] has each scored row's group codes
computed once per batch (segments.py, fairness.py) and kept with the row until its label:
per-segment performance over the window and the equal opportunity difference judge a
labelled row in the groups it was scored in.
Each challenger's rows that joined the same label as the champion's give a paired difference
of the decision metric, followed by a confidence sequence (sequence.py).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import orjson

from engine.batching.batch import ScoredBatch
from engine.batching.mailbox import Mailbox
from engine.performance.alert import Alerting, PerformanceEvent, load_reference, write_events, write_history
from engine.performance.estimate import Calibration, estimate
from engine.performance.conformal import for_version
from engine.performance.fairness import Fairness
from engine.performance.labels import Labels
from engine.performance.metrics import METRICS, per_row, realized
from engine.performance.pending import DROPPED, JOINED, LABELS, WAITING, Pending
from engine.performance import segments as segmenting
from engine.performance.sequence import PairedSequence
from engine.settings import PerformanceSettings, Settings
from kernels.idtable import id_key

log = logging.getLogger("scorewire")

OUTCOMES = ("joined", "duplicate", "unmatched", "invalid", "evicted")
SNAPSHOT_EVERY_S = 10.0  # performance snapshots for `scorewire report` (events_dir, kind=performance_history)
WRITE_EVERY_S = 60.0  # ... written this often (and at close)


class Window:
    """The last `size` joined (score, label) rows of one version and role, and their group
    codes when the version has segments or fairness."""

    def __init__(self, task: str, size: int):
        self.task, self.size = task, size
        self.scores: np.ndarray | None = None
        self.labels = np.zeros(size, np.float64)
        self.groups: np.ndarray | None = None  # size x columns (int16, -1: none)
        self.n = 0  # rows ever added
        self.changed = False

    def add(self, scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> None:
        if self.scores is None:
            self.scores = np.zeros((self.size, *scores.shape[1:]), np.float64)
        scores, labels = scores[-self.size:], labels[-self.size:]
        at = (self.n + np.arange(len(labels))) % self.size
        self.scores[at] = scores
        self.labels[at] = labels
        if groups is not None or self.groups is not None:
            width = 0 if groups is None else groups.shape[1]
            if self.groups is None or width > self.groups.shape[1]:
                grown = np.full((self.size, width), -1, np.int16)
                if self.groups is not None:
                    grown[:, :self.groups.shape[1]] = self.groups
                self.groups = grown
            self.groups[at] = -1
            if width:
                self.groups[at, :width] = groups[-self.size:]
        self.n += len(labels)
        self.changed = True

    @property
    def rows(self) -> int:
        return min(self.n, self.size)

    def metrics(self) -> dict[str, float]:
        if self.scores is None:
            return realized(self.task, np.zeros(0), np.zeros(0))
        n = self.rows
        return realized(self.task, self.scores[:n], self.labels[:n])

    def rows_in_order(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.rows
        return self.scores[:n], self.labels[:n]

    def groups_held(self) -> np.ndarray | None:
        """The group codes of the rows `rows_in_order` gives, None when none are kept."""
        return None if self.groups is None else self.groups[:self.rows]


class Scored:
    """The scores of the last `size` scored rows of one version and role (for CBPE)."""

    def __init__(self, size: int):
        self.size = size
        self.scores: np.ndarray | None = None
        self.n = 0
        self.changed = False

    def add(self, scores: np.ndarray) -> None:
        if self.scores is None:
            self.scores = np.zeros((self.size, *scores.shape[1:]), np.float64)
        scores = scores[-self.size:]
        at = (self.n + np.arange(len(scores))) % self.size
        self.scores[at] = scores
        self.n += len(scores)
        self.changed = True

    def rows(self) -> np.ndarray:
        return self.scores[:min(self.n, self.size)]


def event_ids(origin) -> list:
    """The id each Kafka event of `origin` is labelled by: its "id" (a JSON string's text, a
    number's JSON text), else its message key (UTF-8); "" when it has neither."""
    ids = origin.ids if origin.ids is not None else [None] * len(origin.keys)
    out = []
    for token, key in zip(ids, origin.keys):
        if token is not None:
            out.append(orjson.loads(token) if token[:1] == b'"' else token.decode())
        else:
            out.append("" if key is None else key.decode("utf-8", "replace"))
    return out


class _Model:
    """The pending rows and labels of one model name (pending.py), and what joined."""

    def __init__(self, name: str, versions: dict[str, PerformanceSettings]):
        self.name = name
        self.versions = versions
        self.ttl_ns = int(max(p.label_ttl_s for p in versions.values()) * 1e9)
        self.max_pending = max(p.max_pending_rows for p in versions.values())
        self.pending = Pending(self.max_pending)
        self.codes: list[tuple[str, str]] = []  # version-role code -> (version, role)
        self.code_of: dict[tuple[str, str], int] = {}
        self.windows: dict[tuple[str, str], Window] = {}
        self.scored: dict[tuple[str, str], Scored] = {}  # (version, role): for CBPE
        self.alerting: dict[str, Alerting] = {}  # version -> its baseline and alerts
        self.calibration: dict[str, Calibration] = {}  # version -> CBPE's (classification with a reference)
        self.fairness: dict[str, tuple] = {}  # version -> (Fairness, its input tensor's name or None: the first)
        self.conformal: dict[str, object] = {}  # version -> its Conformal (coverage on the labelled window)
        self.segments: dict[str, segmenting.Segments] = {}  # version -> its segments ([models.segments])
        self.sequences: dict[tuple[str, str], PairedSequence] = {}  # (champion, challenger) versions
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.unlabelled = 0  # scored rows that waited their TTL (or were evicted) without a label
        self.rescored = 0  # rows of a request id (and version and role) held already: not joined twice

    def code(self, version: str, role: str) -> int:
        code = self.code_of.get((version, role))
        if code is None:
            code = self.code_of[(version, role)] = len(self.codes)
            self.codes.append((version, role))
        return code

    @property
    def held(self) -> int:
        return self.pending.held

    def fairness_column(self, version: str) -> int:
        """Where the fairness group is among a version's group codes: after its segments'."""
        segments = self.segments.get(version)
        return 0 if segments is None else segments.width


class PerformanceMonitor:
    def __init__(self, settings: Settings, capacity: int = 65_536, tick_s: float = 0.1, thread: bool = True,
                 rollouts: bool = True):
        """`thread=False`: no thread of its own (tests and benches drive `_batch`, `_labels`,
        `_expire` with times of their own). `rollouts=False`: this one does not decide them
        (one process of a server does: the observer)."""
        self.decides = rollouts
        self.models: dict[str, _Model] = {}
        self._references: dict[tuple[str, str], tuple] = {}
        self.rollouts: dict = {}  # model -> its route's rollout (engine/rollout/driver.py) or bandit (bandit.py)
        self.splits: dict = {}  # model -> its plain split's arms (engine/rollout/decide.py Arms)
        self.requests = None  # (model, version) -> (requests scored, failed): set by the observer's owner
        self.drift_alerts = None  # (model, version) -> drift alert columns: set by the Observer
        self.events_dir = None
        self.alerts_raised = 0
        self.lost_at_restart = 0  # rows and labels a predecessor observer's join held when it died
        # (model, version, role) -> segment -> (labelled rows, metrics)
        self.segment_results: dict[tuple[str, str, str], dict] = {}
        self.install(settings)
        self._box = Mailbox(capacity, tick_s)
        self.failed = 0
        self.results: dict[tuple[str, str, str], tuple[int, dict[str, float]]] = {}  # (model, version, role)
        self.estimated: dict[tuple[str, str, str], dict[str, float]] = {}  # (model, version, role): CBPE
        self.coverage: dict[tuple[str, str, str], tuple] = {}  # (model, version, role): conformal (coverage, size, n, low)
        self.history: dict[str, list[tuple]] = {}  # model -> snapshots not yet written
        self._snapshot_ns = 0
        self._written_ns = time.time_ns()
        self._bad_scores: set = set()
        self._thread = None
        if thread:
            self._thread = threading.Thread(target=self._run, name="scorewire-performance", daemon=True)
            self._thread.start()

    def install(self, settings: Settings) -> None:
        """The versions with [models.performance] (again on reload: a model's pending rows stay),
        and the routes' rollouts. A reference that cannot be used raises BadReference."""
        self.events_dir = settings.monitoring.events_dir
        wanted: dict[str, dict[str, PerformanceSettings]] = {}
        fairness: dict[tuple[str, str], tuple] = {}
        conformal_of = {(m.name, m.version): m for m in settings.models if m.conformal is not None}
        segments_of = {(m.name, m.version): m for m in settings.models if m.segments is not None}
        for m in settings.models:
            if m.performance is not None:
                wanted.setdefault(m.name, {})[m.version] = m.performance
            if m.fairness is not None:
                fairness[(m.name, m.version)] = (m.fairness, m.performance.task, m.monitor.features.index(m.fairness.protected),
                                                 m.monitor.input)
        models = dict(self.models)  # swapped in whole below: the join's thread iterates it
        staged = []
        for name, versions in wanted.items():
            if name not in models:
                models[name] = _Model(name, versions)
            model = models[name]
            alerting, calibration = {}, {}  # new dicts, swapped in whole: the join's thread reads them
            for version, p in versions.items():
                if p.reference is None:
                    continue
                try:
                    stat = p.reference.stat()
                    key = (str(p.reference), stat.st_mtime_ns, stat.st_size, p.task, p.score)
                except OSError:
                    key = (str(p.reference), None, None, p.task, p.score)
                cached = self._references.get((name, version))
                fresh = cached is None or cached[0] != key
                if fresh:
                    reference = load_reference(p.reference, p.task, p.score)
                    fitted = Calibration(p.task, reference.scores, reference.labels) if p.task != "regression" else None
                    cached = self._references[(name, version)] = (key, reference, fitted)
                _, reference, fitted = cached
                if fitted is not None:
                    calibration[version] = fitted
                old = model.alerting.get(version)
                # an unchanged version keeps its alerts' state across a reload
                keep = old is not None and old.settings == p and not fresh
                alerting[version] = old if keep else Alerting(name, version, p, reference)
            fair = {}
            for version in versions:
                spec = fairness.get((name, version))
                if spec is not None:
                    old = model.fairness.get(version)
                    keep = old is not None and old[0].settings == spec[0] and old[0].column == spec[2]
                    fair[version] = old if keep else (Fairness(spec[0], spec[1], spec[2]), spec[3])
            cover = {}
            for version in versions:
                ms = conformal_of.get((name, version))
                if ms is not None:  # (rebuilt on each install: the reference may have changed)
                    cover[version] = for_version(ms)
            segments = {}
            for version, p in versions.items():
                ms = segments_of.get((name, version))
                if ms is not None:  # an unchanged version keeps its segments (their codes, counts)
                    old = model.segments.get(version)
                    keep = (old is not None and old.settings == ms.segments and old.features == ms.monitor.features
                            and old.window == p.window)
                    segments[version] = old if keep else segmenting.for_version(ms, p.window)
            staged.append((model, versions, alerting, calibration, fair, cover, segments))
        for model, versions, alerting, calibration, fair, cover, segments in staged:  # every reference read: now swap
            model.versions, model.alerting, model.calibration, model.fairness = versions, alerting, calibration, fair
            model.conformal, model.segments = cover, segments
        self.models = models
        self.segment_results = {key: per for key, per in self.segment_results.items()  # versions that lost theirs: gone
                                if key[0] in models and key[1] in models[key[0]].segments}
        self._install_rollouts(settings)

    def _install_rollouts(self, settings: Settings) -> None:
        """The routes' rollouts (decided here, when this monitor decides) and plain splits'
        arms (compared)."""
        from engine.rollout.decide import Arms
        from engine.rollout.driver import Driver

        performance: dict[str, dict[str, PerformanceSettings]] = {}
        for m in settings.models:
            if m.performance is not None:
                performance.setdefault(m.name, {})[m.version] = m.performance
        splits = {}
        for route in settings.routes:  # plain splits: their arms compared, nothing decided
            if route.split and route.model in performance and route.champion in performance[route.model]:
                p = performance[route.model][route.champion]
                old = self.splits.get(route.model)
                splits[route.model] = old if old is not None and old.champion == route.champion else Arms(
                    route.champion, p.decision, p.compare_alpha, p.window)
        self.splits = splits
        drivers = {}
        for route in settings.routes:
            if route.split_policy == "thompson" and self.decides:
                from engine.rollout.bandit import BanditDriver

                old = self.rollouts.get(route.model)
                drivers[route.model] = old if isinstance(old, BanditDriver) and old.route == route else BanditDriver(
                    route, performance[route.model])
            if route.rollout is None or not self.decides:
                continue
            old = self.rollouts.get(route.model)
            driver = drivers[route.model] = old if old is not None and old.route == route else Driver(
                route, performance[route.model], self.events_dir, self._requests)
            driver.drift_alerts = lambda m, v: self.drift_alerts(m, v) if self.drift_alerts else set()
            driver.estimated = self._estimated_accuracy
        self.rollouts = drivers  # swapped whole: the join's thread reads it

    def _estimated_accuracy(self, model: str, version: str) -> float | None:
        """The version's CBPE accuracy over its last window of scored rows (a split's arm or
        the champion), None without one."""
        for role in ("arm", "champion"):
            value = self.estimated.get((model, version, role), {}).get("accuracy")
            if value is not None and value == value:
                return value
        return None

    def _requests(self, model: str, version: str) -> tuple[int, int]:
        return (0, 0) if self.requests is None else self.requests(model, version)

    def wants(self, model: str) -> bool:
        return model in self.models

    # -- any thread ------------------------------------------------------------------------
    def put(self, batch: ScoredBatch) -> None:
        model = self.models.get(batch.model)
        if model is not None and batch.version in model.versions:
            self._box.put(batch, batch.rows)

    def put_labels(self, labels: Labels) -> None:
        self._box.put(labels, labels.rows)

    @property
    def dropped(self) -> int:
        return self._box.refused

    def close(self, timeout_s: float = 10.0) -> None:
        self._box.close()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.events_dir is not None and (self._thread is None or not self._thread.is_alive()):
            self._snapshot(time.time_ns())
            self.write_history()

    # -- its thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            items, closing = self._box.take()
            now = time.monotonic_ns()
            for item in items:
                try:
                    if isinstance(item, Labels):
                        self._labels(item, now)
                    else:
                        self._batch(item, now)
                except Exception:  # a monitoring bug must not stop monitoring, nor scoring
                    self.failed += 1
                    if self.failed == 1 or self.failed % 1000 == 0:
                        log.exception("performance monitoring failed on an item (%d so far)", self.failed)
            try:
                for model in list(self.models.values()):
                    self._expire(model, now)
                self._publish()
            except Exception:
                log.exception("performance monitoring failed to expire or publish")
            if closing and not len(self._box):
                return

    def _scores(self, batch: ScoredBatch, settings: PerformanceSettings) -> np.ndarray | None:
        """The version's scores ("OUTPUT:COLUMN", or the whole output: a vector, a one-column
        matrix, or multiclass's probability matrix); None (said once) when its outputs have none."""
        output = batch.outputs.get(settings.output)
        column = settings.column
        if output is not None:
            if column is not None:
                if output.ndim == 2 and column < output.shape[1]:
                    return output[:, column]
            elif output.ndim == 1 or settings.task == "multiclass":
                return output
            elif output.shape[1] == 1:
                return output[:, 0]
        key = (batch.model, batch.version)
        if key not in self._bad_scores:  # once: the config names an output the model does not have
            self._bad_scores.add(key)
            log.error("performance of %s:%s: its outputs have no score %r (outputs: %s)", batch.model,
                      batch.version, settings.score, {k: list(v.shape) for k, v in batch.outputs.items()})
        return None

    def _batch(self, batch: ScoredBatch, now: int) -> None:
        model = self.models[batch.model]
        settings = model.versions.get(batch.version)
        if settings is None:
            return
        scores = self._scores(batch, settings)
        if scores is None:
            return
        groups = self._groups(model, batch, scores)
        driver = self.rollouts.get(batch.model)
        if driver is not None:
            first = batch.origins[0] if batch.origins else None
            driver.scored(batch.version, batch.role if first is None or batch.role == "challenger" else first.role,
                          batch.inference_us)
        bounds = batch.bounds or (0, batch.rows)
        for origin, a, b in zip(batch.origins, bounds[:-1], bounds[1:]):
            role = batch.role if origin is None or batch.role == "challenger" else origin.role
            if batch.version in model.calibration:
                ring = model.scored.get((batch.version, role))
                if ring is None:
                    ring = model.scored[(batch.version, role)] = Scored(settings.window)
                ring.add(np.asarray(scores[a:b], np.float64))
            if origin is None:
                continue
            if origin.topic is not None:
                for r, rid in enumerate(event_ids(origin), a):
                    if rid:
                        self._row(model, rid, (batch.version, role, np.array(scores[r:r + 1], np.float64),
                                               None if groups is None else groups[r:r + 1]), now)
            elif origin.request_id:
                self._row(model, origin.request_id, (batch.version, role, np.array(scores[a:b], np.float64),
                                                     None if groups is None else groups[a:b]), now)

    def _groups(self, model: _Model, batch: ScoredBatch, scores: np.ndarray) -> np.ndarray | None:
        """The batch's rows' group codes (rows x columns, int16), computed once at scoring: each
        [models.segments] column's segment, then the fairness group (1 privileged, 0 not); -1
        where the batch lacks the monitored input. The segments' and fairness's scored rows are
        fed on the way. None when the version has neither."""
        fair, segments = model.fairness.get(batch.version), model.segments.get(batch.version)
        if fair is None and segments is None:
            return None
        name = fair[1] if fair is not None else segments.input
        features = batch.inputs.get(name) if name else next(iter(batch.inputs.values()), None)
        if features is not None and (features.ndim != 2 or len(features) != len(scores)):
            features = None
        parts = []
        if segments is not None:
            codes = (segments.codes(features) if features is not None
                     else np.full((len(scores), segments.width), segmenting.NONE, np.int16))
            segments.scored(codes, scores)
            if features is not None:
                segments.quality(codes, features)
            parts.append(codes)
        if fair is not None:
            if features is not None:
                fair[0].add(features, scores)
                parts.append(fair[0].groups(features))
            else:
                parts.append(np.full((len(scores), 1), segmenting.NONE, np.int16))
        return parts[0] if len(parts) == 1 else np.hstack(parts)

    def _row(self, model: _Model, rid: str, entry: tuple, now: int) -> None:
        """A request's scored rows (one version, one role) meet their label, or wait for it."""
        version, role, scores, groups = entry
        pending, key = model.pending, id_key(rid)
        if pending.scores is not None and scores.shape[1:] != pending.scores.shape[1:]:
            model.unlabelled += len(scores)  # another version's score width (a class count): not joined, said once
            if (version, "width") not in self._bad_scores:
                self._bad_scores.add((version, "width"))
                log.error("performance of %s:%s: its scores have shape %s per row, the model's other versions' %s; "
                          "its rows are not joined", model.name, version, list(scores.shape[1:]),
                          list(pending.scores.shape[1:]))
            return
        label = next((seq for seq in pending.chain(key) if pending.code[seq % pending.capacity] == LABELS), None)
        if label is not None and pending.state[label % pending.capacity] == DROPPED:
            return  # its label was found invalid: none of its rows joins
        code = model.code(version, role)
        if any(pending.code[other % pending.capacity] == code for other in pending.chain(key)):
            model.rescored += len(scores)  # the same request scored again (a retry, a Kafka redelivery): once
            return
        if not self._room(model, len(scores), 1, now):
            model.unlabelled += len(scores)
            return
        seq = pending.add(key, now, code, WAITING, scores, groups)
        if label is not None and label >= pending.tail:  # (not let go to make room)
            self._join(model, label, seq)

    def _labels(self, labels: Labels, now: int) -> None:
        model = self.models.get(labels.model)
        if model is None:  # the model lost its [models.performance] in a reload
            return
        pending = model.pending
        for rid, values in labels.each():
            key = id_key(rid)
            waiting = []
            duplicate = False
            for seq in pending.chain(key):
                if pending.code[seq % pending.capacity] == LABELS:
                    duplicate = True
                    break
                waiting.append(seq)
            if duplicate:
                model.counts["duplicate"] += 1
                continue
            if not self._room(model, len(values), 0, now):
                model.counts["evicted"] += 1
                continue
            label = pending.add(key, now, LABELS, WAITING, values)
            for seq in reversed(waiting):  # oldest first
                if pending.tail <= seq and pending.state[seq % pending.capacity] == WAITING:
                    self._join(model, label, seq)

    def _join(self, model: _Model, label: int, seq: int) -> None:
        """Waiting rows `seq` meet their label `label`."""
        pending = model.pending
        at = label % pending.capacity
        if pending.state[at] == DROPPED:
            pending.settle(seq, DROPPED)
            return
        values, scores = pending.values(label), pending.values(seq)
        if len(values) != len(scores) or (scores.ndim == 2 and values.max() >= scores.shape[1]):
            if pending.state[at] == JOINED:  # other rows of the id joined it already: only these do not
                pending.settle(seq, DROPPED)
                return
            model.counts["invalid"] += 1  # not one label per row of the request (or no such class): none joins
            pending.settle(label, DROPPED)
            pending.settle(seq, DROPPED)
            for other in pending.chain(int(pending.key[at])):
                if pending.code[other % pending.capacity] != LABELS:
                    pending.settle(other, DROPPED)
            return
        if pending.state[at] == WAITING:
            pending.settle(label, JOINED)
            model.counts["joined"] += 1
        pending.settle(seq, JOINED)
        version, role = model.codes[int(pending.code[seq % pending.capacity])]
        settings = model.versions.get(version)
        if settings is None:  # the version lost its [models.performance] in a reload
            return
        window = model.windows.get((version, role))
        if window is None:
            window = model.windows[(version, role)] = Window(settings.task, settings.window)
        fair = model.fairness.get(version)
        grouped = fair is not None or version in model.segments
        groups = pending.group_values(seq) if grouped else None  # as scored
        window.add(scores, values, groups)
        if fair is not None and groups is not None:
            column = model.fairness_column(version)
            if column < groups.shape[1]:
                fair[0].labelled(groups[:, column], scores, values)
        driver = self.rollouts.get(model.name)
        if driver is not None:
            driver.labelled(version, role, scores, values)
        arms = self.splits.get(model.name)
        if arms is not None and role in ("champion", "arm"):
            arms.observe(version, per_row(settings.task, arms.metric, scores, values))
        if role in ("champion", "challenger"):
            self._pair(model, label, seq, version, role, scores, values)

    def _pair(self, model: _Model, label: int, seq: int, version: str, role: str, scores: np.ndarray,
              values: np.ndarray) -> None:
        """Rows `seq` of a champion (a challenger) just joined: each challenger's entry that
        joined the same label pairs with one champion entry, once (a retried request id has
        several of each): a paired difference for its confidence sequence."""
        pending, versions = model.pending, model.versions
        if role == "challenger":
            candidates = [seq] if not pending.paired[seq % pending.capacity] else []
        else:
            candidates = []
        champion_seq = seq if role == "champion" else None
        taken: set[str] = set()
        for other in pending.chain(int(pending.key[label % pending.capacity])):
            at = other % pending.capacity
            if other == seq or pending.code[at] == LABELS or pending.state[at] != JOINED:
                continue
            other_version, their_role = model.codes[int(pending.code[at])]
            if role == "champion" and their_role == "challenger" and not pending.paired[at] \
                    and other_version not in taken:
                taken.add(other_version)
                candidates.append(other)
            elif role == "challenger" and their_role == "champion" and champion_seq is None:
                champion_seq = other
        if champion_seq is None:
            return
        champion_version = model.codes[int(pending.code[champion_seq % pending.capacity])][0]
        settings = versions.get(champion_version)
        if settings is None:
            return
        champion_values = per_row(settings.task, settings.decision, pending.values(champion_seq), values)
        for challenger_seq in candidates:
            challenger_version = model.codes[int(pending.code[challenger_seq % pending.capacity])][0]
            if challenger_version not in versions:
                continue
            pending.paired[challenger_seq % pending.capacity] = 1
            theirs = per_row(settings.task, settings.decision, pending.values(challenger_seq), values)
            key = (champion_version, challenger_version)
            sequence = model.sequences.get(key)
            if sequence is None:
                sequence = model.sequences[key] = PairedSequence(settings.compare_alpha, settings.window)
            sequence.add(theirs - champion_values)

    def _room(self, model: _Model, rows: int, kind: int, now: int) -> bool:
        """Room for `rows` values of `kind` (labels 0, rows 1), the oldest let go as needed;
        False when they alone are more than max_pending_rows."""
        pending = model.pending
        if not pending.room(rows):
            return False
        self._expire(model, now)  # what its TTL let go first: unmatched, not evicted
        while pending.full(rows, kind):
            self._let_go(model, evict=True)
        return True

    def _expire(self, model: _Model, now: int) -> None:
        pending = model.pending
        while True:
            oldest = pending.oldest()
            if oldest is None or now - oldest[0] <= model.ttl_ns:
                return
            self._let_go(model, evict=False)

    def _let_go(self, model: _Model, evict: bool) -> None:
        """The oldest entry goes: waiting rows count unlabelled, a waiting label unmatched
        (evicted, when the bound made it go)."""
        _, code, state, length = model.pending.oldest()
        if state == WAITING:
            if code == LABELS:
                model.counts["evicted" if evict else "unmatched"] += 1
            else:
                model.unlabelled += length
        model.pending.pop()

    def _publish(self, now_ns: int | None = None) -> None:
        for driver in self.rollouts.values():
            driver.tick()
        events: list[PerformanceEvent] = []
        wall = time.time_ns() if now_ns is None else now_ns
        for model in list(self.models.values()):
            for (version, role), window in list(model.windows.items()):
                if window.changed:
                    window.changed = False
                    self.results[(model.name, version, role)] = (window.rows, window.metrics())
                    conformal = model.conformal.get(version)
                    if conformal is not None:
                        self._coverage(model.name, version, role, conformal, *window.rows_in_order())
                    segments, groups = model.segments.get(version), window.groups_held()
                    if segments is not None and groups is not None:
                        self.segment_results[(model.name, version, role)] = segments.performance(
                            window.task, *window.rows_in_order(), groups)
                    alerting = model.alerting.get(version)
                    if alerting is not None and alerting.due(role, window.n, window.rows == window.size):
                        events += alerting.evaluate(role, *window.rows_in_order(), window.n, wall)
            for version, (fair, _) in list(model.fairness.items()):
                if fair.changed:
                    fair.changed = False
                    change = fair.check()
                    if change is not None:
                        figures = fair.figures()
                        (log.warning if change == "raise" else log.info)(
                            "fairness alert %s: %s:%s disparate impact %.3g (statistical parity difference %+.3g) "
                            "over %d rows, band %s", "RAISED" if change == "raise" else "cleared", model.name,
                            version, figures["dir"], figures["spd"], min(fair.n, fair.settings.window),
                            list(fair.settings.dir_band))
            for segments in list(model.segments.values()):
                segments.update_drift()
            for (version, role), ring in list(model.scored.items()):
                calibration = model.calibration.get(version)
                if ring.changed and calibration is not None:
                    ring.changed = False
                    self.estimated[(model.name, version, role)] = estimate(calibration, ring.rows())
        if events:
            self._events(events)
        if self.events_dir is not None and wall - self._snapshot_ns >= SNAPSHOT_EVERY_S * 1e9:
            self._snapshot(wall)
            if wall - self._written_ns >= WRITE_EVERY_S * 1e9:
                self.write_history()

    def _coverage(self, model: str, version: str, role: str, conformal, scores: np.ndarray, labels: np.ndarray) -> None:
        """The conformal sets' coverage of the labelled window, and an alert (a log line) while
        it is significantly below 1 - alpha (exact binomial test, p < 0.001): exchangeability
        with the reference broken, e.g. by drift."""
        from scipy.stats import binomtest

        coverage, size = conformal.coverage(scores, labels)
        n = len(labels)
        low = n > 0 and binomtest(int(round(coverage * n)), n, 1 - conformal.alpha, alternative="less").pvalue < 0.001
        key = (model, version, role)
        was = self.coverage.get(key, (0, 0, 0, False))[3]
        self.coverage[key] = (coverage, size, n, low)
        if low != was:
            (log.warning if low else log.info)(
                "conformal coverage alert %s: %s:%s (%s) %.3f of %d labelled rows in their sets, promised >= %.3f",
                "RAISED" if low else "cleared", model, version, role, coverage, n, 1 - conformal.alpha)

    def _snapshot(self, wall: int) -> None:
        self._snapshot_ns = wall
        for key in sorted(set(self.results) | set(self.estimated)):
            model, version, role = key
            rows, real = self.results.get(key, (0, {}))
            est = self.estimated.get(key, {})
            task = self.models[model].versions.get(version)
            if task is None:
                continue
            for metric in METRICS[task.task]:
                self.history.setdefault(model, []).append(
                    (wall, version, role, metric, real.get(metric, float("nan")), rows, est.get(metric, float("nan"))))
        self._snapshot_quality(wall)

    def _snapshot_quality(self, wall: int) -> None:
        """Conformal coverage and fairness in the same snapshots, as figures of their own
        (alert.py's QUALITY_FIGURES; value in `realized`, its rows in `labelled`: labelled rows for
        coverage, scored rows of the window for fairness, whose role is "any")."""
        nan = float("nan")
        for (model, version, role), (coverage, size, n, _) in sorted(self.coverage.items()):
            conformal = self.models[model].conformal.get(version) if model in self.models else None
            target = 1 - conformal.alpha if conformal is not None else nan
            for figure, value in (("conformal_coverage", coverage), ("conformal_set_size", size),
                                  ("conformal_target", target)):
                self.history.setdefault(model, []).append((wall, version, role, figure, value, n, nan))
        for m in list(self.models.values()):
            for version, (fair, _) in sorted(m.fairness.items()):
                if fair.n == 0:
                    continue
                figures, n = fair.figures(), min(fair.n, fair.settings.window)
                for figure, value in (("fairness_spd", figures["spd"]), ("fairness_dir", figures["dir"]),
                                      ("fairness_alert", float(fair.alert))):
                    self.history.setdefault(m.name, []).append((wall, version, "any", figure, value, n, nan))

    def write_history(self) -> None:
        """The snapshots not yet written (the join's thread, and at close)."""
        self._written_ns = time.time_ns()
        history, self.history = self.history, {}
        for model, rows in history.items():
            try:
                write_history(self.events_dir, model, rows)
            except OSError:
                log.exception("could not write performance history to %s", self.events_dir)

    def _events(self, events: list[PerformanceEvent]) -> None:
        for e in events:
            self.alerts_raised += e.kind == "raise"
            (log.warning if e.kind == "raise" else log.info)(
                "performance alert %s: %s:%s (%s) %s %.4g against the reference's %.4g (p %.3g, %d labelled rows)",
                "RAISED" if e.kind == "raise" else "cleared", e.model, e.version, e.role, e.metric, e.value,
                e.baseline, e.pvalue, e.rows)
        if self.events_dir is not None:
            try:
                write_events(self.events_dir, events)
            except OSError:
                log.exception("could not write performance events to %s", self.events_dir)

    # -- /metrics ----------------------------------------------------------------------------
    def families(self, family, labels) -> None:
        self._families(family, labels)
        gathered: dict[str, list] = {}  # one family per name, every rollout's samples in it
        for driver in list(self.rollouts.values()):
            driver.families(lambda name, kind, help_, samples: gathered.setdefault(name, [kind, help_, []])[2]
                            .extend(samples), labels)
        for name, (kind, help_, samples) in gathered.items():
            family(name, kind, help_, samples)
        coverage = sorted(self.coverage.items())
        family("scorewire_conformal_coverage", "gauge", "Share of the labelled window's rows whose label is in "
               "their conformal set (interval): at least 1 - alpha on rows exchangeable with the reference.",
               [(labels(model=m, version=v, role=r), c[0]) for (m, v, r), c in coverage if c[0] == c[0]])
        family("scorewire_conformal_set_size", "gauge", "Mean size of the conformal sets (regression: interval "
               "width) over the labelled window.",
               [(labels(model=m, version=v, role=r), c[1]) for (m, v, r), c in coverage if c[1] == c[1]])
        family("scorewire_conformal_target", "gauge", "1 - alpha: the coverage the sets promise on rows "
               "exchangeable with the reference (what scorewire_conformal_coverage is held against).",
               [(labels(model=m, version=v, role=r), 1 - self.models[m].conformal[v].alpha) for (m, v, r), _ in coverage
                if m in self.models and v in self.models[m].conformal])
        family("scorewire_conformal_alert", "gauge", "1 while the coverage is significantly below 1 - alpha "
               "(exact binomial test, p < 0.001).", [(labels(model=m, version=v, role=r), int(c[3]))
                                                     for (m, v, r), c in coverage])
        fair = [(m.name, v, f, f.figures()) for m in list(self.models.values())
                for v, (f, _) in sorted(m.fairness.items())]
        family("scorewire_fairness", "gauge", "Over the version's last fairness window of scored rows: spd "
               "(P(favourable | unprivileged) - P(favourable | privileged)) and dir (their ratio); of labelled "
               "rows: eod (true-positive rate of the unprivileged minus the privileged group's).",
               [(labels(model=m, version=v, metric=k), value) for m, v, f, figures in fair
                for k, value in figures.items() if k in ("spd", "dir", "eod") and value == value])
        family("scorewire_fairness_rows", "gauge", "Rows of each group in the fairness window.",
               [(labels(model=m, version=v, group=g), figures[f"{g}_rows"]) for m, v, f, figures in fair
                for g in ("privileged", "unprivileged")])
        family("scorewire_fairness_favourable_labels", "gauge", "Labelled rows of each group with the favourable "
               "label in the last fairness window of labelled rows: what each true-positive rate of eod is over.",
               [(labels(model=m, version=v, group=g), figures[f"{g}_favourable_labels"]) for m, v, f, figures in fair
                for g in ("privileged", "unprivileged")])
        segmenting.families(family, labels, [(m.name, v, s) for m in list(self.models.values())
                                             for v, s in sorted(m.segments.items())], dict(self.segment_results))
        family("scorewire_fairness_alert", "gauge", "1 while the disparate impact is outside dir_band.",
               [(labels(model=m, version=v), int(f.alert)) for m, v, f, _ in fair])
        splits = list(self.splits.items())
        rows = []
        for model, arms in splits:
            for version in sorted(v for v in list(arms.versions) if v != arms.champion):
                d = arms.difference(version)
                if d is not None:
                    rows += [(labels(model=model, champion=arms.champion, arm=version, metric=arms.metric, bound=b), v)
                             for b, v in zip(("estimate", "lower", "upper"), d)]
        family("scorewire_split_difference", "gauge", "A split's arm minus its champion on the decision metric "
               "(labelled rows of each, different requests), with an always-valid interval: safe to read at any "
               "time (each arm's mean in a confidence sequence at compare_alpha / 2).", rows)
        family("scorewire_split_labelled_rows", "gauge", "Labelled rows of each version of a split.",
               [(labels(model=model, version=v), s.n) for model, arms in splits for v, s in list(arms.versions.items())])

    def _families(self, family, labels) -> None:
        family("scorewire_feedback_labels_total", "counter", "Labels sent back, by what became of them: joined with "
               "their scored rows, duplicate (the id was labelled already), unmatched (no rows within label_ttl_s), "
               "invalid (not one label per row, or refused at the door), evicted (max_pending_rows).",
               [(labels(model=m.name, outcome=o), m.counts[o]) for m in self.models.values() for o in OUTCOMES])
        family("scorewire_performance_unlabelled_rows_total", "counter", "Scored rows whose label did not come "
               "within label_ttl_s (or that max_pending_rows let go).",
               [(labels(model=m.name), m.unlabelled) for m in self.models.values()])
        family("scorewire_performance_rescored_rows_total", "counter", "Rows of a request id scored again by "
               "the same version and role while its first scoring was held (a client's retry, a Kafka event "
               "redelivered at-least-once): joined once, not twice.",
               [(labels(model=m.name), m.rescored) for m in self.models.values()])
        family("scorewire_performance_lost_total", "counter", "Scored rows and labels the join held when its "
               "observer process died (its restart starts with none): their labels count unmatched, the rows are "
               "in the scoring log for `scorewire evaluate`.", [("", self.lost_at_restart)])
        family("scorewire_performance_dropped_total", "counter", "Scored batches and label sets the join's "
               "queue was too full to take (65,536 waiting).", [("", self.dropped)])
        family("scorewire_performance_pending_rows", "gauge", "Scored rows and labels the join holds: waiting for "
               "each other, or joined and kept for label_ttl_s so that challengers' rows join them too.",
               [(labels(model=m.name), m.held) for m in self.models.values()])
        family("scorewire_performance_waiting_rows", "gauge", "Scored rows and labels waiting for each other (what "
               "a restart of the observer would lose: it counts them in scorewire_performance_lost_total).",
               [(labels(model=m.name), sum(m.pending.waiting)) for m in self.models.values()])
        results = sorted(self.results.items())
        family("scorewire_performance", "gauge", "Realized performance over the last `window` labelled rows "
               "(binary: accuracy, log_loss, brier, auc; multiclass: accuracy, log_loss; regression: mae, rmse).",
               [(labels(model=m, version=v, role=r, metric=k), value) for (m, v, r), (_, values) in results
                for k, value in values.items() if value == value])
        family("scorewire_performance_rows", "gauge", "Labelled rows in the window the performance is computed on.",
               [(labels(model=m, version=v, role=r), rows) for (m, v, r), (rows, _) in results])
        family("scorewire_performance_estimated", "gauge", "Performance estimated before the labels come (CBPE: "
               "scores calibrated on the reference's labels) over the last `window` scored rows: accuracy, "
               "binary auc.", [(labels(model=m, version=v, role=r, metric=k), value)
                               for (m, v, r), values in sorted(self.estimated.items())
                               for k, value in values.items() if value == value])
        baselines = [(m.name, v, a) for m in self.models.values() for v, a in sorted(m.alerting.items())]
        family("scorewire_performance_baseline", "gauge", "Realized performance on the version's reference.",
               [(labels(model=m, version=v, metric=k), value) for m, v, a in baselines
                for k, value in a.baseline.items() if value == value])
        family("scorewire_performance_alert", "gauge", "1 while the version (and role) is significantly worse "
               "than its reference on the metric, else 0.",
               [(labels(model=m, version=v, role=r, metric=k), int((r, k) in a.raised)) for m, v, a in baselines
                for r in sorted({r for r, _ in list(a.last)}) for k in a.metrics])
        sequences = [(m.name, key, s) for m in self.models.values() for key, s in sorted(m.sequences.items())]
        rows = []
        for m, (champion, challenger), s in sequences:
            bounds = s.bounds()
            if bounds is not None:
                metric = self.models[m].versions[champion].decision
                rows += [(labels(model=m, champion=champion, challenger=challenger, metric=metric, bound=name), value)
                         for name, value in zip(("estimate", "lower", "upper"), bounds)]
        family("scorewire_performance_difference", "gauge", "Challenger minus champion on the same labelled rows "
               "(the decision metric, per row): the estimate and an always-valid confidence sequence (safe to read "
               "at any time; compare_alpha). For a loss, a lower bound above 0 means the challenger is worse.", rows)
        family("scorewire_performance_difference_pvalue", "gauge", "Always-valid p-value of no difference "
               "between challenger and champion (the running minimum).",
               [(labels(model=m, champion=c, challenger=h), s.pvalue) for m, (c, h), s in sequences
                if s.bounds() is not None])
        family("scorewire_performance_difference_pairs", "gauge", "Labelled rows the champion and the challenger "
               "both scored.", [(labels(model=m, champion=c, challenger=h), s.n) for m, (c, h), s in sequences])


__all__ = ["Labels", "METRICS", "PerformanceMonitor", "Scored", "Window"]
