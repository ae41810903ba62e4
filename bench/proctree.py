"""CPU time of a server's whole process tree, of the machine, and of single threads, from
Linux /proc: what a load level cost and which cores it used. A server is several processes
(scorewire: a supervisor, workers, an observer, challengers), so its CPU is the sum over the
tree, not the CPU of the pid a user started. Reads only; nothing here needs psutil."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.processes import memory as memory_rollup  # smaps_rollup, read as the server reads it
from engine.processes.memory import tree

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(path: str) -> list[str] | None:
    """The fields after the command name of a /proc stat file (the name may hold spaces)."""
    try:
        return Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):  # gone
        return None


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (all their threads)."""
    total = 0.0
    for pid in pids:
        fields = _stat(f"/proc/{pid}/stat")
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def main_thread_s(pid: int) -> float | None:
    """CPU seconds of the process's main thread alone (a Python server's event loop runs
    there: it saturates at one core however many cores the process has)."""
    fields = _stat(f"/proc/{pid}/task/{pid}/stat")
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def parent(pid: int) -> int | None:
    fields = _stat(f"/proc/{pid}/stat")
    return None if fields is None else int(fields[1])


def ancestors(pid: int) -> set[int]:
    """Every process above `pid` (its parent, theirs, ... up to 1)."""
    out: set[int] = set()
    p = parent(pid)
    while p and p not in out:
        out.add(p)
        p = parent(p)
    return out


def cores(pid: int | None = None) -> int:
    """The cores a process may run on (its affinity): what "saturated" is measured against."""
    try:
        return len(os.sched_getaffinity(pid or 0))
    except OSError:
        return os.cpu_count() or 1


def machine_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, summed over its cores (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK, sum(fields[:8]) / _TICK


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds at one moment: a server tree (total and each process's main thread), the machine."""
    at: float  # time.monotonic()
    tree_s: dict[int, float]  # pid -> its CPU seconds (all threads)
    threads_s: dict[int, float]  # pid -> its main thread's CPU seconds
    machine_busy_s: float
    machine_all_s: float


def snapshot(root: int | None, now: float) -> Snapshot:
    pids = tree(root) if root else []
    threads = {p: s for p in pids if (s := main_thread_s(p)) is not None}
    busy, total = machine_s()
    return Snapshot(now, {p: cpu_s([p]) for p in pids}, threads, busy, total)


def between(a: Snapshot, b: Snapshot) -> dict:
    """Cores used from `a` to `b`: the tree's, its busiest main thread's (and whose), the
    machine's busy cores out of all of them. A process that started in between counts whole;
    one that exited is missing (its last CPU time is gone with it)."""
    wall = max(b.at - a.at, 1e-9)
    busiest = max(((b.threads_s[p] - a.threads_s[p]) / wall, p) for p in b.threads_s if p in a.threads_s) \
        if set(a.threads_s) & set(b.threads_s) else (0.0, None)
    all_cores = (b.machine_all_s - a.machine_all_s) / wall
    used = sum(s - a.tree_s.get(p, 0.0) for p, s in b.tree_s.items())
    return {"cores": round(used / wall, 3), "busiest_main_thread": round(busiest[0], 3),
            "busiest_pid": busiest[1], "processes": len(b.threads_s),
            "machine_busy_cores": round((b.machine_busy_s - a.machine_busy_s) / wall, 3),
            "machine_cores": round(all_cores) or os.cpu_count() or 1}


# -- memory, and CPU per process over a window known only afterwards (bench/peers_bench.py) --
def cpu_by_pid(root: int) -> dict[int, float]:
    """CPU seconds (all threads) of every live process of the tree under `root`."""
    out = {}
    for pid in tree(root):
        fields = _stat(f"/proc/{pid}/stat")
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def memory(root: int) -> dict[str, float]:
    """RSS and PSS of the tree under `root`, summed, in MiB, and how many processes it has. RSS
    counts a shared page once per process (a tree of forks looks bigger than it is); PSS divides
    each shared page among the processes mapping it: what the tree costs the machine."""
    rss = pss = n = 0
    for pid in tree(root):
        got = memory_rollup.usage(pid)  # None: gone, or a kernel without smaps_rollup
        if got is not None:
            rss, pss, n = rss + got[0], pss + got[1], n + 1
    return {"rss_mib": rss / 2**20, "pss_mib": pss / 2**20, "processes": n}


class Sampler:
    """Snapshots of a server's tree (and the CPU of this process's other descendants: the load's
    clients) taken every `every_s` by a thread while a load runs. For a load whose measured window
    is known only afterwards (tritonclient's worker processes start, import and warm up before
    they measure), `window(t0, t1)` gives what each used between two monotonic times, so neither
    the clients' start-up nor the warm-up is counted."""

    def __init__(self, server_root: int, every_s: float = 0.2):
        import threading

        self.server_root, self.every_s = server_root, every_s
        self.samples: list[tuple[Snapshot, dict[int, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self) -> None:
        import time

        server = snapshot(self.server_root, time.monotonic())
        me = os.getpid()
        clients = {p: s for p, s in cpu_by_pid(me).items() if p != me and p not in server.tree_s}
        self.samples.append((server, clients))

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._read()

    def __enter__(self) -> "Sampler":
        self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def window(self, t0: float, t1: float) -> tuple[Snapshot, Snapshot, float]:
        """The first and last snapshots at or inside [t0, t1], and the clients' CPU seconds
        between them (a client's last reading in the window less its first, zero if born inside:
        one that exits just before t1 still counts)."""
        inside = [s for s in self.samples if t0 <= s[0].at <= t1] or self.samples[-1:]
        first = inside[0][1]
        used: dict[int, float] = {}
        for _, clients in inside:
            for pid, s in clients.items():
                used[pid] = s - first.get(pid, 0.0)
        return inside[0][0], inside[-1][0], sum(used.values())
