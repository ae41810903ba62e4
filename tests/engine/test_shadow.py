"""A challenger in process: what it delivers, what it drops, what it stops."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from engine.batching.batch import Origin, ScoredBatch
from engine.routing.shadow import Shadow
from engine.runtime.session import OnnxModel
from engine.settings import ModelSettings
from tests.models import hanging_classifier


def champion_batch(x: np.ndarray, members: int = 2) -> ScoredBatch:
    rows = len(x)
    bounds = tuple(int(b) for b in np.linspace(0, rows, members + 1))
    return ScoredBatch("mlp", "1", "champion", {"float_input": x}, {}, np.zeros(members, np.int64),
                       np.zeros(members, np.int64), 0, rows, bounds,
                       tuple(Origin(request_id=f"r{i}") for i in range(members)), time.time_ns())


def test_challenger_scores_the_champion_batches_and_keeps_their_origins(model_dir, rng):
    model = OnnxModel(ModelSettings(name="mlp", version="2", path=model_dir / "models" / "gbt.onnx"))
    got = []
    shadow = Shadow(model, capacity=100, timeout_s=5.0, deliver=got.append)
    batches = [champion_batch(rng.normal(size=(n, 32)).astype(np.float32)) for n in (3, 8, 1, 16)]
    for b in batches:
        shadow.offer(b)
    shadow.close(10.0)
    assert [g.rows for g in got] == [3, 8, 1, 16] and all(g.role == "challenger" and g.version == "2" for g in got)
    reference = ort.InferenceSession(str(model_dir / "models" / "gbt.onnx"), providers=["CPUExecutionProvider"])
    for b, g in zip(batches, got):
        assert g.origins == b.origins and g.bounds == b.bounds
        np.testing.assert_allclose(g.outputs["probabilities"],
                                   reference.run(["probabilities"], b.inputs)[0], rtol=1e-6, atol=1e-7)
    assert shadow.stats.scored == 4 and shadow.stats.rows_scored == 28


def test_a_hanging_challenger_is_stopped_and_a_full_mailbox_drops_and_counts(tmp_path, rng):
    path = hanging_classifier(tmp_path / "hanging.onnx")
    model = OnnxModel(ModelSettings(name="mlp", version="9", path=path, warmup=False))
    got = []
    shadow = Shadow(model, capacity=2, timeout_s=0.3, deliver=got.append)
    offered = 0
    for _ in range(20):
        batch = champion_batch(rng.normal(size=(4, 32)).astype(np.float32))
        shadow.offer(batch)
        offered += batch.rows
        time.sleep(0.01)
    start = time.monotonic()
    shadow.close(2.0)
    assert time.monotonic() - start < 10
    st = shadow.stats
    assert got == [] and st.timeouts >= 1 and st.dropped >= 1
    assert st.rows_scored + st.rows_dropped + st.rows_failed == offered
