"""What the server did during a load level, read from outside it: its own latency, its CPU
and how its workers shared the requests. The client's latency alone cannot tell a slow server
from a slow client: on a shared machine the generator's p99 was 8x the server's own.

    watch = ServerWatch("127.0.0.1:8002", "mlp")   # the server's metrics port
    result = run(load, window=watch.window)         # CPU sampled at the measured window's edges
    side = watch.finish()                           # {"server_us", "cpu", "workers"}

From /metrics (any scorewire server): `scorewire_latency_recent_us` (its own percentiles over
the last 5-10 s, per stage), `scorewire_worker_requests_total{worker}` (deltas over the run:
each worker's share), `scorewire_workers`, and `scorewire_process_pid` (its processes; their
parent is the supervisor, whose tree is the server). The CPU comes from /proc, so only for a
server on this machine (or one named by `server_pid`); a server elsewhere gets latency and
shares, and its CPU says why it is missing.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from bench import proctree

SETTLE_S = 3.0  # a worker's counters reach /metrics within 0.25 s; give a loaded machine more


def scrape(metrics: str, timeout_s: float = 5.0) -> dict[str, list]:
    """Samples by their own name (a counter's with its _total, which its family's name drops)
    from HOST:PORT (or a URL) /metrics."""
    url = metrics if metrics.startswith("http") else f"http://{metrics}"
    if not url.rstrip("/").endswith("/metrics"):
        url = url.rstrip("/") + "/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def server_percentiles(samples: dict, model: str) -> dict:
    """The server's own recent percentiles (the last 5-10 s) per stage, in microseconds: the
    worst series of the model's answering roles (not challengers)."""
    out: dict = {}
    for sample in samples.get("scorewire_latency_recent_us", []):
        labels = sample.labels
        if labels.get("model") != model or labels.get("role") == "challenger":
            continue
        name = f"p{float(labels['quantile']) * 100:g}"
        stage = out.setdefault(labels["stage"], {})
        stage[name] = max(stage.get(name, 0), int(sample.value))
    return out


def worker_requests(samples: dict) -> dict[str, int]:
    """Requests answered so far by each worker ("0", "1", ...)."""
    return {s.labels["worker"]: int(s.value) for s in samples.get("scorewire_worker_requests_total", [])}


def workers(samples: dict) -> int | None:
    """The server's worker processes (`scorewire_workers`), None for a server without it."""
    samples = samples.get("scorewire_workers", [])
    return int(samples[0].value) if samples else None


def shares(before: dict[str, int], after: dict[str, int]) -> dict[str, dict]:
    """Each worker's requests over the run and their share of all of them."""
    deltas = {w: max(0, n - before.get(w, 0)) for w, n in after.items()}
    total = sum(deltas.values())
    return {w: {"requests": n, "share": round(n / total, 4) if total else 0.0}
            for w, n in sorted(deltas.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0])}


def _local(host: str) -> bool:
    """Is HOST this machine (loopback, or one of its own addresses)?"""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    if address.is_loopback or address.is_unspecified:
        return True
    try:
        own = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False
    return str(address) in own


def server_root(samples: dict, metrics: str) -> tuple[int | None, str]:
    """The pid whose process tree is the server, from its `scorewire_process_pid` samples
    (their common parent, the supervisor); (None, why) where it cannot be told."""
    host = metrics.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    if not _local(host):
        return None, f"the server ({host}) is not on this machine: --server-pid names it where it is"
    pids = {int(s.value) for s in samples.get("scorewire_process_pid", [])}
    if not pids:
        return None, "its /metrics names no processes (scorewire_process_pid): --server-pid names it"
    parents = {proctree.parent(p) for p in pids}
    if len(parents) != 1 or None in parents:
        return None, "its processes are not this machine's (another pid namespace?): --server-pid names it"
    root = parents.pop()
    if root in proctree.ancestors(os.getpid()) or root == os.getpid():
        return None, "its processes' parent is this bench's own (a pid namespace apart?): --server-pid names it"
    return root, ""


class ServerWatch:
    """Before a level: the worker counters and the server's pids. `window(t0, t1)` (epoch
    seconds of the measured window, from loadgen.run) samples the server's tree and the
    machine at both edges on a thread. `finish()` after the level: latency, CPU, shares."""

    def __init__(self, metrics: str | None, model: str, server_pid: int | None = None) -> None:
        self.metrics, self.model = metrics, model
        self.root, self.why = (server_pid, "") if server_pid else (None, "no --metrics or --server-pid")
        self.before: dict[str, int] = {}
        self.error = ""
        samples = self._scrape()
        if samples is not None:
            self.before = worker_requests(samples)
            self.workers = workers(samples)
            if server_pid is None:
                self.root, self.why = server_root(samples, metrics)
        else:
            self.workers = None
        self._edges: list[proctree.Snapshot] = []
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def _scrape(self) -> dict | None:
        if not self.metrics:
            return None
        try:
            return scrape(self.metrics)
        except Exception as exc:  # noqa: BLE001 - the level's report goes on without the server's side
            self.error = f"could not read {self.metrics}: {exc}"
            return None

    def window(self, t0: float, t1: float) -> None:
        """Sample at the measured window's edges (epoch seconds), on a thread of its own."""
        def sample() -> None:
            for edge in (t0, t1):
                self._done.wait(max(0.0, edge - time.time()))  # a run cut short (Ctrl-C) ends it now
                self._edges.append(proctree.snapshot(self.root, time.monotonic()))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def finish(self) -> dict:
        """{"server_us": stage -> percentiles, "cpu": cores used, "workers": worker -> share},
        the parts that could be measured (with `*_unavailable` saying why for the rest)."""
        out: dict = {}
        if self._thread is not None:
            self._done.set()
            self._thread.join(timeout=5)
        if len(self._edges) == 2 and self._edges[1].at - self._edges[0].at >= 0.1:  # not a run that never ran
            cpu = proctree.between(*self._edges)
            if self.root is None:
                for key in ("cores", "busiest_main_thread", "busiest_pid", "processes"):
                    cpu.pop(key)
                out["cpu_unavailable"] = self.why
            else:
                cpu["server_cores"] = proctree.cores(self.root)
            out["cpu"] = cpu
        families = self._settled()
        if families is None:
            if self.metrics:
                out["server_unavailable"] = self.error
            return out
        out["server_us"] = server_percentiles(families, self.model)
        after = worker_requests(families)
        if after:
            out["workers"] = shares(self.before, after)
        return out

    def _settled(self) -> dict | None:
        """/metrics once the workers' counters stop moving (they arrive up to 0.25 s late)."""
        families, last, deadline = None, None, time.monotonic() + SETTLE_S
        while True:
            current = self._scrape()
            if current is None:
                return families
            families = current
            total = sum(worker_requests(current).values())
            if total == last or time.monotonic() > deadline:
                return families
            last = total
            time.sleep(0.3)
