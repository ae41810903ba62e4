"""The guards' alert (`[models.guards] alert_share`): raised while a guard's rows are more
than that share of the version's rows over the monitor's smallest window, cleared when back.

The guards count in the workers (engine/guards.py, `scorewire_guard_rows_total`); the
observer counts the rows each version scored. The share is read from both, once a row count
of `window` has passed since the last reading, as the guard's rows over the rows the version
was asked to score in that stretch: the rows it scored, plus the rows refused or handed to
the fallback before it could score them (input domain). So it is over the last `window` rows
or a little more (a reading waits for its rows), and a version whose every row is refused
is read by the observer process's clock (engine/processes/observer.py) rather than by rows.

An alert writes an event (events_dir, kind=guard), an audit row and a log line, and shows in
`scorewire_guard_alert{model,version,guard}` and `scorewire_guard_share`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

from engine import audit
from engine.guards import NAMES
from engine.monitor.events import publish
from engine.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("scorewire")

DEFAULT_WINDOW = 1_000
# between readings of the counts: a window is read at the first check after it (with one worker,
# the next batch's; with several, the observer process's clock too)
CHECK_EVERY_S = 0.2
# (model, version, guard, action) -> rows, summed over the workers (as each last published)
Counts = Callable[[], dict[tuple[str, str, str, str], int]]


@functools.cache
def schema() -> pa.Schema:
    """The guards' alert events' columns (pyarrow: imported with the first event written)."""
    import pyarrow as pa

    return pa.schema([
        ("time", pa.timestamp("ns", tz="UTC")),
        ("version", pa.string()),
        ("guard", pa.string()),
        ("state", pa.string()),  # raised | cleared
        ("share", pa.float64()),
        ("alert_share", pa.float64()),
        ("rows", pa.int64()),  # the stretch the share is over
    ])


class GuardWatch:
    def __init__(self, settings: Settings):
        self.counts: Counts | None = None  # set by the observer's owner
        self.events_dir = settings.monitoring.events_dir
        self.watched: dict[tuple[str, str], tuple[float, int]] = {}  # (model, version) -> (alert_share, window)
        for m in settings.models:
            if m.guards is not None and m.guards.alert_share is not None:
                window = min(m.monitor.windows or [m.monitor.window]) if m.monitor is not None else DEFAULT_WINDOW
                self.watched[(m.name, m.version)] = (m.guards.alert_share, window)
        self.scored: dict[tuple[str, str], int] = {}  # rows each watched version scored, ever
        self.start: dict[tuple[str, str], tuple[int, dict[str, int], int]] = {}  # at the last reading
        self.share: dict[tuple[str, str, str], float] = {}
        self.alert: dict[tuple[str, str, str], bool] = {}
        self._lock = threading.Lock()
        self._next_check = 0.0

    def reloaded(self, settings: Settings) -> "GuardWatch":
        """The watch of the new settings, going on from this one's readings."""
        new = GuardWatch(settings)
        new.counts = self.counts
        with self._lock:
            for old, fresh in ((self.scored, new.scored), (self.start, new.start), (self.share, new.share),
                               (self.alert, new.alert)):
                fresh.update({k: v for k, v in old.items() if k[:2] in new.watched})
        return new

    def rows(self, model: str, version: str, rows: int) -> None:
        """A batch the version scored (not a challenger's or a fallback's rows)."""
        key = (model, version)
        if key in self.watched:
            self.scored[key] = self.scored.get(key, 0) + rows

    def check(self, now: float | None = None) -> None:
        """Read every watched version whose window of rows has passed since its last reading.
        At most every CHECK_EVERY_S: the monitor calls it per pass of batches, and the workers'
        counts are read from the board."""
        if not self.watched or self.counts is None:
            return
        now = time.monotonic() if now is None else now
        if now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        with self._lock:
            try:
                counts = self.counts()
            except Exception:  # someone else's counters: no reading this time
                log.exception("guards' alert: could not read the guards' counts")
                return
            for key, (limit, window) in self.watched.items():
                by_guard = {g: 0 for g in NAMES.values()}
                before = 0  # rows that never reached the version (refused or handed over first)
                for (m, v, guard, action), n in counts.items():
                    if (m, v) == key:
                        by_guard[guard] += n
                        if guard == "input_domain" and action in ("reject", "fallback"):
                            before += n
                asked = self.scored.get(key, 0) + before
                last = self.start.get(key)
                if last is None:
                    self.start[key] = (asked, by_guard, 0)
                    continue
                rows = asked - last[0]
                if rows < window:
                    continue
                self.start[key] = (asked, by_guard, rows)
                for guard, n in by_guard.items():
                    share = (n - last[1].get(guard, 0)) / rows
                    self.share[(*key, guard)] = share
                    raised = share > limit
                    was = self.alert.get((*key, guard), False)
                    self.alert[(*key, guard)] = raised  # 0 or 1 once read, raised or not
                    if raised != was:
                        self._said(key, guard, raised, share, limit, rows)

    def _said(self, key: tuple[str, str], guard: str, raised: bool, share: float, limit: float, rows: int) -> None:
        model, version = key
        state = "raised" if raised else "cleared"
        log.log(logging.WARNING if raised else logging.INFO,
                "guards' alert %s: %s:%s guard %s on %.3g of the last %d rows (alert_share %g)", state, model, version,
                guard, share, rows, limit)
        if self.events_dir is None:
            return
        now = time.time_ns()
        import pyarrow as pa

        try:
            publish(self.events_dir, "guard", model, now, pa.table({
                "time": pa.array([now], pa.timestamp("ns", tz="UTC")), "version": [version], "guard": [guard],
                "state": [state], "share": [share], "alert_share": [limit], "rows": [rows]}, schema=schema()))
            audit.write(self.events_dir, model, [{
                "event": "guard_alert", "version": version,
                "detail": f"{state}: guard {guard} on {share:.3g} of the last {rows} rows (alert_share {limit:g})"}])
        except OSError:
            log.exception("could not write a guards' alert to %s", self.events_dir)

    def families(self, family, labels) -> None:
        if not self.watched:
            return
        family("scorewire_guard_share", "gauge", "Each guard's rows over the version's rows, over its last reading "
               "(the monitor's smallest window of rows).",
               [(labels(model=m, version=v, guard=g), s) for (m, v, g), s in sorted(self.share.items())])
        family("scorewire_guard_alert", "gauge", "1 while a guard's share of the rows is above alert_share.",
               [(labels(model=m, version=v, guard=g), int(a)) for (m, v, g), a in sorted(self.alert.items())])


__all__ = ["GuardWatch"]
