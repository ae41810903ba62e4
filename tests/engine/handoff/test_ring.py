"""The shared-memory ring and its records: what goes in comes out whole and in order, a full
ring refuses and counts, and a scored batch survives the trip with every field."""

from __future__ import annotations

import multiprocessing as mp
import random

import numpy as np
import orjson
import pytest

from engine.batching.batch import Origin, ScoredBatch
from engine.handoff.ring import Ring
from engine.handoff.wire import decode, encode_batch
from engine.processes.board import Board, Counts
from engine.monitor.export import merge


@pytest.fixture
def ring():
    r = Ring.create(4096)
    yield r
    r.close()


def test_records_come_out_whole_and_in_order_across_wraps(ring):
    reader = Ring.attach(ring.name)
    rnd = random.Random(7)
    expected, got = [], []
    for i in range(5000):
        data = bytes([i % 251]) * rnd.randrange(0, 700)
        if ring.put([data[:3], memoryview(data)[3:]]):
            expected.append(data)
        if rnd.random() < 0.3:
            got += reader.take()
    got += reader.take()
    assert got == expected
    assert ring.dropped == 5000 - len(expected) > 0  # the small ring filled up at times
    assert ring.used == 0
    reader.close()


def test_a_full_ring_refuses_and_counts_rows_without_waiting(ring):
    record = [b"x" * 1000]
    accepted = sum(ring.put(record, rows=10) for _ in range(10))
    assert accepted == 4  # 4 x (1000 + 4, padded to 1008) fit in 4096, a fifth does not
    assert (ring.dropped, ring.dropped_rows) == (6, 60)
    assert not ring.put([b"y" * 5000])  # larger than the ring: refused, never written
    assert len(ring.take()) == 4 and ring.put(record)


def _produce(name: str, n: int) -> None:
    ring = Ring.attach(name)
    i = 0
    while i < n:
        if ring.put([i.to_bytes(8, "little") * (1 + i % 50)]):
            i += 1
    ring.close()


def test_another_process_writes_while_this_one_reads(ring):
    n = 20_000
    producer = mp.get_context("spawn").Process(target=_produce, args=(ring.name, n))
    producer.start()
    got = []
    while len(got) < n:
        got += ring.take()
    producer.join(30)
    assert [int.from_bytes(r[:8], "little") for r in got] == list(range(n))
    assert all(r == r[:8] * (1 + i % 50) for i, r in enumerate(got))


def test_a_scored_batch_survives_the_trip():
    keys = [b"k1", None, b"", b"key-3"]
    kafka = Origin("champion", "random", None, None, "events", np.array([0, 1, 1, 2], dtype=np.int32),
                   np.array([10, 11, 12, 13]), keys)
    grpc = Origin("arm", "sticky", "req-1", "user-7")
    inputs = {"x": np.arange(24, dtype=np.float32).reshape(3, 8), "n": np.array([1, 2, 3], dtype=np.int8)}
    outputs = {"label": np.array([0, 1, 1]), "p": np.random.default_rng(1).random((3, 2)).astype(np.float16)}
    batch = ScoredBatch("m", "2", "champion", inputs, outputs, np.array([5, 6]), np.array([50, 60]), 44, 3,
                        (0, 2, 3), (kafka, grpc), 123456789)
    record = b"".join(bytes(p) for p in encode_batch(batch, 987))
    stamp, back = decode(record)
    assert stamp == 987
    for name in ("model", "version", "role", "inference_us", "rows", "bounds", "wall_ns"):
        assert getattr(back, name) == getattr(batch, name), name
    for side in ("inputs", "outputs"):
        a, b = getattr(batch, side), getattr(back, side)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])
    assert np.array_equal(back.queue_us, batch.queue_us) and np.array_equal(back.total_us, batch.total_us)
    k, g = back.origins
    assert g == grpc
    assert (k.role, k.routing, k.topic, k.keys) == ("champion", "random", "events", keys)
    for name in ("partitions", "offsets"):
        assert np.array_equal(getattr(k, name), getattr(kafka, name))
    assert k.rows(1, 3).keys == [None, b""] and k.rows(1, 3).offsets.tolist() == [11, 12]
    header = orjson.loads(record[4:4 + int.from_bytes(record[:4], "little")])
    assert decode(record.replace(b'"wire":2', b'"wire":9', 1)) == (0, None)  # another wire version: skipped
    assert header["wire"] == 2 and header["kind"] == "batch"


def test_an_array_of_python_objects_is_refused_clearly():
    batch = ScoredBatch("m", "1", "champion", {"x": np.array(["a"], dtype=object)}, {}, np.array([1]),
                        np.array([1]), 1, 1, (0, 1), (None,), 0)
    with pytest.raises(TypeError, match="Python objects"):
        encode_batch(batch, 0)


def test_the_board_carries_counters_over_a_restart_and_merges_them_as_each_means():
    board = Board.create(3)
    try:
        families = [["scorewire_rows_total", "counter", "Rows.", [['{model="m"}', 5]]],
                    ["scorewire_model_info", "gauge", "Info.", [['{model="m"}', 1]]],
                    ["scorewire_stream_up", "gauge", "Up.", [['{stream="s"}', 1]]],
                    ["scorewire_queue_rows", "gauge", "Queued.", [['{model="m"}', 3]]]]
        assert board.read(1) == []
        first = Counts(Board.attach(board.name), 1)  # a worker of slot 1
        assert first.publish(families) and board.read(1) == families
        second = Counts(board, 1)  # that worker died; its successor goes on from its counters
        assert second.base == [families[0]]
        second.publish([["scorewire_rows_total", "counter", "Rows.", [['{model="m"}', 2]]]])
        assert dict(board.read(1)[0][3]) == {'{model="m"}': 7}
        other = [["scorewire_rows_total", "counter", "Rows.", [['{model="m"}', 7], ['{model="n"}', 1]]],
                 ["scorewire_model_info", "gauge", "Info.", [['{model="m"}', 1]]],
                 ["scorewire_stream_up", "gauge", "Up.", [['{stream="s"}', 0]]],
                 ["scorewire_queue_rows", "gauge", "Queued.", [['{model="m"}', 4]]]]
        merged = {name: dict(samples) for name, _, _, samples in merge([families, other])}
        assert merged["scorewire_rows_total"] == {'{model="m"}': 12, '{model="n"}': 1}
        assert merged["scorewire_model_info"] == {'{model="m"}': 1}  # "this exists", not a count
        assert merged["scorewire_stream_up"] == {'{stream="s"}': 0}  # up only where every worker's is
        assert merged["scorewire_queue_rows"] == {'{model="m"}': 7}  # a quantity: summed
        assert not board.write(2, [["x", "counter", "big", [["", 1]] * 200_000]]) and board.too_large == 1
    finally:
        board.close()