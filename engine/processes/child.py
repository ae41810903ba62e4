"""What every process the supervisor starts does alike: its start and its failure, its lines
to the supervisor, and (observer and challengers) its signals and its pass over a ring."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path

log = logging.getLogger("scorewire")


def run(name: str, log_level: str, conn: Connection, main: Callable[[], Awaitable[None]],
        cleanup: Callable[[], None]) -> None:
    """Run `main()` on a fast event loop; a failure goes to the supervisor as one line (the
    user's message for start-up errors) and exits 2; `cleanup` runs in any case."""
    from engine.cli import fast_event_loop, startup_error

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s")
    try:
        fast_event_loop()
        asyncio.run(main())
    except Exception as exc:
        message = startup_error(exc)
        if message is None:
            log.exception("%s failed", name)
        try:
            conn.send(("failed", message or f"{name} failed: {type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise SystemExit(2) from None
    finally:
        cleanup()


def say_to(conn: Connection) -> Callable[[str], None]:
    """A line for the supervisor to print (or log)."""

    def say(text: str) -> None:
        try:
            conn.send(("say", text))
        except OSError:  # the supervisor is gone; so are we, soon
            pass

    return say


class Signals:
    """SIGTERM sets `stop`; SIGHUP runs `reload(config_path)` off the loop (a failure is
    logged, the running config stays)."""

    def __init__(self, name: str, config_path, reload: Callable[[Path], None]):
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self._reloading: set[asyncio.Task] = set()
        self.loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        if config_path is not None:
            async def reload_now() -> None:
                try:
                    await self.loop.run_in_executor(None, reload, Path(config_path))
                except Exception as exc:
                    log.error("%s: reload failed, the running config stays: %s", name, exc)

            def on_hup() -> None:
                task = self.loop.create_task(reload_now())
                self._reloading.add(task)
                task.add_done_callback(self._reloading.discard)

            self.loop.add_signal_handler(signal.SIGHUP, on_hup)

    async def reloads_done(self) -> None:
        if self._reloading:
            await asyncio.gather(*self._reloading, return_exceptions=True)


async def poll_until(stop: asyncio.Event, poll: Callable[[], int], tick_s: float,
                     every_tick: Callable[[], None] | None = None) -> None:
    """A pass every tick until `stop`, then passes until one finds nothing. Every tick, not as
    soon as a record lands: one-row requests make one-record batches, and a pass costs about
    the same for one record as for a hundred."""
    while not stop.is_set():
        if every_tick is not None:
            every_tick()
        poll()
        await asyncio.sleep(tick_s)
    while poll():
        pass
