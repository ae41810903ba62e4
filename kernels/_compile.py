"""Kernels compiled in a helper process, so the process that runs them does not keep what
compiling costs.

Numba compiles through LLVM, and a process that has compiled keeps the compiler's memory: the
observer with drift and the scoring log measured 357 MiB of PSS after starting on an empty
Numba cache, against 228 MiB when every kernel came from the cache (`python -m
bench.memory_bench` with a fresh NUMBA_CACHE_DIR, then again). So when a kernel's signature is
not in the cache, the process asks a helper (`python -m kernels._compile`, one per process,
started on the first miss) to compile it; the helper writes the cache and the process loads
the compiled code from it.

The helper exits after IDLE_S without a request, or when the process that started it closes
its pipe. Requests are JSON (nothing here unpickles): the signature's types described as
`describe` does (arrays, numbers, typed lists, tuples: what the kernels take). If the helper
cannot compile (it died, the cache cannot be written, a type it cannot describe), the process
compiles the kernel itself, as Numba would have: slower to start or bigger, never wrong.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import struct
import subprocess
import sys
import threading

IDLE_S = 5.0
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


def _read(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        part = os.read(fd, left)
        if not part:
            raise EOFError("the pipe closed")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _receive(fd: int) -> bytes:
    (n,) = _LENGTH.unpack(_read(fd, _LENGTH.size))
    return _read(fd, n)


class Helper:
    """The helper process of this process: started on the first request, started again when
    it has exited since."""

    def __init__(self, command: list[str] | None = None):
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.compiled = 0  # signatures the helper compiled (or found compiled) for this process

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            # the helper imports `kernels` as this process does, whatever put it on the path
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            command = self.command or [sys.executable, "-m", "kernels._compile", repr(IDLE_S)]
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         bufsize=0, env=env, close_fds=True)
        return self.proc

    def compile(self, module: str, attribute: str, signature) -> bool:
        """Whether the helper compiled `module.attribute` for `signature` into the cache."""
        try:
            payload = json.dumps([module, attribute, [describe(t) for t in signature]]).encode()
        except TypeError:  # a type not described: compiled here
            return False
        with self.lock:
            for _ in range(2):  # a helper that exited on its idle timeout just now: once more, with a new one
                try:
                    proc = self._start()
                    _send(proc.stdin.fileno(), payload)
                    reply = _receive(proc.stdout.fileno())
                except (OSError, EOFError):
                    self.close()
                    continue
                if reply == b"ok":
                    self.compiled += 1
                    return True
                return False
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


class CompiledElsewhere:
    """A Numba dispatcher's cache that, on a miss, has the helper compile the signature and
    loads what it wrote (Numba's Dispatcher.compile asks its cache before compiling)."""

    def __init__(self, cache, module: str, attribute: str):
        self.cache, self.module, self.attribute = cache, module, attribute

    def load_overload(self, signature, target_context):
        found = self.cache.load_overload(signature, target_context)
        if found is None and helper.compile(self.module, self.attribute, signature):
            found = self.cache.load_overload(signature, target_context)
        return found

    def __getattr__(self, name):
        return getattr(self.cache, name)


def main(idle_s: float) -> int:
    """The helper: compiles what it is asked into the cache, one request at a time, until its
    requests end or none comes for `idle_s`."""
    from kernels import _jit

    _jit.COMPILE_ELSEWHERE = False  # this is the elsewhere
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
            kernel = getattr(importlib.import_module(module), attribute)
            _jit.dispatcher(kernel).compile(signature)
            reply = b"ok"
        except Exception as e:  # noqa: BLE001 - told to the process, which compiles it itself
            reply = f"{type(e).__name__}: {e}".encode()
        _send(replies, reply)


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else IDLE_S))
