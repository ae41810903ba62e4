"""The observer hands batches on in the order they were scored, across workers' rings, even
when a record lands in a ring the pass already read while a later one lands in a ring read
after it."""

from __future__ import annotations

import time

from engine.handoff.wire import encode_batch
from engine.processes.observer import HOLD_NS, Watch
from tests.engine.test_scorelog import batch


class _Ring:
    def __init__(self) -> None:
        self.records: list[bytes] = []

    def take(self) -> list[bytes]:
        records, self.records = self.records, []
        return records


class _Observer:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def put(self, b) -> None:
        self.seen.append(b.version)


def _record(version: str, stamp_ns: int) -> bytes:
    return b"".join(bytes(p) for p in encode_batch(batch(2, version=version), stamp_ns))


def test_a_late_put_in_a_ring_read_earlier_still_comes_first():
    a, b = _Ring(), _Ring()
    watch = Watch.__new__(Watch)  # only what poll() uses
    watch.rings, watch.from_challengers, watch.to_challengers = [a, b], None, None
    watch.observer, watch.forward, watch.decode_failures, watch._held = _Observer(), set(), 0, []
    now = time.monotonic_ns()
    # worker B's batch (scored second) is already in its ring; worker A's (scored first) is not
    b.records.append(_record("second", now - 1_000_000))
    assert watch.poll() == 0  # too recent to hand on: an earlier one may still be on its way
    a.records.append(_record("first", now - 2_000_000))
    time.sleep(HOLD_NS / 1e9 + 0.02)
    assert watch.poll() == 2
    assert watch.observer.seen == ["first", "second"]
    # at the end everything goes, whatever its age
    b.records.append(_record("last", time.monotonic_ns()))
    assert watch.poll(final=True) == 1 and watch.observer.seen[-1] == "last"
