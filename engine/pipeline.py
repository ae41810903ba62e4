"""The one data plane every ingress calls: route -> validate -> batch -> run -> respond."""

from __future__ import annotations

import itertools
import os

import numpy as np

from engine.batching.batch import Origin
from engine.batching.batcher import RowOutcome
from engine.codec.validate import select_outputs, validate_inputs
from engine.errors import EngineError, ErrorCode
from engine.routing.router import Router
from engine.runtime.registry import Registry, Served


class Pipeline:
    def __init__(self, registry: Registry, router: Router | None = None):
        self.registry = registry
        self.router = router if router is not None else Router(registry)
        self._ids = itertools.count(1)
        self.failures: dict[tuple[str, str], int] = {}  # (model, version) -> requests the model run failed
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
    ) -> tuple[Served, dict[str, np.ndarray]]:
        """Score one request; returns the model version that answered and its outputs.
        Raises EngineError (bad input, unknown model, queue full, deadline passed, ...).
        """
        served, role, routing = self.router.resolve(model, version, routing_key)
        origin = Origin(role, routing, request_id, routing_key)
        schema = served.model.schema
        names = select_outputs(schema, requested_outputs)
        rows = validate_inputs(schema, inputs, served.limits)
        guards = served.model.guards
        rejects = guards is not None and guards.action == "reject"
        if rejects:
            guards.check_request(inputs)  # out of the model's domain: refused before it is batched
        try:
            outputs = await served.batcher.submit(inputs, rows, deadline_ns, origin)
        except EngineError as exc:
            if exc.code is ErrorCode.INTERNAL:  # the model failed (a rollout's guard reads these)
                key = (served.name, served.version)
                self.failures[key] = self.failures.get(key, 0) + 1
            raise
        if rejects and guards.checks_outputs:
            guards.check_request(inputs, outputs)  # unconfident, or out of its interval (scored, logged, refused)
        if len(names) != len(outputs):
            outputs = {name: outputs[name] for name in names}
        return served, outputs

    async def submit_rows(self, served: Served, inputs: dict[str, np.ndarray], origin: Origin) -> RowOutcome:
        """Score a piece of a Kafka chunk, every row its own event: the rows were routed to
        `served` (Router.resolve_rows) and checked against its schema and limits by the
        stream's codec, so they are not validated again. A row that breaks the model fails
        alone (the batcher isolates it); the outcome says which rows were scored."""
        rows = len(origin.offsets)
        return await served.batcher.submit(inputs, rows, None, origin, each_row=True)
