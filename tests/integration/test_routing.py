"""Champion/challenger end to end: real `scorewire serve` processes, tritonclient traffic,
the Parquet scoring log read back with DuckDB, `scorewire compare` against sklearn/SciPy.
(test_routing_changes.py: A/B splits, reloads, what is refused at start.)"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import subprocess
import sys
import time

import duckdb
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
from scipy.stats import binomtest, ttest_rel
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from engine.harness.config import route_table
from engine.harness.models import demo_data
from tests.conftest import launch
from tests.integration.routing_helpers import infer, log_table, mlp, query, scrape, send_all, served, stop_and_read
from tests.models import hanging_classifier, one_row_classifier, raising_classifier


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
    config = served(mlp("1", "mlp.onnx"), mlp("2", "gbt.onnx"), mlp("3", "raising.onnx", False),
                    mlp("4", "hanging.onnx", False), mlp("5", "one_row.onnx", False),
                    route=route_table("mlp", "1", challengers=["2", "3", "4", "5"], shadow_queue_batches=4096,
                                      shadow_timeout_s=0.2),
                    log=log_table())
    srv = launch(work, config)
    base = launch(work, served(mlp("1", "mlp.onnx")), name="baseline.toml")
    x, y = demo_data(3000, seed=11)
    rng = np.random.default_rng(5)
    requests, labels, at = [], [], 0
    for i in range(400):
        # 2 rows at least: a shadow batch of one 1-row request is one the one-row model gets right
        # (it scored when the challenger's batches happened to hold a single such request)
        rows = int(rng.integers(2, 9))
        rid = f"q{i}" if i % 2 == 0 else ""  # half the requests carry no id: the server makes one
        requests.append((x[at:at + rows], rid, None))
        labels.append(y[at:at + rows])
        at += rows
    got = send_all(srv.url, requests)
    baseline = send_all(base.url, requests)
    metrics = scrape(srv.metrics_port)
    base.stop()
    signalled = time.monotonic()
    printed = stop_and_read(srv)
    return {"work": work, "requests": requests, "labels": labels, "got": got, "baseline": baseline,
            "metrics": metrics, "printed": printed, "log": work / "log", "drain_s": time.monotonic() - signalled}


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
    config = served(mlp("1", "mlp.onnx", held_us=3000000), mlp("4", "hanging.onnx", False),
                    route=route_table("mlp", "1", challengers=["4"], shadow_timeout_s=60))
    srv = launch(tmp_path, config)
    client = grpcclient.InferenceServerClient(srv.url)
    x, _ = demo_data(20, seed=3)
    infer(client, x[:1])  # scored after 3 s; the challenger hangs on it
    pool = concurrent.futures.ThreadPoolExecutor(1)
    waiting = pool.submit(infer, client, x[1:2])  # in flight (3 s in the queue) at SIGTERM
    deadline = time.monotonic() + 10
    while scrape(srv.metrics_port).get(("scorewire_queue_rows", (("model", "mlp"), ("version", "1")))) != 1:
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
        assert lab[side]["log_loss"] == pytest.approx(log_loss(y, p1), rel=1e-6)
    right_mlp, right_gbt = outs["mlp"]["label"] == y, outs["gbt"]["label"] == y
    b, c = int(np.sum(right_mlp & ~right_gbt)), int(np.sum(~right_mlp & right_gbt))
    mcnemar = binomtest(b, b + c).pvalue
    assert lab["mcnemar"]["pvalue"] == pytest.approx(mcnemar, rel=1e-9)
    # the verdict: the paired t-test on per-row log-loss and McNemar's test at 0.05, as SciPy
    # computes them: better or worse when the significant ones agree, mixed when they do not
    eps, losses = np.finfo(np.float64).eps, {}
    for name in ("mlp", "gbt"):
        p = np.clip(outs[name]["probabilities"][:, 1].astype(np.float64), eps, 1 - eps)
        losses[name] = -np.log(np.where(y == 1, p, 1 - p))
    t = ttest_rel(losses["mlp"], losses["gbt"])
    sides = {s for s, p in (("challenger" if t.statistic > 0 else "champion", t.pvalue),
                            ("challenger" if c > b else "champion", mcnemar)) if p < 0.05}
    expected = {0: "no significant difference", 2: "mixed"}.get(len(sides)) or (
        "is BETTER" if sides == {"challenger"} else "is WORSE")
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


def test_compare_right_after_traffic_says_when_the_files_appear(model_dir, tmp_path):
    """`scorewire compare` while the log's files are still open (max_file_age_s, 60 s by
    default): exit 2 saying so and when the first will appear; once the server stops, the
    comparison, whose verdict without labels gives each output's agreement."""
    for name in ("mlp", "gbt"):
        shutil.copy(model_dir / "models" / f"{name}.onnx", tmp_path / f"{name}.onnx")
    srv = launch(tmp_path, served(mlp("1", "mlp.onnx"), mlp("2", "gbt.onnx"),
                                  route=route_table("mlp", "1", challengers=["2"]), log={"dir": "log"}))
    try:
        x, _ = demo_data(200, seed=3)
        assert not [r for r in send_all(srv.url, [(x[i:i + 4], f"r{i}", None) for i in range(0, 200, 4)])
                    if isinstance(r, Exception)]
        # naming no version, metadata, config and statistics describe the champion that answers
        # (not the highest version, a challenger here); a bad request counts against it alone
        client = grpcclient.InferenceServerClient(srv.url)
        bad = grpcclient.InferInput("float_input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        with pytest.raises(Exception, match="INVALID_ARGUMENT|shape"):
            client.infer("mlp", [bad])
        assert client.get_model_metadata("mlp").versions == ["1"]
        assert client.get_model_config("mlp").config.default_model_filename == "mlp.onnx"
        fails = {s.version: s.inference_stats.fail.count for s in client.get_inference_statistics("").model_stats}
        assert fails == {"1": 1, "2": 0}, fails
        client.close()
        log = tmp_path / "log"
        deadline = time.monotonic() + 30  # the observer starts the files a tick after the rows
        while not list(log.glob("**/.part-*.arrows")) and time.monotonic() < deadline:
            time.sleep(0.1)
        early = subprocess.run([sys.executable, "-m", "engine.cli", "compare", "--log", str(log), "--model", "mlp"],
                               capture_output=True, text=True, timeout=120)
        assert early.returncode == 2, early.stderr
        assert f"no scoring log files under {log} yet: " in early.stderr and "still being written" in early.stderr
        assert re.search(r"the first appears at \d\d:\d\d:\d\d UTC, in about \d+ s", early.stderr), early.stderr
    finally:
        stop_and_read(srv)
    done = subprocess.run([sys.executable, "-m", "engine.cli", "compare", "--log", str(log), "--model", "mlp"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    verdict = next(line for line in done.stdout.splitlines() if line.startswith("  verdict:"))
    assert re.search(r"the paired rows agree on out_label \d+\.\d%, out_probabilities_0 \d+\.\d%", verdict), verdict
    assert "or more" not in verdict
