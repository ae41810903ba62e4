from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

from engine.batching.batch import Batch
from engine.runtime.session import ModelLoadError, OnnxModel, choose_providers, open_session
from engine.settings import ModelSettings
from tests.models import fixed_batch_model, gather_model


def test_choose_providers_keeps_order_and_always_ends_on_cpu(caplog):
    caplog.set_level(logging.INFO)
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    assert "CUDAExecutionProvider is not available" in caplog.text
    assert choose_providers(["CUDAExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"
    ]
    assert choose_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]


def test_reported_provider_is_the_one_the_session_uses(tmp_path, caplog):
    """With CUDA asked for first, the provider reported is what onnxruntime actually runs;
    when that is not CUDA (no GPU here, or no CUDA libraries), a warning says so."""
    path = gather_model(tmp_path / "g.onnx")
    settings = ModelSettings(name="g", path=path)
    session, used = open_session(path, settings, "g:1")
    assert used == session.get_providers()[0]
    if used != "CUDAExecutionProvider":
        assert used == "CPUExecutionProvider"
        assert "running on CPUExecutionProvider" in caplog.text or "not available" in caplog.text


def test_model_with_fixed_first_dimension_is_refused(tmp_path):
    path = fixed_batch_model(tmp_path / "fixed.onnx")
    with pytest.raises(ModelLoadError, match="input 'x' has shape \\[1, 4\\]; scorewire batches along the first"):
        OnnxModel(ModelSettings(name="fixed", path=path, providers=["CPUExecutionProvider"]))


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        OnnxModel(ModelSettings(name="none", path=tmp_path / "none.onnx"))


def test_runs_batches_and_warms_up(tmp_path):
    import asyncio

    path = gather_model(tmp_path / "g.onnx")
    model = OnnxModel(ModelSettings(name="g", path=path, providers=["CPUExecutionProvider"], instances=2))
    model.warm_up()
    assert model.schema.input_names == ("data", "idx") and model.schema.output_names == ("out",)
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    batch = Batch.concat([{"data": data, "idx": np.array([[1], [3]], np.int64)}])
    out = asyncio.run(model.run(batch))
    np.testing.assert_array_equal(out["out"][:, 0], [1, 7])
    assert len(model._free) == 2
    model.close()
    assert ort.get_available_providers()  # the installed onnxruntime lists its providers


@pytest.mark.parametrize(
    "overrides, inline",
    [
        ({"execution": "auto", "inline_threshold_us": 100_000}, True),
        ({"execution": "auto", "inline_threshold_us": 0}, False),
        ({"execution": "auto", "inline_threshold_us": 100_000, "instances": 2}, False),
        ({"execution": "threads"}, False),
        ({"execution": "inline"}, True),
    ],
)
def test_where_batches_run(tmp_path, overrides, inline):
    import asyncio

    path = gather_model(tmp_path / "g.onnx")
    model = OnnxModel(ModelSettings(name="g", path=path, providers=["CPUExecutionProvider"], **overrides))
    model.warm_up()
    assert model.full_batch_us is not None and model.full_batch_us > 0
    assert model.inline is inline
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = asyncio.run(model.run(Batch.concat([{"data": data, "idx": np.array([[0], [1], [2]], np.int64)}])))
    np.testing.assert_array_equal(out["out"][:, 0], [0, 5, 10])
    model.close()
