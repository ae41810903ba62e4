"""The config builder writes TOML that tomllib reads back as built, and that the settings load."""

from __future__ import annotations

import tomllib

import pytest

from engine.harness.config import COMMENT, Config, dumps, model_table, route_table, server_table, stream_table
from engine.settings import load_settings


def test_every_kind_of_value_reads_back_as_built():
    document = {
        "server": {"host": "127.0.0.1", "grpc_port": 0, "drain_grace_s": 0.5, "workers": "auto", "unset": None,
                   COMMENT: "two lines\nof comment"},
        "models": [{"name": "m", "path": "models/m.onnx", "warmup": False, "windows": [1000, 2000],
                    "batching": {"max_batch_size": 64}, "monitor": None},
                   {"name": "m", "version": "2", "path": "models/m-v2.onnx"}],
        "streams": [{"model": "m", "consumer": {"session.timeout.ms": 3000,
                                                "client.id": {"env": "SECRET", "file": None}}}],
        "scorelog": {"dir": 'a "quoted"\\path\twith\ncontrol\x7f characters', "ratio": float("inf")},
        "routes": [],
    }
    text = dumps(document, "a header")
    assert text.startswith("# a header\n") and "# two lines\n# of comment\n[server]" in text
    assert '[streams.consumer]\n"session.timeout.ms" = 3000\n"client.id" = { env = "SECRET" }' in text
    read = tomllib.loads(text)
    assert read == {
        "server": {"host": "127.0.0.1", "grpc_port": 0, "drain_grace_s": 0.5, "workers": "auto"},
        "models": [{"name": "m", "path": "models/m.onnx", "warmup": False, "windows": [1000, 2000],
                    "batching": {"max_batch_size": 64}},
                   {"name": "m", "version": "2", "path": "models/m-v2.onnx"}],
        "streams": [{"model": "m", "consumer": {"session.timeout.ms": 3000, "client.id": {"env": "SECRET"}}}],
        "scorelog": {"dir": 'a "quoted"\\path\twith\ncontrol\x7f characters', "ratio": float("inf")},
    }


def test_values_toml_has_no_word_for_are_refused():
    with pytest.raises(TypeError, match="no TOML value"):
        dumps({"server": {"when": object()}})
    with pytest.raises(TypeError, match="a top-level value must be a table"):
        dumps({"workers": 2})


def test_a_built_config_is_one_the_server_loads(tmp_path):
    base = Config(server_table(workers=1, drain_timeout_s=5),
                  [model_table("mlp", "mlp.onnx", batching={"max_batch_size": 64, "max_queue_delay_us": 2000})])
    config = base.add(models=[model_table("mlp", "gbt.onnx", version="2", warmup=False, comment="an arm"),
                              model_table("mlp", "gbt.onnx", version="3", comment="a challenger")],
                      routes=[route_table("mlp", "1", challengers=["3"], split={"1": 70, "2": 30},
                                          shadow_timeout_s=0.2)],
                      streams=[stream_table("mlp", "127.0.0.1:9092", "events", "scores", "dlq", group_id="g",
                                            consumer={"session.timeout.ms": 3000}, producer={"linger.ms": 2})],
                      scorelog={"dir": "log", "max_file_age_s": 1.0}, monitoring={"events_dir": "events"})
    for name in ("mlp.onnx", "gbt.onnx"):
        (tmp_path / name).write_bytes(b"")
    settings = load_settings(config.write(tmp_path / "c.toml"))
    assert settings.server.workers == 1 and settings.server.drain_timeout_s == 5
    assert [(m.name, m.version, m.warmup) for m in settings.models] == [("mlp", "1", True), ("mlp", "2", False),
                                                                        ("mlp", "3", True)]
    assert settings.models[0].batching.max_queue_delay_us == 2000
    assert settings.routes[0].split == {"1": 70, "2": 30} and settings.routes[0].shadow_timeout_s == 0.2
    assert settings.streams[0].consumer == {"session.timeout.ms": 3000} and settings.streams[0].group_id == "g"
    assert settings.scorelog is not None and settings.monitoring.events_dir is not None
    # variants are new configs: the base is unchanged
    assert len(base.models) == 1 and base.scorelog is None and base.routes == []
    assert base.with_server(workers=2, drain_timeout_s=None).server == {**server_table(), "workers": 2}
    assert base.server["workers"] == 1
