"""Shared fixtures: one seed for all randomness, demo models, a real server on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine.harness.config import Config, model_table, server_table
from engine.harness.models import build_models
from engine.harness.server import Server, start_server
from tests.models import gather_model, identity_all_dtypes

SEED = int(os.environ.get("SCOREWIRE_TEST_SEED", "20261123"))


# Lines a test wants in the run's summary (e.g. the duplicates an at-least-once stream produced).
# They travel in the test's report (user_properties), so a run spread over processes
# (pytest-xdist) shows them too: the summary prints what the reports brought.
REPORT: list[str] = []
MEASURED = "what the tests measured"
_reported = [0]  # REPORT's lines already put in a report
_summary: list[str] = []


def pytest_report_header(config):
    return f"scorewire test seed: {SEED} (set SCOREWIRE_TEST_SEED to replay another)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    new, _reported[0] = REPORT[_reported[0]:], len(REPORT)
    outcome.get_result().user_properties.extend((MEASURED, line) for line in new)


def pytest_runtest_logreport(report):
    _summary.extend(value for key, value in report.user_properties if key == MEASURED)


def pytest_terminal_summary(terminalreporter):
    if _summary:
        terminalreporter.section(MEASURED)
        for line in _summary:
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


BATCH_64 = {"max_batch_size": 64}
SERVER_CONFIG = Config(server_table(workers=1, max_message_bytes=1048576), [
    model_table("mlp", "models/mlp.onnx", max_rows_per_request=1024,
          batching={"max_batch_size": 64, "max_queue_delay_us": 2000}),
    model_table("mlp", "models/mlp.onnx", version="2", batching=BATCH_64),
    model_table("gbt", "models/gbt.onnx", instances=2, batching=BATCH_64),
    # every dtype through IO binding (on CPU here; on CUDA where there is one)
    model_table("identity", "models/identity.onnx", allow_non_finite=True, io_binding="on",
          batching={"max_batch_size": 128, "max_queue_delay_us": 1000}),
    # long: concurrent requests share one batch
    model_table("gather", "models/gather.onnx", batching={"max_batch_size": 64, "max_queue_delay_us": 300000,
                                                          "dispatch": "delay"}),
    # requests wait 1.5 s: deadlines and overflow are observable
    model_table("slow", "models/mlp.onnx", batching={"max_batch_size": 1000, "max_queue_delay_us": 1500000,
                                                "queue_capacity": 8, "dispatch": "delay"}),
])


def launch(directory: Path, config: Config | str, name: str = "scorewire.toml", wrapper: tuple[str, ...] = (),
           env: dict[str, str] | None = None, log_level: str | None = None) -> Server:
    """`config` written to `directory`/`name` and served (log level: `log_level`, else
    $SCOREWIRE_TEST_LOG_LEVEL, else WARNING)."""
    path = directory / name
    if isinstance(config, Config):
        config.write(path)
    else:
        path.write_text(config)
    level = log_level or os.environ.get("SCOREWIRE_TEST_LOG_LEVEL", "WARNING")
    return start_server(path, log_level=level, wrapper=wrapper, env=env)


@pytest.fixture(scope="session")
def server(model_dir) -> Server:
    srv = launch(model_dir, SERVER_CONFIG)
    yield srv
    srv.stop()
