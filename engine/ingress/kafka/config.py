"""The stream's librdkafka configs, from its settings: pure (no client is made here)."""

from __future__ import annotations

import socket

from engine.settings import SecretRef, StreamSettings


def reveal(table: dict) -> dict:
    """Secret references ({ env = ... } / { file = ... }) replaced by their values."""
    return {key: value.reveal(key) if isinstance(value, SecretRef) else value for key, value in table.items()}


def transactional_id(settings: StreamSettings, member: int) -> str:
    """The worker's transactional.id (exactly_once): the stream's prefix and the worker's
    number, stable across restarts, so a restarted worker fences its killed predecessor."""
    prefix = settings.transactional_id or "-".join(
        ("scorewire", settings.group_id, settings.input_topic, socket.gethostname()))
    return f"{prefix}-{member}"


def client_configs(settings: StreamSettings, revealed: list[dict], txn_id: str | None,
                   callbacks: dict) -> tuple[dict, dict]:
    """(consumer, producer) configs. `revealed`: the stream's kafka, consumer and producer
    tables with their secrets revealed (never log the result); `callbacks`: error_cb and
    logger for both clients, stats_cb for the consumer; `txn_id`: exactly-once's
    transactional.id (None: at-least-once)."""
    s = settings
    common = {"bootstrap.servers": s.bootstrap_servers, "error_cb": callbacks["error_cb"],
              "logger": callbacks["logger"], **revealed[0]}
    consumer = {
        "group.id": s.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "queued.max.messages.kbytes": 65536,
        # When the local fetch queue is over its thresholds librdkafka postpones the next
        # fetch by this much (default 1000 ms): at high rates the worker then sat idle for
        # most of a second at a time (measured: 46% of the run, 140k vs 250k events/s).
        "fetch.queue.backoff.ms": 10,
        # A fetch with nothing to return waits at most this long (default 500 ms); brokers
        # that do not answer early when data arrives then add up to that much latency.
        "fetch.wait.max.ms": 20,
        # Incremental rebalancing: a worker joining or leaving moves only the partitions that
        # change owner; the others keep flowing and keep their in-flight work (with eager
        # rebalancing every partition is revoked and commits race the rebalance).
        "partition.assignment.strategy": "cooperative-sticky",
        # Broker states once a second (stats_cb): how the stream learns that a broker it
        # could not reach is back.
        "statistics.interval.ms": 1000,
        "stats_cb": callbacks["stats_cb"],
        **common,
        **revealed[1],
    }
    producer = {
        "enable.idempotence": True,  # per-partition order survives retries
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": max(100_000, 4 * s.max_in_flight),
        "partitioner": "murmur2_random",  # Java clients' partitioner: same key, same partition
        **common,
        **revealed[2],
    }
    if txn_id is not None:
        producer["transactional.id"] = txn_id
        # librdkafka refuses a message timeout longer than the transaction's (60 s by default)
        if "transaction.timeout.ms" not in producer and "message.timeout.ms" in producer:
            producer["transaction.timeout.ms"] = max(60000, int(producer["message.timeout.ms"]))
        # The first records of the next transaction get CONCURRENT_TRANSACTIONS until the
        # coordinator has written the last one's markers, and wait a retry backoff (100 ms by
        # default; measured here: commits took 100 ms median, 64 ms with 10 ms).
        producer.setdefault("retry.backoff.ms", 10)
        consumer.setdefault("isolation.level", "read_committed")
    return consumer, producer
