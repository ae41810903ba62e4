"""Every answer traced: the scoring log's rows carry the ONNX file's and the settings' sha256,
the audit trail (events_dir, kind=audit) has every load and reload, and `scorewire audit`
tells one answer's story across a reload, with two workers."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

from engine.harness.config import Config, model_table, route_table, server_table
from engine.harness.models import N_FEATURES
from tests.conftest import launch
from tests.integration.test_routing_changes import _wait_for
from tests.integration.workers_helpers import infer


def test_one_answer_is_traced_to_its_artifact_across_a_reload(model_dir, rng):
    log = {"dir": "audit-log", "max_file_age_s": 1}
    events = {"events_dir": "audit-events"}
    one = Config(server_table(workers=2, drain_timeout_s=20), [model_table("mlp", "models/mlp.onnx", version="1")],
                 scorelog=log, monitoring=events)
    server = launch(model_dir, one, "audit.toml")
    try:
        x = rng.normal(size=(2, N_FEATURES)).astype(np.float32)
        infer(server.url, x, "before-reload")
        two = Config(server_table(workers=2, drain_timeout_s=20),
                     [model_table("mlp", "models/mlp.onnx", version="1"),
                      model_table("mlp", "models/gbt.onnx", version="2")],
                     routes=[route_table("mlp", "2")], scorelog=log, monitoring=events)
        two.write(model_dir / "audit.toml")
        server.proc.send_signal(signal.SIGHUP)
        _wait_for(server.proc, "scorewire: reloaded")
        infer(server.url, x, "after-reload")
    finally:
        assert server.stop() == 0
    sha = {v: hashlib.sha256((model_dir / "models" / f).read_bytes()).hexdigest()
           for v, f in (("1", "mlp.onnx"), ("2", "gbt.onnx"))}
    rows = pq.read_table(model_dir / "audit-log").to_pylist()
    assert {(r["request_id"], r["version"], r["model_sha256"]) for r in rows} == {
        ("before-reload", "1", sha["1"]), ("after-reload", "2", sha["2"])}
    assert len({r["config_sha256"] for r in rows}) == 2  # each version's own settings
    trail = pq.read_table(model_dir / "audit-events" / "kind=audit").to_pylist()
    assert {(a["event"], a["version"], a["model_sha256"]) for a in trail} >= {
        ("load", "1", sha["1"]), ("reload", "2", sha["2"])}

    def audit(request_id: str) -> str:
        done = subprocess.run([sys.executable, "-m", "engine.cli", "audit", "--log", str(model_dir / "audit-log"),
                               "--events", str(model_dir / "audit-events"), "--id", request_id],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    before, after = audit("before-reload"), audit("after-reload")
    assert "version 1 (champion" in before and sha["1"] in before and "(the same file)" in before
    assert "version 2 (champion" in after and sha["2"] in after and "(the same file)" in after
    assert "2 rows logged" in before  # two rows in the request
    missing = subprocess.run([sys.executable, "-m", "engine.cli", "audit", "--log", str(model_dir / "audit-log"),
                              "--id", "never-sent"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no row of request 'never-sent'" in missing.stderr


def test_an_answer_shows_its_own_models_inputs_when_the_log_holds_two_models(tmp_path):
    """The log's files are read as one table (every model's columns): a cancer answer must list
    c0.. with their values, not the wine model's w0.. (null in its row) nor its third
    probability."""
    import time

    from engine.batching.batch import Origin, ScoredBatch
    from engine.scorelog.parquet import ScoreLog
    from engine.settings import ScoreLogSettings

    def scored(model: str, width: int, classes: int, request_id: str) -> ScoredBatch:
        x = (np.arange(2 * width, dtype=np.float32).reshape(2, width) + 1) / 4
        p = np.full((2, classes), 1 / classes, dtype=np.float32)
        return ScoredBatch(model, "1", "champion", {"x": x}, {"probabilities": p}, np.zeros(1, np.int64),
                           np.zeros(1, np.int64), 5, 2, (0, 2), (Origin("champion", "default", request_id, None),),
                           time.time_ns())

    log = ScoreLog(ScoreLogSettings(dir=tmp_path / "log"),
                   {("cancer", "x"): [f"c{i}" for i in range(30)], ("wine", "x"): [f"w{i}" for i in range(13)]})
    log.put(scored("cancer", 30, 2, "a-cancer"))
    log.put(scored("wine", 13, 3, "a-wine"))
    log.close()

    def audit(request_id: str) -> str:
        done = subprocess.run([sys.executable, "-m", "engine.cli", "audit", "--log", str(tmp_path / "log"),
                               "--id", request_id], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    cancer, wine = audit("a-cancer"), audit("a-wine")
    assert "inputs  c0=0.25, c1=0.5, c2=0.75, c3=1," in cancer
    assert "(22 more)" in cancer  # 30 inputs, 8 shown
    assert "w0" not in cancer and "None" not in cancer and "probabilities_2" not in cancer
    assert "outputs probabilities_0=0.5, probabilities_1=0.5\n" in cancer + "\n"
    assert "inputs  w0=0.25, w1=0.5," in wine and "(5 more)" in wine
    assert "c0" not in wine and "None" not in wine
    assert "probabilities_2=0.333333" in wine
