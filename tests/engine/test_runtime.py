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


def _bound_and_plain(path, **extra):
    bound = OnnxModel(ModelSettings(name="m", path=path, providers=["CPUExecutionProvider"], io_binding="on", **extra))
    plain = OnnxModel(ModelSettings(name="m", path=path, providers=["CPUExecutionProvider"], io_binding="off"))
    return bound, plain


def test_io_binding_gives_the_same_outputs_as_session_run(tmp_path, rng):
    from engine.demo import build_wide_mlp

    path = build_wide_mlp(tmp_path / "wide.onnx")
    bound, plain = _bound_and_plain(path)
    assert bound.io_binding == "cpu" and plain.io_binding is None
    for rows in (1, 7, 64, 7):  # a size seen before reuses its buffers
        x = {"features": rng.normal(size=(rows, 256)).astype(np.float32)}
        got = bound.run_sync(bound.sessions[0], x)
        want = plain.run_sync(plain.sessions[0], x)
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-7)


def test_io_binding_results_survive_the_next_batch_of_the_same_size(tmp_path, rng):
    path = gather_model(tmp_path / "g.onnx")
    bound, _ = _bound_and_plain(path)
    session = bound.sessions[0]
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = bound.run_sync(session, {"data": data, "idx": np.array([[1], [3]], np.int64)})["out"]
    kept = first.copy()
    bound.run_sync(session, {"data": data * 100, "idx": np.array([[0], [0]], np.int64)})
    np.testing.assert_array_equal(first, kept)  # the buffers are reused; results handed out are not


def test_io_binding_auto_is_off_on_cpu(tmp_path):
    path = gather_model(tmp_path / "g.onnx")
    model = OnnxModel(ModelSettings(name="g", path=path, providers=["CPUExecutionProvider"]))
    assert model.io_binding is None


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers() or not __import__("os").path.exists(
    "/dev/nvidia0"), reason="needs a GPU and the CUDA libraries (the device machine)")
def test_cuda_with_io_binding_equals_cpu(tmp_path, rng):
    from engine.demo import build_wide_mlp

    path = build_wide_mlp(tmp_path / "wide.onnx")
    cuda = OnnxModel(ModelSettings(name="w", path=path, providers=["CUDAExecutionProvider"], instances=2))
    cpu = OnnxModel(ModelSettings(name="w", path=path, providers=["CPUExecutionProvider"]))
    assert cuda.provider == "CUDAExecutionProvider" and cuda.io_binding == "cuda"
    for rows in (1, 64, 1024):
        x = {"features": rng.normal(size=(rows, 256)).astype(np.float32)}
        for session in cuda.sessions:
            np.testing.assert_allclose(cuda.run_sync(session, x)["probabilities"],
                                       cpu.run_sync(cpu.sessions[0], x)["probabilities"], rtol=1e-3, atol=1e-5)
