"""Kafka streams against a real Kafka-protocol broker on loopback (librdkafka's mock cluster),
with `scorewire serve` workers as subprocesses: every event scored once, across kills, restarts
and rebalances; bad events dead-lettered; routing by key. (test_kafka_failures.py: what the
broker or the topics refuse.)"""

from __future__ import annotations

import signal
import time

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from bench.kafka_broker import available as real_kafka_unavailable
from engine.harness.config import Config, model_table, route_table, server_table
from tests.conftest import launch
from tests.integration.kafka_helpers import (
    PARTITIONS,
    committed,
    end_offsets,
    input_sources,
    json_events,
    produce,
    produce_over,
    read_all,
    results_by_source,
    start_worker,
    stream,
    total,
    wait_for,
)

# Where Apache Kafka can run (Java, and Maven or its jars), test_kafka_real.py runs these
# scenarios against it, under both guarantees: the built-in broker's copies would add ~30 s
# and nothing the real ones miss. Elsewhere they run here.
COVERED_BY_REAL_KAFKA = pytest.mark.skipif(real_kafka_unavailable() is None,
                                           reason="test_kafka_real.py runs this against Apache Kafka")


def reference(model_dir, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"float_input": x})
    return label, probabilities


def outputs_of(results: list[dict], n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.full(n, -1, dtype=np.int64)
    probabilities = np.full((n, 2), np.nan, dtype=np.float32)
    for r in results:
        labels[r["id"]] = r["outputs"]["label"]
        probabilities[r["id"]] = r["outputs"]["probabilities"]
    return labels, probabilities


@pytest.mark.slow
def test_100k_events_each_scored_once_equal_to_onnxruntime(cluster, model_dir, rng):
    n = 100_000
    x = rng.normal(size=(n, 32)).astype(np.float32)
    produce(cluster.bootstrap, "events", json_events(x))
    worker = start_worker(model_dir, cluster.bootstrap)
    try:
        messages = read_all(cluster.bootstrap, "scores", n)
        by_source = results_by_source(messages)
        assert len(messages) == n, f"{len(messages)} results for {n} events"
        assert all(len(v) == 1 for v in by_source.values())
        assert len(by_source) == n
        results = [v[0] for v in by_source.values()]
        assert sorted(r["id"] for r in results) == list(range(n))
        assert {r["model"] for r in results} == {"mlp"} and {r["version"] for r in results} == {"1"}
        # keyed like the input
        assert all(m.key() == b"k%d" % orjson.loads(m.value())["id"] for m in messages[:1000])
        labels, probabilities = outputs_of(results, n)
        want_labels, want_probabilities = reference(model_dir, x)
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_allclose(probabilities, want_probabilities, rtol=1e-5, atol=1e-6)
        # every offset committed, and only after its result: the group is at the end
        ends = end_offsets(cluster.bootstrap, "events", PARTITIONS)
        wait_for(lambda: committed(cluster.bootstrap, "scorewire", "events", PARTITIONS) == ends, 30,
                 what="commits to reach the end offsets")
        assert read_all(cluster.bootstrap, "scores-dlq", 0, timeout_s=1, linger_s=0.5) == []
        metrics = worker.metrics()
        assert metrics['scorewire_stream_scored_total{stream="events->scores",model="mlp"}'] == n
        assert metrics['scorewire_stream_assigned_partitions{stream="events->scores",model="mlp"}'] == PARTITIONS
    finally:
        assert worker.stop() == 0


@pytest.mark.slow
@COVERED_BY_REAL_KAFKA
def test_sigkill_mid_stream_then_restart_loses_nothing(cluster, model_dir, rng):
    n = 60_000
    x = rng.normal(size=(n, 32)).astype(np.float32)
    feeder = produce_over(cluster.bootstrap, "events", json_events(x), seconds=4.0)
    # Results linger 300 ms in the producer: at the kill, many are consumed but not delivered.
    worker = start_worker(model_dir, cluster.bootstrap, linger_ms=300)
    wait_for(lambda: total(committed(cluster.bootstrap, "scorewire", "events", PARTITIONS)) >= 10_000, 60,
             what="10k committed offsets before the kill")
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(30)
    assert not feeder.join(0) and feeder.is_alive(), "the kill came after the input was all produced"
    # No committed offset is ahead of a delivered result.
    offsets = committed(cluster.bootstrap, "scorewire", "events", PARTITIONS)
    produced = results_by_source(read_all(cluster.bootstrap, "scores", 0, timeout_s=3, linger_s=2))
    for p, offset in offsets.items():
        missing = [o for o in range(max(offset, 0)) if f"events/{p}/{o}" not in produced]
        assert not missing, f"partition {p}: committed {offset} but offsets {missing[:5]}... have no result"
    feeder.join(60)
    worker = start_worker(model_dir, cluster.bootstrap)
    try:
        inputs = input_sources(cluster.bootstrap, "events", n)
        assert len(inputs) == n
        wait_for(lambda: total(committed(cluster.bootstrap, "scorewire", "events", PARTITIONS)) == n, 90,
                 what="the restarted worker to commit everything")
        by_source = results_by_source(read_all(cluster.bootstrap, "scores", n))
        assert set(inputs) <= set(by_source), f"{len(set(inputs) - set(by_source))} inputs have no result"
        ids = {r["id"] for results in by_source.values() for r in results}
        assert ids == set(range(n))
    finally:
        assert worker.stop() == 0


@pytest.mark.slow
@COVERED_BY_REAL_KAFKA
def test_two_workers_split_partitions_and_one_stopping_loses_nothing(cluster, model_dir, rng):
    n = 40_000
    x = rng.normal(size=(n, 32)).astype(np.float32)
    a = start_worker(model_dir, cluster.bootstrap, name="a.toml")
    b = start_worker(model_dir, cluster.bootstrap, name="b.toml")
    key = 'scorewire_stream_assigned_partitions{stream="events->scores",model="mlp"}'
    try:
        wait_for(lambda: a.metrics()[key] + b.metrics()[key] == PARTITIONS and a.metrics()[key] > 0
                 and b.metrics()[key] > 0, 60, what="both workers to hold partitions")
        feeder = produce_over(cluster.bootstrap, "events", json_events(x), seconds=4.0)
        consumed = 'scorewire_stream_consumed_total{stream="events->scores",model="mlp"}'
        wait_for(lambda: a.metrics()[consumed] > 0 and b.metrics()[consumed] > 0, 60, what="both to consume")
        assert a.stop() == 0  # mid-stream: its partitions move to b
        wait_for(lambda: b.metrics()[key] == PARTITIONS, 60, what="b to take every partition")
        feeder.join(60)
        by_source = results_by_source(read_all(cluster.bootstrap, "scores", n))
        ids = sorted(r["id"] for results in by_source.values() for r in results)
        assert ids == list(range(n)), "a clean hand-over loses nothing and scores nothing twice"
        ends = end_offsets(cluster.bootstrap, "events", PARTITIONS)
        wait_for(lambda: committed(cluster.bootstrap, "scorewire", "events", PARTITIONS) == ends, 30,
                 what="commits to reach the end offsets")
    finally:
        a.stop()
        assert b.stop() == 0


@pytest.mark.slow
def test_broker_down_and_back_the_stream_resumes(cluster, model_dir, rng):
    n = 30_000
    x = rng.normal(size=(n, 32)).astype(np.float32)
    worker = start_worker(model_dir, cluster.bootstrap)
    try:
        feeder = produce_over(cluster.bootstrap, "events", json_events(x), seconds=6.0)
        wait_for(lambda: total(end_offsets(cluster.bootstrap, "scores", PARTITIONS)) > 0, 60, what="first results")
        cluster.all_down()
        time.sleep(3.0)
        cluster.all_up()
        feeder.join(120)
        by_source = results_by_source(read_all(cluster.bootstrap, "scores", n, timeout_s=180))
        ids = {r["id"] for results in by_source.values() for r in results}
        assert ids == set(range(n))
        ends = end_offsets(cluster.bootstrap, "events", PARTITIONS)
        wait_for(lambda: committed(cluster.bootstrap, "scorewire", "events", PARTITIONS) == ends, 60,
                 what="commits to reach the end offsets")
    finally:
        assert worker.stop() == 0


def test_malformed_messages_go_to_the_dead_letter_topic_and_neighbours_are_scored(cluster, model_dir, rng):
    x = rng.normal(size=(200, 32)).astype(np.float32)
    good = json_events(x)
    row = [0.5] * 32
    bad = [
        b"not json {",
        b'{"id": "b1"}',
        b"[1, 2, 3]",
        orjson.dumps({"id": "b3", "float_input": row, "extra": 1}),
        orjson.dumps({"id": "b4", "float_input": row[:-1] + ["0.5"]}),
        orjson.dumps({"id": "b5", "float_input": row[:-1]}),
        orjson.dumps({"id": "b6", "float_input": row, "pad": "x" * 5000}),
        orjson.dumps({"id": "b7", "float_input": row[:-1] + [1e39]}),
        b"",
    ]
    expected = ["invalid JSON", "missing input 'float_input'", "must be a JSON object", "unexpected key 'extra'",
                "values must be JSON numbers", "a list of 32 FP32 numbers; got shape [31]",
                "larger than max_message_bytes = 4096", "non-finite value", "invalid JSON"]
    messages = []
    for i, item in enumerate(good):
        messages.append(item)
        if i % 20 == 5 and i // 20 < len(bad):
            messages.append((b"bad%d" % (i // 20), bad[i // 20]))
    produce(cluster.bootstrap, "events", messages)
    worker = start_worker(model_dir, cluster.bootstrap)
    try:
        dead = read_all(cluster.bootstrap, "scores-dlq", len(bad))
        assert len(dead) == len(bad)
        by_key = {m.key(): m for m in dead}
        for j, (raw, why) in enumerate(zip(bad, expected)):
            m = by_key[b"bad%d" % j]
            assert (m.value() or b"") == raw  # the raw bytes, for replay
            headers = dict(m.headers())
            assert why in headers["scorewire.error"].decode(), (why, headers["scorewire.error"])
            assert headers["scorewire.source"].decode().startswith("events/")
            assert headers["scorewire.model"] == b"mlp:1"
        results = read_all(cluster.bootstrap, "scores", len(good))
        labels, probabilities = outputs_of([orjson.loads(m.value()) for m in results], len(good))
        want_labels, want_probabilities = reference(model_dir, x)
        assert len(results) == len(good)
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_allclose(probabilities, want_probabilities, rtol=1e-5, atol=1e-6)
        ends = end_offsets(cluster.bootstrap, "events", PARTITIONS)
        wait_for(lambda: committed(cluster.bootstrap, "scorewire", "events", PARTITIONS) == ends, 30,
                 what="commits past the dead letters")
        metrics = worker.metrics()
        assert metrics['scorewire_stream_dead_lettered_total{stream="events->scores",model="mlp"}'] == len(bad)
    finally:
        assert worker.stop() == 0


def test_binary_format_scores_raw_rows_and_the_key_is_the_id(cluster, model_dir, rng):
    x = rng.normal(size=(500, 32)).astype(np.float32)
    messages = [(b"r%d" % i, row.tobytes()) for i, row in enumerate(x)] + [(b"short", x[0].tobytes()[:-4])]
    produce(cluster.bootstrap, "events", messages)
    worker = start_worker(model_dir, cluster.bootstrap, fmt="binary")
    try:
        results = [orjson.loads(m.value()) for m in read_all(cluster.bootstrap, "scores", len(x))]
        assert len(results) == len(x)
        order = np.array([int(r["id"][1:]) for r in results])
        labels = np.array([r["outputs"]["label"] for r in results])
        probabilities = np.array([r["outputs"]["probabilities"] for r in results], dtype=np.float32)
        want_labels, want_probabilities = reference(model_dir, x[order])
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_allclose(probabilities, want_probabilities, rtol=1e-5, atol=1e-6)
        (dead,) = read_all(cluster.bootstrap, "scores-dlq", 1)
        assert dead.key() == b"short"
        assert b"124 bytes; this model's row is 128 bytes" in dict(dead.headers())["scorewire.error"]
    finally:
        assert worker.stop() == 0


def test_a_split_stream_keeps_keys_on_their_arm_and_challengers_shadow_it(cluster, model_dir, tmp_path, rng):
    """Kafka uses the gRPC routing: the message key picks the arm (an event without a key draws
    one at random, logged as such); the champion's batches are shadowed; the scoring log pairs
    them by source (topic/partition/offset)."""
    import shutil

    import duckdb

    for name in ("mlp", "gbt"):
        shutil.copy(model_dir / "models" / f"{name}.onnx", tmp_path / f"{name}.onnx")
    config = Config(
        server_table(workers=1),
        [model_table("mlp", path, version=v, batching={"max_batch_size": 128})
         for v, path in (("1", "mlp.onnx"), ("2", "gbt.onnx"), ("3", "mlp.onnx"))],
        routes=[route_table("mlp", "1", challengers=["2"], split={"1": 50, "3": 50})],
        scorelog={"dir": "log"},
        streams=[stream(cluster.bootstrap, group="split")])

    x = rng.normal(size=(2000, 32)).astype(np.float32)
    events = json_events(x)
    keyed = [(None if i % 10 == 0 else b"user-%d" % (i % 300), value) for i, (_, value) in enumerate(events)]
    produce(cluster.bootstrap, "events", keyed)
    worker = launch(tmp_path, config)
    try:
        results = [(m.key(), orjson.loads(m.value())) for m in read_all(cluster.bootstrap, "scores", len(x))]
    finally:
        assert worker.stop() == 0
    assert len(results) == len(x)
    # its start line names no one version: the split decides
    assert any("stream events->scores (mlp, split by its route) consuming" in line for line in worker.startup)
    arms: dict[bytes, set] = {}
    for key, r in results:
        arms.setdefault(key, set()).add(r["version"])
    assert arms.pop(None) == {"1", "3"}  # 200 events without a key, drawn at random
    assert all(len(v) == 1 for v in arms.values())
    assert {v for vs in arms.values() for v in vs} == {"1", "3"}
    on_champion = {r["source"] for _, r in results if r["version"] == "1"}
    log = tmp_path / "log"
    rows = duckdb.connect().execute(
        f"SELECT role, version, request_id, routing_key, routing FROM read_parquet('{log}/**/*.parquet', "
        "hive_partitioning = 1)").fetchall()
    champion = {rid for role, _, rid, _, _ in rows if role == "champion"}
    shadow = [rid for role, version, rid, _, _ in rows if role == "challenger" and version == "2"]
    assert champion == on_champion
    assert sorted(shadow) == sorted(champion)  # one shadow row per champion row
    assert {rid for role, _, rid, _, _ in rows if role == "arm"} == {r["source"] for _, r in results} - on_champion
    key_of = {r["source"]: None if key is None else key.decode() for key, r in results}
    assert all(key_of[rid] == key for _, _, rid, key, _ in rows)
    answered = [(key, routing) for role, _, _, key, routing in rows if role != "challenger"]
    assert len(answered) == len(x)
    assert all(routing == ("random" if key is None else "sticky") for key, routing in answered)


def test_the_scoring_log_gives_each_event_row_0_and_evaluate_joins_its_labels(cluster, model_dir, tmp_path, rng,
                                                                            capsys):
    """Each event is a one-row request of its own (its request_id the event's source): the log
    gives it row 0, the champion's and the shadowing challenger's alike, not its place in the
    piece of the consumed batch it was scored in; so `scorewire evaluate` joins labels keyed
    (source, 0), and labels keyed by the log's own (request_id, row)."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine import cli

    for name in ("mlp", "gbt"):
        shutil.copy(model_dir / "models" / f"{name}.onnx", tmp_path / f"{name}.onnx")
    config = Config(server_table(workers=1),
                    [model_table("mlp", path, version=v, batching={"max_batch_size": 128})
                     for v, path in (("1", "mlp.onnx"), ("2", "gbt.onnx"))],
                    routes=[route_table("mlp", "1", challengers=["2"])], scorelog={"dir": "log"},
                    streams=[stream(cluster.bootstrap, group="rows")])
    n = 100
    produce(cluster.bootstrap, "events", json_events(rng.normal(size=(n, 32)).astype(np.float32)))
    worker = launch(tmp_path, config)  # the events wait in the topic: consumed in batches of many
    try:
        results = [orjson.loads(m.value()) for m in read_all(cluster.bootstrap, "scores", n)]
    finally:
        assert worker.stop() == 0  # publishes the log's files
    sources = sorted(r["source"] for r in results)
    assert len(set(sources)) == n
    log = pq.read_table(tmp_path / "log").to_pydict()
    for role in ("champion", "challenger"):
        rows = [(rid, row) for rid, row, r in zip(log["request_id"], log["row"], log["role"]) if r == role]
        assert sorted(rid for rid, _ in rows) == sources, role  # one row per event
        wrong = sorted({row for _, row in rows} - {0})
        assert not wrong, f"{role}: events logged as rows {wrong[:5]}..., not row 0 of their own request"

    labels_path = tmp_path / "labels.parquet"

    def evaluate(labels: list[tuple[str, int]]) -> dict:
        pq.write_table(pa.table({"request_id": [rid for rid, _ in labels],
                                 "row": pa.array([row for _, row in labels], pa.int32()),
                                 "label": [i % 2 for i in range(len(labels))]}), labels_path)
        code = cli.main(["--log-level", "WARNING", "evaluate", "--log", str(tmp_path / "log"), "--model", "mlp",
                         "--labels", str(labels_path), "--task", "binary", "--score", "probabilities:1", "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out)

    for labels in ([(rid, 0) for rid in sources],  # as a new user writes them: the event's id, row 0
                   sorted(set(zip(log["request_id"], log["row"])))):  # the log's own keys
        report = evaluate(labels)
        assert (report["labels"], report["unmatched"], report["by_key"]) == (n, 0, 0)
        assert {(v["role"], v["rows"], v["labelled"]) for v in report["versions"]} == \
            {("champion", n, n), ("challenger", n, n)}
