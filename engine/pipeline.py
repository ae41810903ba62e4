"""The one data plane both ingresses call: validate -> batch -> run -> respond."""

from __future__ import annotations

import numpy as np

from engine.codec.validate import select_outputs, validate_inputs
from engine.runtime.registry import Registry, Served


class Pipeline:
    def __init__(self, registry: Registry):
        self.registry = registry

    async def submit(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        requested_outputs: tuple[str, ...] = (),
        deadline_ns: int | None = None,
    ) -> tuple[Served, dict[str, np.ndarray]]:
        """Score one request; returns the model version that answered and its outputs.

        Raises EngineError (bad input, unknown model, queue full, deadline passed, ...).
        """
        served = self.registry.get(model, version)
        schema = served.model.schema
        names = select_outputs(schema, requested_outputs)
        rows = validate_inputs(schema, inputs, served.limits)
        outputs = await served.batcher.submit(inputs, rows, deadline_ns)
        if len(names) != len(outputs):
            outputs = {name: outputs[name] for name in names}
        return served, outputs
