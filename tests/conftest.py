"""Shared fixtures: one seed for all randomness, demo models, a real server on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.demo import build_models, start_server
from tests.models import gather_model, identity_all_dtypes

SEED = int(os.environ.get("SCOREWIRE_TEST_SEED", "20261123"))


# Lines a test wants in the run's summary (e.g. the duplicates an at-least-once stream produced).
REPORT: list[str] = []


def pytest_report_header(config):
    return f"scorewire test seed: {SEED} (set SCOREWIRE_TEST_SEED to replay another)"


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("what the tests measured")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The two demo models (skl2onnx) plus the onnx.helper test models."""
    directory = tmp_path_factory.mktemp("models")
    build_models(directory, seed=SEED % 1000)
    identity_all_dtypes(directory / "models" / "identity.onnx")
    gather_model(directory / "models" / "gather.onnx")
    return directory


SERVER_CONFIG = """\
[server]
workers = 1
host = "127.0.0.1"
grpc_port = 0
metrics_port = 0
http_port = 0
max_message_bytes = 1048576

[[models]]
name = "mlp"
path = "models/mlp.onnx"
max_rows_per_request = 1024
[models.batching]
max_batch_size = 64
max_queue_delay_us = 2000

[[models]]
name = "mlp"
path = "models/mlp.onnx"
version = "2"
[models.batching]
max_batch_size = 64

[[models]]
name = "gbt"
path = "models/gbt.onnx"
instances = 2
[models.batching]
max_batch_size = 64

[[models]]
name = "identity"
path = "models/identity.onnx"
allow_non_finite = true
io_binding = "on"              # every dtype through IO binding (on CPU here; on CUDA where there is one)
[models.batching]
max_batch_size = 128
max_queue_delay_us = 1000

[[models]]
name = "gather"
path = "models/gather.onnx"
[models.batching]
max_batch_size = 64
max_queue_delay_us = 300000    # long: concurrent requests share one batch

[[models]]
name = "slow"
path = "models/mlp.onnx"
[models.batching]
max_batch_size = 1000
max_queue_delay_us = 1500000   # requests wait 1.5 s: deadlines and overflow are observable
queue_capacity = 8
"""


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, metrics_port: int, directory: Path):
        self.proc, self.port, self.metrics_port, self.dir = proc, port, metrics_port, directory
        self.startup: list[str] = getattr(proc, "startup", [])  # its lines up to "ready"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The REST port (tritonclient.http's url)."""
        return f"127.0.0.1:{self.proc.http_port}"

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics into {'name{labels}': value}."""
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                values[key] = float(value)
        return values

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def launch(directory: Path, config_text: str, name: str = "scorewire.toml", wrapper: tuple[str, ...] = ()) -> Server:
    config = directory / name
    config.write_text(config_text)
    proc, port, metrics_port = start_server(config, log_level=os.environ.get("SCOREWIRE_TEST_LOG_LEVEL", "WARNING"),
                                            wrapper=wrapper)
    return Server(proc, port, metrics_port, directory)


@pytest.fixture(scope="session")
def server(model_dir) -> Server:
    srv = launch(model_dir, SERVER_CONFIG)
    yield srv
    srv.stop()
