"""Memory of a server, per process: RSS and PSS of every process of a 2-worker server of the
demo MLP, with monitoring off, and with drift (32 features + the prediction) and the scoring
log on. PSS (proportional set size) is what a process costs the machine: a page shared by n
processes counts 1/n in each, so the PSS of the processes adds up to the server's share of
memory, where their RSS counts shared libraries and shared memory once per process.

    python -m bench.memory_bench [--workers 2] [--requests 2000] [--batches 50] [--json FILE] [--md FILE]
                                 [--baseline-tree PATH]   # another checkout's server, measured in the same run
                                 [--idle-s 10]   # and each process's CPU while idle, over that long

Each server is started, sent `--requests` one-row REST requests and `--batches` of 64 rows
(so the sessions, the rings and the monitor have run; a server that has served is the one a
pod limit must hold; enough 64-row batches go round the rings, which then count in full in
both ends), left 3 s, then every process of its tree is read from
/proc/PID/smaps_rollup. The process each pid is comes from /metrics
(scorewire_process_pid); the rest are the supervisor (the process `serve` runs) and
multiprocessing's resource tracker. /dev/shm segments (the rings, the board, the control
table) are reported apart: posix_fallocate reserves them whole, so a cgroup (a pod) is
charged for them from the start, whether or not a process has touched their pages.
With `--idle-s`, each process's CPU (utime + stime, all threads) is then read over that many
seconds with nothing sent: what an idle server costs, as a share of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from engine.processes.memory import rollup, tree
from bench.proctree import cpu_by_pid
from bench.servers import prepare_demo, stop
from engine.harness.config import Config, model_table, server_table
from engine.harness.server import start_server

FEATURES = [f"f{i}" for i in range(32)]
MIB = 1 << 20


def configs(workers: int) -> dict[str, Config]:
    """The two servers measured: the MLP alone, and the MLP watched (drift on 32 features and
    the prediction, the demo's windows) with every row in the scoring log."""
    batching = {"max_batch_size": 64, "max_queue_delay_us": 500}
    monitor = {"features": FEATURES, "outputs": ["probabilities:1"], "reference": "ref.parquet",
               "windows": [1000, 2000], "every": 250}
    return {
        "monitoring off": Config(server_table(workers=workers), [model_table("mlp", "models/mlp.onnx",
                                                                             batching=batching)]),
        "drift + scoring log": Config(server_table(workers=workers),
                                      [model_table("mlp", "models/mlp.onnx", batching=batching, monitor=monitor)],
                                      scorelog={"dir": "log"}),
    }


def roles(metrics: dict[str, float], supervisor: int) -> dict[int, str]:
    """pid -> the process it is, from /metrics' scorewire_process_pid."""
    named = {supervisor: "supervisor"}
    for key, pid in metrics.items():
        if key.startswith("scorewire_process_pid{") and pid:
            process = key.split('process="', 1)[1].split('"', 1)[0]
            slot = key.split('slot="', 1)[1].split('"', 1)[0]
            named[int(pid)] = f"worker {slot}" if process == "worker" else process
    return named


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def load(http_url: str, requests: int, batches: int, rng: np.random.Generator) -> None:
    """One-row requests, then `batches` of 64 rows, one after another (REST)."""
    def infer(rows: int) -> None:
        body = json.dumps({"inputs": [{"name": "float_input", "shape": [rows, 32], "datatype": "FP32",
                                       "data": rng.normal(size=rows * 32).round(4).tolist()}]}).encode()
        request = urllib.request.Request(f"http://{http_url}/v2/models/mlp/infer", body,
                                         {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()

    for _ in range(requests):
        infer(1)
    for _ in range(batches):
        infer(64)


def shm_bytes(pids: list[int]) -> int:
    """Bytes of the /dev/shm segments these processes map (each counted once)."""
    seen = {}
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        except OSError:
            continue
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                name = parts[5].split(" (deleted)")[0]
                try:
                    seen[name] = os.stat(name).st_size
                except OSError:
                    seen.setdefault(name, 0)
    return sum(seen.values())


def measure(config: Config, directory: Path, requests: int, batches: int, settle_s: float,
            tree_path: str | None = None, idle_s: float = 0.0, cold_numba: bool = False) -> dict:
    """The server of `config`, from the checkout at `tree_path` (default: this one) as its
    PYTHONPATH. It runs in `directory`: Python puts the working folder first on a process's
    path (the workers' too), so a server started from inside another checkout would run that
    checkout's code whatever PYTHONPATH says. `cold_numba`: the server starts on an empty Numba
    cache of its own (a fresh container), so its kernels compile."""
    path = config.write(directory / "memory.toml")
    env = {**os.environ, "PYTHONPATH": tree_path or str(Path(__file__).resolve().parents[1])}
    if cold_numba:
        env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-", dir=directory)
    server = start_server(path, log_level="WARNING", env=env, cwd=directory)
    try:
        load(server.http_url, requests, batches, np.random.default_rng(0))
        time.sleep(settle_s)
        named = roles(server.metrics(), server.proc.pid)
        pids = tree(server.proc.pid)
        processes = []
        for pid in pids:
            try:
                m = rollup(pid)
            except OSError:
                continue
            role = named.get(pid) or ("resource tracker" if "resource_tracker" in cmdline(pid) else f"pid {pid}")
            processes.append({"process": role, "pid": pid, "rss": m.get("Rss", 0), "pss": m.get("Pss", 0),
                              "pss_anon": m.get("Pss_Anon", 0), "pss_file": m.get("Pss_File", 0),
                              "pss_shmem": m.get("Pss_Shmem", 0)})
        order = ["supervisor", "resource tracker", "observer", "challengers"]
        processes.sort(key=lambda p: (order.index(p["process"]) if p["process"] in order else len(order), p["process"]))
        shm = shm_bytes(pids)
        if idle_s > 0:
            before = cpu_by_pid(server.proc.pid)
            time.sleep(idle_s)
            after = cpu_by_pid(server.proc.pid)
            for p in processes:  # a process that ended meanwhile counts as idle as it was
                p["idle_cpu_pct"] = 100 * (after.get(p["pid"], 0.0) - before.get(p["pid"], 0.0)) / idle_s
    finally:
        stop(server.proc)
    out = {"processes": processes, "rss": sum(p["rss"] for p in processes),
           "pss": sum(p["pss"] for p in processes), "shm_reserved": shm}
    if idle_s > 0:
        out["idle_cpu_pct"] = sum(p["idle_cpu_pct"] for p in processes)
    return out


def _total(r: dict) -> str:
    idle = f", idle CPU {r['idle_cpu_pct']:.1f}% of a core" if "idle_cpu_pct" in r else ""
    return f"{len(r['processes'])} processes, RSS {r['rss'] / MIB:.0f} MiB, PSS {r['pss'] / MIB:.0f} MiB, " \
           f"/dev/shm {r['shm_reserved'] / MIB:.0f} MiB{idle}"


def markdown(results: dict, argv: str) -> str:
    lines = ["# Memory per process", "", f"`{argv}` on {platform.node()} ({os.cpu_count()} cores), "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "After the requests, per process (MiB). PSS adds up to the server's share of the machine; "
             "RSS counts what processes share once in each. /dev/shm: the shared-memory segments, "
             "reserved whole when made (a pod is charged for them), counted once.", ""]
    names = list(next(iter(results.values())))
    if len(results) > 1:
        lines += ["| server | " + " | ".join(results) + " | PSS ratio |", "|---" * (len(results) + 2) + "|"]
        for name in names:
            cells = [f"PSS {r[name]['pss'] / MIB:.0f} (RSS {r[name]['rss'] / MIB:.0f}, /dev/shm "
                     f"{r[name]['shm_reserved'] / MIB:.0f}" + (f", idle CPU {r[name]['idle_cpu_pct']:.1f}%"
                                                               if "idle_cpu_pct" in r[name] else "") + ")"
                     for r in results.values()]
            first, last = (r[name]["pss"] for r in (results[next(iter(results))], results[list(results)[-1]]))
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {last / first:.2f} |")
        lines.append("")
    for label, runs in results.items():
        for name, r in runs.items():
            idle = "idle_cpu_pct" in r
            lines += [f"## {label}: {name}", "", "| process | RSS | PSS | PSS anon | PSS file | PSS shmem |"
                      + (" idle CPU % |" if idle else ""), "|---|---|---|---|---|---|" + ("---|" if idle else "")]
            for p in r["processes"]:
                lines.append(f"| {p['process']} | {p['rss'] / MIB:.1f} | {p['pss'] / MIB:.1f} | "
                             f"{p['pss_anon'] / MIB:.1f} | {p['pss_file'] / MIB:.1f} | {p['pss_shmem'] / MIB:.1f} |"
                             + (f" {p['idle_cpu_pct']:.1f} |" if idle else ""))
            lines += [f"| **all {len(r['processes'])} processes** | **{r['rss'] / MIB:.1f}** | **{r['pss'] / MIB:.1f}** "
                      "| | | |" + (f" **{r['idle_cpu_pct']:.1f}** |" if idle else ""), "",
                      f"/dev/shm segments: {r['shm_reserved'] / MIB:.1f} MiB", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2000, help="one-row requests before measuring")
    parser.add_argument("--batches", type=int, default=50, help="64-row requests after them")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between the requests and the reading")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--baseline-tree", help="a checkout of scorewire to measure first (its PYTHONPATH)")
    parser.add_argument("--idle-s", type=float, default=0.0,
                        help="then read each process's CPU over this many idle seconds (0: not)")
    parser.add_argument("--cold-numba", action="store_true",
                        help="start each server on an empty Numba cache of its own, as a fresh container would")
    args = parser.parse_args(argv)
    trees = ([("baseline", args.baseline_tree)] if args.baseline_tree else []) + [("this tree", None)]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="scorewire-memory-") as tmp:
        directory = Path(tmp)
        prepare_demo(directory)
        for name, config in configs(args.workers).items():  # the trees in turns, server by server
            for label, path in trees:
                results.setdefault(label, {})[name] = measure(config, directory, args.requests, args.batches,
                                                              args.settle, path, args.idle_s,
                                                              args.cold_numba)
    for label, runs in results.items():
        for name, r in runs.items():
            print(f"{label}, {name}: {_total(r)}")
            for p in r["processes"]:
                idle = f"  idle CPU {p['idle_cpu_pct']:4.1f}%" if "idle_cpu_pct" in p else ""
                print(f"  {p['process']:<17} RSS {p['rss'] / MIB:6.1f}  PSS {p['pss'] / MIB:6.1f}  (anon "
                      f"{p['pss_anon'] / MIB:5.1f}, file {p['pss_file'] / MIB:5.1f}, shmem {p['pss_shmem'] / MIB:5.1f})"
                      f"{idle}")
    command = "python -m bench.memory_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json:
        args.json.write_text(json.dumps({"command": command, "results": results}, indent=1))
    if args.md:
        args.md.write_text(markdown(results, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
