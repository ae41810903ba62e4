from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

from engine.batching.batch import Batch
from engine.runtime.iobinding import BoundRunner, pinned_memory
from engine.runtime.session import ModelLoadError, OnnxModel, WarmupError, choose_providers, open_session
from engine.settings import ModelSettings
from tests.models import failing_model, fixed_batch_model, gather_model

CUDA_USABLE = "CUDAExecutionProvider" in ort.get_available_providers() and __import__("os").path.exists("/dev/nvidia0")


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
    """With CUDA asked for first, the provider reported is what onnxruntime actually runs.
    When that is not CUDA on a machine without a GPU, one INFO line per process says so (the
    default provider list is made for this), however many models load; no warning."""
    import logging

    from engine.runtime import session as session_module

    path = gather_model(tmp_path / "g.onnx")
    settings = ModelSettings(name="g", path=path, instances=2)
    session, used = open_session(path, settings, "g:1")
    assert used == session.get_providers()[0]
    session_module._fallbacks_told.clear()
    caplog.set_level(logging.INFO)
    model = OnnxModel(settings)
    OnnxModel(ModelSettings(name="h", path=path))
    assert model.provider == used and all(s.get_providers()[0] == used for s in model.sessions)
    if used != "CUDAExecutionProvider" and not session_module.has_gpu_device():
        assert used == "CPUExecutionProvider"
        said = [r for r in caplog.records if "CUDAExecutionProvider" in r.getMessage()]
        assert [(r.levelname, r.getMessage()) for r in said] == [
            ("INFO", "CUDAExecutionProvider is not usable here (no GPU); models run on CPUExecutionProvider")]


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
    from engine.harness.models import build_wide_mlp

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


def test_the_cuda_binding_path_uses_only_names_onnxruntime_accepts(tmp_path, rng):
    """Every onnxruntime call the CUDA path makes, run here. Without a GPU the calls that
    need the CUDA provider fail because there is none -- a RuntimeError from onnxruntime's
    C++ side naming CUDA -- not because onnxruntime's Python API refused a device or memory
    name (a plain Exception("Unsupported device type: ...")), which is how "cuda_pinned"
    broke every model on every GPU."""
    path = gather_model(tmp_path / "g.onnx")
    providers = ["CUDAExecutionProvider"] if CUDA_USABLE else ["CPUExecutionProvider"]  # device buffers need CUDA
    session, _ = open_session(path, ModelSettings(name="g", path=path, providers=providers), "g:1")
    model = OnnxModel(ModelSettings(name="g", path=path, providers=["CPUExecutionProvider"]))
    # get_ep_devices, OrtMemoryInfo.create_v2 and create_and_register_allocator_v2 for the pinned memory
    info, why = pinned_memory(0)
    assert (info is None) == bool(why)
    if not CUDA_USABLE:
        assert info is None and "registering a pinned allocator" in why and "CUDA" in why
    runner = BoundRunner(session, model.schema, "cuda", host_memory=info)  # "cuda" through ort.OrtDevice.make
    assert runner.binding == "cuda" and runner.staging == ("pinned" if info is not None else "pageable")
    with pytest.raises(ValueError, match="must be 'cuda' or 'cpu'"):
        BoundRunner(session, model.schema, "cuda_pinned")
    feed = {"data": rng.normal(size=(3, 4)).astype(np.float32), "idx": np.array([[0], [1], [3]], np.int64)}
    if CUDA_USABLE:
        np.testing.assert_array_equal(runner.run(feed)["out"][:, 0], feed["data"][[0, 1, 2], [0, 1, 3]])
    else:  # the device output buffer: ortvalue_from_shape_and_type(..., "cuda", 0)
        with pytest.raises(RuntimeError, match="CUDA"):
            runner.run(feed)


def test_inputs_staged_in_memory_onnxruntime_allocates(tmp_path, rng):
    """The staging half of the pinned path, on CPU: input buffers allocated through an
    OrtMemoryInfo (ortvalue_from_shape_and_type(memory_info=...)), filled, bound, reused."""
    path = gather_model(tmp_path / "g.onnx")
    session, _ = open_session(path, ModelSettings(name="g", path=path, providers=["CPUExecutionProvider"]), "g:1")
    host = ort.OrtMemoryInfo.create_v2("Cpu", ort.OrtMemoryInfoDeviceType.CPU, 0, 0, ort.OrtDeviceMemoryType.DEFAULT,
                                       0, ort.OrtAllocatorType.ORT_DEVICE_ALLOCATOR)
    try:
        ort.create_and_register_allocator(host, ort.OrtArenaCfg(0, -1, -1, -1))
    except Exception as exc:  # registered by an earlier test in this process
        assert "already" in str(exc).lower()
    schema = OnnxModel(ModelSettings(name="g", path=path, providers=["CPUExecutionProvider"])).schema
    runner = BoundRunner(session, schema, "cpu", host_memory=host)
    for rows in (3, 5, 3):
        data = rng.normal(size=(rows, 4)).astype(np.float32)
        idx = rng.integers(0, 4, size=(rows, 1))
        out = runner.run({"data": data, "idx": idx})["out"]
        np.testing.assert_array_equal(out[:, 0], data[np.arange(rows), idx[:, 0]])
    assert set(runner._cache) == {3, 5} and set(runner._cache[3][0]) == {"data", "idx"}


def test_failed_binding_in_warm_up_falls_back_to_session_run(tmp_path, caplog):
    """A model whose IO binding fails in warm-up (here: bound to CUDA on a machine without
    one) serves through session.run on the same provider, after one warning naming why."""
    path = gather_model(tmp_path / "g.onnx")
    model = OnnxModel(ModelSettings(name="g", path=path, providers=["CPUExecutionProvider"], io_binding="on"))
    assert model.io_binding == "cpu"
    if not CUDA_USABLE:
        model._use([BoundRunner(s, model.schema, "cuda") for s in model.sessions])
    caplog.clear()
    model.warm_up()
    if not CUDA_USABLE:
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "IO binding (cuda) failed in warm-up" in warnings[0].getMessage()
        assert "CUDA" in warnings[0].getMessage().split("failed in warm-up:")[1]
        assert model.io_binding is None and model.binding_description == "session.run"
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = model.run_sync(model.sessions[0], {"data": data, "idx": np.array([[1], [3]], np.int64)})
    np.testing.assert_array_equal(out["out"][:, 0], [1, 7])


def test_warm_up_without_full_batches_still_checks_the_binding(tmp_path, caplog):
    path = gather_model(tmp_path / "g.onnx")
    model = OnnxModel(ModelSettings(name="g", path=path, providers=["CPUExecutionProvider"], io_binding="on",
                                    warmup=False))
    if not CUDA_USABLE:  # (a CUDA binding on a CPU session would crash onnxruntime where CUDA works)
        model._use([BoundRunner(s, model.schema, "cuda") for s in model.sessions])
    model.warm_up(full=False)
    assert model.full_batch_us is None  # no full batch was run
    assert model.io_binding == ("cpu" if CUDA_USABLE else None)


def test_a_model_that_fails_every_way_does_not_start(tmp_path, caplog):
    path = failing_model(tmp_path / "fail.onnx")
    model = OnnxModel(ModelSettings(name="f", path=path, providers=["CPUExecutionProvider"], io_binding="on"))
    with pytest.raises(WarmupError, match="f:1: warm-up failed: .*Reshape"):
        model.warm_up()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "IO binding (cpu) failed in warm-up" in warnings[0]


@pytest.mark.skipif(not CUDA_USABLE, reason="needs a GPU and the CUDA libraries (the device machine)")
def test_cuda_with_io_binding_equals_cpu(tmp_path, rng):
    from engine.harness.models import build_wide_mlp

    path = build_wide_mlp(tmp_path / "wide.onnx")
    cuda = OnnxModel(ModelSettings(name="w", path=path, providers=["CUDAExecutionProvider"], instances=2))
    cpu = OnnxModel(ModelSettings(name="w", path=path, providers=["CPUExecutionProvider"]))
    cuda.warm_up()
    assert cuda.provider == "CUDAExecutionProvider" and cuda.io_binding == "cuda"
    for rows in (1, 64, 1024):
        x = {"features": rng.normal(size=(rows, 256)).astype(np.float32)}
        for session in cuda.sessions:
            _close_to(cuda.run_sync(session, x)["probabilities"], session, x, cpu)


def _close_to(got, cuda_session, x, cpu):
    """What session.run answers on the same CUDA session, and close to CPU's answer (CUDA's
    matrix products round differently: TF32 on Hopper, relative differences up to ~0.3%)."""
    (plain,) = cuda_session.run(["probabilities"], x)
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got, cpu.run_sync(cpu.sessions[0], x)["probabilities"], rtol=1e-2, atol=1e-3)


@pytest.mark.skipif(not CUDA_USABLE, reason="needs a GPU and the CUDA libraries (the device machine)")
@pytest.mark.parametrize("staging", ["pinned", "pageable"])
def test_cuda_staging_gives_the_same_outputs(tmp_path, rng, staging):
    """Both ways inputs reach the GPU answer what CPU answers, batch after batch (buffers are
    reused per size; results handed out must not change when the next batch runs)."""
    from engine.harness.models import build_wide_mlp

    path = build_wide_mlp(tmp_path / "wide.onnx")
    cuda = OnnxModel(ModelSettings(name="w", path=path, providers=["CUDAExecutionProvider"],
                                   io_binding_staging=staging))
    cuda.warm_up()
    cpu = OnnxModel(ModelSettings(name="w", path=path, providers=["CPUExecutionProvider"]))
    assert cuda.io_binding == "cuda" and cuda.staging == staging
    kept = []
    for rows in (64, 1, 64, 1024, 64):
        x = {"features": rng.normal(size=(rows, 256)).astype(np.float32)}
        got = cuda.run_sync(cuda.sessions[0], x)["probabilities"]
        _close_to(got, cuda.sessions[0], x, cpu)
        kept.append((got, got.copy()))
    for got, copy in kept:
        np.testing.assert_array_equal(got, copy)
