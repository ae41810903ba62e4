"""Open-loop Kafka load: events produced on a schedule, results matched by id on the output topic.

End-to-end latency of each event = arrival of its result (read by a consumer in this process)
minus the event's scheduled produce time, so a stalled worker shows in the percentiles
(no coordinated omission). Throughput = results per second over the measured window. Works
against any worker that writes results carrying the input's "id" (JSON format) or keyed by
it (binary format: the key is the id), e.g. a `scorewire serve` [[streams]] table.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson

from bench.loadgen import arrival_offsets, describe, histogram


@dataclass
class KafkaLoad:
    bootstrap: str
    input_topic: str
    output_topic: str
    rate: float = 1000.0
    duration_s: float = 10.0
    warmup_s: float = 1.0
    input_name: str = "float_input"
    features: int = 32
    format: str = "json"  # or "binary" (float32 rows; the key carries the id)
    arrival: str = "constant"
    drain_s: float = 30.0  # after the last event: how long to wait for its result
    seed: int = 0
    dead_letter_topic: str | None = None  # read too: events dead-lettered, and why
    data: str | None = None  # rows to replay (bench/data.py); None: random normal rows
    outputs: tuple[str, ...] = ()  # the model's output names: columns of `data` left out


@dataclass
class KafkaResult:
    load: dict
    produced: int = 0
    results: int = 0  # measured events with a result
    missing: int = 0  # measured events without one after drain_s
    duplicates: int = 0
    dead_lettered: int = 0  # measured events that went to the dead-letter topic instead
    dead_letter_reasons: dict = field(default_factory=dict)  # the worker's scorewire.error header -> events
    dead_letter_note: str = ""  # why dead letters were not read, when they were not
    achieved_rps: float = 0.0  # results of the measured events per second of the measured window
    latency_us: dict = field(default_factory=dict)
    lag_us: dict = field(default_factory=dict)  # produce() calls behind schedule: the generator's own delay
    histogram: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _count_reasons(reasons: dict[int, str], measured: np.ndarray) -> dict[str, int]:
    """The ten commonest reasons among the measured events."""
    counts: dict[str, int] = {}
    for i, why in reasons.items():
        if measured[i]:
            counts[why] = counts.get(why, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:10])


def run_kafka(load: KafkaLoad) -> KafkaResult:
    from confluent_kafka import Consumer, Producer, TopicPartition

    run_id = f"{int(time.time() * 1000) % 10**9:x}"
    n = int(load.rate * (load.warmup_s + load.duration_s))
    rng = np.random.default_rng(load.seed)
    if load.data is not None:
        from bench.data import fit, load_rows

        rows = fit(load_rows(load.data, load.input_name, load.outputs), load.features, np.float32,
                   f"--features {load.features}")
        if n > len(rows):
            print(f"note: --data gives {len(rows):,} distinct rows and this run sends {n:,}: rows are sent again, "
                  "and a drift monitor on the model may see the repeats as drift", file=sys.stderr)
    else:
        rows = rng.normal(size=(min(n, 4096), load.features)).astype(np.float32)
    offsets = arrival_offsets(load.rate, n, load.arrival, rng)
    arrived = np.zeros(n, dtype=np.float64)  # monotonic arrival time of each event's first result
    seen = np.zeros(n, dtype=np.int32)
    dead = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}  # event -> why it was dead-lettered

    consumer = Consumer({"bootstrap.servers": load.bootstrap, "group.id": f"scorewire-bench-{run_id}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5, "fetch.queue.backoff.ms": 10})
    metadata = consumer.list_topics(load.output_topic, timeout=10).topics[load.output_topic]
    if metadata.error is not None:
        raise RuntimeError(f"output topic {load.output_topic!r}: {metadata.error}")
    ends = [TopicPartition(load.output_topic, p, consumer.get_watermark_offsets(
        TopicPartition(load.output_topic, p), timeout=10)[1]) for p in metadata.partitions]
    note = ""
    if load.dead_letter_topic:
        dlq = consumer.list_topics(load.dead_letter_topic, timeout=10).topics.get(load.dead_letter_topic)
        if dlq is None or dlq.error is not None:
            note = f"dead-letter topic {load.dead_letter_topic!r} not read: {dlq.error if dlq else 'not found'}"
        else:
            ends += [TopicPartition(load.dead_letter_topic, p, consumer.get_watermark_offsets(
                TopicPartition(load.dead_letter_topic, p), timeout=10)[1]) for p in dlq.partitions]
    consumer.assign(ends)  # only results (and dead letters) of this run
    prefix = f"bench-{run_id}-"
    stop = threading.Event()

    def read() -> None:
        binary = load.format == "binary"
        while not stop.is_set():
            # consume(n, t) waits for n messages or t: take what is there, else wait for one
            messages = consumer.consume(10_000, 0)
            if not messages:
                first = consumer.poll(0.05)
                messages = [first] if first is not None else []
            for m in messages:
                if m.error() is not None:
                    continue
                now = time.monotonic()
                if m.topic() == load.dead_letter_topic:  # the input's bytes; the key is its id
                    key = (m.key() or b"").decode(errors="replace")
                    if key.startswith(prefix) and 0 <= (i := int(key[len(prefix):])) < n and not dead[i]:
                        dead[i] = True
                        why = dict(m.headers() or []).get("scorewire.error", b"(no scorewire.error header)")
                        why = why.decode(errors="replace")[:200]
                        reasons[i] = why
                    continue
                if binary:
                    key = (m.key() or b"").decode(errors="replace")
                else:
                    try:
                        key = str(orjson.loads(m.value()).get("id"))
                    except (orjson.JSONDecodeError, AttributeError):
                        continue
                if not key.startswith(prefix):
                    continue
                i = int(key[len(prefix):])
                if 0 <= i < n:
                    if not seen[i]:
                        arrived[i] = now
                    seen[i] += 1

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    producer = Producer({"bootstrap.servers": load.bootstrap, "linger.ms": 2, "queue.buffering.max.messages": 2_000_000})
    lag = histogram()
    t0 = time.monotonic() + 0.2
    schedule = t0 + offsets
    measure_from = t0 + load.warmup_s
    option = orjson.OPT_SERIALIZE_NUMPY
    try:
        for i, scheduled in enumerate(schedule.tolist()):
            delay = scheduled - time.monotonic()
            if delay > 0.0002:
                time.sleep(delay)
            if scheduled >= measure_from:
                lag.record_value(max(1, int((time.monotonic() - scheduled) * 1e6)))
            key = f"{prefix}{i}".encode()
            row = rows[i % len(rows)]
            value = row.tobytes() if load.format == "binary" else orjson.dumps(
                {"id": key.decode(), load.input_name: row}, option=option)
            while True:
                try:
                    producer.produce(load.input_topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.01)
            if i % 1000 == 0:
                producer.poll(0)
        producer.flush(30)
        deadline = time.monotonic() + load.drain_s
        measured = schedule >= measure_from
        while time.monotonic() < deadline and not ((seen > 0) | dead)[measured].all():
            time.sleep(0.05)
    finally:
        stop.set()
        reader.join(5)
        consumer.close()
    measured = schedule >= measure_from
    latency = histogram()
    got = measured & (seen > 0)
    for us in ((arrived[got] - schedule[got]) * 1e6).astype(np.int64).tolist():
        latency.record_value(max(1, us))
    result = KafkaResult(load=asdict(load), produced=n, results=int(got.sum()),
                         missing=int((measured & (seen == 0) & ~dead).sum()), duplicates=int((seen[measured] > 1).sum()),
                         dead_lettered=int((measured & dead).sum()), dead_letter_note=note,
                         dead_letter_reasons=_count_reasons(reasons, measured))
    # results of the measured window's events, per second of that window (missing ones lower it)
    result.achieved_rps = round(result.results / load.duration_s, 1)
    result.latency_us = describe(latency)
    result.lag_us = describe(lag)
    encoded = latency.encode()
    result.histogram = encoded.decode() if isinstance(encoded, bytes) else encoded
    return result
