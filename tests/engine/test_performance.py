"""The label join without a server: order, duplicates, the TTL, the bound; labels on the wire."""

from __future__ import annotations

import numpy as np

from engine.batching.batch import Origin, ScoredBatch
from engine.handoff.wire import decode, encode_labels
from engine.performance.feedback import parse
from engine.performance.join import Labels, PerformanceMonitor
from engine.performance.pending import LABELS
from kernels.idtable import id_key
from engine.settings import ModelSettings, Settings

S = 1_000_000_000


def monitor(task="binary", score="p:1", **performance) -> PerformanceMonitor:
    settings = Settings(models=[ModelSettings(name="m", path="m.onnx", version="1", performance={
        "task": task, "score": score, "window": 100, "label_ttl_s": 10, **performance})])
    return PerformanceMonitor(settings, thread=False)  # the test gives the times


def batch(ids: list[str], p: np.ndarray, role: str = "champion") -> ScoredBatch:
    rows = len(ids)
    return ScoredBatch("m", "1", role, {}, {"p": p}, np.zeros(rows), np.zeros(rows), 1, rows,
                       tuple(range(rows + 1)), tuple(Origin(request_id=i) for i in ids), 0)


def labels(pairs: dict[str, list[float]]) -> Labels:
    return Labels("m", tuple(pairs), np.array([len(v) for v in pairs.values()]),
                  np.array([x for v in pairs.values() for x in v], dtype=np.float64))


def held(model, kind: str) -> list[str]:
    """The ids (of those this test uses) of the entries the join holds, oldest first."""
    pending = model.pending
    names = {id_key(i): i for i in ("a", "b", "c", "r1", "r2", "x1", "x2", "x3")}
    return [names[int(pending.key[s % pending.capacity])] for s in range(pending.tail, pending.head)
            if (pending.code[s % pending.capacity] == LABELS) == (kind == "labels")]


def test_memory_stays_flat_and_small_under_a_flood_of_ids_never_labelled():
    """95,000 one-row requests that never get labels, through a bound of 20,000: the join
    lets the oldest go (counted) and its memory stays flat, under 100 bytes a row held
    (Python dicts took 456)."""
    import tracemalloc

    pm = monitor(max_pending_rows=20_000, label_ttl_s=3600)
    try:
        model = pm.models["m"]
        p = np.full((1000, 2), 0.5)
        flood = [batch([f"flood-{j}" for j in range(k, k + 1000)], p) for k in range(0, 95_000, 1000)]
        for b in flood[:25]:  # past the bound
            pm._batch(b, 0)
        # tracemalloc sees the frees of what it saw allocated only: compare two stretches; a
        # rebuild of the id table in the second may allocate its new arrays there
        tracemalloc.start()
        for b in flood[25:60]:
            pm._batch(b, 0)
        before = tracemalloc.get_traced_memory()[0]
        for b in flood[60:]:
            pm._batch(b, 0)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert model.held == 20_000 and model.unlabelled == 75_000
        # flat: at most the id table's rebuilds (ids hash differently each run), nothing per row
        # let go (Python dicts grew 16 MB over these 35,000 rows)
        assert grown < 2 * model.pending.table.nbytes + 200_000, grown
        assert model.pending.nbytes / 20_000 < 110
    finally:
        pm.close()


def test_rows_and_labels_join_whichever_comes_first_and_a_label_counts_once():
    pm = monitor()
    try:
        model = pm.models["m"]
        pm._labels(labels({"a": [1]}), 0)  # before its row
        pm._batch(batch(["a", "b", "c"], np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])), 1 * S)
        pm._labels(labels({"b": [0], "c": [1, 0]}), 2 * S)  # c: two labels for one row
        pm._labels(labels({"b": [1]}), 3 * S)  # again
        pm._batch(batch(["a"], np.array([[0.1, 0.9]]), role="challenger"), 4 * S)  # the shadow, later: joins too
        pm._publish()
        assert model.counts == {"joined": 2, "duplicate": 1, "unmatched": 0, "invalid": 1, "evicted": 0}
        rows, metrics = pm.results[("m", "1", "champion")]
        assert rows == 2 and metrics["accuracy"] == 1.0
        assert pm.results[("m", "1", "challenger")][0] == 1
        pm._labels(labels({"never": [0]}), 5 * S)
        pm._batch(batch(["unlabelled"], np.array([[0.3, 0.7]])), 5 * S)
        pm._expire(model, 16 * S)  # past the TTL (10 s): everything goes
        assert model.counts["unmatched"] == 1 and model.unlabelled == 1
        assert model.held == 0 and model.pending.tail == model.pending.head and model.pending.table.live == 0
    finally:
        pm.close()


def test_the_bound_lets_the_oldest_go_and_counts_them():
    pm = monitor(max_pending_rows=3)
    try:
        model = pm.models["m"]
        pm._labels(labels({"x1": [1], "x2": [0]}), 0)
        pm._batch(batch(["r1", "r2"], np.full((2, 2), 0.5)), 1)  # one over: the oldest, x1, goes
        assert model.held == 3 and held(model, "labels") == ["x2"] and model.counts["evicted"] == 1
        pm._labels(labels({"x3": [1]}), 2)  # then x2
        assert model.held == 3 and held(model, "labels") == ["x3"] and model.counts["evicted"] == 2
        assert held(model, "rows") == ["r1", "r2"]
    finally:
        pm.close()


def test_a_class_the_scores_do_not_have_is_invalid():
    pm = monitor(task="multiclass", score="p")
    try:
        pm._batch(batch(["a", "b"], np.array([[0.2, 0.8], [0.7, 0.3]])), 0)
        pm._labels(labels({"a": [1], "b": [2]}), 1)
        assert pm.models["m"].counts["invalid"] == 1 and pm.models["m"].counts["joined"] == 1
    finally:
        pm.close()


def test_labels_survive_the_trip_through_a_ring_record():
    sent = labels({"r-1": [1, 0, 1], "r-2": [0.5]})
    record = b"".join(bytes(p) for p in encode_labels(sent, 42))
    stamp, back = decode(record)
    assert stamp == 42 and back.model == "m" and back.ids == ("r-1", "r-2")
    assert [(rid, v.tolist()) for rid, v in back.each()] == [("r-1", [1.0, 0.0, 1.0]), ("r-2", [0.5])]


def test_feedback_bodies_keep_their_good_objects():
    good, errors = parse(b'[{"id": "a", "labels": [1, 0]}, {"id": "", "labels": [1]}, {"id": "b", "labels": [true]},'
                         b' {"id": "c", "labels": [0], "extra": 1}, {"id": "d", "labels": [1]}]', "m", "binary")
    assert good.ids == ("a", "d") and good.counts.tolist() == [2, 1]
    assert [i for i, _ in errors] == [1, 2, 3]
    assert "not a number" in errors[1][1] and "unknown field 'extra'" in errors[2][1]
    assert parse(b"{nope", "m", "binary") == (None, [(0, parse(b"{nope", "m", "binary")[1][0][1])])
    assert parse(b'{"id": "a", "labels": [1.5]}', "m", "multiclass")[0] is None
    assert parse(b'{"id": "a", "labels": [1.5, -2]}', "m", "regression")[0].values.tolist() == [1.5, -2.0]
    # an integer id (an event's "id": 17) is its digits; a boolean or a fraction is no id
    good, errors = parse(b'[{"id": 17, "labels": [1]}, {"id": true, "labels": [1]}, {"id": 1.5, "labels": [1]}]',
                         "m", "binary")
    assert good.ids == ("17",) and [i for i, _ in errors] == [1, 2]


def test_a_retried_id_is_joined_once_and_another_width_is_refused():
    pm = monitor()
    try:
        model = pm.models["m"]
        for _ in range(2):  # a client retried the request with the same id
            pm._batch(batch(["r"], np.array([[0.3, 0.7]])), 0)
            pm._batch(batch(["r"], np.array([[0.6, 0.4]]), role="challenger"), 0)
        pm._labels(labels({"r": [1]}), 1)
        # the retry's scorings are not joined again: one pair, one row in each window
        assert model.sequences[("1", "1")].n == 1 and model.rescored == 2
        assert [w.n for w in model.windows.values()] == [1, 1]
    finally:
        pm.close()
    pm = monitor(task="multiclass", score="p")
    try:
        pm._batch(batch(["a"], np.array([[0.2, 0.8]])), 0)
        pm._batch(batch(["w"], np.array([[0.2, 0.3, 0.5]])), 0)  # three classes where the model's first had two
        assert pm.models["m"].unlabelled == 1 and pm.models["m"].held == 1
    finally:
        pm.close()
