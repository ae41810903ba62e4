"""Labels sent back over REST, with two workers: joined with the rows their requests were
scored with (champion and challenger alike), and the realized performance equal to sklearn's
on those rows; duplicates, unknown ids, wrong counts and bad objects counted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

from engine.harness.config import Config, model_table, route_table, server_table
from engine.harness.models import N_FEATURES
from engine.performance.metrics import realized
from tests.conftest import launch
from tests.integration.kafka_helpers import wait_for
from tests.integration.workers_helpers import infer

PERFORMANCE = {"task": "binary", "score": "probabilities:1", "window": 1000, "label_ttl_s": 8}


def post(url: str, body) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{url}/v2/models/mlp/feedback", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def labels_of(p: np.ndarray, rng) -> np.ndarray:
    """Labels that mostly agree with the score (a useful model), some not."""
    return (rng.random(len(p)) < p).astype(int)


def test_labels_sent_to_any_worker_join_the_rows_of_champion_and_challenger(model_dir, rng):
    config = Config(server_table(workers=2, drain_timeout_s=20),
                    [model_table("mlp", "models/mlp.onnx", version="1", performance=PERFORMANCE),
                     model_table("mlp", "models/gbt.onnx", version="2", performance=PERFORMANCE)],
                    routes=[route_table("mlp", "1", challengers=["2"])])
    server = launch(model_dir, config, "feedback.toml")
    try:
        x = rng.normal(size=(100, N_FEATURES)).astype(np.float32)
        ids = [f"r-{i}" for i in range(len(x))]
        # labels may come before their rows: the first 20, sent now
        truth = labels_of(np.full(len(x), 0.5), rng)
        early = [{"id": ids[i], "labels": [int(truth[i])]} for i in range(20)]
        assert post(server.http_url, early) == (200, {"accepted": 20})
        # never scored: unmatched once its label_ttl_s is over (sent now, that runs while the rows are scored)
        assert post(server.http_url, {"id": "ghost", "labels": [1]}) == (200, {"accepted": 1})
        p = np.array([infer(server.url, x[i:i + 1], ids[i])[0, 1] for i in range(len(x))])
        truth[20:] = labels_of(p[20:], rng)
        late = [{"id": ids[i], "labels": [int(truth[i])]} for i in range(20, len(x))]
        late[5:5] = [{"id": "r-0", "labels": [2]}, {"labels": [1]}, "no"]  # bad objects, refused alone
        status, answer = post(server.http_url, late)
        assert status == 400 and answer["accepted"] == len(x) - 20
        assert [r["index"] for r in answer["refused"]] == [5, 6, 7]
        assert "binary labels are 0 or 1" in answer["refused"][0]["error"]
        assert post(server.http_url, {"id": "r-1", "labels": [0]}) == (200, {"accepted": 1})  # a duplicate
        infer(server.url, x[:1], "two-rows-labelled")
        assert post(server.http_url, {"id": "two-rows-labelled", "labels": [0, 1]})[0] == 200  # one row: invalid
        assert post(server.http_url, {"id": "x", "labels": []})[0] == 400

        champion = '{model="mlp",version="1",role="champion"}'
        challenger = '{model="mlp",version="2",role="challenger"}'
        wait_for(lambda: server.metrics().get("scorewire_performance_rows" + challenger) == len(x), 30,
                 what="every labelled row of the challenger joined")
        wait_for(lambda: server.metrics().get('scorewire_feedback_labels_total{model="mlp",outcome="unmatched"}') == 1,
                 30, what="the label without rows to expire")
        m = server.metrics()
        assert m["scorewire_performance_rows" + champion] == len(x)
        want = {"accuracy": accuracy_score(truth, p > 0.5), "log_loss": log_loss(truth, p.astype(np.float64)),
                "brier": brier_score_loss(truth, p), "auc": roc_auc_score(truth, p)}
        for metric, value in want.items():
            got = m[f'scorewire_performance{{model="mlp",version="1",role="champion",metric="{metric}"}}']
            assert got == pytest.approx(value, rel=1e-6, abs=1e-9), metric
        gbt = ort.InferenceSession(str(model_dir / "models" / "gbt.onnx"), providers=["CPUExecutionProvider"])
        q = gbt.run(["probabilities"], {"float_input": x})[0][:, 1]
        got = m['scorewire_performance{model="mlp",version="2",role="challenger",metric="auc"}']
        assert got == pytest.approx(roc_auc_score(truth, q), rel=1e-6)
        counts = {o: m[f'scorewire_feedback_labels_total{{model="mlp",outcome="{o}"}}']
                  for o in ("joined", "duplicate", "unmatched", "invalid", "evicted")}
        assert counts == {"joined": len(x), "duplicate": 1, "unmatched": 1, "invalid": 1, "evicted": 0}
        assert m['scorewire_feedback_refused_total{model="mlp"}'] == 4
        # champion and challenger on the same labelled rows: the challenger's log loss minus the champion's
        pair = '{model="mlp",champion="1",challenger="2"}'
        assert m["scorewire_performance_difference_pairs" + pair] == len(x)
        per_row = lambda s: -np.log(np.where(truth == 1, s, 1 - s).astype(np.float64))  # noqa: E731
        d = per_row(q) - per_row(p)
        bound = '{model="mlp",champion="1",challenger="2",metric="log_loss",bound="%s"}'
        assert m["scorewire_performance_difference" + bound % "estimate"] == pytest.approx(d.mean(), rel=1e-5)
        assert m["scorewire_performance_difference" + bound % "lower"] < d.mean() < \
            m["scorewire_performance_difference" + bound % "upper"]
        shown = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--target",
                                f"127.0.0.1:{server.metrics_port}"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert any(line.split()[:4] == ["mlp", "1", "2", "log_loss"] for line in shown.stdout.splitlines()), shown.stdout
        assert any(line.split()[:5] == ["mlp", "1", "champion", "auc", f"{want['auc']:.4g}"]
                   for line in shown.stdout.splitlines()), shown.stdout
    finally:
        assert server.stop() == 0


def test_the_pending_rows_stay_within_their_bound_under_ids_never_labelled(model_dir, rng):
    performance = {**PERFORMANCE, "max_pending_rows": 50, "label_ttl_s": 600}
    config = Config(server_table(workers=1), [model_table("mlp", "models/mlp.onnx", performance=performance)])
    server = launch(model_dir, config, "bounded.toml")
    try:
        x = rng.normal(size=(1, N_FEATURES)).astype(np.float32)
        for i in range(200):
            infer(server.url, x, f"never-{i}")
        wait_for(lambda: server.metrics().get('scorewire_performance_unlabelled_rows_total{model="mlp"}', 0) >= 150,
                 30, what="rows let go past the bound")
        m = server.metrics()
        assert m['scorewire_performance_pending_rows{model="mlp"}'] <= 50
        assert m['scorewire_performance_unlabelled_rows_total{model="mlp"}'] + \
            m['scorewire_performance_pending_rows{model="mlp"}'] == 200
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_realized_metrics_equal_sklearns(task, rng):
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    n = 997
    if task == "binary":
        scores = rng.random(n)
        scores[:50] = 0.5  # ties
        labels = (rng.random(n) < scores).astype(int)
        want = {"accuracy": accuracy_score(labels, scores > 0.5), "log_loss": log_loss(labels, scores),
                "brier": brier_score_loss(labels, scores), "auc": roc_auc_score(labels, scores)}
    elif task == "multiclass":
        scores = rng.dirichlet(np.ones(4), size=n)
        labels = np.array([rng.choice(4, p=row) for row in scores])
        want = {"accuracy": accuracy_score(labels, scores.argmax(axis=1)),
                "log_loss": log_loss(labels, scores, labels=[0, 1, 2, 3])}
    else:
        scores = rng.normal(size=n)
        labels = scores + rng.normal(scale=0.3, size=n)
        want = {"mae": mean_absolute_error(labels, scores), "rmse": np.sqrt(mean_squared_error(labels, scores))}
    got = realized(task, scores, labels.astype(np.float64))
    assert got.keys() == want.keys()
    for metric, value in want.items():
        assert got[metric] == pytest.approx(value, rel=1e-9, abs=1e-12), metric


def test_labels_from_a_kafka_topic_join_like_those_over_rest(model_dir, rng):
    """[[feedback]] on the built-in broker, two workers sharing its partitions: every label
    object joins once (one sent twice is a duplicate), a poison message is refused and the
    rest of its batch is taken."""
    import orjson

    from engine.mock_kafka import MockCluster
    from tests.integration.kafka_helpers import produce

    with MockCluster() as cluster:
        cluster.create_topic("labels", 4)
        config = Config(server_table(workers=2, drain_timeout_s=20),
                        [model_table("mlp", "models/mlp.onnx", performance={**PERFORMANCE, "label_ttl_s": 60})],
                        # the built-in broker holds a rebalance for a session timeout (45 s by default):
                        # a short one, as the streams' tests use, so both workers' readers join in time
                        feedback=[{"model": "mlp", "bootstrap_servers": cluster.bootstrap, "topic": "labels",
                                   "kafka": {"session.timeout.ms": 3000, "heartbeat.interval.ms": 500}}])
        server = launch(model_dir, config, "kafka-feedback.toml")
        try:
            x = rng.normal(size=(120, N_FEATURES)).astype(np.float32)
            p = np.array([infer(server.url, x[i:i + 1], f"k-{i}")[0, 1] for i in range(len(x))])
            truth = labels_of(p, rng)
            one = [(None, orjson.dumps({"id": f"k-{i}", "labels": [int(truth[i])]})) for i in range(100)]
            many = orjson.dumps([{"id": f"k-{i}", "labels": [int(truth[i])]} for i in range(100, 120)])
            produce(cluster.bootstrap, "labels", one + [(b"poison", b"not json {"), (None, many), one[0]])
            champion = '{model="mlp",version="1",role="champion"}'
            wait_for(lambda: server.metrics().get("scorewire_performance_rows" + champion) == len(x), 30,
                     what="every label from the topic joined")
            duplicate = 'scorewire_feedback_labels_total{model="mlp",outcome="duplicate"}'
            refused = 'scorewire_feedback_refused_total{model="mlp"}'
            wait_for(lambda: (m := server.metrics()).get(duplicate, 0) >= 1 and m.get(refused, 0) >= 1, 10,
                     what="the label sent twice and the poison message counted")
            time.sleep(1.5)  # a worker's counters reach /metrics within a second
            m = server.metrics()
            assert m['scorewire_feedback_labels_total{model="mlp",outcome="joined"}'] == len(x)
            if m.get('scorewire_feedback_commits_refused_total{model="mlp",topic="labels"}', 0) == 0:
                assert (m[duplicate], m[refused]) == (1, 1)
            else:  # the group rebalanced as the second reader joined late (a busy machine): some were read again
                assert m[duplicate] >= 1 and m[refused] >= 1
            got = m['scorewire_performance{model="mlp",version="1",role="champion",metric="log_loss"}']
            assert got == pytest.approx(log_loss(truth, p.astype(np.float64)), rel=1e-6)
        finally:
            assert server.stop() == 0


def test_events_scored_from_kafka_join_their_labels_by_id_or_key(model_dir, rng):
    """Events scored from a stream join labels sent over REST: by their "id" (a string as is,
    a number as its JSON text) or, when they have none, by their message key."""
    import orjson

    from engine.mock_kafka import MockCluster
    from tests.integration.kafka_helpers import produce, read_all, stream

    with MockCluster() as cluster:
        for topic in ("events", "scores", "scores-dlq"):
            cluster.create_topic(topic, 4)
        config = Config(server_table(workers=2, drain_timeout_s=20),
                        [model_table("mlp", "models/mlp.onnx", performance={**PERFORMANCE, "label_ttl_s": 60})],
                        streams=[stream(cluster.bootstrap, group="joined")])
        server = launch(model_dir, config, "kafka-joined.toml")
        try:
            x = rng.normal(size=(90, N_FEATURES)).astype(np.float32)
            option = orjson.OPT_SERIALIZE_NUMPY
            ids = [f"e-{i}" if i < 30 else str(i) if i < 60 else None for i in range(len(x))]
            events = []
            for i, row in enumerate(x):
                body = {"float_input": row} if ids[i] is None else {"id": ids[i] if i < 30 else i, "float_input": row}
                events.append((b"key-%d" % i, orjson.dumps(body, option=option)))
            produce(cluster.bootstrap, "events", events)
            results = read_all(cluster.bootstrap, "scores", len(x))
            assert len(results) == len(x)
            p = np.empty(len(x))
            for m in results:
                i = int(m.key()[4:])
                p[i] = orjson.loads(m.value())["outputs"]["probabilities"][1]
            truth = labels_of(p, rng)
            labelled_by = [ids[i] if ids[i] is not None else f"key-{i}" for i in range(len(x))]
            body = [{"id": labelled_by[i], "labels": [int(truth[i])]} for i in range(len(x))]
            assert post(server.http_url, body) == (200, {"accepted": len(x)})
            champion = '{model="mlp",version="1",role="champion"}'
            wait_for(lambda: server.metrics().get("scorewire_performance_rows" + champion) == len(x), 30,
                     what="every event's label joined")
            m = server.metrics()
            assert m['scorewire_feedback_labels_total{model="mlp",outcome="joined"}'] == len(x)
            got = m['scorewire_performance{model="mlp",version="1",role="champion",metric="log_loss"}']
            assert got == pytest.approx(log_loss(truth, p), rel=1e-6)
        finally:
            assert server.stop() == 0


def test_what_the_join_held_when_its_observer_was_killed_is_counted_lost(model_dir, rng):
    """The join lives in the observer's memory: SIGKILL the observer while 60 scored rows wait
    for their labels, and the restarted one counts them lost (and their labels unmatched)."""
    import os
    import signal

    from tests.integration.workers_helpers import metric, pids

    config = Config(server_table(workers=2, drain_timeout_s=20),
                    [model_table("mlp", "models/mlp.onnx", performance={**PERFORMANCE, "label_ttl_s": 4})])
    server = launch(model_dir, config, "feedback-killed.toml")
    try:
        x = rng.normal(size=(60, N_FEATURES)).astype(np.float32)
        for i in range(len(x)):
            infer(server.url, x[i:i + 1], f"held-{i}")
        wait_for(lambda: server.metrics().get('scorewire_performance_pending_rows{model="mlp"}') == len(x), 10,
                 what="the rows waiting for their labels")
        time.sleep(1.5)  # the observer publishes what it holds every second
        os.kill(pids(server)[1], signal.SIGKILL)
        wait_for(lambda: metric(server, 'scorewire_process_restarts_total{process="observer"}') == 1, 30,
                 what="the observer to come back")
        m = server.metrics()
        assert m["scorewire_performance_lost_total"] == len(x)
        assert m['scorewire_performance_pending_rows{model="mlp"}'] == 0
        assert post(server.http_url, [{"id": f"held-{i}", "labels": [1]} for i in range(5)]) == (200, {"accepted": 5})
        wait_for(lambda: server.metrics().get('scorewire_feedback_labels_total{model="mlp",outcome="unmatched"}') == 5,
                 20, what="their labels unmatched after the TTL")
    finally:
        assert server.stop() == 0
