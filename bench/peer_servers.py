"""Start each peer serving the same ONNX model as its users would, learn where it listens and what
its REST body looks like, check it answers what onnxruntime answers, and stop it with its whole
process tree.

Every peer but scorewire and the hand-written floor runs in its own venv (bench/peer_envs.py)
from a script under bench/peers/ that imports only that peer, numpy and onnxruntime. MLServer
reuses bench/workers_bench.py's start (its custom runtime is bench/mlserver_onnx/runtime.py).
The peers with a batcher get the same settings as scorewire: at most `max_batch` rows, waiting
at most `delay_us` (BentoML chooses its own wait); those with processes or replicas get
`workers` of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.peer_envs import Env
from bench.proctree import tree
from bench.workers_bench import free_port, start_mlserver

PEERS_DIR = Path(__file__).parent / "peers"
# speak OIP over gRPC and REST; scorewire-grpcio: scorewire with grpc_transport = "grpcio"
OIP_PEERS = ("scorewire", "scorewire-grpcio", "floor", "mlserver", "kserve", "pytriton")
ALL_PEERS = ("scorewire", "scorewire-grpcio", "floor", "mlserver", "kserve", "pytriton", "bentoml", "litserve", "ray")
VENV_PEERS = ("mlserver", "kserve", "pytriton", "bentoml", "litserve", "ray")
START_TIMEOUT_S = 240.0


@dataclass
class Running:
    """A peer being served: its process (the root of its tree), where to POST, its gRPC address
    (OIP peers), the REST body style ("oip", "bentoml", "rows") and its settings in words."""

    peer: str
    proc: subprocess.Popen
    rest_url: str
    grpc: str | None
    style: str
    settings: str
    log: Path | None = None
    pids_seen: set[int] = field(default_factory=set)


def body(style: str, x: np.ndarray) -> bytes:
    """The REST request carrying rows `x` (float32, [n, 32]) in the peer's own JSON."""
    rows = x.astype(np.float64).tolist()  # float32 values exactly, as JSON numbers
    if style == "oip":
        return json.dumps({"inputs": [{"name": "float_input", "shape": list(x.shape), "datatype": "FP32",
                                       "data": [v for row in rows for v in row]}]}).encode()
    if style == "bentoml":
        return json.dumps({"x": rows}).encode()
    return json.dumps({"inputs": rows}).encode()


def probabilities(style: str, answer: bytes, n: int) -> np.ndarray:
    """The [n, 2] probabilities in a peer's REST answer."""
    data = json.loads(answer)
    if style == "oip":
        out = next(o for o in data["outputs"] if o["name"] == "probabilities")
        return np.asarray(out["data"], np.float32).reshape(n, -1)
    if style == "bentoml":
        return np.asarray(data, np.float32).reshape(n, -1)
    return np.asarray(data["probabilities"], np.float32).reshape(n, -1)


def _spawn(peer: str, argv: list[str], work: Path, env: dict | None = None, cwd: Path | None = None):
    log = work / f"{peer}.log"
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=cwd,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    return proc, log


def start(peer: str, env: Env | None, work: Path, workers: int, max_batch: int, delay_us: int) -> Running:
    """Start `peer` on the model at work/models/mlp.onnx (not yet ready: see `check`)."""
    model = str(work / "models" / "mlp.onnx")
    http, grpc = free_port(), free_port()
    py = str(env.python) if env is not None and env.python is not None else sys.executable
    common = ["--model", model, "--http-port", str(http)]
    batching = ["--workers", str(workers), "--max-batch", str(max_batch), "--delay-us", str(delay_us)]
    batched = f"batching {max_batch} rows / {delay_us} us"
    if peer in ("scorewire", "scorewire-grpcio"):
        from bench.servers import serve
        from engine.harness.config import Config, model_table, server_table

        transport = "grpcio" if peer == "scorewire-grpcio" else "scorewire"
        config = Config(server_table(workers=workers, grpc_transport=transport), [model_table(
            "mlp", "models/mlp.onnx", batching={"max_batch_size": max_batch, "max_queue_delay_us": delay_us})])
        served = serve(config.write(work / f"{peer}-peers.toml"))
        # scorewire's default dispatch ("free_slot"): a batch goes when the model is free, so the
        # delay applies only to "idle"/"delay" (README, "Batching")
        return Running(peer, served.proc, f"http://{served.http_url}/v2/models/mlp/infer", served.url, "oip",
                       f"workers={workers}, batching {max_batch} rows, dispatch free_slot (the default), "
                       f"gRPC transport {transport}")
    if peer == "floor":
        proc, log = _spawn(peer, [py, str(PEERS_DIR / "floor_server.py"), *common, "--grpc-port", str(grpc)], work)
        return Running(peer, proc, f"http://127.0.0.1:{http}/v2/models/mlp/infer", f"127.0.0.1:{grpc}", "oip",
                       "1 process, grpc.aio + aiohttp, no batching", log)
    if peer == "mlserver":
        proc, url = start_mlserver(str(Path(py).parent / "mlserver"), work)
        port = json.loads((work / "mlserver" / "settings.json").read_text())["http_port"]
        return Running(peer, proc, f"http://127.0.0.1:{port}/v2/models/mlp/infer", url, "oip",
                       "custom onnxruntime runtime, parallel_workers=0, no batching")
    if peer in ("kserve", "pytriton"):
        proc, log = _spawn(peer, [py, str(PEERS_DIR / f"{peer}_server.py"), *common, "--grpc-port", str(grpc),
                                  *batching], work, env=_libpython() if peer == "pytriton" else None)
        settings = (f"ModelServer workers={workers}, no batching" if peer == "kserve"
                    else f"Triton's front end, @batch, dynamic {batched}")
        return Running(peer, proc, f"http://127.0.0.1:{http}/v2/models/mlp/infer", f"127.0.0.1:{grpc}", "oip",
                       settings, log)
    if peer == "bentoml":
        proc, log = _spawn(peer, [str(Path(py).parent / "bentoml"), "serve", "bentoml_service:Mlp", "--working-dir",
                                  str(PEERS_DIR), "--host", "127.0.0.1", "--port", str(http)], work,
                           env={"PEER_MODEL": model, "PEER_WORKERS": str(workers), "PEER_MAX_BATCH": str(max_batch)})
        return Running(peer, proc, f"http://127.0.0.1:{http}/predict", None, "bentoml",
                       f"workers={workers}, adaptive batching <= {max_batch} rows", log)
    if peer in ("litserve", "ray"):
        proc, log = _spawn(peer, [py, str(PEERS_DIR / f"{peer}_server.py"), *common, *batching], work)
        what = "workers_per_device" if peer == "litserve" else "num_replicas"
        return Running(peer, proc, f"http://127.0.0.1:{http}/predict", None, "rows",
                       f"{what}={workers}, {batched}", log)
    raise ValueError(f"unknown peer {peer!r}: one of {', '.join(ALL_PEERS)}")


def _libpython() -> dict[str, str]:
    """LD_LIBRARY_PATH for PyTriton: Triton's Python backend stub links libpython3.X.so, which the
    loader finds in the system's folder first (Debian's 3.11.2) while the stub imports the venv
    interpreter's standard library (here pyenv's 3.11.7): a mismatch that breaks multiprocessing
    ("'_thread.RLock' object has no attribute '_recursion_count'"). The venv's own base
    interpreter's libpython, found first, matches."""
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR") or ""
    path = os.environ.get("LD_LIBRARY_PATH")
    return {"LD_LIBRARY_PATH": libdir + (":" + path if path else "")} if libdir else {}


def check(run: Running, x: np.ndarray, expected: np.ndarray, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until `run` answers, then require its probabilities for rows `x` (one request of all
    rows, and one of the first row; over gRPC too where it speaks OIP) to equal onnxruntime's
    `expected`. Raises RuntimeError saying what went wrong."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        if run.proc.poll() is not None:
            raise RuntimeError(f"exited with {run.proc.returncode} before answering: {last}{tail(run.log)}")
        try:
            got = _post(run, x)
            break
        except urllib.error.HTTPError as exc:  # up, and refusing: only "not yet" is worth waiting for
            if exc.code not in (404, 502, 503):
                raise RuntimeError(f"HTTP {exc.code}: {exc.read()[:300]!r}") from None
            last = f"HTTP {exc.code}; "
            if time.monotonic() > deadline:
                raise RuntimeError(f"no correct answer within {timeout_s:g} s: {last}{tail(run.log)}") from None
            time.sleep(1.0)
        except (urllib.error.URLError, ConnectionError, OSError, ValueError, KeyError) as exc:
            last = f"{type(exc).__name__}: {str(exc)[:200]}; "
            if time.monotonic() > deadline:
                raise RuntimeError(f"no correct answer within {timeout_s:g} s: {last}{tail(run.log)}") from None
            time.sleep(1.0)
    _same("REST, all rows", got, expected)
    _same("REST, one row", _post(run, x[:1]), expected[:1])
    if run.grpc is not None:
        import tritonclient.grpc as g

        client = g.InferenceServerClient(run.grpc)
        try:
            for n in (len(x), 1):
                inp = g.InferInput("float_input", [n, x.shape[1]], "FP32")
                inp.set_data_from_numpy(x[:n])
                _same(f"gRPC, {n} row(s)", client.infer("mlp", [inp]).as_numpy("probabilities").reshape(n, -1),
                      expected[:n])
        finally:
            client.close()


def _post(run: Running, x: np.ndarray) -> np.ndarray:
    request = urllib.request.Request(run.rest_url, data=body(run.style, x),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return probabilities(run.style, r.read(), len(x))


def _same(what: str, got: np.ndarray, expected: np.ndarray) -> None:
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        diff = np.abs(got - expected).max() if got.shape == expected.shape else f"shape {got.shape}"
        raise RuntimeError(f"wrong answer ({what}): differs from onnxruntime's by {diff}")


def tail(log: Path | None, lines: int = 3) -> str:
    """The last non-empty lines of a peer's log, joined: the reason it gave, where it gave one."""
    if log is None or not log.exists():
        return ""
    text = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:])[-500:]


def stop(run: Running, timeout_s: float = 60.0) -> None:
    """SIGTERM to the root (it drains and takes its children down), then SIGKILL whatever of the
    tree, as last seen, outlived it (a peer whose children linger would slow the next one)."""
    pids = set(tree(run.proc.pid)) | run.pids_seen
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGTERM)
    try:
        run.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        run.proc.wait()
    time.sleep(0.5)
    for pid in pids - {run.proc.pid}:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
