"""REST load with wrk: a compiled, closed-loop HTTP load generator (C, epoll, one thread per
core), so that the client's cost per request is small and the same for every server, whatever
its JSON. A Python client (aiohttp) spends more CPU per request than some of the servers it
measures, and on 2 shared cores that would cap every figure alike.

wrk posts one fixed body: a Lua script sets the method, body and content type, and its `done`
hook prints the summary as one JSON line (requests, errors by kind, latency percentiles in
microseconds), which `parse` reads back: wrk's own text ("1.23ms", "Requests/sec") rounds.
"""

from __future__ import annotations

import json
import resource
import subprocess
import tempfile
from pathlib import Path

MARK = "WRKJSON "
THREADS = 2  # wrk's event loops (at most one per connection)

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def lua_script(body: bytes) -> str:
    """The Lua script posting `body` (JSON) on every request, with the summary hook."""
    text = body.decode()
    level = 1
    while f"]{'=' * level}]" in text:  # a long bracket the body cannot close
        level += 1
    eq = "=" * level
    return (f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [{eq}[{text}]{eq}]\n{_DONE}")


def parse(stdout: str) -> dict:
    """wrk's summary line (from the script's `done`) as a dict, with requests/s and the errors'
    sum added. Raises ValueError naming what wrk printed when the line is missing."""
    for line in stdout.splitlines():
        if line.startswith(MARK):
            r = json.loads(line[len(MARK):])
            r["errors"] = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
            r["requests_per_s"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
            return r
    raise ValueError(f"no {MARK.strip()} line in wrk's output: {stdout[-400:]!r}")


def run(binary: str, env: dict[str, str], url: str, body: bytes, connections: int, duration_s: float,
        threads: int = THREADS, timeout_s: float = 10.0) -> dict:
    """One wrk run: `connections` connections over `threads` threads for `duration_s` (whole
    seconds, at least 1: wrk takes no fractions). The summary (see `parse`) plus `client_cpu_s`,
    wrk's own user + system CPU."""
    seconds = max(1, round(duration_s))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua_script(body))
        script = Path(f.name)
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([binary, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s",
                               f"--timeout={timeout_s:g}s", "-s", str(script), url],
                              capture_output=True, text=True, env=env, timeout=seconds + timeout_s + 30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        script.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {(done.stderr + done.stdout).strip()[-300:]}")
    r = parse(done.stdout)
    r["client_cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return r
