"""A rollout's state on disk, and the route it makes (and a bandit split's weights).

One small JSON file per rollout (`[routes.rollout] state_file`): the observer writes it
(atomically: a temporary file renamed over it) when the rollout steps, rolls back, is
promoted or paused; every worker reads it every ROLLOUT_POLL_S and routes by it, so all
switch together, and a restarted server resumes where the rollout stood. A file that names
another candidate or champion than the config is a finished rollout's: the config's new
rollout starts from its first step.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.rollout.decide import State
from engine.scorelog.files import publish
from engine.settings import RouteSettings

ROLLOUT_POLL_S = 0.25


@dataclass(frozen=True, slots=True)
class Saved:
    model: str
    champion: str
    candidate: str
    state: str
    step: int  # 1 is the first (as status, /metrics and the events count them)
    weight: float  # the candidate's percent of the route now
    reason: str
    time: float  # unix seconds of the last change


def read(route: RouteSettings) -> Saved | None:
    """The rollout's saved state, if it is this rollout's (same champion and candidate)."""
    path = route.rollout.state_file
    try:
        data = json.loads(Path(path).read_text())
        saved = Saved(**data)
    except (OSError, ValueError, TypeError):
        return None
    if (saved.model, saved.champion, saved.candidate) != (route.model, route.champion, route.rollout.candidate):
        return None
    return saved


def _write_json(path: Path, data: dict) -> None:
    """`data` at `path`, atomically and durably (a temporary file published over it): a reader
    sees the old file or the new one, and a crash right after keeps the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    publish(tmp, path)


def write(route: RouteSettings, saved: Saved) -> None:
    _write_json(route.rollout.state_file, asdict(saved))


def first(route: RouteSettings) -> Saved:
    """The state of a rollout that has not started."""
    r = route.rollout
    return Saved(route.model, route.champion, r.candidate, State.RUNNING.value, 1, r.steps[0], "started", 0.0)


def read_split(route: RouteSettings) -> dict[str, float] | None:
    """A bandit split's weights now (engine/rollout/bandit.py), if its state file has them for
    the split's arms."""
    try:
        weights = json.loads(Path(route.bandit.state_file).read_text())["weights"]
        weights = {str(v): float(w) for v, w in weights.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if set(weights) != set(route.split) or any(w <= 0 for w in weights.values()):
        return None
    return weights


def write_split(route: RouteSettings, weights: dict[str, float], reason: str, when: float) -> None:
    _write_json(route.bandit.state_file, {"model": route.model, "weights": weights, "reason": reason, "time": when})


def effective(route: RouteSettings, saved: Saved | None) -> RouteSettings:
    """The route as the rollout makes it now: a split champion/candidate while it runs (or is
    paused), the candidate as the champion once promoted, the champion alone once rolled back.
    A bandit split: its weights now."""
    if route.rollout is None:
        if route.split_policy == "thompson":
            weights = read_split(route)
            return route if weights is None else route.model_copy(update={"split": weights})
        return route
    saved = saved or first(route)
    candidate = route.rollout.candidate
    if saved.state == State.PROMOTED:
        kept = [route.champion] if route.rollout.after_promotion == "challenger" else []
        return route.model_copy(update={"champion": candidate, "split": {},
                                        "challengers": [*route.challengers, *kept]})
    if saved.state == State.ROLLED_BACK or saved.weight <= 0:
        return route.model_copy(update={"split": {}})
    if saved.weight >= 100:
        return route.model_copy(update={"champion": candidate, "split": {}})
    return route.model_copy(update={"split": {route.champion: 100.0 - saved.weight, candidate: saved.weight}})


def effective_routes(routes: list[RouteSettings]) -> list[RouteSettings]:
    """Every route as its rollout (if any) makes it now."""
    return [effective(r, read(r) if r.rollout is not None else None) for r in routes]


def unloaded(routes: list[RouteSettings]) -> set[tuple[str, str]]:
    """(model, version) of the old champions that promoted rollouts unloaded
    (after_promotion = "unload"): no process keeps a session for them."""
    gone = set()
    for route in routes:
        if route.rollout is not None and route.rollout.after_promotion == "unload":
            saved = read(route)
            if saved is not None and saved.state == State.PROMOTED:
                gone.add((route.model, route.champion))
    return gone


class Follower:
    """Notices when a rollout's saved state changed (for the processes that route, forward or
    shadow by it: the workers, the observer process, the challengers process)."""

    def __init__(self, routes: list[RouteSettings]):
        self.routes = [r for r in routes if r.rollout is not None or r.split_policy == "thompson"]
        self.seen = self._now()

    def _now(self) -> dict:
        return {r.model: read(r) if r.rollout is not None else read_split(r) for r in self.routes}

    def changed(self) -> bool:
        now = self._now()
        if now == self.seen:
            return False
        self.seen = now
        return True


COMMANDS = ("pause", "resume", "abort")


def command_file(route: RouteSettings) -> Path:
    """Where `scorewire rollout` leaves a command for the observer (it takes it within a second)."""
    path = Path(route.rollout.state_file)
    return path.with_name(path.name + ".command")


def read_command(route: RouteSettings) -> tuple[str, str] | None:
    """The operator's command waiting, if any (its file parsed), and who gave it. It stays
    until done_command(): `scorewire rollout` reads the state once the command is gone, so
    the state must say what the command did first."""
    try:
        data = json.loads(command_file(route).read_text())
        return str(data.get("command")), str(data.get("by") or "unknown")
    except (OSError, ValueError, AttributeError):
        return None


def done_command(route: RouteSettings) -> None:
    """The command read is carried out (its state written) or refused: remove it."""
    try:
        command_file(route).unlink()
    except OSError:
        pass


def give_command(route: RouteSettings, command: str) -> None:
    """Leave `command` for the observer, signed with the OS user and host that gave it (the
    audit trail names them)."""
    import getpass
    import socket

    try:
        by = f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # no user name (a container without one): the uid
        by = f"uid {os.getuid()}"
    _write_json(command_file(route), {"command": command, "by": by})


__all__ = ["COMMANDS", "ROLLOUT_POLL_S", "Follower", "Saved", "effective", "effective_routes", "first", "give_command",
           "done_command", "read", "read_command", "read_split", "unloaded", "write", "write_split"]
