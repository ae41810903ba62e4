"""The one data plane both ingresses call: route -> validate -> batch -> run -> respond."""

from __future__ import annotations

import itertools
import os

import numpy as np

from engine.batching.batch import Origin
from engine.codec.validate import select_outputs, validate_inputs
from engine.routing.router import Router
from engine.runtime.registry import Registry, Served


class Pipeline:
    def __init__(self, registry: Registry, router: Router | None = None):
        self.registry = registry
        self.router = router if router is not None else Router(registry)
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}-{os.urandom(4).hex()}"

    def new_request_id(self) -> str:
        """An id for a request that came without one (unique per process run)."""
        return f"sw-{self._id_prefix}-{next(self._ids)}"

    async def submit(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        requested_outputs: tuple[str, ...] = (),
        deadline_ns: int | None = None,
        request_id: str | None = None,
        routing_key: str | None = None,
        origin: Origin | None = None,
    ) -> tuple[Served, dict[str, np.ndarray]]:
        """Score one request; returns the model version that answered and its outputs.

        `origin` (Kafka) is given when the caller already routed the rows to `version`;
        otherwise the router picks the version and the origin is made here.
        Raises EngineError (bad input, unknown model, queue full, deadline passed, ...).
        """
        if origin is None:
            served, role, routing = self.router.resolve(model, version, routing_key)
            origin = Origin(role, routing, request_id, routing_key)
        else:
            served = self.registry.get(model, version)
        schema = served.model.schema
        names = select_outputs(schema, requested_outputs)
        rows = validate_inputs(schema, inputs, served.limits)
        outputs = await served.batcher.submit(inputs, rows, deadline_ns, origin)
        if len(names) != len(outputs):
            outputs = {name: outputs[name] for name in names}
        return served, outputs
