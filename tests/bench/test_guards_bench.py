"""The guards bench's parts, small: the load that takes turns between servers without starting
a process per turn, and the guards' and sets' cost per batch in process."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from bench.grpc_bench import TurnLoad
from bench.guards_bench import FEATURES, in_process


def test_the_load_takes_turns_and_stays_up(server):
    load = TurnLoad([server.url], "mlp", 4, 1, 1, pool=64)
    try:
        first, second = (load.run(server.url, 0.1, 0.4) for _ in range(2))
    finally:
        load.close()
    assert first["requests"] > 0 and second["requests"] > 0
    assert first["p99_ms"] > 0 and first["rows_per_s"] == first["requests_per_s"]


def test_guards_and_sets_cost_per_batch(model_dir, rng):
    model = model_dir / "models" / "mlp.onnx"
    x = rng.normal(size=(300, len(FEATURES))).astype(np.float32)
    pq.write_table(pa.table({f: x[:, i] for i, f in enumerate(FEATURES)}), model_dir / "ref-gb.parquet")
    p = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(["probabilities"],
                                                                                 {"float_input": x})[0][:, 1]
    pq.write_table(pa.table({"probabilities:1": p, "label": (rng.random(300) < p).astype(int)}),
                   model_dir / "ref-gb-labelled.parquet")
    cost = in_process(model, model_dir / "ref-gb.parquet", model_dir / "ref-gb-labelled.parquet", repeats=50)
    assert set(cost) == {"1_rows", "32_rows"}
    assert all(v["onnxruntime_us"] > 0 and v["guards_and_set_us"] > 0 for v in cost.values())
