"""Configs and calls the champion/challenger tests share (test_routing*.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from engine.harness.config import Config, Table, model_table, server_table
from engine.harness.server import Server

SERVER = server_table(workers=1, drain_timeout_s=5)


def mlp(version: str, path: str, warmup: bool = True, held_us: int | None = None) -> Table:
    """A version of the model 'mlp'; `held_us`: every request waits that long in the queue."""
    batching = {"max_batch_size": 64} if held_us is None else {
        "max_batch_size": 64, "max_queue_delay_us": held_us, "dispatch": "delay"}
    return model_table("mlp", path, version=version, warmup=warmup, warmup_timeout_s=1.0, batching=batching)


def served(*versions: Table, route: Table | None = None, log: Table | None = None) -> Config:
    return Config(SERVER, list(versions), routes=[] if route is None else [route], scorelog=log)


def log_table(age_s: float = 1.0, **keys) -> Table:
    """[scorelog] in the folder 'log'."""
    return {"dir": "log", "max_file_age_s": age_s, **keys}


def infer(client, x: np.ndarray, request_id: str = "", key: str | None = None, version: str = ""):
    inp = grpcclient.InferInput("float_input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("mlp", [inp], model_version=version, request_id=request_id,
                        parameters=None if key is None else {"routing_key": key})


def send_all(url: str, requests: list[tuple[np.ndarray, str, str | None]], threads: int = 8) -> list:
    """(x, request id, routing key) each -> (response id, version, label, probabilities) or the error."""
    local = threading.local()

    def one(req):
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url)
        x, rid, key = req
        try:
            r = infer(local.client, x, rid, key)
        except Exception as exc:  # the test asserts there are none
            return exc
        return r.get_response().id, r.get_response().model_version, r.as_numpy("label"), r.as_numpy("probabilities")

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, requests))


def stop_and_read(srv: Server) -> str:
    """SIGTERM, wait, and return what the server printed after 'ready'; it exited 0."""
    out = srv.stop_and_read(timeout_s=120)
    assert srv.proc.returncode == 0
    return out


def query(sql: str, *args):
    return duckdb.connect().execute(sql, list(args)).fetchall()


def scrape(port: int) -> dict:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples
