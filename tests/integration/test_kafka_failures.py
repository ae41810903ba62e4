"""Kafka streams when the broker or the topics refuse: produce errors, a dead-letter topic that
refuses records, topics missing at start, brokers out of reach; and secrets kept out of the logs.
Against librdkafka's built-in cluster on loopback, with `scorewire serve` workers as subprocesses."""

from __future__ import annotations

import signal
import time

import numpy as np
import orjson

from engine.harness.config import Config
from engine.mock_kafka import MockCluster
from engine.monitor.status import status
from tests.integration.kafka_helpers import (
    PARTITIONS,
    committed,
    end_offsets,
    json_events,
    produce,
    read_all,
    results_by_source,
    start_worker,
    stream,
    total,
    wait_for,
)

LABELS = '{stream="events->scores",model="mlp"}'


def scored_after_produce_errors(cluster, model_dir, rng, error: int, n: int = 600):
    """n events in, the worker's first Produce request answered with `error`, and the worker
    run until it has committed every event; returns it (running) and the events' ids."""
    from engine.mock_kafka import PRODUCE

    x = rng.normal(size=(n, 32)).astype(np.float32)
    produce(cluster.bootstrap, "events", json_events(x))
    cluster.fail_requests(PRODUCE, [error])  # the worker's first: no other client produces now
    worker = start_worker(model_dir, cluster.bootstrap)
    ends = end_offsets(cluster.bootstrap, "events", PARTITIONS)
    try:
        wait_for(lambda: committed(cluster.bootstrap, "scorewire", "events", PARTITIONS) == ends, 60,
                 what="every event committed")
    except BaseException:
        worker.stop()
        raise
    return worker, set(range(n))


def test_results_the_output_topic_refuses_go_to_the_dead_letter_topic(cluster, model_dir, rng):
    """A produce request refused for good (TOPIC_AUTHORIZATION_FAILED; the producer then refuses
    that topic itself for a while): the events whose results were refused are dead letters with
    the cause, every other event has its result, everything is committed and the stream stays
    up. (It froze for good: nothing delivered, nothing committed, health SERVING.)"""
    from confluent_kafka import KafkaError

    worker, ids = scored_after_produce_errors(cluster, model_dir, rng, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    try:
        scored = {orjson.loads(m.value())["id"] for m in read_all(cluster.bootstrap, "scores", 1, linger_s=1.0)}
        refused = {orjson.loads(m.value())["id"]: dict(m.headers())
                   for m in read_all(cluster.bootstrap, "scores-dlq", 1, linger_s=1.0)}
        assert refused and scored | set(refused) == ids, (len(scored), len(refused))
        for headers in refused.values():
            why = headers["scorewire.error"].decode()
            assert "producing the result to 'scores' failed" in why and "TOPIC_AUTHORIZATION_FAILED" in why
        metrics = worker.metrics()
        assert metrics["scorewire_stream_results_refused_total" + LABELS] == len(refused)
        assert metrics["scorewire_stream_up" + LABELS] == 1
    finally:
        assert worker.stop() == 0


def test_a_fatal_producer_error_restarts_the_producer_and_loses_nothing(cluster, model_dir, rng):
    """An idempotent producer's broken sequence is fatal: the worker makes a new producer,
    consumes again from what was delivered, and every event gets its result."""
    from confluent_kafka import KafkaError

    worker, ids = scored_after_produce_errors(cluster, model_dir, rng, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER)
    try:
        results = read_all(cluster.bootstrap, "scores", len(ids))
        assert {orjson.loads(m.value())["id"] for m in results} == ids  # duplicates allowed
        metrics = worker.metrics()
        assert metrics["scorewire_stream_producer_restarts_total" + LABELS] >= 1
        assert metrics["scorewire_stream_up" + LABELS] == 1
    finally:
        assert worker.stop() == 0


def test_partitions_with_no_position_to_fetch_from_are_reported_stalled(cluster, model_dir, rng):
    """The group's committed offsets unreadable after the worker is assigned its partitions
    (UNSTABLE_OFFSET_COMMIT: what a read_committed consumer gets while a transaction holds them
    open): it consumes nothing. Its partitions are reported stalled, with the events waiting as
    their lag (it read 0), and consumed once the offsets can be read; nothing is lost."""
    from confluent_kafka import KafkaError

    from engine.mock_kafka import OFFSET_FETCH

    n = 400
    produce(cluster.bootstrap, "events", json_events(rng.normal(size=(n, 32)).astype(np.float32)))
    cluster.fail_requests(OFFSET_FETCH, [KafkaError.UNSTABLE_OFFSET_COMMIT] * 25)  # ~15 s of retries
    worker = start_worker(model_dir, cluster.bootstrap, stalled_after_s=2)
    stalled = "scorewire_stream_stalled_partitions" + LABELS
    try:
        m = wait_for(lambda: (v := worker.metrics())[stalled] > 0 and v, 30, what="partitions reported stalled")
        assert m["scorewire_stream_consumed_total" + LABELS] == 0
        waiting = sum(v for k, v in m.items() if k.startswith("scorewire_stream_lag_events"))
        assert 0 < waiting <= n
        assert "partitions stalled (see the server log)" in status(f"127.0.0.1:{worker.metrics_port}")
        wait_for(lambda: (v := worker.metrics())[stalled] == 0 and v["scorewire_stream_consumed_total" + LABELS] == n,
                 60, what="the stalled partitions consumed")
        results = read_all(cluster.bootstrap, "scores", n)
        assert {orjson.loads(r.value())["id"] for r in results} == set(range(n))
    finally:
        assert worker.stop() == 0


def test_a_dead_letter_topic_that_refuses_records_stops_the_stream_visibly(cluster, model_dir, rng):
    """Nowhere left to put a bad event: the stream stops, says why, reports itself down (health
    and gauge) and commits nothing past the event; the server goes on answering gRPC."""
    import grpc
    from confluent_kafka import KafkaError
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cluster.topic_error("scores-dlq", KafkaError.TOPIC_AUTHORIZATION_FAILED)
    x = rng.normal(size=(50, 32)).astype(np.float32)
    messages = json_events(x)
    messages.insert(25, (b"bad", b"not json {"))
    produce(cluster.bootstrap, "events", messages)
    worker = start_worker(model_dir, cluster.bootstrap)
    try:
        wait_for(lambda: worker.metrics().get("scorewire_stream_up" + LABELS) == 0, 60, what="the stream down")
        with grpc.insecure_channel(worker.url) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            stream = check(health_pb2.HealthCheckRequest(service="scorewire.stream/events->scores"))
            server = check(health_pb2.HealthCheckRequest(service=""))
        assert stream.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert server.status == health_pb2.HealthCheckResponse.SERVING
        assert total(committed(cluster.bootstrap, "scorewire", "events", PARTITIONS)) < len(messages)
    finally:
        code = worker.stop()
    out = worker.proc.stdout.read()
    assert code == 0 and "stream events->scores (mlp:1) stopped: the dead-letter topic 'scores-dlq' refuses" in out


def test_missing_topics_are_found_at_start_and_a_missing_output_stops_the_stream(model_dir, rng):
    """No output topic: the stream stops before consuming anything (it used to dead-letter and
    commit every event), says why, and shows it in health, /metrics and status. No input topic
    yet: the stream says it waits for it, until it exists."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with MockCluster() as c:
        c.create_topic("events", 4)
        c.create_topic("scores-dlq", 4)
        produce(c.bootstrap, "events", json_events(rng.normal(size=(20, 32)).astype(np.float32)))
        worker = start_worker(model_dir, c.bootstrap)
        try:
            m = worker.metrics()
            assert m["scorewire_stream_up" + LABELS] == 0 and m["scorewire_stream_consumed_total" + LABELS] == 0
            with grpc.insecure_channel(worker.url) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                assert check(health_pb2.HealthCheckRequest(service="scorewire.stream/events->scores")).status == \
                    health_pb2.HealthCheckResponse.NOT_SERVING
            assert total(committed(c.bootstrap, "scorewire", "events", 4)) == 0
        finally:
            code = worker.stop()
        out = "\n".join(worker.startup) + worker.proc.stdout.read()
        assert code == 0 and "stopped: the output topic 'scores' does not exist; create it" in out, out
        c.create_topic("scores", 4)
        worker = start_worker(model_dir, c.bootstrap, name="later.toml", topic="later")
        try:
            labels = '{stream="later->scores",model="mlp"}'
            assert worker.metrics()["scorewire_stream_input_missing" + labels] == 1
            assert "waiting for its input topic" in status(f"127.0.0.1:{worker.metrics_port}")
            c.create_topic("later", 4)
            wait_for(lambda: worker.metrics()["scorewire_stream_input_missing" + labels] == 0, 10,
                     what="the stream to see its input topic")
        finally:
            assert worker.stop() == 0


def test_secrets_never_reach_the_logs(model_dir, tmp_path):
    """A secret (from the environment) given for client.id appears in every librdkafka log
    line, and one given for sasl.mechanisms in the error that refuses it at start: both are
    cut out. The unreachable broker's repeated lines are held back, not printed 20 times a second."""
    import os
    import subprocess
    import sys

    from tests.integration.kafka_helpers import WORKER

    secret = "sekrit-4242"

    def config(**consumer) -> Config:
        return WORKER.add(streams=[stream("127.0.0.1:9", group="g", dlq="dlq", consumer=consumer)])

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mlp.onnx").write_bytes((model_dir / "models" / "mlp.onnx").read_bytes())
    config(**{"client.id": {"env": "SW_TEST_SECRET"}}).write(tmp_path / "a.toml")
    env = {**os.environ, "SW_TEST_SECRET": secret}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--config", str(tmp_path / "a.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(4)  # the broker cannot be reached: librdkafka logs about it for as long as we let it
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert "scorewire: ready" in out and secret not in out + err
    lines = [line for line in err.splitlines() if "kafka:" in line]
    assert lines and any("***" in line for line in lines), err[-2000:]
    assert len(lines) < 40, len(lines)  # held back: the raw client printed ~20 a second

    config(**{"sasl.mechanisms": {"env": "SW_TEST_SECRET"}, "security.protocol": "SASL_PLAINTEXT"}).write(
        tmp_path / "b.toml")
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--config", str(tmp_path / "b.toml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "the Kafka client refuses its settings" in done.stderr and secret not in done.stdout + done.stderr


def test_a_broker_out_of_reach_shows_in_health_metrics_and_status(model_dir, rng):
    """Every broker down: the stream's health turns NOT_SERVING, the gauge says 0 and
    `scorewire status` says so; the server answers gRPC all along. Back up: SERVING, and the
    events sent meanwhile are scored."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.test_cli import scorewire

    reachable = "scorewire_stream_brokers_reachable" + LABELS
    with MockCluster() as cluster:
        for topic in ("events", "scores", "scores-dlq"):
            cluster.create_topic(topic, 4)
        worker = start_worker(model_dir, cluster.bootstrap)
        try:
            with grpc.insecure_channel(worker.url) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                stream_health = lambda: check(health_pb2.HealthCheckRequest(  # noqa: E731
                    service="scorewire.stream/events->scores")).status
                assert stream_health() == health_pb2.HealthCheckResponse.SERVING
                assert worker.metrics()[reachable] == 1
                cluster.all_down()
                wait_for(lambda: worker.metrics()[reachable] == 0, 60, what="the brokers out of reach")
                wait_for(lambda: stream_health() == health_pb2.HealthCheckResponse.NOT_SERVING, 10,
                         what="the stream NOT_SERVING")
                assert check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
                status = scorewire("status", "--target", f"127.0.0.1:{worker.metrics_port}")
                assert "no broker reachable" in status.stdout, status.stdout
                cluster.all_up()
                wait_for(lambda: worker.metrics()[reachable] == 1, 60, what="the brokers back")
                wait_for(lambda: stream_health() == health_pb2.HealthCheckResponse.SERVING, 10, what="SERVING")
            x = rng.normal(size=(100, 32)).astype(np.float32)
            produce(cluster.bootstrap, "events", json_events(x))
            by_source = results_by_source(read_all(cluster.bootstrap, "scores", 100, timeout_s=60))
            assert {r["id"] for results in by_source.values() for r in results} == set(range(100))
        finally:
            assert worker.stop() == 0
