from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from engine.batching.batch import Batch, Origin
from engine.batching.batcher import Batcher
from engine.errors import EngineError, ErrorCode
from engine.settings import BatchingSettings


@given(st.lists(st.integers(1, 20), min_size=1, max_size=30), st.integers(1, 5))
@hsettings(max_examples=200, deadline=None)
def test_concat_then_split_returns_each_members_rows(sizes, width):
    members, start = [], 0
    for n in sizes:
        x = np.arange(start * width, (start + n) * width, dtype=np.float32).reshape(n, width)
        members.append({"x": x, "k": np.arange(start, start + n)})
        start += n
    batch = Batch.concat(members)
    assert batch.rows == sum(sizes) and batch.members == len(sizes)
    parts = batch.split({"y": batch.inputs["x"] * 2, "k": batch.inputs["k"]})
    for member, part in zip(members, parts):
        np.testing.assert_array_equal(part["y"], member["x"] * 2)
        np.testing.assert_array_equal(part["k"], member["k"])


def test_split_refuses_outputs_without_a_row_per_input_row():
    batch = Batch.concat([{"x": np.zeros((2, 1))}, {"x": np.zeros((3, 1))}])
    with pytest.raises(ValueError, match="expected 5 rows"):
        batch.split({"y": np.zeros(4)})


class Recorder:
    """A stand-in runner: records batch sizes and concurrency, returns x * 10."""

    def __init__(self, delay_s: float = 0.0, fail_if=None):
        self.sizes: list[int] = []
        self.running = 0
        self.peak = 0
        self.delay_s = delay_s
        self.fail_if = fail_if

    async def __call__(self, batch: Batch) -> dict[str, np.ndarray]:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail_if is not None and self.fail_if(batch.inputs["x"]):
                raise RuntimeError("model exploded")
            self.sizes.append(batch.rows)
            return {"y": batch.inputs["x"] * 10}
        finally:
            self.running -= 1


def make(run, max_batch_size=8, delay_us=20_000, capacity=1000, in_flight=1, dispatch="free_slot") -> Batcher:
    settings = BatchingSettings(max_batch_size=max_batch_size, max_queue_delay_us=delay_us, queue_capacity=capacity,
                                dispatch=dispatch)
    batcher = Batcher("m:1", settings, run, max_in_flight=in_flight)
    batcher.start()
    return batcher


def rows(start: int, n: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + n, dtype=np.float64)[:, None]}


def test_rows_not_requests_fill_a_batch_and_results_go_back_to_their_requests(rng):
    async def main():
        run = Recorder(delay_s=0.01)
        batcher = make(run, max_batch_size=8)
        sizes = rng.integers(1, 6, size=40)
        futures, start = [], 0
        for n in sizes:
            futures.append((start, n, batcher.submit(rows(start, n), int(n))))
            start += n
        for s, n, fut in futures:
            np.testing.assert_array_equal((await fut)["y"][:, 0], np.arange(s, s + n) * 10)
        await batcher.close()
        return run, sizes

    run, sizes = asyncio.run(main())
    assert sum(run.sizes) == sizes.sum()
    assert max(run.sizes) <= 8
    assert len(run.sizes) < len(sizes)  # batched


def test_a_request_larger_than_max_batch_size_runs_alone():
    async def main():
        run = Recorder()
        batcher = make(run, max_batch_size=4)
        out = await batcher.submit(rows(0, 10), 10)
        await batcher.close()
        return run, out

    run, out = asyncio.run(main())
    assert run.sizes == [10] and out["y"].shape == (10, 1)


def test_with_dispatch_delay_the_first_request_waits_at_most_the_queue_delay():
    async def main():
        batcher = make(Recorder(), max_batch_size=100, delay_us=50_000, dispatch="delay")
        start = time.monotonic()
        await batcher.submit(rows(0, 1), 1)
        waited = time.monotonic() - start
        await batcher.close()
        return waited

    waited = asyncio.run(main())
    assert 0.045 <= waited < 0.5


@pytest.mark.parametrize("dispatch", ["free_slot", "idle"])
def test_a_lone_request_on_an_idle_model_goes_at_once_whatever_the_queue_delay(dispatch):
    """Nothing else queued and nothing running: waiting could not grow the batch, only delay
    the answer. With a 1 s delay the answer comes long before it."""
    async def main():
        run = Recorder()
        batcher = make(run, max_batch_size=64, delay_us=1_000_000, dispatch=dispatch)
        start = time.monotonic()
        out = await batcher.submit(rows(3, 1), 1)
        waited = time.monotonic() - start
        await batcher.close()
        return out, waited, run.sizes

    out, waited, sizes = asyncio.run(main())
    assert out["y"][0, 0] == 30 and sizes == [1]
    assert waited < 0.5


def test_requests_arriving_while_the_model_is_busy_fill_the_next_batch():
    """The first request goes alone at once; the 50 that arrive one by one while it holds the
    only instance wait for it (not for the 1 s delay) and go together when it finishes."""
    async def main():
        run = Recorder(delay_s=0.2)
        batcher = make(run, max_batch_size=64, delay_us=1_000_000)
        start = time.monotonic()
        futures = [batcher.submit(rows(0, 1), 1)]
        for i in range(1, 51):
            await asyncio.sleep(0.001)  # they come one at a time, as callers do
            futures.append(batcher.submit(rows(i, 1), 1))
        results = await asyncio.gather(*futures)
        took = time.monotonic() - start
        await batcher.close()
        return results, run.sizes, took

    results, sizes, took = asyncio.run(main())
    assert [int(r["y"][0, 0]) for r in results] == [10 * i for i in range(51)]
    assert sizes[0] == 1 and sum(sizes) == 51
    assert len(sizes) <= 3 and max(sizes) >= 25  # grown while the model was busy
    assert took < 1.0  # nobody waited for the 1 s delay


def test_a_batch_that_fills_while_every_instance_is_busy_waits_for_one_then_more_are_taken():
    """max_batch_size still caps a batch that grew while the model was busy: the rest wait."""
    async def main():
        run = Recorder(delay_s=0.05)
        batcher = make(run, max_batch_size=4, delay_us=1_000_000)
        first = batcher.submit(rows(0, 1), 1)
        await asyncio.sleep(0.01)  # running
        rest = [batcher.submit(rows(i, 1), 1) for i in range(1, 11)]
        await asyncio.gather(first, *rest)
        await batcher.close()
        return run.sizes

    assert asyncio.run(main()) == [1, 4, 4, 2]


@pytest.mark.parametrize("dispatch, expected", [("free_slot", [1, 1, 1]), ("idle", [1, 2])])
def test_with_two_instances_idle_waits_for_company_while_a_batch_runs_free_slot_does_not(dispatch, expected):
    """A runs on one instance; B and C come 20 ms apart. "free_slot": B takes the free instance
    alone at once and C waits for one. "idle": B, a batch running, waits (up to the delay) for
    company, and goes with C."""
    async def main():
        run = Recorder(delay_s=0.3)
        batcher = make(run, max_batch_size=64, delay_us=100_000, in_flight=2, dispatch=dispatch)
        a = batcher.submit(rows(0, 1), 1)
        await asyncio.sleep(0.01)
        b = batcher.submit(rows(1, 1), 1)
        await asyncio.sleep(0.02)
        c = batcher.submit(rows(2, 1), 1)
        await asyncio.gather(a, b, c)
        await batcher.close()
        return run.sizes

    assert asyncio.run(main()) == expected


def test_with_dispatch_idle_a_waiting_batch_goes_when_the_model_becomes_idle():
    """"idle" waits for company only while something runs: when the running batch ends, the
    waiting one goes then, not at the end of its (here 5 s) delay."""
    async def main():
        run = Recorder(delay_s=0.05)
        batcher = make(run, max_batch_size=64, delay_us=5_000_000, in_flight=2, dispatch="idle")
        start = time.monotonic()
        a = batcher.submit(rows(0, 1), 1)
        await asyncio.sleep(0.01)
        b = batcher.submit(rows(1, 1), 1)
        await asyncio.gather(a, b)
        took = time.monotonic() - start
        await batcher.close()
        return run.sizes, took

    sizes, took = asyncio.run(main())
    assert sizes == [1, 1] and took < 2.0


def test_full_batch_closes_without_waiting_for_the_delay():
    async def main():
        batcher = make(Recorder(), max_batch_size=4, delay_us=5_000_000, dispatch="delay")
        start = time.monotonic()
        futures = [batcher.submit(rows(i, 1), 1) for i in range(4)]
        await asyncio.gather(*futures)
        waited = time.monotonic() - start
        await batcher.close()
        return waited

    assert asyncio.run(main()) < 1.0


def test_queue_capacity_in_rows_is_enforced():
    async def main():
        batcher = make(Recorder(), max_batch_size=100, delay_us=200_000, capacity=10)
        first = batcher.submit(rows(0, 6), 6)
        with pytest.raises(EngineError) as info:
            batcher.submit(rows(6, 5), 5)
        second = batcher.submit(rows(6, 4), 4)  # exactly fills it
        await asyncio.gather(first, second)
        await batcher.close()
        return info.value, batcher.stats.rejected_full

    error, rejected = asyncio.run(main())
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED and rejected == 1


def test_a_request_larger_than_the_queue_is_taken_alone_when_the_queue_is_empty():
    """queue_capacity bounds rows waiting; a request over it (within max_rows_per_request,
    checked before) would otherwise be refused forever, however often it is retried."""
    async def main():
        run = Recorder()
        batcher = make(run, max_batch_size=8, delay_us=200_000, capacity=10)
        big = batcher.submit(rows(0, 25), 25)  # empty queue: taken
        with pytest.raises(EngineError) as info:
            batcher.submit(rows(25, 1), 1)  # 25 rows waiting: full
        out = await big
        await batcher.close()
        return out, run.sizes, info.value

    out, sizes, error = asyncio.run(main())
    np.testing.assert_array_equal(out["y"][:, 0], np.arange(25) * 10)
    assert sizes == [25] and error.code is ErrorCode.RESOURCE_EXHAUSTED


def test_expired_deadline_is_not_scored():
    async def main():
        run = Recorder()
        batcher = make(run, max_batch_size=100, delay_us=30_000, dispatch="delay")  # the batch waits 30 ms
        expired = batcher.submit(rows(0, 3), 3, deadline_ns=time.monotonic_ns() + 1_000_000)
        alive = batcher.submit(rows(3, 2), 2, deadline_ns=time.monotonic_ns() + 10_000_000_000)
        with pytest.raises(EngineError) as info:
            await expired
        await alive
        await batcher.close()
        return run.sizes, info.value

    sizes, error = asyncio.run(main())
    assert error.code is ErrorCode.DEADLINE_EXCEEDED
    assert sizes == [2]


def test_batches_in_flight_are_capped():
    async def main():
        run = Recorder(delay_s=0.02)
        batcher = make(run, max_batch_size=2, delay_us=0, in_flight=3)
        await asyncio.gather(*(batcher.submit(rows(i, 1), 1) for i in range(40)))
        await batcher.close()
        return run.peak

    assert asyncio.run(main()) == 3


def test_failing_batch_is_retried_member_by_member():
    async def main():
        run = Recorder(fail_if=lambda x: (x < 0).any())
        batcher = make(run, max_batch_size=100, delay_us=20_000)
        good1 = batcher.submit(rows(0, 2), 2)
        bad = batcher.submit({"x": -np.ones((1, 1))}, 1)
        good2 = batcher.submit(rows(5, 3), 3)
        results = await asyncio.gather(good1, bad, good2, return_exceptions=True)
        await batcher.close()
        return results, batcher.stats.retried_batches

    (g1, bad, g2), retried = asyncio.run(main())
    np.testing.assert_array_equal(g1["y"][:, 0], [0, 10])
    np.testing.assert_array_equal(g2["y"][:, 0], [50, 60, 70])
    assert isinstance(bad, EngineError) and bad.code is ErrorCode.INTERNAL and "model exploded" in bad.message
    assert retried == 1


def test_a_member_scored_each_row_loses_only_the_rows_that_break_the_model():
    """A Kafka piece: one bad event among many fails alone; the log hears of each good row
    with its own origin, and a plain request in the same batch is answered."""
    logged = []

    async def main():
        run = Recorder(fail_if=lambda x: (x < 0).any())
        settings = BatchingSettings(max_batch_size=100, max_queue_delay_us=20_000, queue_capacity=1000)
        batcher = Batcher("m:1", settings, run, max_in_flight=1,
                          on_scored=lambda batch, out, enq, a, b, origins: logged.extend(origins))
        batcher.start()
        x = np.array([[1.0], [-1.0], [3.0], [-4.0], [5.0]])
        origin = Origin("champion", "sticky", topic="events", partitions=np.zeros(5, np.int32),
                        offsets=np.arange(100, 105), keys=[b"a", b"b", None, b"d", b"e"])
        piece = batcher.submit({"x": x}, 5, origin=origin, each_row=True)
        plain = batcher.submit(rows(7, 1), 1)
        whole = batcher.submit(rows(0, 2), 2, origin=origin.rows(0, 2), each_row=True)
        results = await asyncio.gather(piece, plain, whole)
        await batcher.close()
        return results

    piece, plain, whole = asyncio.run(main())
    assert piece.scored.tolist() == [0, 2, 4]
    np.testing.assert_array_equal(piece.outputs["y"][:, 0], [10, 30, 50])
    assert [r for r, _ in piece.failures] == [1, 3]
    assert all(why.startswith("internal: ") and "model exploded" in why for _, why in piece.failures)
    np.testing.assert_array_equal(plain["y"][:, 0], [70])
    assert whole.scored.tolist() == [0, 1] and whole.failures == []
    rows_logged = [o for o in logged if o is not None and o.topic == "events" and len(o.offsets) == 1]
    assert sorted(int(o.offsets[0]) for o in rows_logged) == [100, 102, 104]
    assert [o.keys for o in rows_logged if o.offsets[0] == 102] == [[None]]


def test_close_scores_what_is_queued_then_refuses():
    async def main():
        batcher = make(Recorder(), max_batch_size=100, delay_us=5_000_000)
        pending = batcher.submit(rows(0, 1), 1)
        await batcher.close()
        assert pending.done() and pending.result()["y"][0, 0] == 0
        with pytest.raises(EngineError) as info:
            batcher.submit(rows(0, 1), 1)
        return info.value

    assert asyncio.run(main()).code is ErrorCode.UNAVAILABLE


def test_pending_requests_fail_if_the_batcher_dies():
    async def main():
        batcher = make(Recorder(), max_batch_size=100, delay_us=5_000_000, dispatch="delay")
        pending = batcher.submit(rows(0, 1), 1)
        await asyncio.sleep(0.01)
        batcher._task.cancel()
        with pytest.raises(EngineError) as info:
            await pending
        return info.value

    error = asyncio.run(main())
    assert error.code is ErrorCode.INTERNAL and "batcher stopped" in error.message


def test_a_mailbox_fed_by_many_threads_keeps_its_bound_and_counts_exactly():
    """The monitor's mailbox is fed by the event loop and every challenger's thread: the bound
    holds and every refusal is counted, however the threads interleave."""
    import sys
    import threading

    from engine.batching.mailbox import Mailbox

    box = Mailbox(capacity=5_000, tick_s=60)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=lambda: [box.put(k, 3) for k in range(2_000)]) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(box) == 5_000
    assert box.refused == 8 * 2_000 - 5_000 and box.refused_rows == 3 * box.refused


def test_a_mailbox_bounds_rows_too_and_always_takes_an_item_alone():
    from engine.batching.mailbox import Mailbox

    box = Mailbox(capacity=100, tick_s=0.001, max_rows=10)
    assert box.put("a", rows=6) and box.put("b", rows=4)
    assert not box.put("c", rows=1)  # 11 rows would pass the bound
    assert (box.refused, box.refused_rows) == (1, 1)
    items, _ = box.take()
    assert items == ["a", "b"]
    assert box.put("big", rows=50)  # alone: taken, whatever its rows
    assert not box.put("d", rows=1)


def test_a_mailbox_put_with_wait_s_waits_for_room_but_parks_on_an_event_loop():
    """A thread waits until the consumer takes; an event loop is never held: its item is parked,
    taken on the next pass while its wait lasts, refused and counted once the wait ran out."""
    import asyncio
    import threading
    import time

    from engine.batching.mailbox import Mailbox

    box = Mailbox(capacity=10, tick_s=60, max_rows=4)
    assert box.put("a", rows=4)
    done = []
    waiter = threading.Thread(target=lambda: done.append(box.put("b", rows=3, wait_s=10)))
    waiter.start()
    items, closing = box.take()  # the waiter woke the consumer at once: no 60 s tick
    assert items == ["a"] and not closing
    waiter.join(5)
    assert done == [True]

    async def on_loop():
        start = time.monotonic()
        parked = box.put("c", rows=2, wait_s=10), box.put("d", rows=2, wait_s=0.001)
        return parked, time.monotonic() - start

    parked, took = asyncio.run(on_loop())
    assert parked == (True, True) and took < 0.1
    time.sleep(0.01)  # "d"'s wait runs out
    items, _ = box.take()
    assert items == ["b", "c"]
    assert (box.refused, box.refused_rows, box.accepted_rows) == (1, 2, 9)


def test_a_batch_the_loop_runs_itself_answers_its_requests_when_the_batcher_is_cancelled():
    """With one instance the batcher's loop runs each batch itself (no task of its own): a
    batcher cancelled mid-run still fails the batch's requests instead of leaving them
    waiting forever, and the requests still queued too."""

    async def main():
        run = Recorder(delay_s=0.5)
        batcher = make(run, max_batch_size=2)
        running = [batcher.submit(rows(0, 2), 2)]
        await asyncio.sleep(0.05)  # the first batch runs
        queued = batcher.submit(rows(2, 1), 1)
        batcher._task.cancel()
        for future in [*running, queued]:
            with pytest.raises(EngineError) as err:
                await asyncio.wait_for(future, 2)
            assert err.value.code is ErrorCode.INTERNAL

    asyncio.run(main())
