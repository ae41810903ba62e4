"""A reload tried once before any process makes it.

On SIGHUP the supervisor starts this process with the running settings and the ones a reload
would run (Settings.reloaded); it does what would fail in a worker, the observer or the
challengers process: loads and warms up every version the reload adds (and builds its drift
monitor from its reference, and its segments), reads every performance reference the reload
names anew, and checks every route that changed against its champion's
inputs and outputs. Only when it succeeds does the supervisor send the reload to its processes
and start later ones with it: a reload that fails anywhere changes nothing anywhere.
"""

from __future__ import annotations

import logging
from multiprocessing.connection import Connection

from engine.processes.messages import Kind, Message
from engine.settings import Settings

log = logging.getLogger("scorewire")


def check(old: Settings, new: Settings) -> None:
    """Raise what the reload from `old` to `new` would fail on."""
    from engine.monitor.drift import DriftMonitor, load_reference
    from engine.monitor.quality import QualityMonitor
    from engine.routing.router import check_compatible
    from engine.runtime.session import ModelLoadError, OnnxModel

    served = {(m.name, m.version) for m in old.models}
    old_routes = {r.model: r for r in old.routes}
    changed = [r for r in new.routes if old_routes.get(r.model) != r]
    added = {(m.name, m.version) for m in new.models} - served
    needed = {(r.model, v) for r in changed for v in [r.champion, *r.challengers, *r.split]} | added
    models = {}
    try:
        for ms in new.models:
            key = (ms.name, ms.version)
            if key not in needed:
                continue
            model = models[key] = OnnxModel(ms)
            if key in added:  # as a worker loads it
                if ms.warmup or model.io_binding is not None:
                    model.warm_up(full=ms.warmup)
                if ms.monitor is not None:  # as the observer does
                    reference = load_reference(ms.monitor.reference)
                    QualityMonitor(DriftMonitor(model.label, ms.monitor, model.schema, reference), model.schema, reference)
        for rs in changed:
            champion = models[(rs.model, rs.champion)]
            for version in dict.fromkeys([*rs.challengers, *rs.split]):
                if version != rs.champion:
                    other = models[(rs.model, version)]
                    try:
                        check_compatible(champion.schema, other.schema, other.label, champion.label)
                    except ValueError as exc:
                        raise ModelLoadError(f"route of model {rs.model!r}: {exc}") from None
        from engine.performance.alert import load_reference as load_performance_reference

        running = {(m.name, m.version): m.performance for m in old.models}
        for ms in new.models:  # as the observer's join does (it reads a reference when it changes)
            p = ms.performance
            if p is not None and p.reference is not None and running.get((ms.name, ms.version)) != p:
                load_performance_reference(p.reference, p.task, p.score)
            if ms.segments is not None and (ms.name, ms.version) not in running:  # its segments' reference
                from engine.performance.segments import for_version as segments_for_version

                segments_for_version(ms, p.window)
    finally:
        for model in models.values():
            model.close()


def main(old: bytes, new: bytes, conn: Connection, log_level: str) -> None:
    """The probe process (multiprocessing's spawn target): answers PROBED (None or why)."""
    from engine.errors import startup_error

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s reload-check %(name)s: %(message)s")
    try:
        check(Settings.from_snapshot(old), Settings.from_snapshot(new))
        answer = None
    except Exception as exc:
        answer = startup_error(exc) or f"{type(exc).__name__}: {exc}"
    conn.send(Message(Kind.PROBED, answer))
