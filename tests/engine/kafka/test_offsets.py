"""What a stream may commit, without a broker: the offset tracker and the chunk states."""

from __future__ import annotations

import numpy as np
import pytest

from engine.ingress.kafka.chunk import Chunk, State
from engine.ingress.kafka.config import client_configs, transactional_id
from engine.ingress.kafka.offsets import OffsetTracker
from engine.settings import StreamSettings


def chunk(*messages: tuple[int, int]) -> Chunk:
    """A chunk of (partition, offset) messages."""
    partitions = np.array([p for p, _ in messages], dtype=np.int64)
    offsets = np.array([o for _, o in messages], dtype=np.int64)
    return Chunk([b"{}"] * len(messages), [None] * len(messages), partitions, offsets, 0)


def settle(tracker: OffsetTracker, c: Chunk) -> dict[int, int]:
    c.state = State.SETTLED
    return tracker.settled(c)


def test_a_chunk_knows_where_each_of_its_partitions_ends():
    c = chunk((0, 10), (1, 5), (0, 11), (2, 7), (1, 6))
    assert c.ends == {0: 12, 1: 7, 2: 8}
    assert c.state is State.CONSUMED


def test_only_the_settled_prefix_of_a_partition_is_committed():
    tracker = OffsetTracker()
    a, b, c = chunk((0, 0), (0, 1)), chunk((0, 2), (1, 0)), chunk((0, 3))
    for x in (a, b, c):
        tracker.add(x)
    assert settle(tracker, c) == {}  # out of order: waits for a and b
    assert tracker.take_ready() == {}
    assert settle(tracker, a) == {0: 2}
    assert settle(tracker, b) == {0: 4, 1: 1}  # b's end and c's, settled before it
    assert tracker.take_ready() == {0: 4, 1: 1}
    assert tracker.take_ready() == {}  # taken once
    assert not tracker.busy(None)


def test_an_abandoned_chunk_holds_its_partitions_back():
    tracker = OffsetTracker()
    a, b = chunk((0, 0), (1, 0)), chunk((0, 1), (1, 1))
    tracker.add(a)
    tracker.add(b)
    assert a.abandon() and a.abandoned
    assert not a.abandon()  # once
    assert settle(tracker, b) == {}  # both partitions wait behind the abandoned chunk: never committed past it
    assert tracker.take_ready() == {}
    assert not tracker.busy({0, 1})  # nothing left that can still settle


def test_a_settled_chunk_cannot_be_abandoned():
    tracker = OffsetTracker()
    a = chunk((0, 0))
    tracker.add(a)
    settle(tracker, a)
    assert not a.abandon() and a.state is State.SETTLED


def test_a_synchronous_commit_takes_the_settled_ends_of_the_partitions_asked_for():
    tracker = OffsetTracker()
    a = chunk((0, 0), (1, 0), (2, 0))
    tracker.add(a)
    settle(tracker, a)
    assert tracker.settled_upto({1}) == {1: 1}
    assert tracker.take_ready() == {0: 1, 2: 1}  # 1 was taken by the synchronous commit
    assert tracker.settled_copy() == {0: 1, 1: 1, 2: 1}


def test_revoked_partitions_are_let_go():
    tracker = OffsetTracker()
    a, b = chunk((0, 0), (1, 0)), chunk((1, 1))
    for x in (a, b):
        tracker.add(x)
    assert tracker.busy({1}) and tracker.busy(None)
    settle(tracker, a)
    tracker.let_go({1})
    assert tracker.take_ready() == {0: 1}
    assert tracker.settled_copy() == {0: 1}
    tracker.forget({1})
    assert not tracker.busy({1})
    assert [c is b for c in tracker.in_flight()] == []


def test_a_transaction_commits_its_chunks_and_their_offsets():
    tracker = OffsetTracker()
    a, b, c = chunk((0, 0)), chunk((0, 1), (1, 0)), chunk((1, 1))
    for x in (a, b, c):
        tracker.add(x)
    assert {id(x) for x in tracker.in_flight()} == {id(a), id(b), id(c)}
    for x in (a, b):
        x.state = State.SETTLED
    tracker.committed([a, b], {0: 2, 1: 1})
    assert tracker.settled_copy() == {0: 2, 1: 1}
    assert [id(x) for x in tracker.in_flight()] == [id(c)]
    assert tracker.take_ready() == {}  # the transaction committed them: the reader commits nothing


@pytest.mark.parametrize("semantics", ["at_least_once", "exactly_once"])
def test_client_configs_keep_the_users_settings_over_the_defaults(semantics):
    settings = StreamSettings(model="m", input_topic="in", output_topic="out", dead_letter_topic="dlq",
                              bootstrap_servers="b:9092", semantics=semantics, group_id="g")
    txn = transactional_id(settings, 3) if semantics == "exactly_once" else None
    callbacks = {"error_cb": print, "stats_cb": print, "logger": None}
    consumer, producer = client_configs(settings, [{"client.id": "x"}, {"fetch.wait.max.ms": 100},
                                                   {"message.timeout.ms": 90000}], txn, callbacks)
    assert consumer["group.id"] == "g" and consumer["enable.auto.commit"] is False
    assert consumer["fetch.wait.max.ms"] == 100 and consumer["client.id"] == producer["client.id"] == "x"
    assert producer["enable.idempotence"] is True
    if txn is None:
        assert "transactional.id" not in producer and "isolation.level" not in consumer
    else:
        assert producer["transactional.id"].startswith("scorewire-g-in-") and producer["transactional.id"].endswith("-3")
        assert producer["transaction.timeout.ms"] == 90000  # librdkafka refuses a message timeout past it
        assert consumer["isolation.level"] == "read_committed"
