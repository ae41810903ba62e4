"""`scorewire evaluate` on scoring logs the engine's writer wrote: per version and role, the
numbers scikit-learn computes on the same joined rows (requests; Kafka events by source id
and by message key), and one line, exit 2, for each mistake."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import (accuracy_score, brier_score_loss, log_loss, mean_absolute_error, mean_squared_error,
                             roc_auc_score)

from engine import cli
from engine.scorelog.evaluate import evaluate, render
from engine.scorelog.labelled import LogError, default_score, find_score
from tests.conftest import SEED
from tests.engine.logged import LogBuilder


def expected(builder: LogBuilder, labels: dict, score) -> dict:
    """The join in plain Python: a request's row by (request_id, row); an event (one row) by
    its source id, else by its message key. (version, role) -> (scores, labels)."""
    found: dict = {}
    for r in builder.rows:
        if "/" in r.request_id:
            label = labels.get((r.request_id, 0), labels.get((r.key, 0)))
        else:
            label = labels.get((r.request_id, r.row))
        if label is not None:
            scores, ys = found.setdefault((r.version, r.role), ([], []))
            scores.append(score(r.outputs))
            ys.append(label)
    return {k: (np.array(s, np.float64), np.array(y, np.float64)) for k, (s, y) in found.items()}


def write_labels(path, labels: dict, with_row: bool = True):
    ids = [rid for rid, _ in labels]
    columns = {"request_id": ids, "label": list(labels.values())}
    if with_row:
        columns["row"] = pa.array([row for _, row in labels], pa.int32())
    table = pa.table(columns)
    pq.write_table(table, path) if path.suffix == ".parquet" else pcsv.write_csv(table, path)
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--log-level", "WARNING", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """Champion 1 and challenger 2 on 80 requests of 1-4 rows and 40 events; arm 3 on 30 keyed requests."""
    rng = np.random.default_rng(SEED)
    b = LogBuilder()

    def probabilities(n):
        p = rng.random(n).astype(np.float32)
        return {"probabilities": np.c_[1 - p, p], "label": (p > 0.5).astype(np.int64)}

    counts = rng.integers(1, 5, 80).tolist()
    ids = [f"r{i}" for i in range(80)]
    champion = probabilities(sum(counts))
    b.requests("1", "champion", ids, counts, champion)
    b.requests("2", "challenger", ids, counts, probabilities(sum(counts)))
    b.requests("3", "arm", [f"a{i}" for i in range(30)], [1] * 30, probabilities(30),
               keys=[f"user-{i}" for i in range(30)])
    offsets = list(range(100, 140))
    keys = [f"e{i}" for i in range(20)] + [f"k{i}" for i in range(15)] + ["shared"] * 5
    b.events("1", "champion", "events", offsets, keys, probabilities(40))
    b.events("2", "challenger", "events", offsets, keys, probabilities(40))
    y = (rng.random(len(b.rows)) < 0.5).astype(float)
    labels: dict = {}
    for r, label in zip(b.rows, y):
        if r.role == "champion" and r.request_id.startswith("r") and int(r.request_id[1:]) < 70:
            labels[(r.request_id, r.row)] = label
        elif r.role == "arm" and int(r.request_id[1:]) < 25:
            labels[(r.request_id, 0)] = label
    for i in range(20):
        labels[(f"events/0/{100 + i}", 0)] = float(i % 2)  # by source id
    for i in range(10):
        labels[(f"k{i}", 0)] = float(i % 3 == 0)  # by message key
    labels[("shared", 0)] = 1.0  # one key, five events
    labels[("e0", 0)] = 0.0  # event 100's key: its source id's label wins
    labels[("user-3", 0)] = 1.0  # the key of a request, not an event: no join
    for i in range(3):
        labels[(f"nope{i}", 0)] = 1.0
    path = write_labels(tmp_path_factory.mktemp("labels") / "labels.parquet", labels)
    return {"log": b.write(tmp_path_factory.mktemp("log")), "labels": path, "builder": b, "y": labels}


def test_binary_numbers_are_sklearns_on_the_joined_rows(binary, capsys):
    code, out, err = run(capsys, "evaluate", "--log", str(binary["log"]), "--model", "m", "--labels",
                         str(binary["labels"]), "--task", "binary", "--score", "probabilities:1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["columns"] == ["out_probabilities_1"]
    assert report["labels"] == len(binary["y"]) and report["unmatched"] == 5  # e0, user-3, nope0-2
    assert report["by_key"] == 11 and report["key_rows"] == 2 * 15  # k0-k9 and "shared", on two versions
    want = expected(binary["builder"], binary["y"], lambda o: o["probabilities"][1])
    got = {(v["version"], v["role"]): v for v in report["versions"]}
    assert set(got) == {("1", "champion"), ("2", "challenger"), ("3", "arm")}
    for key, (s, y) in want.items():
        m = got[key]["metrics"]
        assert got[key]["labelled"] == len(y)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, s > 0.5), rel=1e-12)
        assert m["log_loss"] == pytest.approx(log_loss(y, s, labels=[0, 1]), rel=1e-9)
        assert m["brier"] == pytest.approx(brier_score_loss(y, s), rel=1e-9)
        assert m["auc"] == pytest.approx(roc_auc_score(y, s), rel=1e-9)
    assert got[("1", "champion")]["rows"] == sum(1 for r in binary["builder"].rows if r.version == "1")
    code, table, _ = run(capsys, "evaluate", "--log", str(binary["log"]), "--model", "m", "--labels",
                         str(binary["labels"]), "--task", "binary", "--score", "out_probabilities_1")
    assert code == 0 and "11 joined 30 Kafka events by message key" in table
    assert f"{m['auc']:.4f}" in table.splitlines()[-1]  # the arm's row, last


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # float32 rows, as models give them
def test_multiclass_labels_from_a_csv_without_rows(tmp_path):
    rng = np.random.default_rng(SEED + 1)
    b = LogBuilder()
    ids = [f"{i:03d}" for i in range(300)]  # ids a CSV reader would take for numbers
    for version, role in (("1", "champion"), ("2", "challenger")):
        b.requests(version, role, ids, [1] * 300, {"probabilities": rng.dirichlet(np.ones(4), 300).astype(np.float32)})
    labels = {(f"{i:03d}", 0): float(c) for i, c in enumerate(rng.integers(0, 4, 280))}
    path = write_labels(tmp_path / "labels.csv", labels, with_row=False)
    report = evaluate(b.write(tmp_path / "log"), "m", path, "multiclass", "probabilities")
    assert report["columns"] == [f"out_probabilities_{j}" for j in range(4)] and report["unmatched"] == 0
    for v in report["versions"]:
        s, y = expected(b, labels, lambda o: o["probabilities"])[(v["version"], v["role"])]
        assert v["labelled"] == 280 and v["rows"] == 300
        assert v["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, s.argmax(axis=1)), rel=1e-12)
        assert v["metrics"]["log_loss"] == pytest.approx(log_loss(y, s, labels=range(4)), rel=1e-9)
    assert "out_probabilities_0 ..." in render(report)
    labels[("003", 0)] = 4.0
    with pytest.raises(LogError, match=r"class indices 0 to 3 .* has 4 too"):
        evaluate(tmp_path / "log", "m", write_labels(tmp_path / "bad.csv", labels, False), "multiclass",
                 "probabilities")


def test_regression_of_a_one_column_output(tmp_path):
    rng = np.random.default_rng(SEED + 2)
    b = LogBuilder()
    counts = rng.integers(1, 4, 100).tolist()
    ids = [f"q{i}" for i in range(100)]
    truth = rng.normal(size=sum(counts))
    for version, role, noise in (("1", "champion", 0.3), ("2", "challenger", 0.5)):
        b.requests(version, role, ids, counts, {"variable": (truth + rng.normal(scale=noise, size=len(truth)))
                                                .astype(np.float32)[:, None]})
    labels = {(r.request_id, r.row): t for r, t in zip(b.rows, truth)}
    report = evaluate(b.write(tmp_path / "log"), "m", write_labels(tmp_path / "labels.parquet", labels),
                      "regression", "variable")
    assert report["columns"] == ["out_variable_0"]
    for v in report["versions"]:
        s, y = expected(b, labels, lambda o: o["variable"][0])[(v["version"], v["role"])]
        assert v["labelled"] == len(truth)
        assert v["metrics"]["mae"] == pytest.approx(mean_absolute_error(y, s), rel=1e-9)
        assert v["metrics"]["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, s)), rel=1e-9)


def test_scores_name_outputs_as_performance_settings_do():
    n = 3
    table = pa.table({"out_a": np.zeros(n), "out_b_0": np.zeros(n), **{f"out_p_{j}": np.zeros(n) for j in range(3)},
                      "out_label": np.zeros(n, np.int64)})
    matrix = ("out_p_0", "out_p_1", "out_p_2")
    cases = {("regression", "a"): ("out_a",), ("regression", "a:0"): ("out_a",), ("regression", "b"): ("out_b_0",),
             ("binary", "p:1"): ("out_p_1",), ("binary", "out_p_1"): ("out_p_1",),
             ("multiclass", "p"): matrix, ("multiclass", "out_p"): matrix}
    for (task, text), columns in cases.items():
        assert find_score(task, text, table).columns == columns, (task, text)
    with pytest.raises(LogError, match="name its column, e.g. --score p:1"):
        find_score("binary", "p", table)
    with pytest.raises(LogError, match="whole probability matrix"):
        find_score("multiclass", "p:1", table)
    assert default_score("multiclass", table).columns == ("out_p_0", "out_p_1", "out_p_2")
    with pytest.raises(LogError, match="cannot tell which output --task regression scores"):
        default_score("regression", table)


@pytest.mark.parametrize("case", ["no log", "no column", "no labels", "not numbers", "not 0/1", "twice"])
def test_mistakes_are_one_line_and_exit_2(binary, tmp_path, capsys, case):
    args = {"--log": str(binary["log"]), "--model": "m", "--labels": str(binary["labels"]), "--task": "binary",
            "--score": "probabilities:1"}
    if case == "no log":
        (tmp_path / "empty").mkdir()
        args["--log"], want = str(tmp_path / "empty"), "no scoring log files under"
    elif case == "no column":
        args["--score"] = "proba:1"
        want = "its out_ columns: out_probabilities_0, out_probabilities_1, out_label"
    elif case == "no labels":
        args["--labels"], want = str(tmp_path / "late.parquet"), "late.parquet: no such file"
    elif case == "not numbers":
        (tmp_path / "l.csv").write_text("request_id,label\nr0,cat\nr1,1\n")
        args["--labels"], want = str(tmp_path / "l.csv"), "column 'label' holds string values ('cat', '1'), not numbers"
    elif case == "not 0/1":
        args["--labels"] = str(write_labels(tmp_path / "l.parquet", {("r0", 0): 2.0, ("r1", 0): 1.0}))
        want = "--task binary takes labels 0 or 1; the labels file has 2 too"
    else:
        (tmp_path / "l.csv").write_text("request_id,row,label\nr0,0,1\nr1,0,0\nr0,0,0\n")
        args["--labels"], want = str(tmp_path / "l.csv"), "1 (request_id, row) pairs have more than one label"
    code, out, err = run(capsys, "evaluate", *[x for kv in args.items() for x in kv])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("scorewire evaluate: ") and want in err, err
