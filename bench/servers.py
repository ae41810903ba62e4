"""The servers the benches run against, started and stopped in one place: `scorewire serve` on a
config (engine/harness/server.py: its ports from its ready file), the demo's models and config
prepared with `scorewire demo --prepare-only`, and the null server (a gRPC server that answers
without work: the ceiling of what the client and gRPC can do on this machine)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from engine.harness.server import Server, start_server


def serve(config: Path) -> Server:
    """`scorewire serve --config CONFIG` (log level WARNING), once it is ready."""
    try:
        return start_server(config, log_level="WARNING")
    except RuntimeError as exc:
        raise SystemExit(f"scorewire serve --config {config} did not start: {exc}") from None


def prepare_demo(directory: Path) -> None:
    """The demo's models, reference and config (scorewire.toml) in `directory`."""
    subprocess.run([sys.executable, "-m", "engine.cli", "demo", "--dir", str(directory), "--prepare-only"],
                   check=True, stdout=subprocess.DEVNULL)


def start_scorewire(directory: Path) -> Server:
    """The demo prepared in `directory`, served."""
    prepare_demo(directory)
    return serve(directory / "scorewire.toml")


def start_null_server(*args: str) -> tuple[subprocess.Popen, str]:
    """bench/null_server.py with `args`; the process and its gRPC address."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.null_server", *args], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"on (127\.0\.0\.1:\d+)", line)
    if not m:
        raise SystemExit(f"null server did not start: {line!r}")
    return proc, m.group(1)


def stop(proc: subprocess.Popen | None, timeout_s: float = 60.0) -> str:
    """SIGTERM, wait up to `timeout_s` for it to drain (then SIGKILL); what it printed on
    stdout since it was last read, where that is a pipe ("" otherwise)."""
    if proc is None:
        return ""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""
