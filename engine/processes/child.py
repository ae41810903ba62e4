"""What every process the supervisor starts does alike: its start and its failure, its lines
to the supervisor and its orders from it, its end when the supervisor dies, and (observer and
challengers) its signals and its pass over a ring."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection

from engine.processes.messages import Kind, Message
from engine.settings import Settings

log = logging.getLogger("scorewire")


def fast_event_loop() -> None:
    """uvloop where installed (a dependency on Linux and macOS): about 20% more requests/s
    than asyncio's own loop in bench/grpc_bench.py on the demo models."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(name: str, log_level: str, conn: Connection, main: Callable[[], Awaitable[None]],
        cleanup: Callable[[], None], off_the_request_path: bool = False) -> None:
    """Run `main()` on a fast event loop; a failure goes to the supervisor as one line (the
    user's message for start-up errors) and exits 2; `cleanup` runs in any case.
    `off_the_request_path`: a process no response waits on (observer, challengers), which
    gives freed memory back at once (give_back_freed_memory)."""
    from engine.errors import startup_error

    lean()
    if off_the_request_path:
        give_back_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    _end_with_the_supervisor()
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s")
    try:
        fast_event_loop()
        asyncio.run(main())
    except Exception as exc:
        message = startup_error(exc)
        if message is None:
            log.exception("%s failed", name)
        try:
            conn.send(Message(Kind.FAILED, message or f"{name} failed: {type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise SystemExit(2) from None
    finally:
        cleanup()


class _NoPandas:
    """An import finder that refuses pandas (a None in sys.modules would not do: pyarrow's
    compiled import takes a None it finds there as the module)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is not imported in scorewire's server processes", name=name)
        return None


def lean() -> None:
    """Before this process imports anything of its own, leave out what no server process uses
    (each measured in the observer with drift and the scoring log on, bench/memory_bench.py):
    - pandas, which pyarrow imports where installed -- on its first `pa.array` of a numpy
      array or `to_numpy` of a column -- only to ask whether an object is one of pandas':
      ~45 MiB. Refused, pyarrow answers no.
    - pyarrow's mimalloc pool, which keeps ~12 MiB after the log's writes: the system
      allocator gives it back, at the same CPU for the log's appends and its Parquet (a
      scratch timing of 5,000 64-row appends and their Parquet file). ARROW_DEFAULT_MEMORY_POOL
      set by the user wins."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter


def give_back_freed_memory(threshold: int = 1 << 20) -> None:
    """glibc's malloc gives freed memory back to the system once `threshold` bytes lie free
    at the top of a heap. By default that threshold follows the largest block freed (up to
    64 MiB), and the observer, after the drift monitor's and the log's temporaries, kept
    ~50 MiB it no longer used (bench/memory_bench.py --batches 6000, drift and the log on:
    its anonymous memory 168 -> 114 MiB, the same CPU). Not for workers: a fixed threshold
    also fixes the one above which malloc maps a block of its own (128 KiB), and every larger
    batch would be mapped and unmapped on the request path. No-op without glibc."""
    try:
        ctypes.CDLL(None).mallopt(_M_TRIM_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG = 1


def _end_with_the_supervisor() -> None:
    """SIGTERM (a drain) when the supervisor dies, however it died (PR_SET_PDEATHSIG): no
    process serves on, holding the ports and the shared memory, without it. If it died before
    this was set, the signal is sent now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        return
    if orphaned():
        os.kill(os.getpid(), signal.SIGTERM)


def orphaned() -> bool:
    """Whether the supervisor that started this process is gone."""
    parent = multiprocessing.parent_process()
    return parent is not None and os.getppid() != parent.pid


def send(conn: Connection, message: Message) -> None:
    try:
        conn.send(message)
    except OSError:  # the supervisor is gone; so are we, soon
        pass


def say_to(conn: Connection) -> Callable[[str], None]:
    """A line for the supervisor to print (or log)."""

    def say(text: str) -> None:
        send(conn, Message(Kind.SAY, text))

    return say


def ready(conn: Connection) -> None:
    """Tell the supervisor this process serves."""
    send(conn, Message(Kind.READY))


class Signals:
    """SIGTERM sets `stop`."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.stop.set)


class Orders:
    """What the supervisor sends on the pipe: RELOAD (a settings snapshot) runs
    `reload(settings)` (a coroutine function; it raises, or returns why, when the reload
    failed and changed nothing), one reload at a time, and answers RELOADED (None or why).
    Other kinds go to `handlers` (called on the loop, in the order they came: before a
    RELOAD sent after them starts)."""

    def __init__(self, name: str, conn: Connection, reload: Callable[[Settings], Awaitable[str | None]],
                 handlers: dict[Kind, Callable[[object], None]] | None = None):
        self.name, self.conn, self.reload = name, conn, reload
        self.handlers = handlers or {}
        self.loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            message = self.conn.recv()
        except (EOFError, OSError):  # the supervisor is gone
            self.loop.remove_reader(self.conn.fileno())
            return
        if message.kind is Kind.RELOAD:
            task = self.loop.create_task(self._reload(message.value))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif message.kind in self.handlers:
            self.handlers[message.kind](message.value)

    async def _reload(self, snapshot: bytes) -> None:
        async with self._lock:
            try:
                error = await self.reload(Settings.from_snapshot(snapshot))
            except Exception as exc:
                log.error("%s: reload failed, the running config stays: %s", self.name, exc)
                error = str(exc) or type(exc).__name__
        send(self.conn, Message(Kind.RELOADED, error))

    async def done(self) -> None:
        """Wait for a reload under way (before draining)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self.conn.closed:
            self.loop.remove_reader(self.conn.fileno())


def off_loop(work: Callable[[Settings], None]) -> Callable[[Settings], Awaitable[None]]:
    """A blocking reload (loading models) as one Orders can await."""

    async def run(settings: Settings) -> None:
        await asyncio.get_running_loop().run_in_executor(None, work, settings)

    return run


async def _pause(stop: asyncio.Event, seconds: float, tick_s: float) -> None:
    """Sleep `seconds`; a wait longer than the tick (an idle one) ends early when `stop` is set."""
    if seconds <= tick_s:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def poll_until(stop: asyncio.Event, poll: Callable[[], int], tick_s: float,
                     every_tick: Callable[[], None] | None = None, idle_tick_s: float | None = None,
                     waiting: Callable[[], bool] | None = None) -> None:
    """A pass every tick until `stop`, then passes until one finds nothing. Every tick, not as
    soon as a record lands: one-row requests make one-record batches, and a pass costs about
    the same for one record as for a hundred. With `idle_tick_s`, a pass that finds nothing
    (and leaves nothing `waiting`) doubles the wait before the next, up to `idle_tick_s`, and
    the first that finds something brings it back to `tick_s`: an idle server wakes a few
    times a second rather than a hundred (each wake-up cost this process about 0.25 ms of CPU
    on the dev machine's VM)."""
    wait = tick_s
    while not stop.is_set():
        if every_tick is not None:
            every_tick()
        if poll() or idle_tick_s is None or (waiting is not None and waiting()):
            wait = tick_s
        else:
            wait = min(idle_tick_s, wait * 2)
        await _pause(stop, wait, tick_s)
    while poll():
        pass
