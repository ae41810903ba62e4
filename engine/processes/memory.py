"""Each process's memory, as the kernel counts it: RSS and PSS from /proc/PID/smaps_rollup.

RSS counts every page a process maps, shared or not, so the RSS of a server's processes adds
up to more than it uses (the shared libraries, the rings); PSS counts a page shared by n
processes as 1/n in each, so the processes' PSS adds up to what the server costs the machine
(what a pod's memory limit must hold, plus the /dev/shm segments it reserved).

Read by the observer process every READ_S, never on the request path (reading a process's
smaps_rollup walks its page tables: about a millisecond for a few hundred MiB), and only on
Linux (elsewhere there is nothing to read, and no gauge).
"""

from __future__ import annotations

import time
from pathlib import Path

READ_S = 5.0


def parse_rollup(text: str) -> dict[str, int]:
    """smaps_rollup's totals ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", ...), in bytes."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def rollup(pid: int) -> dict[str, int]:
    """The process's smaps_rollup totals, in bytes; OSError when it is gone or cannot be read."""
    return parse_rollup(Path(f"/proc/{pid}/smaps_rollup").read_text())


def usage(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) in bytes of a running process; None when it is gone or cannot be read."""
    try:
        m = rollup(pid)
    except OSError:
        return None
    return (m["Rss"], m["Pss"]) if "Rss" in m and "Pss" in m else None


def children(pid: int) -> list[int]:
    """The processes `pid` started (Linux: /proc/PID/task/*/children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


class Gauges:
    """scorewire_process_rss_bytes and scorewire_process_pss_bytes of a server's processes,
    read at most every READ_S. `named()` gives {pid: (process, slot)} of the processes known by
    role; the other children of `root` (multiprocessing's resource tracker, a reload's check)
    are summed as process="other"."""

    def __init__(self, root: int, named):
        self.root, self.named = root, named
        self._samples: dict[str, list] = {"rss": [], "pss": []}
        self._next = 0.0

    def refresh(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next = now + READ_S
        named = self.named()
        rss, pss = [], []
        other = [0, 0]
        for pid in [self.root, *children(self.root)]:
            got = usage(pid)
            if got is None:
                continue
            if pid in named:
                process, slot = named[pid]
                labels = f'{{process="{process}",slot="{slot}"}}'
                rss.append([labels, got[0]])
                pss.append([labels, got[1]])
            else:
                other[0] += got[0]
                other[1] += got[1]
        if other[0]:
            rss.append(['{process="other",slot=""}', other[0]])
            pss.append(['{process="other",slot=""}', other[1]])
        self._samples = {"rss": rss, "pss": pss}

    def families(self) -> list:
        if not self._samples["rss"]:
            return []
        return [
            ["scorewire_process_rss_bytes", "gauge",
             "Resident memory of each process of the server (shared pages counted in every process that maps "
             f"them; read every {READ_S:g} s).", self._samples["rss"]],
            ["scorewire_process_pss_bytes", "gauge",
             "Proportional memory of each process (a page shared by n processes counts 1/n in each): their sum "
             "is what the server costs the machine, besides its /dev/shm segments.", self._samples["pss"]],
        ]
