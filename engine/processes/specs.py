"""What the supervisor starts each process with, and the one entry point they start from.

The supervisor never imports what its children run: `launch` is the spawn target, and the
child imports its module (`engine.processes.worker`, ...) itself. Importing the worker's,
the observer's and the challengers' modules would load onnxruntime, Numba, LLVM, SciPy and
pyarrow into the supervisor, about 100 MiB of a process that only watches the others. The
specs are plain values (shared memory by name), so pickling them costs no import either.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from multiprocessing.connection import Connection

from engine.settings import Settings


@dataclass(frozen=True)
class WorkerSpec:
    """A worker process (engine/processes/worker.py)."""

    slot: int
    settings: Settings
    ports: tuple[int, int]  # gRPC, HTTP
    ring: str
    control: str
    board: str
    log_level: str


@dataclass(frozen=True)
class ObserverSpec:
    """The observer process (engine/processes/observer.py)."""

    settings: Settings
    rings: tuple[str, ...]  # the workers'
    control: str
    board: str
    metrics_port: int
    log_level: str
    to_challengers: str | None  # None: no challengers process (no route has challengers)
    from_challengers: str | None


@dataclass(frozen=True)
class ChallengersSpec:
    """The challengers process (engine/processes/challengers.py)."""

    settings: Settings
    slot: int
    inbound: str  # the observer's forwarded batches
    outbound: str  # the shadow results, back to the observer
    board: str
    log_level: str


def launch(module: str, spec, conn: Connection) -> None:
    """The spawn target of every child: `module`'s main(spec, conn), imported here, in the child."""
    importlib.import_module(module).main(spec, conn)
