"""What limited a load level (bench/limits.py), each worker's share (bench/serverwatch.py) and
CPU time from /proc (bench/proctree.py): the verdicts on levels as the sweep records them, and
a real process that burns a known amount of CPU (it measures its own)."""

from __future__ import annotations

import subprocess
import sys
import time

from bench import proctree
from bench.limits import headline, limit, saturation
from bench.serverwatch import shares


def _cpu(server: float = 0.5, thread: float = 0.3, busy: float = 1.0, machine: int = 4) -> dict:
    return {"cores": server, "server_cores": 2, "busiest_main_thread": thread, "busiest_pid": 42, "processes": 5,
            "machine_busy_cores": busy, "machine_cores": machine}


def test_the_limit_names_what_ran_out():
    assert limit({"cpu": _cpu(server=1.9), "client_loop_cpu": 0.2})["kind"] == "server"
    one_loop = limit({"cpu": _cpu(thread=0.95), "client_loop_cpu": 0.2})
    assert one_loop["kind"] == "server" and "main thread (pid 42) at 0.95" in one_loop["why"]
    client = limit({"cpu": _cpu(), "client_loop_cpu": 0.97})
    assert client["kind"] == "client" and "event loop at 0.97" in client["why"]
    machine = limit({"cpu": _cpu(server=0.8, busy=1.95, machine=2), "client_loop_cpu": 0.5, "client_cpu_total": 0.6})
    assert machine["kind"] == "machine"
    assert "1.95 of 2 cores busy (client 0.60, server 0.80, other processes 0.55)" in machine["why"]
    assert limit({"cpu": _cpu(), "client_loop_cpu": 0.2})["kind"] == "neither"
    assert limit({"client_loop_cpu": 0.2})["kind"] == "unknown"


def _level(offered, achieved, passed, server_passed, kind):
    return {"offered_rps": offered, "achieved_rps": achieved, "passed": passed, "server_passed": server_passed,
            "limit": {"kind": kind, "why": f"{kind} why"}}


def test_the_headline_names_the_servers_capacity_and_when_the_client_was_the_limit():
    levels = [_level(500, 500, True, True, "neither"), _level(750, 750, False, True, "client"),
              _level(1125, 1125, False, True, "client"), _level(1687, 1200, False, False, "client")]
    data = {"slo": "p99<10ms", "levels": levels, "best_rps": 500, "server_best_rps": 1125,
            "server_slo": "p99<10ms", "saturation": saturation(levels),
            "load": {"duration_s": 10, "warmup_s": 1}}
    assert data["saturation"]["offered_rps"] == 1687 and data["saturation"]["short"]
    lines = headline(data)
    assert lines[0] == "highest rate meeting p99<10ms at the client (latency from the scheduled send): 500 requests/s"
    assert lines[1] == "server capacity: its own latency met p99<10ms up to 1,125 requests/s offered"
    assert lines[2] == "saturation: at 1,687/s offered, 1,200/s answered (client why)"
    assert lines[3] == "from 750/s the client, not the server, was the limit: client why"
    assert len(lines) == 4  # levels of 11 s: the server's recent percentiles are each level's own
    for lv in levels:
        lv["server_passed"] = None  # no --metrics
    assert headline(data)[1].startswith("server capacity: not measured (--metrics")


def test_the_server_saturates_when_its_cpu_reaches_its_cores_even_while_it_keeps_up():
    levels = [_level(100, 100, True, True, "neither"), _level(200, 200, True, True, "server")]
    assert saturation(levels)["offered_rps"] == 200 and not saturation(levels)["short"]
    assert saturation(levels[:1]) is None


def test_worker_shares_are_the_counters_deltas():
    out = shares({"0": 100, "1": 40}, {"0": 400, "1": 140, "2": 0})
    assert out == {"0": {"requests": 300, "share": 0.75}, "1": {"requests": 100, "share": 0.25},
                   "2": {"requests": 0, "share": 0.0}}


def test_a_process_trees_cpu_is_what_its_processes_burned():
    """A child of a child spins until its own CPU clock says 0.3 s: the tree from the first
    child holds it, and its CPU between two snapshots is at least that."""
    burn = ("import sys, time\nsys.stdin.readline()\nt = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\nprint('done', flush=True)\nsys.stdin.readline()\n")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys\n"
                               f"subprocess.run([sys.executable, '-c', {burn!r}])"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(proctree.tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        pids = proctree.tree(parent.pid)
        assert len(pids) == 2 and pids[0] == parent.pid
        before = proctree.snapshot(parent.pid, time.monotonic())
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "done\n"
        after = proctree.snapshot(parent.pid, time.monotonic())
        used = proctree.between(before, after)
        assert used["processes"] == 2 and used["busiest_pid"] == pids[1]
        assert used["cores"] * (after.at - before.at) >= 0.29  # ticks of 10 ms
        assert proctree.cpu_s([pids[1]]) >= 0.29
        assert parent.pid in proctree.ancestors(pids[1])
    finally:
        parent.stdin.write("end\n")
        parent.stdin.close()
        parent.wait(timeout=30)
