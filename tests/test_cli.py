from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.settings import load_settings


def scorewire(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=300, **kw)


def test_help_explains_every_command():
    out = scorewire("--help").stdout
    for command in ("serve", "demo"):
        assert command in out
        sub = scorewire(command, "--help")
        assert sub.returncode == 0 and "usage: scorewire " + command in sub.stdout
    assert "--prepare-only" in scorewire("demo", "--help").stdout
    assert "SIGTERM" in scorewire("serve", "--help").stdout


def test_serve_with_a_bad_config_exits_2_naming_the_field(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[[models]]\nname = "m"\npath = "m.onnx"\nbatch_size = 3\n')
    result = scorewire("serve", "--config", str(config))
    assert result.returncode == 2
    assert "models[0] (name='m').batch_size: unknown key" in result.stderr


def test_serve_with_a_missing_model_exits_2(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[server]\ngrpc_port = 0\nmetrics_port = 0\n[[models]]\nname = "m"\npath = "m.onnx"\n')
    result = scorewire("serve", "--config", str(config))
    assert result.returncode == 2
    assert "m:1: model file" in result.stderr and "does not exist" in result.stderr


def test_demo_prepare_only_writes_models_and_a_valid_config(tmp_path):
    result = scorewire("demo", "--dir", str(tmp_path / "d"), "--prepare-only")
    assert result.returncode == 0, result.stderr
    settings = load_settings(tmp_path / "d" / "scorewire.toml")
    assert [m.name for m in settings.models] == ["mlp", "gbt", "wide"]
    assert all(m.path.is_file() for m in settings.models)
    # the mlp's drift monitor: its reference is the training distribution, so the held-out
    # rows the demo sends show no drift (Bonferroni over the 32 features)
    import pyarrow.parquet as pq
    import scipy.stats

    from engine.demo import N_FEATURES, demo_split

    monitor = settings.models[0].monitor
    assert monitor is not None and monitor.features == [f"f{i}" for i in range(N_FEATURES)]
    reference = pq.read_table(tmp_path / "d" / "ref.parquet")
    _, (held_out, _) = demo_split()
    pvalues = [scipy.stats.ks_2samp(held_out[:, i], reference.column(f"f{i}").to_numpy()).pvalue
               for i in range(N_FEATURES)]
    assert min(pvalues) > 0.001 / N_FEATURES


def test_example_config_runs_after_the_demo_is_prepared(tmp_path):
    """configs/example.toml says it runs after `scorewire demo --dir scorewire-demo --prepare-only`."""
    import shutil

    from engine.demo import start_server

    (tmp_path / "configs").mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "configs" / "example.toml", tmp_path / "configs")
    assert scorewire("demo", "--dir", str(tmp_path / "scorewire-demo"), "--prepare-only").returncode == 0
    text = (tmp_path / "configs" / "example.toml").read_text()
    text = text.replace("grpc_port = 8001", "grpc_port = 0").replace("metrics_port = 8002", "metrics_port = 0")
    (tmp_path / "configs" / "example.toml").write_text(text)
    proc, port, _ = start_server(tmp_path / "configs" / "example.toml", log_level="WARNING")
    proc.terminate()
    assert proc.wait(60) == 0 and port > 0
