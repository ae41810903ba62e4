"""The dynamic batcher: one per model version, on the event loop.

A batch closes at `max_batch_size` rows (requests count by rows and are never split). At most
`max_in_flight` batches run at once (the model's instances); while all are busy, waiting
requests keep joining the next batch, which goes when one finishes. When an instance is free,
`dispatch` says whether a request waits for company: "free_slot" never (Triton's batcher with
no delay: at low load a lone request costs no wait, at high load batches grow by themselves,
because the model is busy while they fill); "idle" only while some batch runs, up to
`max_queue_delay_us`; "delay" always up to `max_queue_delay_us` (Triton's batcher with a delay).
Waiting when nothing else is queued or running cannot make a batch bigger: it only adds the
delay to every request (one-row requests at 8 callers lost half their throughput to it).
The queue is bounded in rows: past `queue_capacity` the caller gets RESOURCE_EXHAUSTED, except
that a request larger than the queue (but within max_rows_per_request) is taken when the queue
is empty, and runs alone.
A request whose deadline (monotonic ns) has passed when its batch closes is not scored.
One future per request; a failing batch is retried member by member so that one bad
request never fails its batch-mates; if the batcher itself dies, every pending future fails.
A member submitted `each_row` (a piece of a Kafka chunk: every row its own event) that fails
alone is scored row by row, and gets a RowOutcome: the rows scored and the rows that failed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from engine.batching.batch import Batch, Origin
from engine.errors import EngineError, ErrorCode
from engine.settings import BatchingSettings

log = logging.getLogger(__name__)

RunBatch = Callable[[Batch], Awaitable[dict[str, np.ndarray]]]
# (batch, its outputs, members' enqueue times, run start, run end (monotonic ns), members' origins)
OnScored = Callable[[Batch, dict[str, np.ndarray], np.ndarray, int, int, tuple], None]


@dataclass(slots=True)
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future | None
    deadline_ns: int | None
    enqueued_ns: int
    origin: Origin | None
    each_row: bool = False


@dataclass(slots=True)
class RowOutcome:
    """What an `each_row` member got: the outputs of the rows scored (`scored`, positions in
    the member, ascending) and (position, "CODE: message") for each row that failed."""

    scored: np.ndarray
    outputs: dict[str, np.ndarray]
    failures: list[tuple[int, str]]


@dataclass(slots=True)
class BatcherStats:
    batches: int = 0
    rows: int = 0
    requests: int = 0
    expired: int = 0
    cancelled: int = 0
    rejected_full: int = 0
    retried_batches: int = 0
    # Triton's ModelStatistics: per request, its wait to be batched and the run it shared
    queue_ns: int = 0
    infer_ns: int = 0
    last_scored_ms: int = 0  # wall clock, ms since the epoch


class Batcher:
    def __init__(self, label: str, settings: BatchingSettings, run: RunBatch, max_in_flight: int,
                 on_scored: OnScored | None = None):
        self.label = label
        self._on_scored = on_scored  # must not block: monitoring takes it off the request path
        self.max_batch_size = settings.max_batch_size
        self.delay_ns = settings.max_queue_delay_us * 1000
        self.dispatch = settings.dispatch
        self.capacity = settings.queue_capacity
        self._run = run
        self.max_in_flight = max_in_flight
        self._running = 0  # batches dispatched and not finished (at most max_in_flight)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        self._in_flight: set[asyncio.Task] = set()
        self._waiter: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self.stats = BatcherStats()

    # -- public --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher:{self.label}")

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def submit(self, inputs: dict[str, np.ndarray], rows: int, deadline_ns: int | None = None,
               origin: Origin | None = None, each_row: bool = False) -> asyncio.Future:
        """Queue one validated request; its future gets the request's own output rows (a
        RowOutcome when `each_row`). The origin travels with it to `on_scored` (the scoring log)."""
        if self._closing:
            raise EngineError(ErrorCode.UNAVAILABLE, f"model {self.label} is shutting down")
        if self._queued_rows and self._queued_rows + rows > self.capacity:  # an empty queue takes any request
            self.stats.rejected_full += 1
            raise EngineError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"model {self.label}: queue full ({self._queued_rows} rows waiting, "
                f"queue_capacity = {self.capacity}); retry later",
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, rows, future, deadline_ns, time.monotonic_ns(), origin, each_row))
        before = self._queued_rows
        self._queued_rows += rows
        # The loop cares about the first request and a batch becoming full, and then only when an
        # instance is free: while all are busy, the batch that finishes wakes it.
        if self._running < self.max_in_flight and (len(self._queue) == 1 or before < self.max_batch_size
                                                    <= self._queued_rows):
            self._wake()
        return future

    async def close(self) -> None:
        """Stop taking requests, score everything queued, wait for batches in flight."""
        self._closing = True
        self._wake()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    # -- the loop ------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout_ns: int | None) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        handle = loop.call_later(timeout_ns / 1e9, self._wake) if timeout_ns is not None else None
        try:
            await self._waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    def _close_at(self) -> int | None:
        """When the next batch goes if nothing fills it (monotonic ns), an instance being
        free; None: now."""
        if self._closing or self._queued_rows >= self.max_batch_size or self.dispatch == "free_slot":
            return None
        if self.dispatch == "idle" and self._running == 0:
            return None
        return self._queue[0].enqueued_ns + self.delay_ns

    async def _loop(self) -> None:
        """Woken by the first request queued, by a batch becoming full, by a batch finishing
        and by close(); goes to sleep until one of them (or the delay's end) otherwise."""
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    await self._wait(None)
                    continue
                if self._running >= self.max_in_flight:  # every instance busy: the batch grows
                    await self._wait(None)
                    continue
                close_at = self._close_at()
                if close_at is not None:
                    remaining = close_at - time.monotonic_ns()
                    if remaining > 0:
                        await self._wait(remaining)
                        continue
                members = self._take()
                if not members:
                    continue
                self._running += 1
                if self.max_in_flight == 1:  # nothing else could run meanwhile: no task of its own
                    await self._run_batch(members)
                    continue
                task = asyncio.get_running_loop().create_task(self._run_batch(members))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        except BaseException as exc:
            self._fail_all(exc)
            raise

    def _take(self) -> list[_Pending]:
        """Pop the next batch's members; fail expired and skip cancelled ones."""
        members: list[_Pending] = []
        rows = 0
        now = time.monotonic_ns()
        queue = self._queue
        while queue:
            item = queue[0]
            if members and rows + item.rows > self.max_batch_size:
                break
            queue.popleft()
            self._queued_rows -= item.rows
            if item.future.done():  # the caller went away (cancelled, or its gRPC deadline passed)
                self.stats.cancelled += 1
                continue
            if item.deadline_ns is not None and item.deadline_ns <= now:
                self.stats.expired += 1
                item.future.set_exception(
                    EngineError(ErrorCode.DEADLINE_EXCEEDED, f"model {self.label}: deadline passed before scoring")
                )
                continue
            members.append(item)
            rows += item.rows
        return members

    async def _run_batch(self, members: list[_Pending]) -> None:
        try:
            try:
                parts = await self._score(members)
            except Exception as exc:
                if len(members) == 1:
                    await self._failed_alone(members[0], exc)
                    return
                # Isolate the member that breaks the model: score each one alone.
                self.stats.retried_batches += 1
                log.warning("model %s: batch of %d requests failed (%s); retrying them one by one",
                            self.label, len(members), exc)
                for item in members:
                    try:
                        (part,) = await self._score([item])
                    except Exception as one_exc:
                        await self._failed_alone(item, one_exc)
                    else:
                        _answer(item, part)
                return
            for item, part in zip(members, parts):
                _answer(item, part)
        except BaseException as exc:  # cancelled too (run by the loop itself, it is cancelled with it)
            for item in members:
                _set_exception(item.future, exc, self.label)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running -= 1
            self._wake()

    async def _failed_alone(self, item: _Pending, exc: Exception) -> None:
        """A member that made the model fail on its own: its error, or, `each_row`, each of
        its rows scored alone (an engine that is stopping fails it whole)."""
        if not item.each_row or item.rows == 1:
            if item.each_row and not _stopping(exc):
                _set_result(item.future, RowOutcome(np.zeros(0, np.int64), {}, [(0, _reason(exc, self.label))]))
                return
            _set_exception(item.future, exc, self.label)
            return
        scored, parts, failures = [], [], []
        for r in range(item.rows):
            origin = None if item.origin is None else item.origin.rows(r, r + 1)
            row = _Pending({name: a[r:r + 1] for name, a in item.inputs.items()}, 1, None, None,
                           item.enqueued_ns, origin)
            try:
                (part,) = await self._score([row])
            except Exception as row_exc:
                if _stopping(row_exc):
                    _set_exception(item.future, row_exc, self.label)
                    return
                failures.append((r, _reason(row_exc, self.label)))
            else:
                scored.append(r)
                parts.append(part)
        outputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}
        _set_result(item.future, RowOutcome(np.asarray(scored, dtype=np.int64), outputs, failures))

    async def _score(self, members: list[_Pending]) -> list[dict[str, np.ndarray]]:
        batch = Batch.concat([m.inputs for m in members])
        start = time.monotonic_ns()
        outputs = await self._run(batch)
        end = time.monotonic_ns()
        parts = batch.split(outputs)
        stats = self.stats
        stats.batches += 1
        stats.requests += len(members)
        stats.rows += batch.rows
        enqueued = [m.enqueued_ns for m in members]  # Python ints: a numpy sum of a few costs more
        stats.queue_ns += start * len(members) - sum(enqueued)
        stats.infer_ns += (end - start) * len(members)
        stats.last_scored_ms = time.time_ns() // 1_000_000
        if self._on_scored is not None:
            self._on_scored(batch, outputs, np.array(enqueued, dtype=np.int64), start, end,
                            tuple(m.origin for m in members))
        return parts

    def _fail_all(self, exc: BaseException) -> None:
        error = EngineError(ErrorCode.INTERNAL, f"model {self.label}: batcher stopped ({exc!r})")
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(error)
        self._queued_rows = 0


def _answer(item: _Pending, part: dict[str, np.ndarray]) -> None:
    _set_result(item.future, RowOutcome(np.arange(item.rows), part, []) if item.each_row else part)


def _stopping(exc: BaseException) -> bool:
    return isinstance(exc, EngineError) and exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.NOT_FOUND)


def _reason(exc: BaseException, label: str) -> str:
    """A row's failure as its dead letter says it: "CODE: message"."""
    if not isinstance(exc, EngineError):
        exc = EngineError(ErrorCode.INTERNAL, f"model {label} failed: {exc}")
    return f"{exc.code.value}: {exc.message}"


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException, label: str) -> None:
    if future.done():
        return
    if not isinstance(exc, EngineError):
        exc = EngineError(ErrorCode.INTERNAL, f"model {label} failed: {exc}")
    future.set_exception(exc)
