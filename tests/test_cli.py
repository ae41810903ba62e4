from __future__ import annotations

import subprocess
import sys

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
