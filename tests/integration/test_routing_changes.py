"""Routing that changes or is refused: sticky A/B splits, challengers added and promoted by
SIGHUP, challengers or champions failing their warm-up, a challenger with other inputs; and the
scoring log's files after SIGKILL. Real `scorewire serve` processes, tritonclient traffic."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient

from engine.harness.config import route_table
from engine.harness.models import demo_data
from tests.conftest import launch
from tests.integration.routing_helpers import infer, log_table, mlp, query, scrape, send_all, served, stop_and_read
from tests.models import hanging_classifier, raising_classifier


def test_sticky_split_keeps_keys_on_their_arm_and_shares_follow_the_weights(model_dir, tmp_path):
    shutil.copy(model_dir / "models" / "mlp.onnx", tmp_path / "mlp.onnx")
    config = served(mlp("1", "mlp.onnx"), mlp("2", "mlp.onnx"), route=route_table("mlp", "1", split={"1": 70, "2": 30}),
                    log=log_table())
    srv = launch(tmp_path, config)
    x, _ = demo_data(1, seed=1)
    keys = [f"user-{i % 2000}" for i in range(10_000)]
    got = send_all(srv.url, [(x, "", k) for k in keys] + [(x, "", None)] * 2000)
    stop_and_read(srv)
    assert not [g for g in got if isinstance(g, Exception)]
    arms: dict[str, set] = {}
    for key, (_, version, _, _) in zip(keys, got):
        arms.setdefault(key, set()).add(version)
    assert all(len(v) == 1 for v in arms.values())
    on_2 = sum(v == {"2"} for v in arms.values())
    assert abs(on_2 - 0.3 * 2000) < 4.5 * np.sqrt(2000 * 0.3 * 0.7), on_2
    unkeyed = sum(g[1] == "2" for g in got[10_000:])
    assert abs(unkeyed - 0.3 * 2000) < 4.5 * np.sqrt(2000 * 0.3 * 0.7), unkeyed
    logged = query(f"SELECT role, version, routing, count(*) FROM read_parquet('{tmp_path}/log/**/*.parquet', "
                   "hive_partitioning = 1) GROUP BY ALL ORDER BY ALL")
    counts = {(r, v, how): n for r, v, how, n in logged}
    assert set(counts) <= {("arm", "2", "sticky"), ("arm", "2", "random"), ("champion", "1", "sticky"),
                           ("champion", "1", "random")}
    assert sum(counts.values()) == 12_000
    assert counts[("arm", "2", "sticky")] == sum(g[1] == "2" for g in got[:10_000])
    key_arms = query(f"SELECT routing_key, count(DISTINCT version) FROM read_parquet('{tmp_path}/log/**/*.parquet', "
                     "hive_partitioning = 1) WHERE routing_key IS NOT NULL GROUP BY 1 HAVING count(DISTINCT version) > 1")
    assert key_arms == []


def test_sigkill_while_logging_leaves_only_readable_files(model_dir, tmp_path):
    shutil.copy(model_dir / "models" / "mlp.onnx", tmp_path / "mlp.onnx")
    srv = launch(tmp_path, served(mlp("1", "mlp.onnx"), log=log_table(0.2, max_rows_per_file=200)))
    x, _ = demo_data(64, seed=2)
    stop = threading.Event()

    def traffic():
        client = grpcclient.InferenceServerClient(srv.url)
        while not stop.is_set():
            try:
                infer(client, x[: 1 + int(time.monotonic_ns() % 16)])
            except Exception:
                return  # the server is gone

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(3.0)
    srv.proc.kill()
    srv.proc.wait(timeout=30)
    stop.set()
    for w in workers:
        w.join(timeout=30)
    files = sorted((tmp_path / "log").glob("**/*.parquet"))
    assert len(files) >= 3
    for f in files:
        assert pq.read_table(f).num_rows > 0
    (n,) = query(f"SELECT count(*) FROM read_parquet('{tmp_path}/log/**/*.parquet', hive_partitioning = 1)")[0]
    assert n == sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _wait_for(proc, text: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"server exited while waiting for {text!r}")
        if text in line:
            return line
    raise AssertionError(f"no {text!r} within {timeout_s} s")


def test_sighup_adds_and_promotes_a_challenger_without_dropping_requests(model_dir, tmp_path):
    for name in ("mlp", "gbt"):
        shutil.copy(model_dir / "models" / f"{name}.onnx", tmp_path / f"{name}.onnx")
    one = served(mlp("1", "mlp.onnx"), route=route_table("mlp", "1", challengers=[]), log=log_table())
    srv = launch(tmp_path, one)
    x, _ = demo_data(8, seed=3)
    seen: list = []
    stop = threading.Event()

    def traffic():
        client = grpcclient.InferenceServerClient(srv.url)
        while not stop.is_set():
            try:
                seen.append(infer(client, x).get_response().model_version)
            except Exception as exc:
                seen.append(exc)

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        two = [mlp("1", "mlp.onnx"), mlp("2", "gbt.onnx")]
        config = tmp_path / "scorewire.toml"  # what SIGHUP reads again
        served(*two, route=route_table("mlp", "1", challengers=["2"]), log=log_table()).write(config)
        srv.proc.send_signal(signal.SIGHUP)
        said = _wait_for(srv.proc, "scorewire: reloaded")
        assert "loaded mlp:2" in said and "challengers none -> ['2']" in said, said
        time.sleep(0.5)
        served(*two, route=route_table("mlp", "2", challengers=["1"]), log=log_table()).write(config)
        srv.proc.send_signal(signal.SIGHUP)
        said = _wait_for(srv.proc, "scorewire: reloaded")
        assert "route mlp: champion 1 -> 2, challengers ['2'] -> ['1']" in said, said  # what changed, in words
        promoted_at = len(seen) + 4  # each worker may have had one request routed before the swap
        time.sleep(0.5)
        config.write_text("[[models]]\nname = 'broken'\n")  # refused, nothing changes
        srv.proc.send_signal(signal.SIGHUP)
        _wait_for(srv.proc, "scorewire: reload failed")
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    stop_and_read(srv)
    assert [s for s in seen if isinstance(s, Exception)] == []
    assert seen[0] == "1" and set(seen[promoted_at:]) == {"2"}
    logged = dict(((r, v), n) for r, v, n in query(
        f"SELECT role, version, count(*) FROM read_parquet('{tmp_path}/log/**/*.parquet', hive_partitioning = 1) "
        "GROUP BY ALL"))
    assert logged[("champion", "1")] > 0 and logged[("challenger", "2")] > 0
    assert logged[("champion", "2")] > 0 and logged[("challenger", "1")] > 0
    assert sum(n for (r, _), n in logged.items() if r == "champion") == len(x) * len(seen)


def test_challengers_failing_their_warm_up_are_left_out_and_the_champion_serves(model_dir, tmp_path):
    shutil.copy(model_dir / "models" / "mlp.onnx", tmp_path / "mlp.onnx")
    raising_classifier(tmp_path / "raising.onnx")
    hanging_classifier(tmp_path / "hanging.onnx")
    srv = launch(tmp_path, served(mlp("1", "mlp.onnx"), mlp("3", "raising.onnx"), mlp("4", "hanging.onnx"),
                                  route=route_table("mlp", "1", challengers=["3", "4"])))
    x, _ = demo_data(4, seed=1)
    got = send_all(srv.url, [(x, "", None)] * 20)
    metrics = scrape(srv.metrics_port)
    stop_and_read(srv)
    assert all(not isinstance(g, Exception) and g[1] == "1" for g in got)
    assert not [k for k in metrics if k[0] == "scorewire_shadow_batches_total"]  # no challenger left


def test_a_champion_failing_its_warm_up_does_not_start(model_dir, tmp_path):
    hanging_classifier(tmp_path / "hanging.onnx")
    config = served(mlp("1", "hanging.onnx")).write(tmp_path / "bad.toml")
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "mlp:1: warm-up took longer than warmup_timeout_s = 1.0" in done.stderr


def test_a_challenger_with_other_inputs_is_refused_at_start(model_dir, tmp_path):
    shutil.copy(model_dir / "models" / "mlp.onnx", tmp_path / "mlp.onnx")
    shutil.copy(model_dir / "models" / "identity.onnx", tmp_path / "identity.onnx")
    config = served(mlp("1", "mlp.onnx"), mlp("2", "identity.onnx", False),
                    route=route_table("mlp", "1", challengers=["2"])).write(tmp_path / "bad.toml")
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "route of model 'mlp': mlp:2 takes inputs" in done.stderr and "float_input" in done.stderr
