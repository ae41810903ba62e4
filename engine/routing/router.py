"""Which version answers a request, and which challengers shadow a champion's batches.

Roles: the route's champion answers requests that name no version; with a split, the arm
a request's key lands on answers it ("champion" when that is the champion's version, "arm"
otherwise). A request naming a version gets it ("pinned"; role "direct" unless it is the
champion). Challengers never answer routed requests: they score, in the shadow, every batch
the champion scores. A model without a route answers with its highest version.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from engine.codec.validate import ModelSchema
from engine.routing.policy import Split
from engine.runtime.registry import Registry, Served
from engine.settings import RouteSettings


class Role(StrEnum):
    """Which part a version plays for the rows it scores (the scoring log's `role`)."""

    CHAMPION = "champion"
    ARM = "arm"  # a split's arm other than the champion
    DIRECT = "direct"  # a request named this version, which is not the champion
    CHALLENGER = "challenger"  # shadow rows
    FALLBACK = "fallback"  # rows a guarded version's fallback answered (guards action "fallback")


class Routing(StrEnum):
    """How the answering version was chosen (the scoring log's `routing`)."""

    DEFAULT = "default"  # the champion (or the highest version)
    STICKY = "sticky"  # a split, by the request's key
    RANDOM = "random"  # a split, drawn at random (no key)
    PINNED = "pinned"  # the request named its version


@dataclass(frozen=True)
class Route:
    settings: RouteSettings
    split: Split | None

    @classmethod
    def build(cls, settings: RouteSettings) -> "Route":
        return cls(settings, Split(settings.split) if settings.split else None)

    def role_of(self, version: str) -> str:
        """The role of rows this version answers: a challenger's own batches only ever hold
        requests that named it ("direct"); its shadow rows are logged by the shadow."""
        if version == self.settings.champion:
            return Role.CHAMPION
        if version in self.settings.split:
            return Role.ARM
        return Role.DIRECT


def check_compatible(champion: ModelSchema, other: ModelSchema, other_label: str, champion_label: str) -> None:
    """A challenger or arm must take the champion's inputs and name its outputs alike."""
    ins = [(t.name, t.datatype) for t in champion.inputs]
    other_ins = [(t.name, t.datatype) for t in other.inputs]
    if ins != other_ins:
        raise ValueError(f"{other_label} takes inputs {other_ins}, but its champion {champion_label} takes {ins}")
    from engine.performance.conformal import DERIVED  # outputs scorewire adds: one version may have them alone

    added = (*DERIVED, "scorewire_guard")
    outs = sorted((t.name, t.datatype) for t in champion.outputs if t.name not in added)
    other_outs = sorted((t.name, t.datatype) for t in other.outputs if t.name not in added)
    if outs != other_outs:
        raise ValueError(f"{other_label} has outputs {other_outs}, but its champion {champion_label} has {outs}")


class Router:
    """Routes are swapped whole (on reload), never edited in place: a request sees either
    the old or the new routing, not a mix. (Challengers shadow on the watching side: the
    Observer holds them.)"""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.routes: dict[str, Route] = {}

    def install(self, routes: dict[str, Route]) -> None:
        self.routes = routes

    def answering(self, name: str, version: str = "") -> Served:
        """The version a metadata, config, ready or statistics request describes: the named
        one, else the one that answers a request naming none (the route's champion; a model
        without a route: its highest version). NOT_FOUND as Registry.get."""
        route = self.routes.get(name)
        if version or route is None:
            return self.registry.get(name, version)
        return self.registry.get(name, route.settings.champion)

    def resolve(self, name: str, version: str, key: str | None) -> tuple[Served, Role, Routing]:
        """(served version, role, routing decision) for one request."""
        route = self.routes.get(name)
        if version:
            served = self.registry.get(name, version)
            role = Role.CHAMPION if route is None or route.settings.champion == version else Role.DIRECT
            return served, role, Routing.PINNED
        if route is None or route.split is None:
            return self.answering(name), Role.CHAMPION, Routing.DEFAULT
        chosen, sticky = route.split.pick(key)
        return self.registry.get(name, chosen), route.role_of(chosen), Routing.STICKY if sticky else Routing.RANDOM

    def resolve_rows(self, name: str, version: str,
                     keys: list[bytes | None]) -> list[tuple[Served, Role, Routing, np.ndarray | None]]:
        """`resolve` for many rows at once (a Kafka chunk, by message key): (served, role,
        routing, positions of its rows in `keys`, None for all) per group of rows answered
        alike. Without a split, one group; with one, a group per arm and per decision (rows
        without a key draw their arm at random, as a request without one does)."""
        split = self.split_of(name, version)
        if split is None:
            return [(*self.resolve(name, version, None), None)]
        arms, random = split.arms(keys)
        groups = []
        for i, chosen in enumerate(split.versions):
            mine = arms == i
            for routing, rows in ((Routing.STICKY, mine if random is None else mine & ~random),
                                  (Routing.RANDOM, None if random is None else mine & random)):
                if rows is not None and rows.any():
                    groups.append((self.registry.get(name, chosen), self.role_of(name, chosen), routing,
                                   np.flatnonzero(rows)))
        return groups

    def split_of(self, name: str, version: str = "") -> Split | None:
        """The split that picks the version answering a request to `name` (none when the
        request names a version, or the model's route has no split)."""
        route = self.routes.get(name)
        return None if version or route is None else route.split

    def sticky_key(self, name: str) -> str | None:
        """The request parameter holding the routing key of the model's split, if it has one."""
        return None if self.split_of(name) is None else self.routes[name].settings.sticky_key

    def role_of(self, name: str, version: str) -> str:
        route = self.routes.get(name)
        return Role.CHAMPION if route is None else route.role_of(version)


def route_changes(old: list[RouteSettings], new: list[RouteSettings]) -> list[str]:
    """What a reload changes in the routes, in words: `route mlp: champion 1 -> 2`."""
    before, after = {r.model: r for r in old}, {r.model: r for r in new}
    changes = [f"route {m} added (champion {after[m].champion})" for m in after if m not in before]
    changes += [f"route {m} removed (its model answers with its highest version)" for m in before if m not in after]
    for model in (m for m in after if m in before):
        was, now = before[model].model_dump(), after[model].model_dump()
        fields = [f"{k} {_short(was[k])} -> {_short(now[k])}" for k in now if was[k] != now[k]]
        if fields:
            changes.append(f"route {model}: " + ", ".join(fields))
    return changes


def _short(value) -> str:
    if isinstance(value, dict) and len(str(value)) > 60:  # a rollout's or bandit's table: say it changed
        return "{...}"
    return str(value) if value not in (None, [], {}) else "none"
