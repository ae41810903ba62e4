"""Configs and calls the tests of several serving processes share (test_workers*.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from engine.harness.config import Config, model_table, route_table, server_table
from engine.harness.server import Server
from tests.conftest import launch


def base(workers: int, max_batch_size: int = 64, **server_keys) -> Config:
    """The mlp served by `workers` processes."""
    batching = {"max_batch_size": max_batch_size, "max_queue_delay_us": 500}
    return Config(server_table(workers=workers, drain_timeout_s=20, **server_keys),
                  [model_table("mlp", "models/mlp.onnx", batching=batching)])


def challenged(workers: int, log: str = "challenged-log", v2_path: str = "models/mlp.onnx",
               max_batch_size: int = 64) -> Config:
    """base() with version 2 (`v2_path`) shadowing version 1, and the scoring log in `log`."""
    return base(workers, max_batch_size).add(models=[model_table("mlp", v2_path, version="2")],
                             routes=[route_table("mlp", "1", challengers=["2"])],
                             scorelog={"dir": log, "max_file_age_s": 60})


def infer(url: str, x: np.ndarray, request_id: str = "") -> np.ndarray:
    """One request on a connection of its own (so that the kernel picks a worker for it)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("float_input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer("mlp", [inp], request_id=request_id).as_numpy("probabilities")
    finally:
        client.close()


def ready(url: str) -> bool | None:
    """ServerReady on a fresh connection; None when it did not answer."""
    client = grpcclient.InferenceServerClient(url)
    try:
        return client.is_server_ready()
    except Exception:
        return None
    finally:
        client.close()


def pids(server: Server) -> tuple[list[int], int]:
    """(worker pids by slot, observer pid), from the supervisor's start-up line (pids by
    slot: the workers, the observer, the challengers process if any)."""
    line = next(s for s in server.startup if "workers on the gRPC port" in s)
    workers = int(re.search(r"(\d+) workers on", line).group(1))
    numbers = [int(n) for n in re.search(r"pids ([\d, ]+)", line).group(1).split(", ")]
    return numbers[:workers], numbers[workers]


def launch_workers(directory: Path, config: Config, name: str) -> Server:
    server = launch(directory, config, name)
    assert server.startup is not None
    return server


def metric(server: Server, key: str) -> float | None:
    """One value of its /metrics; None while nothing serves them (the observer restarting)."""
    try:
        return server.metrics().get(key)
    except OSError:
        return None
