"""Rollouts with a real server, two workers, labels over REST: a worse candidate rolled back
having answered about its first step's share; a better one promoted, keeping the traffic
after a restart; a much slower one rolled back by its guard without any label."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from engine.harness.config import Config, model_table, route_table, server_table
from engine.harness.models import N_FEATURES
from tests.conftest import launch
from tests.integration.kafka_helpers import wait_for

PERFORMANCE = {"task": "binary", "score": "probabilities:1", "window": 2000, "label_ttl_s": 60}


def config(candidate_path: str, state_file: str, **rollout) -> Config:
    plan = {"candidate": "2", "steps": [10, 50, 100], "min_labelled_rows": 60, "alpha": 0.05,
            "max_p99_ratio": 0, "state_file": state_file, **rollout}
    return Config(server_table(workers=2, drain_timeout_s=20),
                  [model_table("mlp", "models/mlp.onnx", version="1", performance=PERFORMANCE),
                   model_table("mlp", candidate_path, version="2", performance=PERFORMANCE)],
                  routes=[route_table("mlp", "1", rollout=plan)], monitoring={"events_dir": "events-rollout"})


def state(server) -> str:
    m = server.metrics()
    return next((s for s in ("running", "paused", "promoted", "rolled_back")
                 if m.get(f'scorewire_rollout_state{{model="mlp",candidate="2",state="{s}"}}') == 1), "none")


def send(server, x: np.ndarray, first_id: int) -> list[str]:
    """One-row requests, no routing key (each draws its arm); the version that answered each."""
    client = grpcclient.InferenceServerClient(server.url)
    answered = []
    for i, row in enumerate(x):
        inp = grpcclient.InferInput("float_input", [1, N_FEATURES], "FP32")
        inp.set_data_from_numpy(row[None, :])
        answered.append(client.infer("mlp", [inp], request_id=f"q{first_id + i}").get_response().model_version)
    client.close()
    return answered


def post_labels(server, first_id: int, labels: np.ndarray) -> None:
    body = json.dumps([{"id": f"q{first_id + i}", "labels": [int(v)]} for i, v in enumerate(labels)]).encode()
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/mlp/feedback", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def drive(server, truth, rng, rounds: int = 60, per_round: int = 50) -> list[str]:
    """Requests and their labels (truth(x)) in rounds until the rollout ends; the versions
    that answered."""
    answered: list[str] = []
    for r in range(rounds):
        x = rng.normal(size=(per_round, N_FEATURES)).astype(np.float32)
        answered += send(server, x, r * per_round)
        post_labels(server, r * per_round, truth(x))
        if state(server) != "running":
            break
        time.sleep(0.2)
    return answered


def test_a_worse_candidate_is_rolled_back_having_answered_about_its_first_step(model_dir, rng):
    mlp = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    truth = lambda x: mlp.run(["probabilities"], {"float_input": x})[0][:, 1] > 0.5  # noqa: E731: the champion is right
    server = launch(model_dir, config("models/gbt.onnx", "rollout-worse.json"), "rollout-worse.toml")
    try:
        for command, after in (("pause", "paused"), ("resume", "running")):  # the person on call
            shown = subprocess.run([sys.executable, "-m", "engine.cli", "rollout", command, "--config",
                                    str(model_dir / "rollout-worse.toml")], capture_output=True, text=True, timeout=60)
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout.split("\n(")[0])["state"] == after
            wait_for(lambda: state(server) == after, 10, what=f"{after} in /metrics")
        answered = drive(server, truth, rng)
        wait_for(lambda: state(server) == "rolled_back", 20, what="the rollback")
        share = answered.count("2") / len(answered)
        assert share < 0.2, share  # its first step is 10% of the traffic
        m = server.metrics()
        assert m['scorewire_rollout_weight{model="mlp",version="2"}'] == 0
        shown = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--target",
                                f"127.0.0.1:{server.metrics_port}"], capture_output=True, text=True, timeout=60)
        line = next((x for x in shown.stdout.splitlines() if "rolled_back" in x), "")
        assert line.split()[:3] == ["mlp", "2", "rolled_back"] and "worse than the champion" in line, shown.stdout
        events = pq.read_table(model_dir / "events-rollout" / "kind=rollout").to_pylist()
        last = max(events, key=lambda e: e["time"])
        assert last["state"] == "rolled_back" and last["lower"] > 0 and last["candidate_rows"] > 0
        x = rng.normal(size=(40, N_FEATURES)).astype(np.float32)
        time.sleep(1.0)  # the workers follow the state file within 0.25 s
        assert set(send(server, x, 10_000)) == {"1"}
    finally:
        assert server.stop() == 0


def pinned_answers(server, version: str, connections: int = 8) -> list[str]:
    """One request naming `version` on each of several new connections (they spread over the
    workers): the version that answered, or the error's status."""
    said = []
    for _ in range(connections):
        client = grpcclient.InferenceServerClient(server.url)
        inp = grpcclient.InferInput("float_input", [1, N_FEATURES], "FP32")
        inp.set_data_from_numpy(np.zeros((1, N_FEATURES), np.float32))
        try:
            said.append(client.infer("mlp", [inp], model_version=version).get_response().model_version)
        except InferenceServerException as exc:
            said.append(exc.status())
        client.close()
    return said


def test_a_better_candidate_is_promoted_and_keeps_the_traffic_after_a_restart(model_dir, rng):
    """Promoted, the old champion is unloaded in every worker (the default); restarted with
    after_promotion = "challenger", the new champion still answers all and the old one
    shadows it."""
    gbt = ort.InferenceSession(str(model_dir / "models" / "gbt.onnx"), providers=["CPUExecutionProvider"])
    truth = lambda x: gbt.run(["probabilities"], {"float_input": x})[0][:, 1] > 0.5  # noqa: E731: the candidate is right
    server = launch(model_dir, config("models/gbt.onnx", "rollout-better.json"), "rollout-better.toml")
    try:
        assert set(pinned_answers(server, "1")) == {"1"}
        drive(server, truth, rng)
        wait_for(lambda: state(server) == "promoted", 20, what="the promotion")
        wait_for(lambda: set(pinned_answers(server, "1")) == {"StatusCode.NOT_FOUND"}, 10,
                 what="version 1 unloaded in every worker")
    finally:
        assert server.stop() == 0
    saved = json.loads((model_dir / "rollout-better.json").read_text())
    assert saved["state"] == "promoted" and saved["weight"] == 100
    # the same rollout again (it resumes promoted), now keeping the old champion as a challenger
    cfg = config("models/gbt.onnx", "rollout-better.json", after_promotion="challenger")
    server = launch(model_dir, cfg, "rollout-better.toml")
    try:
        assert state(server) == "promoted"
        assert set(send(server, rng.normal(size=(40, N_FEATURES)).astype(np.float32), 20_000)) == {"2"}
        key = 'scorewire_shadow_rows_total{model="mlp",champion="2",version="1",outcome="scored"}'
        wait_for(lambda: server.metrics().get(key, 0) == 40, 20, what="the old champion shadowing the new one")
    finally:
        assert server.stop() == 0


def slow_model(path, layers: int = 6, width: int = 1536) -> None:
    """The mlp's inputs and outputs, many times its work: a candidate far slower."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = [N_FEATURES] + [width] * layers + [2]
    nodes, weights, x = [], [], "float_input"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        weights.append(numpy_helper.from_array((rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        x = f"h{i}"
    nodes += [helper.make_node("Softmax", [x], ["probabilities"], axis=1),
              helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("float_input", TensorProto.FLOAT,
                                                                            [None, N_FEATURES])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
                              weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())


def test_a_much_slower_candidate_is_rolled_back_by_its_guard_without_labels(model_dir, rng):
    slow_model(model_dir / "models" / "slow.onnx")
    cfg = config("models/slow.onnx", "rollout-slow.json", steps=[30, 100], max_p99_ratio=3.0)
    server = launch(model_dir, cfg, "rollout-slow.toml")
    try:
        for r in range(20):
            send(server, rng.normal(size=(50, N_FEATURES)).astype(np.float32), r * 50)  # no labels at all
            if state(server) == "rolled_back":
                break
        wait_for(lambda: state(server) == "rolled_back", 20, what="the guard's rollback")
        saved = json.loads((model_dir / "rollout-slow.json").read_text())
        assert "p99" in saved["reason"], saved
    finally:
        assert server.stop() == 0


def test_a_plain_split_can_be_peeked_at(model_dir, rng):
    """A/B with a fixed split: the arms' difference with an always-valid interval in /metrics
    and status (nothing is decided)."""
    mlp = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    truth = lambda x: mlp.run(["probabilities"], {"float_input": x})[0][:, 1] > 0.5  # noqa: E731
    cfg = Config(server_table(workers=2, drain_timeout_s=20),
                 [model_table("mlp", "models/mlp.onnx", version="1", performance=PERFORMANCE),
                  model_table("mlp", "models/gbt.onnx", version="2", performance=PERFORMANCE)],
                 routes=[route_table("mlp", "1", split={"1": 50, "2": 50})])
    server = launch(model_dir, cfg, "split-peek.toml")
    try:
        for r in range(6):
            x = rng.normal(size=(50, N_FEATURES)).astype(np.float32)
            send(server, x, r * 50)
            post_labels(server, r * 50, truth(x))
        key = 'scorewire_split_difference{model="mlp",champion="1",arm="2",metric="log_loss",bound="%s"}'
        wait_for(lambda: server.metrics().get(key % "lower", 0) > 0, 20, what="the arm shown worse")
        m = server.metrics()
        assert m[key % "lower"] < m[key % "estimate"] < m[key % "upper"]
        shown = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--target",
                                f"127.0.0.1:{server.metrics_port}"], capture_output=True, text=True, timeout=60)
        assert any(line.split()[:4] == ["mlp", "1", "2", "log_loss"] and line.rstrip().endswith("arm worse")
                   for line in shown.stdout.splitlines()), shown.stdout
    finally:
        assert server.stop() == 0


def test_a_bandit_split_moves_the_traffic_to_the_better_arm(model_dir, rng):
    """split_policy = "thompson": labels show version 2 worse; its weight falls to the floor in
    /metrics, and the workers send it about that share."""
    mlp = ort.InferenceSession(str(model_dir / "models" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    truth = lambda x: mlp.run(["probabilities"], {"float_input": x})[0][:, 1] > 0.5  # noqa: E731: version 1 is right
    bandit = {"every_s": 0.5, "min_labelled_rows": 50, "floor": 10, "state_file": "split-bandit.json"}
    cfg = Config(server_table(workers=2, drain_timeout_s=20),
                 [model_table("mlp", "models/mlp.onnx", version="1", performance=PERFORMANCE),
                  model_table("mlp", "models/gbt.onnx", version="2", performance=PERFORMANCE)],
                 routes=[route_table("mlp", "1", split={"1": 50, "2": 50}, split_policy="thompson", bandit=bandit)])
    server = launch(model_dir, cfg, "split-bandit.toml")
    key = 'scorewire_split_weight{model="mlp",version="2"}'
    try:
        assert server.metrics().get(key) == 50
        for r in range(20):
            x = rng.normal(size=(50, N_FEATURES)).astype(np.float32)
            send(server, x, r * 50)
            post_labels(server, r * 50, truth(x))
            if server.metrics().get(key, 50) < 11:
                break
        wait_for(lambda: server.metrics().get(key, 50) < 11, 20, what="the worse arm's weight at its floor")
        time.sleep(1.0)  # the workers follow the state file within 0.25 s
        answered = send(server, rng.normal(size=(200, N_FEATURES)).astype(np.float32), 50_000)
        assert 0.02 < answered.count("2") / len(answered) < 0.25, answered.count("2")
        assert json.loads((model_dir / "split-bandit.json").read_text())["weights"]["2"] < 11
        shown = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--target",
                                f"127.0.0.1:{server.metrics_port}"], capture_output=True, text=True, timeout=60)
        assert any(line.split()[:3] == ["mlp", "1", "2"] and line.rstrip().endswith("% (bandit)")
                   for line in shown.stdout.splitlines()), shown.stdout
    finally:
        assert server.stop() == 0
