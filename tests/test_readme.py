"""The README's "Serving your models" steps, run as a new user would: its shell lines and its
Python snippet, verbatim, in a fresh folder."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_blocks(title: str) -> dict[str, list[str]]:
    """The code blocks of each language in the README section `title`, in order."""
    text = README.read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        blocks.setdefault(lang, []).append(body)
    return blocks


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_serving_your_models_runs_verbatim(tmp_path):
    if not (_port_free(8000) and _port_free(8001) and _port_free(8002)):
        pytest.skip("ports 8000-8002, which the README uses, are taken on this machine")
    blocks = _section_blocks("Serving your models")
    commands = [shlex.split(line.split("#", 1)[0]) for line in blocks["bash"][0].splitlines()
                if line.split("#", 1)[0].strip()]
    assert [c[:2] for c in commands] == [["scorewire", "demo"], ["scorewire", "serve"]]
    scorewire = [sys.executable, "-m", "engine.cli"]
    prepared = subprocess.run(scorewire + commands[0][1:], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr
    server = subprocess.Popen(scorewire + commands[1][1:], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip() == "scorewire: ready":
                break
        assert lines and lines[-1].strip() == "scorewire: ready", lines
        assert "scorewire: gRPC listening on 127.0.0.1:8001\n" in lines
        snippet = subprocess.run([sys.executable, "-c", blocks["python"][0]], cwd=tmp_path, capture_output=True,
                                 text=True, timeout=60)
        assert snippet.returncode == 0, snippet.stderr
        # four rows of two class probabilities, each row summing to one
        rows = re.findall(r"\[\s*([0-9.e+-]+)\s+([0-9.e+-]+)\s*\]", snippet.stdout)
        assert len(rows) == 4 and all(abs(float(a) + float(b) - 1) < 1e-5 for a, b in rows), snippet.stdout
        # the metrics port the prepared config names; the gbt's request reaches the latency
        # table within the monitor's gathering time (1 s); the mlp's monitor has seen nothing
        for _ in range(30):
            status = subprocess.run(scorewire + ["status", "--target", "127.0.0.1:8002"], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            if re.search(r"^gbt +1 +champion +total ", status.stdout, re.M):
                break
            time.sleep(0.5)
        assert re.search(r"^gbt +1 +champion +total ", status.stdout, re.M), status.stdout
        assert re.search(r"^mlp +1 +f0 +2,000 +- +- +- +not evaluated yet \(window 0/2,000\)", status.stdout, re.M)
        # the REST examples, each line as a shell runs it
        if shutil.which("curl") is None:
            pytest.skip("no curl on this machine for the README's REST examples")
        curls = [line for line in blocks["bash"][1].splitlines() if line.strip()]
        assert len(curls) == 3 and all(line.startswith("curl ") for line in curls)
        said = [subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=60)
                for line in curls]
        assert all(s.returncode == 0 for s in said), [s.stderr for s in said]
        assert said[0].stdout.strip() == "200"
        assert json.loads(said[1].stdout)["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 32]}]
        answer = json.loads(said[2].stdout)
        probabilities = next(o for o in answer["outputs"] if o["name"] == "probabilities")
        assert probabilities["shape"] == [1, 2] and abs(sum(probabilities["data"]) - 1) < 1e-5
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
