"""Producing, reading and checking topics on the loopback mock cluster (engine.mock_kafka)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from engine.harness.config import Config, Table, model_table, server_table, stream_table
from engine.harness.server import Server
from tests.conftest import launch

PARTITIONS = 16  # of each topic of the `cluster` fixture (tests/integration/conftest.py)


def stream(bootstrap: str, group: str = "scorewire", topic: str = "events", output: str = "scores",
           dlq: str = "scores-dlq", fmt: str = "json", linger_ms: int = 2, semantics: str = "at_least_once",
           transactional_id: str = "", message_timeout_ms: int = 120000, consumer: dict | None = None,
           producer: dict | None = None, **keys) -> Table:
    """The tests' [[streams]] table for the demo's mlp: small messages, a short settle time,
    and a session timeout short enough for a group to rebalance within a test. `keys`: more
    keys of the table (e.g. max_in_flight=2000); `consumer`/`producer`: more librdkafka settings."""
    return stream_table("mlp", bootstrap, topic, output, dlq, group_id=group, format=fmt, max_message_bytes=4096,
                        settle_timeout_s=10, semantics=semantics, transactional_id=transactional_id, **keys,
                        consumer={"session.timeout.ms": 3000, "heartbeat.interval.ms": 500, **(consumer or {})},
                        producer={"linger.ms": linger_ms, "message.timeout.ms": message_timeout_ms,
                                  **(producer or {})})


WORKER = Config(server_table(workers=1), [model_table("mlp", "models/mlp.onnx",
                                                      batching={"max_batch_size": 128, "max_queue_delay_us": 1000})])


def start_worker(directory: Path, bootstrap: str, name: str = "worker.toml", log_level: str | None = None,
                 **stream_keys) -> Server:
    """One process serving the mlp with one stream (`stream_keys`: stream()'s)."""
    return launch(directory, WORKER.add(streams=[stream(bootstrap, **stream_keys)]), name, log_level=log_level)


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    """(key, value) pairs, in order; waits until the broker has them all."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 5000,
                         "queue.buffering.max.messages": 1_000_000})
    failures = []
    for i, (key, value) in enumerate(messages):
        producer.produce(topic, value, key, on_delivery=lambda err, msg: err and failures.append(err))
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures[:3]


def produce_over(bootstrap: str, topic: str, messages, seconds: float) -> threading.Thread:
    """Produce `messages` to `topic` in 20 slices spread over `seconds`, on a thread."""

    def run():
        step = max(1, len(messages) // 20)
        for i in range(0, len(messages), step):
            produce(bootstrap, topic, messages[i:i + step])
            time.sleep(seconds / 20)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def json_events(x: np.ndarray, first_id: int = 0) -> list[tuple[bytes, bytes]]:
    option = orjson.OPT_SERIALIZE_NUMPY
    return [(b"k%d" % (first_id + i), orjson.dumps({"id": first_id + i, "float_input": row}, option=option))
            for i, row in enumerate(x)]


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 120.0, linger_s: float = 1.0,
             isolation: str = "read_committed") -> list:
    """Every message of `topic` once `expected` are there (plus `linger_s` for late duplicates).
    isolation="read_uncommitted" also sees records of open and aborted transactions."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": isolation})
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout_s
    done_at = None
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(10_000, 0.2):
                if m.error() is None:
                    out.append(m)
            if len(out) >= expected and done_at is None:
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= linger_s:
                break
    finally:
        consumer.close()
    return out


def results_by_source(messages) -> dict[str, list[dict]]:
    by_source: dict[str, list[dict]] = {}
    for m in messages:
        r = orjson.loads(m.value())
        by_source.setdefault(r["source"], []).append(r)
    return by_source


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (-1001 where none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        for attempt in range(50):  # a real broker answers NOT_COORDINATOR while its group coordinator loads
            try:
                tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
                return {tp.partition: tp.offset for tp in tps}
            except KafkaException:
                if attempt == 49:
                    raise
                time.sleep(0.1)
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "end-offsets"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        consumer.close()


def open_transactions(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    """Partition -> (last stable offset, high watermark) where they differ: records behind an open
    (or hanging) transaction, which a read_committed consumer cannot read past."""
    from confluent_kafka import IsolationLevel
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": bootstrap})
    ends = {}
    for isolation in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
        futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)},
                                     isolation_level=isolation, request_timeout=10)
        ends[isolation] = {tp.partition: f.result().offset for tp, f in futures.items()}
    stable, high = ends[IsolationLevel.READ_COMMITTED], ends[IsolationLevel.READ_UNCOMMITTED]
    return {p: (stable[p], high[p]) for p in range(partitions) if stable[p] != high[p]}


def input_sources(bootstrap: str, topic: str, expected: int) -> dict[str, bytes]:
    """'topic/partition/offset' -> value of every input message."""
    return {f"{m.topic()}/{m.partition()}/{m.offset()}": m.value() for m in read_all(bootstrap, topic, expected,
                                                                                        linger_s=0.2)}


def total(offsets: dict[int, int]) -> int:
    """Messages committed over all partitions (-1001, none committed, counts 0)."""
    return sum(max(o, 0) for o in offsets.values())


def wait_for(predicate, timeout_s: float = 60.0, every_s: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")
