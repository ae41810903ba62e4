"""Kafka streams against Apache Kafka itself: one KRaft node on loopback (bench/kafka_broker.py,
jars fetched by Maven), with `scorewire serve` workers as subprocesses.

The faults that matter are real here: a worker or the broker killed with SIGKILL mid-stream.
With exactly_once a read_committed consumer of the output must see every good input's result
exactly once and every malformed input exactly once in the dead-letter topic; with
at_least_once every input at least once, and the duplicates are counted (printed in the
summary at the end of the run).
"""

from __future__ import annotations

import itertools
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench.kafka_broker import KAFKA_VERSION, KafkaBroker, available
from tests.conftest import REPORT
from tests.integration.kafka_helpers import (
    committed,
    json_events,
    open_transactions,
    produce,
    produce_over,
    read_all,
    start_worker,
    wait_for,
)

PARTITIONS = 8
_why_not = available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not is not None, reason=f"real Kafka: {_why_not}")]
_names = itertools.count()


@pytest.fixture(scope="module")
def broker():
    with KafkaBroker() as b:
        yield b


@dataclass
class Topics:
    bootstrap: str
    events: str
    scores: str
    dlq: str
    group: str

    def metric(self, name: str) -> str:
        """The key of this stream's metric `name` in a worker's metrics()."""
        return f'{name}{{stream="{self.events}->{self.scores}",model="mlp"}}'


@pytest.fixture
def topics(broker) -> Topics:
    """Fresh topics and group for each test on the module's broker."""
    n = next(_names)
    t = Topics(broker.bootstrap, f"events{n}", f"scores{n}", f"dlq{n}", f"scorewire{n}")
    for name in (t.events, t.scores, t.dlq):
        broker.create_topic(name, PARTITIONS)
    return t


BAD = [b"not json {", b'{"id": "b1"}', b"[1, 2, 3]", orjson.dumps({"id": "b3", "float_input": [0.5] * 31}), b""]


def stream_of(x: np.ndarray) -> tuple[list, set[bytes]]:
    """The events of `x` with a malformed message after every 500th; and the keys of those."""
    messages, bad_keys = [], set()
    for i, item in enumerate(json_events(x)):
        messages.append(item)
        if i % 400 == 7:
            key = b"bad%d" % i
            messages.append((key, BAD[(i // 500) % len(BAD)]))
            bad_keys.add(key)
    return messages, bad_keys


def worker(model_dir, t: Topics, semantics: str, name: str = "worker.toml", transactional_id: str = ""):
    # Small chunks and a small in-flight bound: many transactions, so a kill lands inside one.
    # INFO: what a failure shows of the worker (assignments, pauses, the producer's restarts)
    return start_worker(model_dir, t.bootstrap, name=name, log_level="INFO", group=t.group, topic=t.events,
                        output=t.scores,
                        dlq=t.dlq, linger_ms=5, semantics=semantics, transactional_id=transactional_id,
                        consume_batch=500, max_in_flight=2000, message_timeout_ms=15000,
                        # A transaction the successor's init_transactions does not abort is aborted by
                        # the coordinator after this (seen once: the output waited 120 s, the timeout)
                        producer={"transaction.timeout.ms": 15000})


def check_delivery(t: Topics, semantics: str, n: int, bad_keys: set[bytes], what: str, w=None,
                   broker: KafkaBroker | None = None) -> None:
    """Every good input's result and every malformed input's dead letter: exactly once for
    exactly_once, at least once (duplicates reported) for at_least_once."""
    results = read_all(t.bootstrap, t.scores, n, timeout_s=120, linger_s=2.0)
    dead = read_all(t.bootstrap, t.dlq, len(bad_keys), timeout_s=60, linger_s=0.5)
    docs = [orjson.loads(m.value()) for m in results]
    counts = np.bincount([r["id"] for r in docs], minlength=n)
    dead_keys = [m.key() for m in dead]
    if counts.min() == 0:
        print(f"output partitions behind an open transaction (last stable offset, high watermark): "
              f"{open_transactions(t.bootstrap, t.scores, PARTITIONS)}")
        if w is not None:
            print({k: v for k, v in w.metrics().items() if "scorewire_stream_" in k})
        if broker is not None:
            print("\n".join(line for line in broker.log_tail(200_000).splitlines()
                            if "ransaction" in line or "TxnCoordinator" in line or "ERROR" in line)[-8000:])
    assert counts.min() >= 1, f"{int((counts == 0).sum())} inputs have no result"
    assert set(dead_keys) == bad_keys, f"{len(bad_keys - set(dead_keys))} malformed inputs have no dead letter"
    duplicates = int(counts.sum() - n) + len(dead_keys) - len(bad_keys)
    aborted = len(read_all(t.bootstrap, t.scores, n, timeout_s=30, linger_s=0.5, isolation="read_uncommitted")) - n
    REPORT.append(f"{what}, {semantics}: {n:,} events + {len(bad_keys)} malformed; {duplicates:,} duplicates "
                  f"seen by a read_committed consumer; {max(aborted - duplicates, 0):,} results in aborted "
                  f"transactions (seen only by read_uncommitted)")
    if semantics == "exactly_once":
        assert counts.max() == 1, f"{int((counts > 1).sum())} inputs have more than one result"
        assert len(dead_keys) == len(bad_keys), "a malformed input reached the dead-letter topic twice"
    # at_least_once: duplicates are allowed, and every one carries the source of its input
    by_id_source = {}
    for r in docs:
        assert by_id_source.setdefault(r["id"], r["source"]) == r["source"], "a duplicate names another source"


@pytest.mark.parametrize("semantics", ["exactly_once", "at_least_once"])
def test_a_worker_killed_mid_stream_then_restarted(broker, topics, model_dir, rng, semantics):
    n = 12_000
    messages, bad_keys = stream_of(rng.normal(size=(n, 32)).astype(np.float32))
    produce(topics.bootstrap, topics.events, messages)
    w = worker(model_dir, topics, semantics)
    delivered = topics.metric("scorewire_stream_delivered_total")
    try:
        wait_for(lambda: w.metrics()[delivered] >= 3_000, 60, every_s=0.02, what="3k events settled before the kill")
    finally:
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(30)
    assert sum(committed(topics.bootstrap, topics.group, topics.events, PARTITIONS).values()) < len(messages), \
        "the kill came after everything was committed"
    w = worker(model_dir, topics, semantics)  # the same transactional.id: the dead one's transaction is aborted
    try:
        check_delivery(topics, semantics, n, bad_keys, "worker SIGKILL")
    finally:
        assert w.stop() == 0


@pytest.mark.parametrize("semantics", ["exactly_once", "at_least_once"])
def test_the_broker_killed_mid_stream_then_restarted(broker, topics, model_dir, rng, semantics):
    n = 12_000
    messages, bad_keys = stream_of(rng.normal(size=(n, 32)).astype(np.float32))
    w = worker(model_dir, topics, semantics)
    try:
        half = len(messages) // 2
        produce(topics.bootstrap, topics.events, messages[:half])
        delivered = topics.metric("scorewire_stream_delivered_total")
        wait_for(lambda: w.metrics()[delivered] >= 3_000, 60, what="3k events settled before the kill")
        broker.kill()
        time.sleep(2.0)
        broker.start()
        produce(topics.bootstrap, topics.events, messages[half:])
        check_delivery(topics, semantics, n, bad_keys, "broker SIGKILL", w, broker)
        assert w.metrics()[topics.metric("scorewire_stream_up")] == 1
    finally:
        assert w.stop() == 0


@pytest.mark.parametrize("semantics", ["exactly_once", "at_least_once"])
def test_two_workers_share_the_partitions_and_one_leaving_loses_nothing(broker, topics, model_dir, rng, semantics):
    n = 12_000
    messages, bad_keys = stream_of(rng.normal(size=(n, 32)).astype(np.float32))
    a = worker(model_dir, topics, semantics, name="a.toml", transactional_id="sw-a")
    b = worker(model_dir, topics, semantics, name="b.toml", transactional_id="sw-b")
    assigned = topics.metric("scorewire_stream_assigned_partitions")
    try:
        wait_for(lambda: a.metrics()[assigned] > 0 and b.metrics()[assigned] > 0
                 and a.metrics()[assigned] + b.metrics()[assigned] == PARTITIONS, 60,
                 what="both workers to hold partitions")
        feeder = produce_over(topics.bootstrap, topics.events, messages, seconds=4.0)
        consumed = topics.metric("scorewire_stream_consumed_total")
        wait_for(lambda: a.metrics()[consumed] > 0 and b.metrics()[consumed] > 0, 60, what="both to consume")
        assert a.stop() == 0  # mid-stream: its partitions move to b
        wait_for(lambda: b.metrics()[assigned] == PARTITIONS, 60, what="b to take every partition")
        feeder.join(60)
        check_delivery(topics, semantics, n, bad_keys, "two workers, one leaving")
        if semantics == "at_least_once":  # a clean hand-over: nothing twice either
            results = read_all(topics.bootstrap, topics.scores, n, timeout_s=30, linger_s=0.5)
            assert len(results) == n
    finally:
        a.stop()
        assert b.stop() == 0


def test_a_second_server_with_the_same_transactional_id_fences_the_first(broker, topics, model_dir, rng):
    x = rng.normal(size=(2_000, 32)).astype(np.float32)
    a = worker(model_dir, topics, "exactly_once", name="a.toml", transactional_id="same")
    up = topics.metric("scorewire_stream_up")
    b = None
    try:
        produce(topics.bootstrap, topics.events, json_events(x[:1000]))
        delivered = topics.metric("scorewire_stream_delivered_total")
        wait_for(lambda: a.metrics()[delivered] == 1000, 60, what="a to score the first events")
        b = worker(model_dir, topics, "exactly_once", name="b.toml", transactional_id="same")
        assigned = topics.metric("scorewire_stream_assigned_partitions")
        wait_for(lambda: b.metrics()[assigned] > 0 and a.metrics()[assigned] > 0, 60, what="the group to split")
        # a finds out that it was fenced at its next commit: give it events
        produce(topics.bootstrap, topics.events, json_events(x[1000:], first_id=1000))
        wait_for(lambda: a.metrics()[up] == 0, 60, what="the fenced server's stream to stop")
        ids = sorted(orjson.loads(m.value())["id"] for m in read_all(topics.bootstrap, topics.scores, 2000))
        assert ids == list(range(2000)), "b took over a's partitions; nothing lost, nothing twice"
    finally:
        a.stop()
        if b is not None:
            assert b.stop() == 0


def test_the_broker_is_the_version_the_readme_names():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"Apache Kafka {KAFKA_VERSION}" in readme


def test_labels_from_a_topic_join_events_scored_from_a_stream_through_a_broker_kill(broker, topics, model_dir, rng):
    """The loop on Apache Kafka: 3,000 events scored from a stream by two workers, their labels
    (by each event's "id") from a [[feedback]] topic while the broker is SIGKILLed and
    restarted: every label joins once (one redelivered counts as a duplicate, never twice),
    and the performance equals sklearn's on the joined rows."""
    from sklearn.metrics import log_loss

    from engine.harness.config import Config, model_table, server_table
    from tests.conftest import launch
    from tests.integration.kafka_helpers import stream

    labels_topic = f"labels-{topics.group}"
    broker.create_topic(labels_topic, 4)
    n = 3_000
    performance = {"task": "binary", "score": "probabilities:1", "window": n, "label_ttl_s": 300}
    config = Config(server_table(workers=2, drain_timeout_s=20),
                    [model_table("mlp", "models/mlp.onnx", performance=performance)],
                    streams=[stream(topics.bootstrap, group=topics.group, topic=topics.events, output=topics.scores,
                                    dlq=topics.dlq)],
                    feedback=[{"model": "mlp", "bootstrap_servers": topics.bootstrap, "topic": labels_topic,
                               "group_id": f"{topics.group}-labels",
                               "kafka": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}}])
    server = launch(model_dir, config, "real-feedback.toml")
    try:
        produce(topics.bootstrap, topics.events, json_events(rng.normal(size=(n, 32)).astype(np.float32)))
        results = read_all(topics.bootstrap, topics.scores, n, timeout_s=120, linger_s=0.5)
        p = np.empty(n)
        for m in results:
            doc = orjson.loads(m.value())
            p[doc["id"]] = doc["outputs"]["probabilities"][1]
        truth = (rng.random(n) < p).astype(int)
        messages = [(None, orjson.dumps({"id": i, "labels": [int(truth[i])]})) for i in range(n)]
        produce(topics.bootstrap, labels_topic, messages[:n // 2])
        joined = 'scorewire_feedback_labels_total{model="mlp",outcome="joined"}'
        wait_for(lambda: server.metrics().get(joined, 0) >= 500, 60, what="labels joining before the kill")
        broker.kill()
        time.sleep(2.0)
        broker.start()
        produce(topics.bootstrap, labels_topic, messages[n // 2:] + messages[:1])  # the first, sent again
        wait_for(lambda: server.metrics().get(joined, 0) == n, 120, what="every label joined")
        wait_for(lambda: server.metrics().get('scorewire_feedback_labels_total{model="mlp",outcome="duplicate"}', 0)
                 >= 1, 30, what="the label sent twice counted a duplicate")
        m = server.metrics()
        assert m['scorewire_performance_rows{model="mlp",version="1",role="champion"}'] == n
        got = m['scorewire_performance{model="mlp",version="1",role="champion",metric="log_loss"}']
        assert got == pytest.approx(log_loss(truth, p), rel=1e-6)
        duplicates = m['scorewire_feedback_labels_total{model="mlp",outcome="duplicate"}']
        REPORT.append(f"labels through a broker SIGKILL: {n:,} joined once each, {duplicates:.0f} duplicates counted")
    finally:
        assert server.stop() == 0
