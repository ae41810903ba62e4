from __future__ import annotations

import pytest

from engine.settings import SettingsError, load_settings

GOOD = """
[server]
grpc_port = 0
[[models]]
name = "mlp"
path = "models/mlp.onnx"
version = "3"
[models.batching]
max_batch_size = 32
"""


def test_good_config_resolves_paths_against_its_folder(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(GOOD)
    settings = load_settings(config)
    model = settings.models[0]
    assert model.path == (tmp_path / "models" / "mlp.onnx").resolve()
    assert model.batching.max_batch_size == 32
    assert model.batching.queue_capacity == 4096  # default
    assert model.batching.dispatch == "free_slot"  # default: nobody waits for company while an instance is free
    assert settings.server.grpc_port == 0


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda t: t.replace("max_batch_size = 32", "max_batch_sise = 32"),
         "models[0] (name='mlp').batching.max_batch_sise: unknown key"),
        (lambda t: t.replace("max_batch_size = 32", "max_batch_sise = 32"), "did you mean 'max_batch_size'?"),
        (lambda t: t.replace("grpc_port = 0", "grpc_prot = 0"), "server.grpc_prot: unknown key (did you mean 'grpc_port'?"),
        (lambda t: t.replace("grpc_port = 0", 'grpc_port = "19001"'),
         "server.grpc_port: Input should be a valid integer (got the string '19001': write the value without quotes)"),
        (lambda t: t.replace("grpc_port = 0", "grpc_port = 0\nworkers = 2.0"), "server.workers"),
        (lambda t: t.replace("max_batch_size = 32", "max_batch_size = 32.0"), "batching.max_batch_size: Input should be a valid integer"),
        (lambda t: t.replace("grpc_port = 0", 'grpc_port = 0\ndrain_timeout_s = "30"'), "server.drain_timeout_s: Input should be a valid number"),
        (lambda t: t.replace("max_batch_size = 32", 'max_batch_size = 32\ndispatch = "timer"'),
         "models[0] (name='mlp').batching.dispatch: Input should be 'free_slot', 'idle' or 'delay'"),
        (lambda t: t.replace("max_batch_size = 32", "max_batch_size = 0"),
         "models[0] (name='mlp').batching.max_batch_size: Input should be greater than 0"),
        (lambda t: t.replace("grpc_port = 0", "grpc_port = 70000"), "server.grpc_port: Input should be less than"),
        (lambda t: t.replace("grpc_port = 0", "grpc_port = 0\nhandoff_ring_bytes = 1048577"),
         "server.handoff_ring_bytes: must be a multiple of 8 (records are 8-byte aligned), e.g. 1048576"),
        (lambda t: t.replace('version = "3"', 'version = "3"\nproviders = ["TPU"]'), "models[0] (name='mlp').providers"),
        (lambda t: t + t.split("[server]")[0] + '[[models]]\nname = "mlp"\npath = "x.onnx"\nversion = "3"\n',
         "model 'mlp' version '3' is configured twice"),
        (lambda t: t.replace('path = "models/mlp.onnx"\n', ""), "models[0] (name='mlp').path: Field required"),
        (lambda t: "[server]\ngrpc_port = 1\n", "models: Field required"),
        (lambda t: t + '[models.monitor]\nreference = "r.parquet"\noutputs = ["label"]\ncategorical = ["label"]\n',
         "monitor: categorical lists ['label'], which are outputs: leave them out (an integer output, a class label, "
         "is tested with chi-squared anyway"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, mutate, expected):
    config = tmp_path / "bad.toml"
    config.write_text(mutate(GOOD))
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    assert str(config) in str(info.value)
    assert expected in str(info.value)


STREAM = """
[[streams]]
model = "mlp"
bootstrap_servers = "127.0.0.1:9092"
input_topic = "events"
output_topic = "scores"
dead_letter_topic = "scores-dlq"
[streams.kafka]
"security.protocol" = "SASL_SSL"
"""


def test_stream_config_with_pass_through_kafka_settings(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(GOOD + STREAM)
    (stream,) = load_settings(config).streams
    assert stream.group_id == "scorewire" and stream.format == "json"
    assert stream.kafka == {"security.protocol": "SASL_SSL"}


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda t: t.replace('model = "mlp"', 'model = "nope"'), "for model 'nope', which is not configured"),
        (lambda t: t.replace('model = "mlp"', 'model = "mlp"\nversion = "9"'), "version '9'; configured: ['3']"),
        (lambda t: t.replace('output_topic = "scores"', 'output_topic = "events"'), "three different topics"),
        (lambda t: t + '"enable.auto.commit" = true\n', "kafka sets ['enable.auto.commit'], which scorewire controls"),
        (lambda t: t.replace('format = "json"', "") .replace('input_topic = "events"', 'input_topic = "events"\nformat = "avro"'),
         "streams[0].format: Input should be 'json' or 'binary'"),
        (lambda t: t.replace('input_topic = "events"', 'input_topic = "ev ents"'), "streams[0].input_topic"),
    ],
)
def test_bad_stream_config_names_the_field(tmp_path, mutate, expected):
    config = tmp_path / "bad.toml"
    config.write_text(mutate(GOOD + STREAM))
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    assert expected in str(info.value)


def test_not_toml_and_missing_file(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text("[server\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(config)
    with pytest.raises(SettingsError, match="no such config file"):
        load_settings(tmp_path / "absent.toml")


def test_example_configs_are_valid():
    from pathlib import Path

    from engine.settings import parse_settings
    import tomllib

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.toml"))
    assert files
    for path in files:
        parse_settings(tomllib.loads(path.read_text()), str(path))


def test_example_config_documents_every_key():
    from pathlib import Path

    from engine.settings import (AuthSettings, BanditSettings, BatchingSettings, ConformalSettings, FairnessSettings, GuardSettings, FeedbackSettings, ModelSettings,
                                 SegmentSettings,
                                 MonitoringSettings, MonitorSettings, PerformanceSettings, RolloutSettings,
                                 QualitySettings, RouteSettings, ServerSettings, StreamSettings, TlsSettings)

    text = (Path(__file__).resolve().parents[2] / "configs" / "example.toml").read_text()
    tables = {"batching": "[models.batching]", "monitor": "[models.monitor]", "performance": "[models.performance]",
              "fairness": "[models.fairness]", "conformal": "[models.conformal]", "guards": "[models.guards]", "rollout": "[routes.rollout]", "bandit": "[routes.bandit]", "tls": "[server.tls]",
              "auth": "[server.auth]", "kafka": "[streams.kafka]", "consumer": "[streams.consumer]",
              "producer": "[streams.producer]"}
    tables["segments"] = "[models.segments]"
    tables["quality"] = "[models.monitor.quality]"
    for model in (ServerSettings, ModelSettings, BatchingSettings, MonitorSettings, PerformanceSettings,
                  FairnessSettings, ConformalSettings, GuardSettings, RouteSettings, RolloutSettings, MonitoringSettings, StreamSettings,
                  FeedbackSettings, BanditSettings, TlsSettings, AuthSettings, SegmentSettings, QualitySettings):
        for name in model.model_fields:
            if name in tables:  # optional tables may be shown commented out, so that the file runs
                assert tables[name] in text, f"configs/example.toml does not show {tables[name]}"
            else:
                assert f"\n{name} =" in text or f"\n# {name} =" in text, f"configs/example.toml does not show `{name}`"


def test_model_paths_are_confined_to_model_root(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / "inside.onnx").write_bytes(b"")
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(b"")
    (root / "link.onnx").symlink_to(outside)
    config = tmp_path / "c.toml"
    base = '[server]\nmodel_root = "models"\n[[models]]\nname = "m"\npath = "{}"\n'
    config.write_text(base.format("models/inside.onnx"))
    assert load_settings(config).models[0].path == (root / "inside.onnx").resolve()
    for path in ("elsewhere.onnx", "models/../elsewhere.onnx", "models/link.onnx", "/etc/passwd"):
        config.write_text(base.format(path))
        with pytest.raises(SettingsError, match=r"models\[0\] \(name='m'\)\.path: .* is outside server.model_root"):
            load_settings(config)


def test_secret_references_need_one_source_and_name_the_variable_not_a_value(tmp_path, monkeypatch):
    from engine.settings import SecretRef

    config = tmp_path / "c.toml"
    config.write_text(GOOD + STREAM + '"sasl.password" = { env = "A", file = "b" }\n')
    with pytest.raises(SettingsError, match="exactly one of env and file"):
        load_settings(config)
    (tmp_path / "secret.txt").write_text("s3cret\n")
    config.write_text(GOOD + STREAM + '"sasl.password" = { file = "secret.txt" }\n"sasl.username" = { env = "KU" }\n')
    kafka = load_settings(config).streams[0].kafka
    assert kafka["sasl.password"].reveal("sasl.password") == "s3cret"
    assert "s3cret" not in repr(kafka)
    monkeypatch.delenv("KU", raising=False)
    with pytest.raises(SettingsError, match="reads environment variable KU, which is not set"):
        kafka["sasl.username"].reveal("sasl.username")
    assert isinstance(kafka["sasl.username"], SecretRef)


ROUTED = GOOD + """
[[models]]
name = "mlp"
path = "models/gbt.onnx"
version = "4"

[[routes]]
model = "mlp"
champion = "3"
challengers = ["4"]
"""


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda t: t.replace('challengers = ["4"]', 'challengers = ["5"]'),
         "the route of model 'mlp' names versions ['5'], which are not configured"),
        (lambda t: t.replace('challengers = ["4"]', 'challengers = ["3"]'), "'3' is the champion and a challenger"),
        (lambda t: t.replace('challengers = ["4"]', 'split = { "4" = 10 }'), "split must give the champion ('3')"),
        (lambda t: t.replace('challengers = ["4"]', 'split = { "3" = 90, "4" = 0 }'), "weights must be > 0"),
        (lambda t: t.replace('challengers = ["4"]', 'challengers = ["4"]\nsplit = { "3" = 90, "4" = 10 }'),
         "both split arms and challengers"),
        (lambda t: t + '[[routes]]\nmodel = "mlp"\nchampion = "4"\n', "model 'mlp' has two [[routes]]"),
        (lambda t: t + '[scorelog]\ndir = "log"\nwhen_full = "wait"\n', "scorelog.when_full"),
    ],
)
def test_bad_route_or_scorelog_config_says_why(tmp_path, mutate, expected):
    config = tmp_path / "c.toml"
    config.write_text(mutate(ROUTED))
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    assert expected in str(err.value)


def test_route_and_scorelog_config(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(ROUTED.replace('challengers = ["4"]', 'split = { "3" = 90, "4" = 10 }') + '[scorelog]\ndir = "log"\n')
    settings = load_settings(config)
    assert settings.routes[0].split == {"3": 90, "4": 10} and settings.routes[0].sticky_key == "routing_key"
    assert settings.scorelog.dir == (tmp_path / "log").resolve() and settings.scorelog.when_full == "drop"


def test_metrics_stay_on_loopback_when_the_server_has_tls_or_tokens_unless_told(tmp_path):
    """/metrics has neither TLS nor tokens: with either on the server, it binds to 127.0.0.1
    unless metrics_host says otherwise."""
    config = tmp_path / "c.toml"
    plain = GOOD.replace("grpc_port = 0", 'grpc_port = 0\nhost = "0.0.0.0"')
    config.write_text(plain)
    assert load_settings(config).server.metrics_bind == "0.0.0.0"
    config.write_text(plain.replace('host = "0.0.0.0"', 'host = "0.0.0.0"\n[server.auth]\ntokens_env = "T"'))
    assert load_settings(config).server.metrics_bind == "127.0.0.1"
    config.write_text(plain.replace('host = "0.0.0.0"', 'host = "0.0.0.0"\nmetrics_host = "0.0.0.0"\n'
                                                         '[server.auth]\ntokens_env = "T"'))
    assert load_settings(config).server.metrics_bind == "0.0.0.0"


def test_pairs_are_toml_arrays(tmp_path):
    """Strict values, but [lo, hi] is written as a TOML array (TOML has no tuple)."""
    from engine.settings import FairnessSettings, GuardSettings

    g = GuardSettings.model_validate({"interval": [0, 100], "bounds": {"f3": [0.0, 1.0]}})
    assert g.interval == (0.0, 100.0) and g.bounds == {"f3": (0.0, 1.0)}
    assert FairnessSettings.model_validate({"protected": "f", "privileged": 1, "dir_band": [0.7, 1.3]}).dir_band == (0.7, 1.3)
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        GuardSettings.model_validate({"interval": ["0", 100]})


def test_hand_off_rings_are_sized_by_what_they_hold_unless_set(tmp_path):
    """Records wait in a ring for the scoring log's commits: 32 MiB with a log, 8 without."""
    config = tmp_path / "c.toml"
    config.write_text(GOOD)
    assert load_settings(config).ring_bytes() == 8 << 20
    config.write_text(GOOD + '[scorelog]\ndir = "log"\n')
    assert load_settings(config).ring_bytes() == 32 << 20
    config.write_text(GOOD.replace("grpc_port = 0", "grpc_port = 0\nhandoff_ring_bytes = 2097152"))
    assert load_settings(config).ring_bytes() == 2 << 20
