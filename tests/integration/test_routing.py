"""Champion/challenger end to end: real `scorewire serve` processes, tritonclient traffic,
the Parquet scoring log read back with DuckDB, `scorewire compare` against sklearn/SciPy."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import binomtest, ttest_rel
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from engine.harness.models import demo_data
from tests.conftest import launch
from tests.models import hanging_classifier, one_row_classifier, raising_classifier

BASE = """\
[server]
workers = 1
host = "127.0.0.1"
grpc_port = 0
metrics_port = 0
http_port = 0
drain_timeout_s = 5
"""
MODEL = """
[[models]]
name = "mlp"
version = "{version}"
path = "{path}"
warmup = {warmup}
warmup_timeout_s = 1.0
[models.batching]
max_batch_size = 64
max_queue_delay_us = 2000
"""


def model_block(version: str, path: str, warmup: bool = True) -> str:
    return MODEL.format(version=version, path=path, warmup=str(warmup).lower())


def log_block(age_s: float = 1.0, extra: str = "") -> str:
    return f'\n[scorelog]\ndir = "log"\nmax_file_age_s = {age_s}\n{extra}\n'


def infer(client, x: np.ndarray, request_id: str = "", key: str | None = None, version: str = ""):
    inp = grpcclient.InferInput("float_input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("mlp", [inp], model_version=version, request_id=request_id,
                        parameters=None if key is None else {"routing_key": key})


def send_all(url: str, requests: list[tuple[np.ndarray, str, str | None]], threads: int = 8) -> list:
    """(x, request id, routing key) each -> (response id, version, label, probabilities) or the error."""
    local = threading.local()

    def one(req):
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url)
        x, rid, key = req
        try:
            r = infer(local.client, x, rid, key)
        except Exception as exc:  # the test asserts there are none
            return exc
        return r.get_response().id, r.get_response().model_version, r.as_numpy("label"), r.as_numpy("probabilities")

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, requests))


def stop_and_read(srv) -> str:
    """SIGTERM, wait, and return what the server printed after 'ready'."""
    srv.proc.send_signal(signal.SIGTERM)
    out, _ = srv.proc.communicate(timeout=120)
    assert srv.proc.returncode == 0
    return out


def query(sql: str, *args):
    return duckdb.connect().execute(sql, list(args)).fetchall()


@pytest.fixture(scope="module")
def shadowed(model_dir, tmp_path_factory):
    """One server with a good challenger (the GBT), a raising, a hanging and a wrong-shape one,
    and a baseline server without any; the same traffic to both."""
    work = tmp_path_factory.mktemp("shadowed")
    for name in ("mlp", "gbt"):
        shutil.copy(model_dir / "models" / f"{name}.onnx", work / f"{name}.onnx")
    raising_classifier(work / "raising.onnx")
    hanging_classifier(work / "hanging.onnx")
    one_row_classifier(work / "one_row.onnx")
    config = (BASE + model_block("1", "mlp.onnx") + model_block("2", "gbt.onnx")
              + model_block("3", "raising.onnx", False) + model_block("4", "hanging.onnx", False)
              + model_block("5", "one_row.onnx", False)
              + '\n[[routes]]\nmodel = "mlp"\nchampion = "1"\nchallengers = ["2", "3", "4", "5"]\n'
              + "shadow_queue_batches = 4096\nshadow_timeout_s = 0.2\n" + log_block())
    srv = launch(work, config)
    base = launch(work, BASE + model_block("1", "mlp.onnx"), name="baseline.toml")
    x, y = demo_data(3000, seed=11)
    rng = np.random.default_rng(5)
    requests, labels, at = [], [], 0
    for i in range(400):
        rows = int(rng.integers(1, 9))
        rid = f"q{i}" if i % 2 == 0 else ""  # half the requests carry no id: the server makes one
        requests.append((x[at:at + rows], rid, None))
        labels.append(y[at:at + rows])
        at += rows
    got = send_all(srv.url, requests)
    baseline = send_all(base.url, requests)
    metrics = _scrape(srv.metrics_port)
    base.stop()
    signalled = time.monotonic()
    printed = stop_and_read(srv)
    return {"work": work, "requests": requests, "labels": labels, "got": got, "baseline": baseline,
            "metrics": metrics, "printed": printed, "log": work / "log", "drain_s": time.monotonic() - signalled}


def _scrape(port: int) -> dict:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_broken_challengers_change_nothing_for_clients(shadowed):
    got, baseline = shadowed["got"], shadowed["baseline"]
    errors = [g for g in got + baseline if isinstance(g, Exception)]
    assert errors == []
    for (rid, version, label, proba), (_, base_version, base_label, base_proba), (x, sent_id, _) in zip(
            got, baseline, shadowed["requests"]):
        assert version == base_version == "1"
        np.testing.assert_array_equal(label, base_label)
        np.testing.assert_array_equal(proba, base_proba)
        assert rid == sent_id if sent_id else rid.startswith("sw-")


def _shadow(metrics, version: str, outcome: str, what: str = "batches") -> float:
    key = (f"scorewire_shadow_{what}_total",
           tuple(sorted({"model": "mlp", "champion": "1", "version": version, "outcome": outcome}.items())))
    return metrics[key]


def test_the_drain_with_a_hanging_challenger_ends_within_drain_timeout_s(shadowed):
    """drain_timeout_s = 5 bounds the whole drain, challengers included (the scoring log may
    take up to 2 s more to write what it holds; the process then exits)."""
    assert shadowed["drain_s"] < 5 + 2 + 1.5, shadowed["drain_s"]


def test_the_drain_with_a_challenger_hung_for_longer_ends_within_drain_timeout_s(model_dir, tmp_path):
    """A request in flight and a challenger hung with shadow_timeout_s far past drain_timeout_s:
    the request is answered and the drain ends in drain_timeout_s (+ the process's exit).
    Before, it waited for gRPC, then the challenger its own full drain_timeout_s."""
    shutil.copy(model_dir / "models" / "mlp.onnx", tmp_path / "mlp.onnx")
    hanging_classifier(tmp_path / "hanging.onnx")
    slow_champion = model_block("1", "mlp.onnx").replace("max_queue_delay_us = 2000", "max_queue_delay_us = 3000000")
    config = (BASE + slow_champion + model_block("4", "hanging.onnx", False)
              + '\n[[routes]]\nmodel = "mlp"\nchampion = "1"\nchallengers = ["4"]\n'
              + "shadow_timeout_s = 60\n")
    srv = launch(tmp_path, config)
    client = grpcclient.InferenceServerClient(srv.url)
    x, _ = demo_data(20, seed=3)
    infer(client, x[:1])  # scored after 3 s; the challenger hangs on it
    pool = concurrent.futures.ThreadPoolExecutor(1)
    waiting = pool.submit(infer, client, x[1:2])  # in flight (3 s in the queue) at SIGTERM
    deadline = time.monotonic() + 10
    while _scrape(srv.metrics_port).get(("scorewire_queue_rows", (("model", "mlp"), ("version", "1")))) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    signalled = time.monotonic()
    printed = stop_and_read(srv)
    took = time.monotonic() - signalled
    assert waiting.result(timeout=5).as_numpy("probabilities").shape == (1, 2)
    client.close()
    assert took < 5 + 1.5, took  # no scoring log here; the old drain took 8 s
    assert "challenger mlp:4:" in printed


def test_challenger_failures_are_counted(shadowed):
    m = shadowed["metrics"]
    assert _shadow(m, "3", "error") > 0 and _shadow(m, "3", "scored") == 0
    assert _shadow(m, "5", "bad_shape") > 0 and _shadow(m, "5", "scored") == 0
    assert _shadow(m, "4", "scored") == 0
    assert _shadow(m, "2", "dropped") == 0 and _shadow(m, "2", "scored", "rows") > 0
    # the scoring log's counters (written rows lag behind: the writer works in ticks)
    assert m[("scorewire_scorelog_rows_total", (("outcome", "dropped"),))] == 0
    assert ("scorewire_scorelog_queue_rows", ()) in m
    printed = shadowed["printed"]
    line = re.search(r"challenger mlp:4: (\d+) rows scored, (\d+) dropped, (\d+) failed .*timeouts (\d+)", printed)
    assert line and int(line[4]) > 0, printed
    total_rows = sum(len(x) for x, _, _ in shadowed["requests"])
    assert int(line[1]) == 0 and int(line[2]) + int(line[3]) == total_rows  # every row accounted for


def test_every_champion_row_is_logged_with_one_row_per_good_challenger(shadowed):
    log = shadowed["log"]
    total_rows = sum(len(x) for x, _, _ in shadowed["requests"])
    rows = query(f"SELECT role, version, count(*) FROM read_parquet('{log}/**/*.parquet', hive_partitioning = 1) "
                 "GROUP BY ALL ORDER BY ALL")
    assert rows == [("challenger", "2", total_rows), ("champion", "1", total_rows)]
    printed = shadowed["printed"]
    assert f"challenger mlp:2: {total_rows} rows scored, 0 dropped" in printed
    unpaired = query(
        f"""WITH t AS (SELECT * FROM read_parquet('{log}/**/*.parquet', hive_partitioning = 1))
        SELECT count(*) FROM t c FULL OUTER JOIN (SELECT * FROM t WHERE role = 'challenger') s
        ON c.request_id = s.request_id AND c.row = s.row WHERE c.role = 'champion' AND s.request_id IS NULL
        OR c.request_id IS NULL""")
    assert unpaired == [(0,)]
    # ids: the client's, or the one the server returned
    ids = {r[0] for r in query(f"SELECT DISTINCT request_id FROM read_parquet('{log}/**/*.parquet', "
                               "hive_partitioning = 1) WHERE role = 'champion'")}
    assert ids == {g[0] for g in shadowed["got"]}


def test_log_rows_hold_the_inputs_and_outputs(shadowed):
    log = shadowed["log"]
    champion = duckdb.connect().execute(
        f"SELECT * FROM read_parquet('{log}/**/*.parquet', hive_partitioning = 1) WHERE role = 'champion'"
    ).fetchnumpy()
    by_key = {(rid, int(row)): i for i, (rid, row) in enumerate(zip(champion["request_id"], champion["row"]))}
    features = np.stack([champion[f"in_float_input_{j}"] for j in range(32)], axis=1)
    for (rid, _, label, proba), (x, _, _) in zip(shadowed["got"], shadowed["requests"]):
        for r in range(len(x)):
            i = by_key[(rid, r)]
            np.testing.assert_array_equal(features[i], x[r])
            assert champion["out_label"][i] == label[r]
            assert champion["out_probabilities_1"][i] == proba[r, 1]
    assert set(champion["routing"]) == {"default"}
    assert champion["total_us"].min() >= 0 and (champion["total_us"] >= champion["queue_us"]).all()


def test_compare_reports_what_sklearn_and_scipy_compute(shadowed, model_dir):
    work, log = shadowed["work"], shadowed["log"]
    ids, rows, ys, xs = [], [], [], []
    for (rid, _, _, _), (x, _, _), y in zip(shadowed["got"], shadowed["requests"], shadowed["labels"]):
        ids += [rid] * len(x)
        rows += list(range(len(x)))
        ys.append(y)
        xs.append(x)
    y, x = np.concatenate(ys), np.concatenate(xs)
    pq.write_table(pa.table({"request_id": ids, "row": pa.array(rows, pa.int32()), "label": y}), work / "labels.parquet")
    done = subprocess.run([sys.executable, "-m", "engine.cli", "compare", "--log", str(log), "--model", "mlp",
                           "--labels", str(work / "labels.parquet"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (ch,) = report["challengers"]
    assert ch["version"] == "2" and ch["paired_rows"] == len(y) and ch["coverage"] == 1.0
    outs = {}
    for name in ("mlp", "gbt"):
        s = ort.InferenceSession(str(work / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        outs[name] = dict(zip(["label", "probabilities"], s.run(["label", "probabilities"], {"float_input": x})))
    agree = np.mean(outs["mlp"]["label"] == outs["gbt"]["label"])
    assert ch["outputs"]["out_label"]["agreement"] == pytest.approx(agree, abs=1e-12)
    diff = np.abs(outs["mlp"]["probabilities"][:, 1].astype(np.float64) - outs["gbt"]["probabilities"][:, 1])
    assert ch["outputs"]["out_probabilities_1"]["abs_diff"]["max"] == pytest.approx(diff.max(), rel=1e-6)
    lab = ch["labelled"]
    for side, name in (("champion", "mlp"), ("challenger", "gbt")):
        p1 = outs[name]["probabilities"][:, 1].astype(np.float64)
        assert lab[side]["accuracy"] == pytest.approx(accuracy_score(y, outs[name]["label"]), abs=1e-12)
        assert lab[side]["auc"] == pytest.approx(roc_auc_score(y, p1), abs=1e-9)
        assert lab[side]["log_loss"] == pytest.approx(log_loss(y, np.clip(p1, 1e-15, 1 - 1e-15)), rel=1e-6)
    right_mlp, right_gbt = outs["mlp"]["label"] == y, outs["gbt"]["label"] == y
    b, c = int(np.sum(right_mlp & ~right_gbt)), int(np.sum(~right_mlp & right_gbt))
    assert lab["mcnemar"]["pvalue"] == pytest.approx(binomtest(b, b + c).pvalue, rel=1e-9)
    # the verdict: the paired t-test on per-row log-loss at 0.05, as SciPy computes it
    losses = {name: -np.log(np.clip(np.where(y == 1, outs[name]["probabilities"][:, 1],
                                             1 - outs[name]["probabilities"][:, 1]).astype(np.float64), 1e-15, 1))
              for name in ("mlp", "gbt")}
    t = ttest_rel(losses["mlp"], losses["gbt"])
    expected = ("no significant difference" if t.pvalue >= 0.05
                else "is BETTER" if losses["gbt"].mean() < losses["mlp"].mean() else "is WORSE")
    assert expected in ch["verdict"] and "paired t-test on per-row log-loss" in ch["verdict"], ch["verdict"]
    labelled = subprocess.run([sys.executable, "-m", "engine.cli", "compare", "--log", str(log), "--model", "mlp",
                               "--labels", str(work / "labels.parquet")], capture_output=True, text=True, timeout=120)
    assert f"  verdict: {ch['verdict']}" in labelled.stdout.splitlines()
    table = subprocess.run([sys.executable, "-m", "engine.cli", "compare", "--log", str(log), "--model", "mlp",
                            "--atol", "0.001"], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "challenger 2:" in table.stdout and "out_label" in table.stdout
    assert "atol = 0.001" in table.stdout and "no verdict without labels" in table.stdout
    assert "e+" not in table.stdout  # microseconds in fixed point
    assert "a challenger's in the shadow queue" in table.stdout
    missing = subprocess.run([sys.executable, "-m", "engine.cli", "compare", "--log", str(log), "--model", "nope"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no rows of model 'nope'" in missing.stderr


def test_sticky_split_keeps_keys_on_their_arm_and_shares_follow_the_weights(model_dir, tmp_path):
    shutil.copy(model_dir / "models" / "mlp.onnx", tmp_path / "mlp.onnx")
    config = (BASE + model_block("1", "mlp.onnx") + model_block("2", "mlp.onnx")
              + '\n[[routes]]\nmodel = "mlp"\nchampion = "1"\nsplit = { "1" = 70, "2" = 30 }\n' + log_block())
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
    srv = launch(tmp_path, BASE + model_block("1", "mlp.onnx")
                 + log_block(0.2, "max_rows_per_file = 200"))
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
    route = '\n[[routes]]\nmodel = "mlp"\nchampion = "{champion}"\nchallengers = [{challengers}]\n'
    one = BASE + model_block("1", "mlp.onnx") + route.format(champion="1", challengers="") + log_block()
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
        two = BASE + model_block("1", "mlp.onnx") + model_block("2", "gbt.onnx")
        (tmp_path / "scorewire.toml").write_text(two + route.format(champion="1", challengers='"2"') + log_block())
        srv.proc.send_signal(signal.SIGHUP)
        _wait_for(srv.proc, "scorewire: reloaded")
        time.sleep(0.5)
        (tmp_path / "scorewire.toml").write_text(two + route.format(champion="2", challengers='"1"') + log_block())
        srv.proc.send_signal(signal.SIGHUP)
        _wait_for(srv.proc, "scorewire: reloaded")
        promoted_at = len(seen) + 4  # each worker may have had one request routed before the swap
        time.sleep(0.5)
        (tmp_path / "scorewire.toml").write_text("[[models]]\nname = 'broken'\n")  # refused, nothing changes
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
    srv = launch(tmp_path, BASE + model_block("1", "mlp.onnx") + model_block("3", "raising.onnx")
                 + model_block("4", "hanging.onnx")
                 + '\n[[routes]]\nmodel = "mlp"\nchampion = "1"\nchallengers = ["3", "4"]\n')
    x, _ = demo_data(4, seed=1)
    got = send_all(srv.url, [(x, "", None)] * 20)
    metrics = _scrape(srv.metrics_port)
    stop_and_read(srv)
    assert all(not isinstance(g, Exception) and g[1] == "1" for g in got)
    assert not [k for k in metrics if k[0] == "scorewire_shadow_batches_total"]  # no challenger left


def test_a_champion_failing_its_warm_up_does_not_start(model_dir, tmp_path):
    hanging_classifier(tmp_path / "hanging.onnx")
    config = tmp_path / "bad.toml"
    config.write_text(BASE + model_block("1", "hanging.onnx"))
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "mlp:1: warm-up took longer than warmup_timeout_s = 1.0" in done.stderr


def test_a_challenger_with_other_inputs_is_refused_at_start(model_dir, tmp_path):
    shutil.copy(model_dir / "models" / "mlp.onnx", tmp_path / "mlp.onnx")
    shutil.copy(model_dir / "models" / "identity.onnx", tmp_path / "identity.onnx")
    config = tmp_path / "bad.toml"
    config.write_text(BASE + model_block("1", "mlp.onnx") + model_block("2", "identity.onnx", False)
                      + '\n[[routes]]\nmodel = "mlp"\nchampion = "1"\nchallengers = ["2"]\n')
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "route of model 'mlp': mlp:2 takes inputs" in done.stderr and "float_input" in done.stderr
