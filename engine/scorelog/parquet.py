"""The Parquet scoring log: one row per scored row (columns: engine/scorelog/table.py),
written by a thread of its own, published by another.

Dataset layout (Hive partitions): DIR/model=NAME/role=ROLE/date=YYYY-MM-DD/part-*.parquet.

The queue is the mailbox the monitor and the challengers are fed by too
(engine/batching/mailbox.py), bounded in rows: when the writer falls behind, new rows are
dropped and counted, or (when_full = "block") they wait up to block_timeout_ms for room first
-- a thread (a challenger's) in a real wait, the event loop never: there a batch is parked (at
most queue_rows more) and the writer, woken at once, takes it when it has made room.

Every tick the writer appends what it took to the files in progress and commits them
(engine/scorelog/files.py): from then on those rows survive a kill of this process. A batch
handed over with a `Receipt` (the observer process's, from a worker's ring) has it marked done
at that commit, or once its rows are given up (dropped, failed): the ring keeps the record until
then, so rows not yet committed when the observer is killed are read again by the next one.
Complete files are converted to Parquet, checked and published by the publisher thread; a
publication that fails (a full disk) removes its temporary file and is tried again later, the
stream staying committed meanwhile. What this process could not publish before it stopped is
published by the next start (`files.recover`).

Counts: rows written are in published files; pending, committed and not yet published;
failed, not made durable (the write or its commit failed: disk full, permissions), never
counted written. The writer survives any failure (logged, counted).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from engine.batching.batch import ScoredBatch
from engine.batching.mailbox import Mailbox
from engine.handoff.ring import Receipt
from engine.scorelog import files
from engine.scorelog.table import to_table
from engine.settings import ScoreLogSettings

log = logging.getLogger(__name__)

RETRY_S = (1.0, 30.0)  # a publication that failed is tried again after this, doubling up to
COMPLAIN_EVERY_S = 10.0  # the same failure is logged at most this often (the rest counted)


@dataclass(slots=True)
class ScoreLogStats:
    rows_queued: int = 0
    rows_written: int = 0  # in published Parquet files
    rows_dropped: int = 0  # queue full
    rows_failed: int = 0  # not made durable (disk full, permissions): logged
    rows_recovered: int = 0  # committed rows of writers that stopped, taken over at start
    files_closed: int = 0  # published
    writer_errors: int = 0  # failures the writer survived (logged)
    publish_failures: int = 0  # publications tried again later (logged)
    stale_removed: int = 0  # unfinished files of writers that stopped, removed at start


class _Stream:
    """One file in progress: appended to by the writer, committed at each tick."""

    __slots__ = ("path", "rel", "fd", "schema", "opened", "bytes", "rows", "committed_bytes", "committed_rows",
                 "retry_at", "failures")

    def __init__(self, path: Path, rel: str, schema: pa.Schema | None, committed: tuple[int, int] = (0, 0)):
        self.path, self.rel, self.schema = path, rel, schema
        self.fd: int | None = None
        self.opened = time.monotonic()
        self.committed_bytes, self.committed_rows = committed
        self.bytes, self.rows = committed
        self.retry_at = 0.0
        self.failures = 0

    def append(self, data) -> None:
        files.write_all(self.fd, data)
        self.bytes += len(data)

    def cut_to_committed(self) -> None:
        """Forget what was appended since the last commit (the bytes too)."""
        self.bytes, self.rows = self.committed_bytes, self.committed_rows
        try:
            os.ftruncate(self.fd, self.committed_bytes)
        except OSError:
            pass  # never read past the committed length anyway

    def close_fd(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


class _Complaint:
    """An error logged at most every COMPLAIN_EVERY_S; the repeats between are counted."""

    def __init__(self) -> None:
        self.last = -COMPLAIN_EVERY_S
        self.held = 0

    def __call__(self, message: str, *args, exc_info: bool = True) -> None:
        now = time.monotonic()
        if now - self.last < COMPLAIN_EVERY_S:
            self.held += 1
            return
        held, self.held, self.last = self.held, 0, now
        log.error(message + (f" ({held} more like it since the last)" if held else ""), *args, exc_info=exc_info)


class ScoreLog:
    def __init__(self, settings: ScoreLogSettings, feature_names: dict[tuple[str, str], list[str]] | None = None):
        """feature_names: (model name, input name) -> names of the input's columns."""
        self.settings = settings
        self.root = Path(settings.dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.feature_names = feature_names or {}
        self.provenance: dict[tuple[str, str], tuple[str, str]] = {}  # (model, version) -> (model, config sha256)
        self.run: str | None = None  # the observer run whose stamps (ScoredBatch.seq) the rows carry
        self._stats = ScoreLogStats()
        self._compression = None if settings.compression == "none" else settings.compression
        self._seq = itertools.count()
        self._journal = files.journal_path(self.root, os.getpid())
        self._open: dict[tuple[str, str, str], _Stream] = {}  # the writer's
        self._sealing: list[_Stream] = []  # complete, their last rows not committed yet (the writer's)
        self._sealed: list[_Stream] = []  # committed and complete: the publisher's (under _lock)
        self._lock = threading.Condition()
        self._publisher_closing = False
        self._unpublished: list[_Stream] = []  # closing: what could not be published
        self._journal_changed = False
        self._write_failed = _Complaint()
        self._publish_failed = _Complaint()
        recovered = files.recover(self.root)
        self._stats.stale_removed = recovered.removed
        self.rings = dict(recovered.rings)  # ring name -> end of the last record with its rows committed
        self._old_journals = recovered.journals
        for path, length, rows in recovered.streams:
            self._sealed.append(_Stream(path, str(path.relative_to(self.root)), None, (length, rows)))
            self._stats.rows_recovered += rows
        if recovered.streams or recovered.journals:
            self._journal_changed = True
            self._commit([])  # this journal lists what it took over before the old ones go
        if recovered.streams:
            log.warning("scoring log: %d committed rows in %d file(s) of writers that stopped are published now",
                        self._stats.rows_recovered, len(recovered.streams))
        self._box = Mailbox(settings.queue_rows, tick_s=min(0.5, settings.max_file_age_s / 4),
                            max_rows=settings.queue_rows, on_refused=self._refused)
        self._thread = threading.Thread(target=self._run, name="scorewire-scorelog", daemon=True)
        self._publisher = threading.Thread(target=self._publish_loop, name="scorewire-scorelog-publish", daemon=True)
        self._thread.start()
        self._publisher.start()

    # -- the scoring side ------------------------------------------------------------------------
    def put(self, batch: ScoredBatch, receipt: Receipt | None = None) -> None:
        """Queue a scored batch: no wake-up, the writer drains the queue every tick. When the
        queue is full: drop (counted), or with when_full = "block" wait up to block_timeout_ms
        for room -- parked, not waiting, when called on an event loop. `receipt` is marked
        done once the batch's rows are committed or given up."""
        wait_s = self.settings.block_timeout_ms / 1000 if self.settings.when_full == "block" else 0.0
        if not self._box.put((batch, receipt), batch.rows, wait_s) and receipt is not None:
            receipt.done = True

    @staticmethod
    def _refused(item) -> None:
        """A parked batch whose wait ran out (counted by the mailbox)."""
        if item[1] is not None:
            item[1].done = True

    @property
    def stats(self) -> ScoreLogStats:
        """The writer's counts, with the queue's: rows taken into it, and rows it refused."""
        return replace(self._stats, rows_queued=self._box.accepted_rows, rows_dropped=self._box.refused_rows)

    @property
    def queued_rows(self) -> int:
        return self._box.rows

    @property
    def pending_rows(self) -> int:
        """Rows committed and not yet in a published file."""
        with self._lock:
            sealed = sum(s.committed_rows for s in [*self._sealed, *self._unpublished])
        return sealed + sum(s.committed_rows for s in [*self._open.values(), *self._sealing])

    # -- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            items, closing = self._box.take()
            receipts = [r for _, r in items if r is not None]
            try:
                if items:
                    self._write([b for b, _ in items])
                self._commit(receipts)
                self._rotate(force=closing)
            except Exception:  # whatever it was, the writer goes on
                self._stats.writer_errors += 1
                log.exception("scoring log: the writer failed; it goes on")
                for receipt in receipts:
                    receipt.done = True
            if closing:
                return

    def _write(self, batches: list[ScoredBatch]) -> None:
        """One table per model version, role and date: the conversion costs per tick, not per batch."""
        groups: dict[tuple[str, str, str, str], list[ScoredBatch]] = {}
        for batch in batches:
            try:
                date = dt.datetime.fromtimestamp(batch.wall_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d")
            except (ValueError, OverflowError, OSError):
                self._stats.rows_failed += batch.rows
                log.error("scoring log: a batch of %s:%s has an impossible time (%d ns); its %d rows are not "
                          "logged", batch.model, batch.version, batch.wall_ns, batch.rows)
                continue
            groups.setdefault((batch.model, batch.version, batch.role, date), []).append(batch)
        for (model, _version, _role, date), group in groups.items():
            names = {i: self.feature_names[(model, i)] for i in group[0].inputs if (model, i) in self.feature_names}
            provenance = self.provenance.get((model, _version), (None, None))
            try:
                try:
                    converted = [to_table(group, names, provenance, self.run)]
                except ValueError:  # shapes differ between batches (dynamic trailing dims): one by one
                    converted = [to_table([b], names, provenance, self.run) for b in group]
            except Exception:
                self._stats.rows_failed += sum(b.rows for b in group)
                log.exception("scoring log: cannot convert %d batches of %s:%s", len(group), model, _version)
                continue
            for table, roles in converted:
                for role, mask in roles:
                    self._append((model, role, date), table if mask is None else table.filter(pa.array(mask)))

    def _append(self, key: tuple[str, str, str], table: pa.Table) -> None:
        while table.num_rows:
            s = self._open.get(key)
            if s is not None and not s.schema.equals(table.schema):
                self._seal(key)
                s = None
            if s is None:
                s = self._start(key, table.schema)
                if s is None:
                    self._stats.rows_failed += table.num_rows
                    return
            room = self.settings.max_rows_per_file - s.rows
            part = table.slice(0, room) if table.num_rows > room else table
            try:
                s.append(b"".join(b.serialize() for b in part.to_batches()))
            except OSError:
                self._write_failed("scoring log: cannot write %d rows to %s", table.num_rows, s.path)
                self._break(key, s)
                self._stats.rows_failed += table.num_rows  # the next tick tries a new file
                return
            s.rows += part.num_rows
            table = table.slice(part.num_rows)
            if s.rows >= self.settings.max_rows_per_file:
                self._seal(key)

    def _start(self, key: tuple[str, str, str], schema: pa.Schema) -> _Stream | None:
        """A new stream for `key`, its schema written; None (logged) when it cannot be made."""
        model, role, date = key
        folder = self.root / f"model={model}" / f"role={role}" / f"date={date}"
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        path = folder / f".part-{stamp}-{os.getpid()}-{next(self._seq):06d}{files.STREAM_SUFFIX}"
        s = _Stream(path, str(path.relative_to(self.root)), schema)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            s.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            s.append(schema.serialize())
        except OSError:
            self._write_failed("scoring log: cannot start a file under %s", folder)
            s.close_fd()
            files.remove(path)
            return None
        self._open[key] = s
        return s

    def _break(self, key: tuple[str, str, str], s: _Stream) -> None:
        """A write to `s` failed: what it took since its last commit is lost (counted), the
        rest is kept, and it takes no more rows."""
        self._stats.rows_failed += s.rows - s.committed_rows
        s.cut_to_committed()
        self._open.pop(key, None)
        self._retire(s)

    def _seal(self, key: tuple[str, str, str]) -> None:
        """`s` is complete: published once its last rows are committed."""
        self._sealing.append(self._open.pop(key))

    def _retire(self, s: _Stream) -> None:
        """A stream that takes no more rows and has nothing uncommitted: to the publisher, or
        removed when it holds no rows."""
        s.close_fd()
        if s.committed_rows == 0:
            files.remove(s.path)
            self._journal_changed = True
            return
        with self._lock:
            self._sealed.append(s)
            self._lock.notify_all()

    def _commit(self, receipts: list[Receipt]) -> None:
        """Make what was appended since the last commit durable (see engine/scorelog/files.py);
        then the receipts are done. A commit that fails loses the tick's rows (counted); the
        files keep what was committed before."""
        for receipt in receipts:
            self.rings[receipt.ring] = max(self.rings.get(receipt.ring, 0), receipt.end)
        streams = [*self._open.values(), *self._sealing]
        dirty = [s for s in streams if s.bytes != s.committed_bytes]
        if dirty or receipts or self._journal_changed:
            try:
                for s in dirty:
                    os.fsync(s.fd)
                with self._lock:
                    listed = {s.rel: (s.bytes, s.rows) for s in [*streams, *self._sealed] if s.rows}
                files.write_journal(self._journal, listed, self.rings)
            except OSError:
                self._write_failed("scoring log: cannot commit %d rows under %s",
                                   sum(s.rows - s.committed_rows for s in dirty), self.root)
                for key, s in list(self._open.items()):
                    if s in dirty:
                        self._break(key, s)
                for s in self._sealing:
                    self._stats.rows_failed += s.rows - s.committed_rows
                    s.cut_to_committed()
                    self._retire(s)
                self._sealing.clear()
                for receipt in receipts:
                    receipt.done = True
                return
            self._journal_changed = False
            for s in dirty:
                s.committed_bytes, s.committed_rows = s.bytes, s.rows
            for s in self._sealing:
                self._retire(s)
            self._sealing.clear()
            for old in self._old_journals:  # this journal lists what they did
                files.remove(old)
            self._old_journals = []
        for receipt in receipts:
            receipt.done = True

    def _rotate(self, force: bool) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._open.items() if force or now - s.opened >= self.settings.max_file_age_s]:
            s = self._open.pop(key)
            if s.bytes != s.committed_bytes:  # a commit that failed left it so: keep the committed part
                self._stats.rows_failed += s.rows - s.committed_rows
                s.cut_to_committed()
            self._retire(s)

    # -- the publisher thread --------------------------------------------------------------------
    def _publish_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    due = [s for s in self._sealed if s.retry_at <= now]
                    if due:
                        break
                    if self._publisher_closing:
                        return
                    wait = min([s.retry_at for s in self._sealed], default=now + 1.0) - now
                    self._lock.wait(max(0.01, wait))
                s = due[0]
            try:
                files.publish_stream(s.path, s.committed_bytes, s.committed_rows, self._compression)
            except Exception:
                self._stats.publish_failures += 1
                s.failures += 1
                s.retry_at = time.monotonic() + min(RETRY_S[1], RETRY_S[0] * 2 ** (s.failures - 1))
                self._publish_failed("scoring log: cannot publish %s (%d rows; kept, tried again in %.0f s)",
                                     s.path, s.committed_rows, s.retry_at - time.monotonic())
                with self._lock:
                    if self._publisher_closing:  # closing: one try each; the next start publishes the rest
                        self._sealed.remove(s)
                        self._unpublished.append(s)
                continue
            files.remove(s.path)
            with self._lock:
                self._sealed.remove(s)
            self._stats.rows_written += s.committed_rows
            self._stats.files_closed += 1
            self._journal_changed = True

    def close(self, timeout_s: float = 60.0) -> None:
        """Write everything queued, publish every file, stop the threads. What cannot be
        published stays committed for the next start (logged)."""
        deadline = time.monotonic() + timeout_s
        self._box.close()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("scoring log: the writer did not finish within %.0f s", timeout_s)
            return
        with self._lock:
            self._publisher_closing = True
            for s in self._sealed:
                s.retry_at = 0.0  # now, once
            self._lock.notify_all()
        self._publisher.join(max(0.1, deadline - time.monotonic()))
        if self._publisher.is_alive():
            log.error("scoring log: files were still being published after %.0f s; the next start publishes "
                      "what is left", timeout_s)
            return
        left = self._unpublished
        try:
            if left:
                files.write_journal(self._journal, {s.rel: (s.committed_bytes, s.committed_rows) for s in left},
                                    self.rings)
                log.error("scoring log: %d committed rows in %d file(s) could not be published; they stay, and the "
                          "next start publishes them", sum(s.committed_rows for s in left), len(left))
            else:
                files.remove(self._journal)
        except OSError:
            log.exception("scoring log: cannot update the journal %s", self._journal)
