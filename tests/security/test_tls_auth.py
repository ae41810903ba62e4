"""TLS, mTLS and bearer tokens on a real `scorewire serve`, with tritonclient as the client;
Kafka secrets read from the environment and absent from every log line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException

from engine.harness.config import Config, model_table, server_table, stream_table
from engine.harness.server import Server
from engine.mock_kafka import MockCluster
from tests.conftest import launch
from tests.security.certs import make_pki

TOKENS = "# accepted tokens\nalpha-token-123\nbeta-token-456\n"



def config(**server_keys) -> Config:
    """One process serving the mlp; `server_keys`: [server] tls, auth, ..."""
    return Config(server_table(workers=1, **server_keys), [model_table("mlp", "models/mlp.onnx")])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_server(model_dir, pki, mtls: bool, auth: bool, name: str, transport: str = "scorewire") -> Server:
    (model_dir / "tokens.txt").write_text(TOKENS)
    tls = {"cert_file": pki["server.pem"], "key_file": pki["server.key"],
           "client_ca_file": pki["ca.pem"] if mtls else None}
    return launch(model_dir, config(tls=tls, auth={"tokens_file": "tokens.txt"} if auth else None,
                                    grpc_transport=transport), f"{transport}-{name}")


def client(url: str, pki, cert: str | None = None) -> g.InferenceServerClient:
    kwargs = {}
    if cert is not None:
        kwargs = {"private_key": str(pki[f"{cert}.key"]), "certificate_chain": str(pki[f"{cert}.pem"])}
    return g.InferenceServerClient(url, ssl=True, root_certificates=str(pki["ca.pem"]), **kwargs)


def infer(c: g.InferenceServerClient, token: str | None = None):
    x = g.InferInput("float_input", [2, 32], "FP32")
    x.set_data_from_numpy(np.ones((2, 32), np.float32))
    headers = {"authorization": f"Bearer {token}"} if token is not None else None
    return c.infer("mlp", [x], headers=headers).as_numpy("probabilities")


@pytest.fixture(scope="module", params=["scorewire", "grpcio"])  # both gRPC transports
def tls_auth_server(model_dir, pki, request):
    server = tls_server(model_dir, pki, mtls=False, auth=True, name="tls-auth.toml", transport=request.param)
    yield server
    server.stop()


def test_tls_with_a_valid_token_scores(tls_auth_server, pki):
    c = client(tls_auth_server.url, pki)
    assert infer(c, "beta-token-456").shape == (2, 2)
    c.close()


@pytest.mark.parametrize("token", [None, "", "alpha-token-12", "alpha-token-1234", "ALPHA-TOKEN-123"])
def test_missing_or_wrong_token_is_unauthenticated(tls_auth_server, pki, token):
    c = client(tls_auth_server.url, pki)
    with pytest.raises(InferenceServerException) as info:
        infer(c, token)
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "bearer token" in info.value.message()
    c.close()


def test_health_and_liveness_stay_open_and_metadata_does_not(tls_auth_server, pki):
    c = client(tls_auth_server.url, pki)
    assert c.is_server_live() and c.is_server_ready()
    with pytest.raises(InferenceServerException) as info:
        c.get_model_metadata("mlp")
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    assert c.get_model_metadata("mlp", headers={"authorization": "Bearer alpha-token-123"}).name == "mlp"
    c.close()
    metrics = tls_auth_server.metrics()
    assert metrics['scorewire_requests_total{model="(unknown)",code="unauthenticated"}'] >= 1


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_auth_server):
    c = g.InferenceServerClient(tls_auth_server.url)
    with pytest.raises(InferenceServerException) as info:
        c.is_server_live(client_timeout=3)
    assert info.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


@pytest.mark.parametrize("transport", ["scorewire", "grpcio"])
def test_mtls_rejects_clients_without_a_certificate_from_the_ca(model_dir, pki, transport):
    server = tls_server(model_dir, pki, mtls=True, auth=False, name="mtls.toml", transport=transport)
    try:
        good = client(server.url, pki, cert="client")
        assert infer(good).shape == (2, 2)
        good.close()
        for cert in (None, "stranger"):
            c = client(server.url, pki, cert=cert)
            with pytest.raises(InferenceServerException) as info:
                c.is_server_live(client_timeout=3)
            assert info.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"), cert
            c.close()
    finally:
        assert server.stop() == 0


def test_tokens_from_the_environment(model_dir):
    env = {**os.environ, "SCOREWIRE_TEST_TOKENS": "one-token,two-token"}
    server = launch(model_dir, config(auth={"tokens_env": "SCOREWIRE_TEST_TOKENS"}), "env-auth.toml", env=env)
    try:
        c = g.InferenceServerClient(server.url)
        assert infer(c, "two-token").shape == (2, 2)
        with pytest.raises(InferenceServerException):
            infer(c, "three-token")
        c.close()
    finally:
        server.proc.terminate()
        server.proc.wait(30)


def test_unset_token_variable_is_a_config_error(model_dir):
    path = config(auth={"tokens_env": "SCOREWIRE_NO_SUCH_VARIABLE"}).write(model_dir / "env-missing.toml")
    out = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--config", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "SCOREWIRE_NO_SUCH_VARIABLE is not set" in out.stderr


def test_kafka_secrets_come_from_the_environment_and_never_reach_the_logs(model_dir):
    secret = f"pw-{os.getpid()}-{time.monotonic_ns()}"
    with MockCluster() as cluster:
        for topic in ("events", "scores", "scores-dlq"):
            cluster.create_topic(topic, 2)
        kafka = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN", "sasl.username": "scorewire",
                 "sasl.password": {"env": "SCOREWIRE_TEST_KAFKA_PASSWORD"}}
        path = config().add(streams=[stream_table("mlp", cluster.bootstrap, "events", "scores", "scores-dlq",
                                                  kafka=kafka)]).write(model_dir / "kafka-secret.toml")
        env = {**os.environ, "SCOREWIRE_TEST_KAFKA_PASSWORD": secret}
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "--log-level", "DEBUG", "serve", "--config",
                                 str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60  # until the client has tried the broker (SASL) and said so
        while not any("kafka:" in line for line in lines) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.terminate()
        stdout = proc.stdout.read()
        proc.wait(60)
        reader.join(10)
        stderr = "".join(lines)
    assert any("kafka:" in line for line in lines), stderr[-2000:]
    assert "scorewire: ready" in stdout, stderr[-2000:]
    assert secret not in stdout and secret not in stderr
    # and without the variable: a config error naming the variable, not a value
    out = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--config", str(path)], capture_output=True,
                         text=True, timeout=120, env={k: v for k, v in os.environ.items()
                                                      if k != "SCOREWIRE_TEST_KAFKA_PASSWORD"})
    assert out.returncode == 2 and "SCOREWIRE_TEST_KAFKA_PASSWORD, which is not set" in out.stderr


def test_rest_takes_the_same_tls_and_tokens(tls_auth_server, pki):
    """HTTPS with the server's certificate, the same tokens, health open, the rest closed."""
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    base = f"https://{tls_auth_server.http_url}"
    body = ('{"inputs": [{"name": "float_input", "shape": [1, 32], "datatype": "FP32", "data": [%s]}]}'
            % ", ".join(["1.0"] * 32)).encode()

    def call(path: str, token: str | None = None, data: bytes | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, data=data, headers=headers),
                                        context=context, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert call("/v2/health/ready") == 200
    assert call("/v2/models/mlp") == 401 and call("/v2/models/mlp/infer", "wrong", body) == 401
    assert call("/v2/models/mlp/infer", "alpha-token-123", body) == 200
    label = b'{"id": "r1", "labels": [1]}'  # labels sent back: the same door
    assert call("/v2/models/mlp/feedback", None, label) == 401 and call("/v2/models/mlp/feedback", "wrong", label) == 401
    assert call("/v2/models/mlp/feedback", "alpha-token-123", label) == 400  # past the door: mlp takes no labels
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to the TLS port: refused
        urllib.request.urlopen(f"http://{tls_auth_server.http_url}/v2/health/ready", timeout=10).read()
