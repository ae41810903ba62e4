"""Which version answers a request, and which challengers shadow a champion's batches.

Roles: the route's champion answers requests that name no version; with a split, the arm
a request's key lands on answers it ("champion" when that is the champion's version, "arm"
otherwise). A request naming a version gets it ("pinned"; role "direct" unless it is the
champion). Challengers never answer routed requests: they score, in the shadow, every batch
the champion scores. A model without a route answers with its highest version.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.codec.validate import ModelSchema
from engine.routing.policy import Split
from engine.runtime.registry import Registry, Served
from engine.settings import RouteSettings


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
            return "champion"
        if version in self.settings.split:
            return "arm"
        return "direct"


def check_compatible(champion: ModelSchema, other: ModelSchema, other_label: str, champion_label: str) -> None:
    """A challenger or arm must take the champion's inputs and name its outputs alike."""
    ins = [(t.name, t.datatype) for t in champion.inputs]
    other_ins = [(t.name, t.datatype) for t in other.inputs]
    if ins != other_ins:
        raise ValueError(f"{other_label} takes inputs {other_ins}, but its champion {champion_label} takes {ins}")
    outs = sorted((t.name, t.datatype) for t in champion.outputs)
    other_outs = sorted((t.name, t.datatype) for t in other.outputs)
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

    def resolve(self, name: str, version: str, key: str | None) -> tuple[Served, str, str]:
        """(served version, role, routing decision) for one request."""
        route = self.routes.get(name)
        if version:
            served = self.registry.get(name, version)
            role = "champion" if route is None or route.settings.champion == version else "direct"
            return served, role, "pinned"
        if route is None:
            return self.registry.get(name, ""), "champion", "default"
        if route.split is None:
            return self.registry.get(name, route.settings.champion), "champion", "default"
        chosen, sticky = route.split.pick(key)
        return self.registry.get(name, chosen), route.role_of(chosen), "sticky" if sticky else "random"

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
        return "champion" if route is None else route.role_of(version)
