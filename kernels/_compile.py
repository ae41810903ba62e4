"""Kernels compiled in a helper process, so the process that runs them does not keep what
compiling costs.

Numba compiles through LLVM, and a process that has compiled keeps the compiler's memory: the
observer with drift and the scoring log measured 354 MiB of PSS after starting on an empty
Numba cache, against 225 MiB with the helper (`python -m bench.memory_bench --cold-numba
--settle 10`). So when a kernel's signature is
not in the cache, the process asks a helper (`python -m kernels._compile`, one per process,
started on the first miss) to compile it; the helper writes the cache and the process loads
the compiled code from it.

The helper exits after IDLE_S without a request, or when the process that started it closes
its pipe. Requests are JSON (nothing here unpickles): the signature's types described as
`describe` does (arrays, numbers, typed lists, tuples: what the kernels take). If the helper
cannot compile (it cannot start, it died, it took longer than ANSWER_S, the cache cannot be
written, a type it cannot describe), the process compiles the kernel itself, as Numba would
have: slower to start or bigger, never wrong. Each helper start costs ~0.5 s (Numba's import).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time

try:
    import fcntl
except ImportError:  # not on Windows: helpers there do not lock the cache against each other
    fcntl = None

IDLE_S = 5.0
ANSWER_S = 600.0  # the longest a compile may take in the helper before the process compiles it itself
_LENGTH = struct.Struct("<Q")


def describe(t):
    """A Numba type as JSON-able lists, or TypeError for a kind the kernels do not take."""
    from numba.core import types

    if isinstance(t, types.Array):
        return ["array", describe(t.dtype), t.ndim, t.layout, t.mutable, t.aligned]
    if isinstance(t, (types.Boolean, types.Integer, types.Float, types.Complex)) and not isinstance(t, types.Literal):
        return ["number", str(t)]
    if isinstance(t, types.ListType):
        return ["list", describe(t.item_type)]
    if isinstance(t, types.UniTuple):
        return ["unituple", describe(t.dtype), t.count]
    if isinstance(t, types.Tuple):
        return ["tuple", [describe(x) for x in t.types]]
    raise TypeError(f"not described: {t!r}")


def rebuild(d):
    """The Numba type `describe` described."""
    import numpy as np
    from numba.core import types
    from numba.np.numpy_support import from_dtype

    kind = d[0]
    if kind == "array":
        return types.Array(rebuild(d[1]), d[2], d[3], readonly=not d[4], aligned=d[5])
    if kind == "number":
        return from_dtype(np.dtype(d[1]))
    if kind == "list":
        return types.ListType(rebuild(d[1]))
    if kind == "unituple":
        return types.UniTuple(rebuild(d[1]), d[2])
    if kind == "tuple":
        return types.Tuple([rebuild(x) for x in d[1]])
    raise ValueError(f"unknown type description {d!r}")


def _send(fd: int, payload: bytes) -> None:
    data = memoryview(_LENGTH.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data):]


def _read(fd: int, n: int, deadline: float | None = None) -> bytes:
    parts, left = [], n
    while left:
        if deadline is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no answer in time")
        part = os.read(fd, left)
        if not part:
            raise EOFError("the pipe closed")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _receive(fd: int, deadline: float | None = None) -> bytes:
    (n,) = _LENGTH.unpack(_read(fd, _LENGTH.size, deadline))
    return _read(fd, n, deadline)


class Helper:
    """The helper process of this process: started on the first request, started again when
    it has exited since (its idle timeout). One that fails before answering once (it cannot
    start, it dies) or takes longer than ANSWER_S is given up for good: the process compiles
    its kernels itself from then on."""

    def __init__(self, command: list[str] | None = None):
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.answered = False  # a helper of this process has answered once
        self.given_up = False
        self.compiled = 0  # signatures the helper compiled that this process then loaded from the cache

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            # the helper finds `kernels` where this process did; nothing else of this process's
            # path goes first (a program's own types.py beside it would break Python's start)
            package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH")) if p)}
            command = self.command or [sys.executable, "-m", "kernels._compile", repr(IDLE_S)]
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env,
                                    close_fds=True)
            threading.Thread(target=proc.wait, name="kernels-helper-reaper", daemon=True).start()  # no zombie
            self.proc = proc
        return self.proc

    def compile(self, module: str, attribute: str, signature) -> bool:
        """Whether the helper compiled `module.attribute` for `signature` into the cache."""
        if self.given_up:
            return False
        try:
            payload = json.dumps([module, attribute, [describe(t) for t in signature]]).encode()
        except TypeError:  # a type not described: compiled here
            return False
        with self.lock:
            for _ in range(2):  # a helper that exited on its idle timeout just now: once more, with a new one
                try:
                    proc = self._start()
                    _send(proc.stdin.fileno(), payload)
                    reply = _receive(proc.stdout.fileno(), time.monotonic() + ANSWER_S)
                except (OSError, EOFError, ValueError, TypeError) as exc:  # TimeoutError is an OSError
                    self.close()
                    if not self.answered or isinstance(exc, TimeoutError):
                        self.given_up = True
                        return False
                    continue
                self.answered = True
                return reply == b"ok"
            return False

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            try:
                proc.wait(timeout=IDLE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


helper = Helper()


def done() -> None:
    """Let this process's helper go now, rather than IDLE_S after its last compile: for a
    process whose kernels are all loaded (the observer once warm), so that its memory is back
    before the server says ready. A kernel met later starts a new one."""
    with helper.lock:
        helper.close()


class CompiledElsewhere:
    """A Numba dispatcher's cache that, on a miss, has the helper compile the signature and
    loads what it wrote (Numba's Dispatcher.compile asks its cache before compiling)."""

    def __init__(self, cache, module: str, attribute: str):
        self.cache, self.module, self.attribute = cache, module, attribute

    def load_overload(self, signature, target_context):
        found = self.cache.load_overload(signature, target_context)
        if found is None and helper.compile(self.module, self.attribute, signature):
            found = self.cache.load_overload(signature, target_context)
            helper.compiled += found is not None  # else compiled here after all (code Numba does not cache)
        return found

    def __getattr__(self, name):
        return getattr(self.cache, name)


def main(idle_s: float) -> int:
    """The helper: compiles what it is asked into the cache, one request at a time, until its
    requests end or none comes for `idle_s`. Helpers of several processes compile one at a
    time (a lock file in the cache's folder): Numba's index of a kernel's signatures is read,
    changed and written without a lock, and two writers at once could lose an entry; the
    second then finds what the first wrote."""
    from kernels import _jit

    _jit.COMPILE_ELSEWHERE = False  # this is the elsewhere
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the process that started it
    replies = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to stderr, not into the replies
    requests = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([requests], [], [], idle_s)
        if not ready:
            return 0
        try:
            module, attribute, described = json.loads(_receive(requests))
        except EOFError:
            return 0
        try:
            signature = tuple(rebuild(d) for d in described)
            dispatcher = _jit.dispatcher(getattr(importlib.import_module(module), attribute))
            with _locked(dispatcher._cache.cache_path):
                dispatcher.compile(signature)
            reply = b"ok"
        except Exception as e:  # noqa: BLE001 - told to the process, which compiles it itself
            reply = f"{type(e).__name__}: {e}".encode()
        try:
            _send(replies, reply)
        except OSError:  # the process is gone; what was compiled is in the cache
            return 0


class _locked:
    """An exclusive lock on `folder`/.scorewire-compile.lock, where fcntl exists."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, ".scorewire-compile.lock")
        self.fd: int | None = None

    def __enter__(self):
        if fcntl is not None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with it


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else IDLE_S))
