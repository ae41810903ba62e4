"""The pieces of bench/peers_bench.py that need no peer: wrk's summary parsed back, the Lua body
quoted safely, /proc accounting over a process tree, the REST bodies of each style, the limit
named, and a failed peer kept in the report with its reason. (The bench itself starts seven
servers in their own venvs: too slow for the suite; bench/README.md gives its command.)"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bench import proctree, wrk
from bench.peer_servers import body, probabilities
from bench.peers_bench import limit_of
from bench.peers_report import markdown, summarize
from engine.processes import memory

LINE = ('WRKJSON {"requests": 5000, "duration_us": 2000000, "bytes": 1, "connect": 0, "read": 1, "write": 0, '
        '"status": 2, "timeout": 0, "p50_us": 1500, "p90_us": 2500, "p99_us": 9000, "max_us": 12000, '
        '"mean_us": 1600.5}')


def test_wrk_summary_is_parsed_from_the_scripts_line():
    r = wrk.parse("Running 2s test @ http://x\n  2 threads and 8 connections\n" + LINE + "\n")
    assert r["requests_per_s"] == 2500.0 and r["p99_us"] == 9000 and r["errors"] == 3


def test_wrk_output_without_the_line_is_an_error_naming_it():
    with pytest.raises(ValueError, match="WRKJSON"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_the_lua_long_bracket_outlasts_the_body():
    script = wrk.lua_script(b'{"a": "]=]"}')
    assert 'wrk.body = [==[{"a": "]=]"}]==]' in script and "done = function" in script


def test_rollup_lines_are_read_in_kb():
    text = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  2048 kB\nPss:  1024 kB\nPss_Anon: 10 kB\n"
    assert memory.parse_rollup(text) == {"Rss": 2048 * 1024, "Pss": 1024 * 1024, "Pss_Anon": 10 * 1024}


def test_the_tree_counts_a_childs_cpu_and_memory():
    # a parent that starts a child spinning until killed: the child's CPU is in the parent's tree
    code = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'while True: pass']).wait()")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while len(proctree.cpu_by_pid(parent.pid)) < 2:  # wait for the child
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.02)
        before = proctree.cpu_by_pid(parent.pid)
        m = proctree.memory(parent.pid)
        time.sleep(0.5)
        after = proctree.cpu_by_pid(parent.pid)
        used = {pid: s - before.get(pid, 0.0) for pid, s in after.items()}
    finally:
        for pid in proctree.cpu_by_pid(parent.pid):
            if pid != parent.pid:
                os.kill(pid, signal.SIGKILL)  # the child: the parent's wait() then returns
        parent.wait(10)
    assert len(used) == 2 and sum(used.values()) > 0.05
    assert m["processes"] == 2 and m["rss_mib"] >= m["pss_mib"] > 0


@pytest.mark.parametrize("style", ["oip", "bentoml", "rows"])
def test_each_rest_body_carries_the_rows_exactly(style):
    import json

    x = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    sent = json.loads(body(style, x))
    rows = {"oip": lambda: np.asarray(sent["inputs"][0]["data"], np.float32).reshape(sent["inputs"][0]["shape"]),
            "bentoml": lambda: np.asarray(sent["x"], np.float32),
            "rows": lambda: np.asarray(sent["inputs"], np.float32)}[style]()
    assert np.array_equal(rows, x)
    p = np.asarray([[0.25, 0.75]] * 3, np.float32)
    answer = {"oip": {"outputs": [{"name": "label", "data": [1, 1, 1]},
                                  {"name": "probabilities", "data": p.ravel().tolist()}]},
              "bentoml": p.tolist(), "rows": {"probabilities": p.tolist()}}[style]
    assert np.array_equal(probabilities(style, json.dumps(answer).encode(), 3), p)


def test_the_limit_is_bench_limits_verdict_with_the_machines_biggest_user():
    def cpu(cores, thread, busy):
        return {"cores": cores, "server_cores": 2, "busiest_main_thread": thread, "busiest_pid": 7,
                "machine_busy_cores": busy, "machine_cores": 2}

    assert limit_of(cpu(1.9, 0.9, 2.0), 0.1, 2)["kind"] == "server"
    assert limit_of(cpu(1.0, 0.95, 1.2), 0.1, 2)["kind"] == "server"  # one main thread at a core
    assert limit_of(cpu(0.3, 0.2, 1.9), 0.2, 2)["kind"] == "machine: other processes"
    assert limit_of(cpu(0.3, 0.2, 1.95), 1.5, 2)["kind"] == "machine: client"
    assert limit_of(cpu(0.3, 0.2, 0.5), 0.1, 2)["kind"] == "neither"


def test_a_failed_peer_keeps_its_row_and_reason():
    cell = {"protocol": "rest", "rows": 1, "concurrency": 8, "requests_per_s": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0,
            "server_cpu_us_per_request": 200.0, "server_cores": 0.2, "client_cores": 0.1, "machine_busy": 0.5,
            "rss_mib": 100.0, "pss_mib": 50.0, "processes": 1, "limit": "not CPU"}
    ok = {"status": "ok", "reason": "", "settings": "s", "idle": {"rss_mib": 90.0, "pss_mib": 45.0, "processes": 1},
          "cells": [cell]}
    faster = {**ok, "cells": [{**cell, "requests_per_s": 1500.0, "server_cpu_us_per_request": 100.0}]}
    passes = [{"scorewire": ok, "floor": faster, "ray": {"status": "install failed", "reason": "pip exited with 1",
                                                        "cells": []}}]
    args = argparse.Namespace(peers=["scorewire", "floor", "ray"], duration=1.0, passes=1)
    summary = summarize(passes, args)
    floor = summary["cells"]["rest rows=1 c=8"]["floor"]
    assert floor["rps_vs_scorewire"] == 1.5 and floor["cpu_vs_scorewire"] == 0.5
    text = markdown(summary, args, "python -m bench.peers_bench", short=True)
    assert "SHORT FUNCTIONAL RUN" in text
    assert "| ray | **install failed**: install failed: pip exited with 1 |" in text
    assert "| ray | install failed |" in text  # in the cell's table too
