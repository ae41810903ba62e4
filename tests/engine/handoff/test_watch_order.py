"""The observer hands batches on in the order they were scored, across workers' rings, even
when a record lands in a ring the pass already read while a later one lands in a ring read
after it; and a ring keeps each record until the scoring log is done with it."""

from __future__ import annotations

import time

import pytest

from engine.handoff.ring import Ring
from engine.handoff.wire import encode_batch
from engine.processes.observer import HOLD_NS, Watch
from tests.engine.test_scorelog import batch


class _Observer:
    """Takes batches as the log does: their receipts are done when the test says."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.receipts: list = []

    def put(self, b, receipt=None) -> None:
        self.seen.append(b.version)
        self.receipts.append(receipt)


def _put(ring: Ring, version: str, stamp_ns: int) -> None:
    assert ring.put(encode_batch(batch(2, version=version), stamp_ns), 2)


@pytest.fixture
def rings():
    made = [Ring.create(1 << 16), Ring.create(1 << 16)]
    yield made
    for r in made:
        r.close()


def _watch(rings: list[Ring]) -> Watch:
    watch = Watch.__new__(Watch)  # only what poll() uses
    watch.rings, watch.from_challengers, watch.to_challengers = rings, None, None
    watch.observer, watch.forward, watch.decode_failures = _Observer(), set(), 0
    watch._held, watch._last_stamp, watch._receipts = [], {}, {}
    return watch


def test_a_late_put_in_a_ring_read_earlier_still_comes_first(rings):
    a, b = rings
    watch = _watch(rings)
    now = time.monotonic_ns()
    # worker B's batch (scored second) is already in its ring; worker A's (scored first) is not
    _put(b, "second", now - 1_000_000)
    assert watch.poll() == 0  # too recent to hand on: an earlier one may still be on its way
    _put(a, "first", now - 2_000_000)
    time.sleep(HOLD_NS / 1e9 + 0.02)
    assert watch.poll() == 2
    assert watch.observer.seen == ["first", "second"]
    # at the end everything goes, whatever its age
    _put(b, "last", time.monotonic_ns())
    assert watch.poll(final=True) == 1 and watch.observer.seen[-1] == "last"


def test_a_ring_keeps_each_record_until_the_log_is_done_with_it(rings):
    a, _ = rings
    watch = _watch(rings)
    for i in range(3):
        _put(a, str(i), time.monotonic_ns() - HOLD_NS - 1_000_000)
    assert watch.poll() == 3 and a.used > 0
    first, second, third = watch.observer.receipts
    second.done = True  # out of order: the first still holds the ring
    watch.release()
    assert a.used > 0 and watch.unreleased == 3
    first.done = True
    watch.release()
    assert watch.unreleased == 1 and 0 < a.used
    third.done = True
    watch.release()
    assert a.used == 0 and watch.unreleased == 0
    # a new reader of the ring (a restarted observer) starts where the log left off
    _put(a, "3", time.monotonic_ns() - HOLD_NS - 1_000_000)
    _put(a, "4", time.monotonic_ns() - HOLD_NS - 1_000_000)
    again = Ring.attach(a.name)
    try:
        records = again.read()
        assert len(records) == 2
        fresh = Ring.attach(a.name)
        fresh.seek(records[0][1])  # the log's journal says the first of them is in
        assert [end for _, end in fresh.read()] == [records[1][1]]
        fresh.close()
    finally:
        again.close()


def test_an_idle_observer_passes_less_often_and_is_back_at_full_pace_with_the_first_record(rings, monkeypatch):
    """poll_until's waits between passes: doubled by every pass that finds nothing (up to the
    idle tick), back to the tick with the first record found, and kept at the tick while a
    record read is held back (too recent to hand on)."""
    import asyncio

    from engine.processes import child
    from engine.processes.observer import IDLE_TICK_S, TICK_S

    a, _ = rings
    watch = _watch(rings)
    waits: list[float] = []
    stop = asyncio.Event()
    script = iter([None, None, None, None, None, "old", None, "new", None, None])

    def poll() -> int:
        step = next(script, "stop")
        if step == "stop":
            stop.set()
        elif step is not None:  # a record stamped 1 s ago ("old"), or 10 s ahead ("new": held back to the end)
            _put(a, step, time.monotonic_ns() + (10 if step == "new" else -1) * 1_000_000_000)
        return watch.poll()

    async def pause(stop, seconds: float, tick_s: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(child, "_pause", pause)
    asyncio.run(child.poll_until(stop, poll, TICK_S, None, IDLE_TICK_S, lambda: watch.waiting))
    t, idle = TICK_S, IDLE_TICK_S
    assert waits == [2 * t, 4 * t, 8 * t, idle, idle,  # nothing found: ever longer, to the idle tick
                     t,  # "old" handed on: back to the tick
                     2 * t,
                     t, t, t, t]  # "new" held back: the tick, to the end
    assert watch.observer.seen == ["old"]


def test_an_idle_wait_ends_when_the_process_is_told_to_stop():
    """A wait longer than the tick (idle) ends as soon as `stop` is set (SIGTERM), not after it."""
    import asyncio

    from engine.processes import child

    async def main() -> float:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        start = time.monotonic()
        await child._pause(stop, 10.0, 0.01)
        return time.monotonic() - start

    assert asyncio.run(main()) < 5
