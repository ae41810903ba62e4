"""The one data plane every ingress calls: route -> validate -> batch -> run -> respond."""

from __future__ import annotations

import asyncio
import itertools
import os

import numpy as np

from engine.batching.batch import Origin
from engine.batching.batcher import RowOutcome
from engine.codec.validate import select_outputs, validate_inputs
from engine.errors import EngineError, ErrorCode
from engine.guards import OUTPUT
from engine.routing.router import Role, Router
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
        if guards is not None and guards.action == "fallback":
            outputs = await self._with_fallback(served, guards, inputs, rows, deadline_ns, origin)
            if len(names) != len(outputs):
                outputs = {name: outputs[name] for name in names}
            return served, outputs
        rejects = guards is not None and guards.action == "reject"
        if rejects:
            guards.check_request(inputs)  # out of the model's domain: refused before it is batched
        outputs = await self._run(served, inputs, rows, deadline_ns, origin)
        if rejects and guards.checks_outputs:
            guards.check_request(inputs, outputs)  # unconfident, or out of its interval (scored, logged, refused)
        if len(names) != len(outputs):
            outputs = {name: outputs[name] for name in names}
        return served, outputs

    async def _run(self, served: Served, inputs: dict[str, np.ndarray], rows: int, deadline_ns: int | None,
                   origin: Origin) -> dict[str, np.ndarray]:
        """The version's outputs for these rows; a failed model run is counted (a rollout's
        error guard reads the counts) and raised."""
        try:
            return await served.batcher.submit(inputs, rows, deadline_ns, origin)
        except EngineError as exc:
            if exc.code is ErrorCode.INTERNAL:  # the model failed
                key = (served.name, served.version)
                self.failures[key] = self.failures.get(key, 0) + 1
            raise

    async def _with_fallback(self, served: Served, guards, inputs: dict[str, np.ndarray], rows: int,
                             deadline_ns: int | None, origin: Origin) -> dict[str, np.ndarray]:
        """action "fallback": rows outside the input domain are scored by the fallback version
        only; rows the version scored unconfident or out of its interval are scored again by
        it; each answer carries `scorewire_guard` (the bits of what fell back). The fallback's
        rows are logged as its own, role "fallback", with the request's id."""
        fallback = self.registry.get(served.name, guards.fallback_version)
        behind = Origin(Role.FALLBACK, origin.routing, origin.request_id, origin.routing_key)
        bits = guards.input_bits(inputs)
        if bits is None:
            bits = np.zeros(rows, np.uint8)
        out_of_domain = np.flatnonzero(bits)
        if len(out_of_domain) == rows:  # all: the version scores none
            outputs = await self._run(fallback, inputs, rows, deadline_ns, behind)
            guards.count(bits, "fallback")
            return {**outputs, OUTPUT: bits}
        mine = np.flatnonzero(bits == 0)
        own = inputs if len(mine) == rows else {n: a[mine] for n, a in inputs.items()}
        if len(out_of_domain):
            theirs = {n: a[out_of_domain] for n, a in inputs.items()}
            part, other = await asyncio.gather(self._run(served, own, len(mine), deadline_ns, origin),
                                               self._run(fallback, theirs, len(out_of_domain), deadline_ns, behind))
            outputs = {n: _placed(rows, (mine, part[n]), (out_of_domain, other[n])) for n in part}
        else:
            part = outputs = await self._run(served, own, rows, deadline_ns, origin)
        unsure = guards.output_bits(part)
        if unsure is not None and unsure.any():
            again = mine[np.flatnonzero(unsure)]
            other = await self._run(fallback, {n: a[again] for n, a in inputs.items()}, len(again), deadline_ns,
                                    behind)
            outputs = {n: a.copy() if a is part[n] else a for n, a in outputs.items()}
            for n, a in outputs.items():  # the version's outputs (a fallback may give more)
                a[again] = other[n]
            bits[mine] |= unsure
        guards.count(bits, "fallback")
        return {**outputs, OUTPUT: bits}

    async def submit_rows(self, served: Served, inputs: dict[str, np.ndarray], origin: Origin) -> RowOutcome:
        """Score a piece of a Kafka chunk, every row its own event: the rows were routed to
        `served` (Router.resolve_rows) and checked against its schema and limits by the
        stream's codec, so they are not validated again. A row that breaks the model fails
        alone (the batcher isolates it); the outcome says which rows were scored."""
        rows = len(origin.offsets)
        return await served.batcher.submit(inputs, rows, None, origin, each_row=True)


def _placed(rows: int, *parts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One output of `rows` rows from parts (row indices, their values) scored apart."""
    first = parts[0][1]
    out = np.empty((rows, *first.shape[1:]), first.dtype)
    for index, values in parts:
        out[index] = values
    return out
