"""`scorewire serve` started as a subprocess, for the demo, the tests and the benches: it is
ready when its ready file (engine/ready.py) appears, and the ports it bound come from that
file. Its stdout stays a pipe: the lines it printed up to then are `Server.startup`, the rest
is there to read (`proc.stdout`, or `stop_and_read()`)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from engine.ready import Ready, read


@dataclass
class Server:
    proc: subprocess.Popen
    grpc_port: int
    http_port: int
    metrics_port: int
    directory: Path
    """The config's folder (its relative paths start there)."""
    startup: list[str] = field(default_factory=list)
    """What it printed on stdout until it was ready (models loaded, providers, ports)."""
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """The gRPC address (tritonclient.grpc's url)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """The REST address (tritonclient.http's url)."""
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics into {'name{labels}': value}."""
        return scrape(self.metrics_url, timeout_s=5)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (unless it exited already), then its exit code once it drained."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def stop_and_read(self, timeout_s: float = 120.0) -> str:
        """SIGTERM, wait, and return what it printed after `startup` (its exit code is
        `proc.returncode`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout_s)
        return out or ""


def start_server(config: Path, *, log_level: str = "INFO", timeout_s: float = 120.0,
                 wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> Server:
    """Start `scorewire serve --config CONFIG` (run by `wrapper`, a command that execs its
    arguments, when given; stderr is this process's; in `cwd`, else this one's) and return it
    once it is ready.
    RuntimeError when it exits first or is not ready within `timeout_s` (then it is killed)."""
    config = Path(config)
    folder = Path(tempfile.mkdtemp(prefix="scorewire-ready-"))
    ready_file = folder / "ready.json"
    proc = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "engine.cli", "--log-level", log_level, "serve", "--config", str(config),
         "--ready-file", str(ready_file)],
        stdout=subprocess.PIPE, text=True, env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        cwd=cwd)
    try:
        ready, startup = _wait_ready(proc, ready_file, timeout_s)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Server(proc, ready.grpc_port, ready.http_port, ready.metrics_port, config.parent, startup)


def _wait_ready(proc: subprocess.Popen, ready_file: Path, timeout_s: float) -> tuple[Ready, list[str]]:
    """Read its stdout as it comes (so that it never blocks on a full pipe) until the ready
    file is there: the server prints "ready" before it writes the file, so every line of its
    start-up is read by then."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while True:
        ready = read(ready_file)
        ended = _read_available(fd, chunks, wait_s=0.0 if ready else 0.05)
        lines = [line.strip() for line in b"".join(chunks).decode(errors="replace").splitlines()]
        if ready is not None:
            return ready, lines
        if ended or proc.poll() is not None:
            raise RuntimeError(f"scorewire serve exited with {proc.wait()} before it was ready; it printed: "
                               + " | ".join(lines[-5:]))
        if time.monotonic() > deadline:
            raise RuntimeError(f"scorewire serve was not ready within {timeout_s:g} s; it printed: "
                               + " | ".join(lines[-5:]))


def _read_available(fd: int, chunks: list[bytes], wait_s: float) -> bool:
    """Append what the pipe holds now (waiting up to `wait_s` for the first bytes); True at
    its end (the server closed it)."""
    while select.select([fd], [], [], wait_s)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            return True
        chunks.append(chunk)
        wait_s = 0.0
    return False


def scrape(url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """GET `url` (a /metrics address): {'name{labels}': value} for every sample."""
    text = urllib.request.urlopen(url, timeout=timeout_s).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values
