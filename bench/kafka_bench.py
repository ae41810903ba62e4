"""Kafka event scoring benchmark: end-to-end events/s, in one run, on one broker and one data set.

    python -m bench.kafka_bench [--events 400000] [--partitions 64] [--broker mock|kafka] [--json OUT]

Contenders, each a separate process reading the same input topic with its own consumer group
and writing its own output topic:
- naive:   the loop a user would write: poll() one message, orjson.loads, a one-row
           session.run, orjson.dumps a result, produce() it (auto-commit).
- batched: the same by hand in batches: consume(1000), parse each, one session.run per batch,
           produce each result (auto-commit).
- scorewire (JSON and binary input): `scorewire serve` with a [[streams]] table (decoding
  kernel, dynamic batcher, ordered produce, commits after delivery).
- scorewire-json-exactly-once (--broker kafka only): the same with semantics = "exactly_once"
  (Kafka transactions: results and input offsets committed together).
--broker mock (default): librdkafka's built-in cluster (engine.mock_kafka) in this process.
--broker kafka: Apache Kafka itself (bench/kafka_broker.py: one KRaft node on loopback, a JVM
sharing the machine's cores). Events/s is measured on the output topic's high watermarks
(acknowledged results), polled every 20 ms, from the first result to the last, so start-up
and group join are left out for everyone; for exactly-once on the group's committed input
offsets instead (a transaction's results count once it commits; its commit markers also
take offsets in the output topic).
Also: in-process onnxruntime on batches of the model's max_batch_size (the ceiling).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from bench.report import write_json
from bench.servers import serve, stop
from engine.harness.config import Config, model_table, server_table, stream_table
from engine.harness.models import build_models, demo_data
from engine.mock_kafka import MockCluster


MAX_BATCH = 256
# The one consumer setting scorewire changes from librdkafka's defaults for speed; the hand-written
# loops get it too, so that the comparison is about the loops.
CONSUMER_TUNING = {"fetch.queue.backoff.ms": 10}



def scorewire_config(model: str, bootstrap: str, fmt: str, tag: str, semantics: str | None = None) -> Config:
    """One process serving the MLP from events-FMT to scores-scorewire-TAG."""
    return Config(server_table(workers=1),
                  [model_table("mlp", model, batching={"max_batch_size": MAX_BATCH, "max_queue_delay_us": 500,
                                                       "queue_capacity": 8192})],
                  streams=[stream_table("mlp", bootstrap, f"events-{fmt}", f"scores-scorewire-{tag}", f"dlq-{tag}",
                                        group_id=f"scorewire-{tag}", format=fmt, semantics=semantics)])

# -- the hand-written contenders (run as `python -m bench.kafka_bench --loop ...`) -------------


def naive_loop(bootstrap: str, topic: str, out: str, model: str) -> None:
    import onnxruntime as ort
    from confluent_kafka import Consumer, Producer

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "naive", "auto.offset.reset": "earliest",
                         **CONSUMER_TUNING})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    consumer.subscribe([topic])
    while True:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        doc = orjson.loads(msg.value())
        x = np.array([doc["float_input"]], dtype=np.float32)
        label, probabilities = session.run(None, {"float_input": x})
        result = {"id": doc.get("id"), "source": f"{msg.topic()}/{msg.partition()}/{msg.offset()}",
                  "outputs": {"label": int(label[0]), "probabilities": probabilities[0].tolist()}}
        producer.produce(out, orjson.dumps(result), msg.key())
        producer.poll(0)


def batched_loop(bootstrap: str, topic: str, out: str, model: str) -> None:
    import onnxruntime as ort
    from confluent_kafka import Consumer, Producer

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "batched", "auto.offset.reset": "earliest",
                         **CONSUMER_TUNING})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    consumer.subscribe([topic])
    while True:
        messages = [m for m in consumer.consume(1000, 1.0) if m.error() is None]
        if not messages:
            continue
        docs = [orjson.loads(m.value()) for m in messages]
        x = np.array([d["float_input"] for d in docs], dtype=np.float32)
        labels, probabilities = session.run(None, {"float_input": x})
        labels, probabilities = labels.tolist(), probabilities.tolist()
        for m, d, label, p in zip(messages, docs, labels, probabilities):
            result = {"id": d.get("id"), "source": f"{m.topic()}/{m.partition()}/{m.offset()}",
                      "outputs": {"label": label, "probabilities": p}}
            producer.produce(out, orjson.dumps(result), m.key())
        producer.poll(0)


# -- measuring ---------------------------------------------------------------------------------
def _watermark_sum(consumer, topic: str, partitions: int) -> int:
    from confluent_kafka import TopicPartition

    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in range(partitions))


def _committed_sum(consumer, group_topic: tuple[str, str], partitions: int) -> int:
    from confluent_kafka import KafkaException, TopicPartition

    try:
        tps = consumer.committed([TopicPartition(group_topic[1], p) for p in range(partitions)], timeout=5)
    except KafkaException:  # the coordinator is still loading: nothing committed yet
        return 0
    return sum(max(tp.offset, 0) for tp in tps)


def measure(bootstrap: str, topic: str, partitions: int, events: int, timeout_s: float,
            committed_by: tuple[str, str] | None = None) -> dict:
    """Wait for `events` results on `topic`; events/s from the first result to the last.
    committed_by=(group, input topic): count the group's committed input offsets instead."""
    from confluent_kafka import Consumer

    probe = Consumer({"bootstrap.servers": bootstrap,
                      "group.id": committed_by[0] if committed_by else "bench-probe"})
    try:
        start = time.monotonic()
        first_t = first_n = None
        n = 0
        while time.monotonic() - start < timeout_s:
            n = (_committed_sum(probe, committed_by, partitions) if committed_by
                 else _watermark_sum(probe, topic, partitions))
            now = time.monotonic()
            if first_t is None and n > 0:
                first_t, first_n = now, n
            if n >= events:
                break
            time.sleep(0.02)
        else:
            raise SystemExit(f"only {n} of {events} results on {topic} after {timeout_s:.0f} s")
        if now - first_t < 0.05:  # everything arrived between two polls: time it from the start instead
            first_t, first_n = start, 0
        seconds = now - first_t
        return {"events": events, "seconds": round(seconds, 3), "events_per_s": round((n - first_n) / seconds)}
    finally:
        probe.close()


def in_process(model: str, rows: int, x: np.ndarray, seconds: float = 2.0) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    batch = x[:rows]
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"float_input": batch})
        n += 1
    return {"rows_per_batch": rows, "rows_per_s": round(n * rows / (time.perf_counter() - start))}


TOPICS = ("events-json", "events-binary", "scores-naive", "scores-batched", "scores-scorewire-json",
          "scores-scorewire-binary", "scores-scorewire-json-eos", "dlq-json", "dlq-binary", "dlq-json-eos")


def _produce_inputs(cluster, x: np.ndarray, partitions: int) -> None:
    from confluent_kafka import Producer

    for name in TOPICS:
        cluster.create_topic(name, partitions)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 100, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 2_000_000})
    dumps, numpy_option = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    for i in range(len(x)):
        key = b"%d" % i
        producer.produce("events-json", dumps({"id": f"e{i}", "float_input": x[i]}, option=numpy_option), key)
        producer.produce("events-binary", x[i].tobytes(), key)
        if i % 20000 == 0:
            producer.poll(0)
    producer.flush()


def _broker(kind: str):
    if kind == "kafka":
        from bench.kafka_broker import KafkaBroker

        return KafkaBroker(heap_mb=1024)
    return MockCluster()


BROKERS = {"mock": "librdkafka mock cluster in the bench process",
           "kafka": "Apache Kafka {version} (one KRaft node on loopback, sharing the cores)"}


def run(events: int, partitions: int, timeout_s: float, skip_naive: bool, broker: str = "mock") -> dict:
    with tempfile.TemporaryDirectory(prefix="scorewire-kafka-bench-") as scratch:  # removed after, whatever happens
        return _run(Path(scratch), events, partitions, timeout_s, skip_naive, broker)


def _run(directory: Path, events: int, partitions: int, timeout_s: float, skip_naive: bool, broker: str) -> dict:
    x, _ = demo_data(events, seed=11)
    model = str(build_models(directory)["mlp"])
    from bench.kafka_broker import KAFKA_VERSION

    results: dict = {"events": events, "partitions": partitions, "machine": f"{platform.machine()}, "
                     f"{os.cpu_count()} cores, Python {platform.python_version()}", "rows": {},
                     "broker": BROKERS[broker].format(version=KAFKA_VERSION)}
    with _broker(broker) as cluster:
        _produce_inputs(cluster, x, partitions)
        loops = [("batched", "batched_loop")] + ([] if skip_naive else [("naive", "naive_loop")])
        for name, loop in loops:
            proc = subprocess.Popen([sys.executable, "-m", "bench.kafka_bench", "--loop", loop, cluster.bootstrap,
                                     "events-json", f"scores-{name}", model])
            try:
                results["rows"][name] = measure(cluster.bootstrap, f"scores-{name}", partitions, events, timeout_s)
            finally:
                stop(proc)
            print(name, results["rows"][name], flush=True)
        contenders = [("json", "json", None), ("binary", "binary", None)]
        if broker == "kafka":  # the mock accepts transactions without enforcing them: not measured there
            contenders.append(("json-exactly-once", "json", "exactly_once"))
        for name, fmt, semantics in contenders:
            tag = fmt if not semantics else f"{fmt}-eos"
            config = scorewire_config(model, cluster.bootstrap, fmt, tag, semantics)
            proc = serve(config.write(directory / f"scorewire-{tag}.toml")).proc
            try:
                results["rows"][f"scorewire-{name}"] = measure(
                    cluster.bootstrap, f"scores-scorewire-{tag}", partitions, events, timeout_s,
                    committed_by=(f"scorewire-{tag}", f"events-{fmt}") if semantics else None)
            finally:
                stop(proc)
            print(f"scorewire-{name}", results["rows"][f"scorewire-{name}"], flush=True)
    results["in_process"] = in_process(model, MAX_BATCH, x)
    return results


def markdown(results: dict) -> str:
    rows = results["rows"]
    base = rows.get("naive", {}).get("events_per_s")
    batched = rows["batched"]["events_per_s"]
    ceiling = results["in_process"]["rows_per_s"]
    lines = [
        f"Kafka scoring, {results['events']:,} events over {results['partitions']} partitions, mlp (32 features), "
        f"{results['machine']}; broker: {results.get('broker', BROKERS['mock'])}.",
        "",
        "| contender | events/s | vs naive | vs hand-batched | share of in-process ORT |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        eps = r["events_per_s"]
        vs_naive = f"{eps / base:.2f}x" if base else "-"
        lines.append(f"| {name} | {eps:,} | {vs_naive} | {eps / batched:.2f}x | {eps / ceiling:.1%} |")
    lines.append("")
    lines.append(f"In-process onnxruntime, {results['in_process']['rows_per_batch']} rows per run: "
                 f"{ceiling:,} rows/s (1 thread).")
    return "\n".join(lines) + "\n"


def check(results: dict) -> list[str]:
    """Misses against bench/bounds.json (ratios of contenders measured in this run)."""
    bounds = json.loads((Path(__file__).parent / "bounds.json").read_text())["kafka_bench"]
    rate = {name: r["events_per_s"] for name, r in results["rows"].items()}
    misses = []
    for ratio, minimum in bounds["ratios"].items():
        a, b = (x.strip() for x in ratio.split("/"))
        if a in rate and b in rate and rate[a] / rate[b] < minimum:
            misses.append(f"{ratio} = {rate[a] / rate[b]:.2f}, bound {minimum}")
    if results.get("broker", BROKERS["mock"]) != BROKERS["mock"]:
        return misses  # the absolute bounds were measured with the mock broker in the bench process
    for name, minimum in bounds["events_per_s"].items():
        if name in rate and rate[name] < minimum:
            misses.append(f"{name} = {rate[name]:,} events/s, bound {minimum:,}")
    return misses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kafka_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--skip-naive", action="store_true", help="leave out the (slow) naive loop")
    parser.add_argument("--broker", choices=sorted(BROKERS), default="mock",
                        help="mock: librdkafka's built-in cluster; kafka: Apache Kafka itself (Java, Maven)")
    parser.add_argument("--json", type=Path, help="write the results here (and a .md next to it)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bound in bench/bounds.json is missed")
    parser.add_argument("--loop", nargs=4, metavar=("NAME", "BOOTSTRAP", "TOPIC", "OUT"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.loop:
        name, bootstrap, topic, out = args.loop
        {"naive_loop": naive_loop, "batched_loop": batched_loop}[name](bootstrap, topic, out, rest[0])
        return 0
    results = run(args.events, args.partitions, args.timeout, args.skip_naive, args.broker)
    text = markdown(results)
    print(text)
    misses = check(results)
    print("bounds (bench/bounds.json): " + ("all met" if not misses else "MISSED: " + "; ".join(misses)))
    if args.json:
        write_json(args.json, results, text)
    return 1 if misses and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
