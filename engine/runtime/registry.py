"""Served models by name and version."""

from __future__ import annotations

from dataclasses import dataclass

from engine.batching.batcher import Batcher
from engine.codec.validate import Limits
from engine.errors import EngineError, ErrorCode, clip
from engine.runtime.session import OnnxModel


@dataclass
class Served:
    """One model version: its sessions, its batcher and its request limits."""

    model: OnnxModel
    batcher: Batcher
    limits: Limits

    @property
    def name(self) -> str:
        return self.model.settings.name

    @property
    def version(self) -> str:
        return self.model.settings.version


def _version_key(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


class Registry:
    def __init__(self) -> None:
        self._by_name: dict[str, dict[str, Served]] = {}
        self._highest: dict[str, Served] = {}  # what a request naming no version gets, kept at hand

    def add(self, served: Served) -> None:
        self._by_name.setdefault(served.name, {})[served.version] = served
        self._rank(served.name)

    def remove(self, name: str, version: str) -> Served:
        versions = self._by_name[name]
        served = versions.pop(version)
        if not versions:
            del self._by_name[name]
        self._rank(name)
        return served

    def _rank(self, name: str) -> None:
        versions = self._by_name.get(name)
        if versions:
            self._highest[name] = versions[self.versions(name)[-1]]
        else:
            self._highest.pop(name, None)

    def all(self) -> list[Served]:
        return [s for versions in self._by_name.values() for s in versions.values()]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def versions(self, name: str) -> list[str]:
        return sorted(self._by_name.get(name, {}), key=_version_key)

    def get(self, name: str, version: str = "") -> Served:
        """The named version, or the highest one when `version` is empty; NOT_FOUND otherwise."""
        versions = self._by_name.get(name)
        if not versions:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise EngineError(ErrorCode.NOT_FOUND, f"unknown model '{clip(name)}' (served: {known})")
        if not version:
            return self._highest[name]
        served = versions.get(version)
        if served is None:
            raise EngineError(
                ErrorCode.NOT_FOUND,
                f"model '{name}' has no version '{clip(version)}' (served: {', '.join(self.versions(name))})",
            )
        return served
