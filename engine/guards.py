"""The model's domain enforced (`[models.guards]`), on whole arrays, no per-row Python.

Bits per row: 1 input domain (a feature outside the reference's [min, max] widened by
`margin` of its range, or outside explicit `bounds`, or a categorical code the reference
never had), 2 confidence (the largest class probability below `min_confidence`), 4 interval
(a regression prediction outside `interval`). With `action = "reject"` a request with any bit
set is refused (the ingress checks the inputs before batching, the outputs after: its
batch-mates are answered as usual); with "flag" every answer gets the output `scorewire_guard`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.codec.validate import TensorSpec
from engine.errors import EngineError, ErrorCode
from engine.monitor.domain import reference_domain
from engine.settings import ModelSettings

INPUT_DOMAIN, CONFIDENCE, INTERVAL = 1, 2, 4
NAMES = {INPUT_DOMAIN: "input_domain", CONFIDENCE: "confidence", INTERVAL: "interval"}
OUTPUT = "scorewire_guard"


class Guards:
    def __init__(self, ms: ModelSettings, inputs: Sequence[TensorSpec], reference: dict[str, np.ndarray] | None):
        """`inputs`: the model's. The guarded one is monitor.input, else the first; the
        reference's range is rounded to its dtype (as data quality reads it:
        engine/monitor/domain.py)."""
        g = ms.guards
        self.label = f"{ms.name}:{ms.version}"
        self.action, self.fallback_version = g.action, g.fallback_version
        self.input = ms.monitor.input or inputs[0].name if ms.monitor is not None else inputs[0].name
        dtype = next((t.dtype for t in inputs if t.name == self.input), inputs[0].dtype)
        features = list(ms.monitor.features) if ms.monitor is not None and ms.monitor.features else []
        self.features = features
        k = len(features)
        self.lo = np.full(k, -np.inf)
        self.hi = np.full(k, np.inf)
        self.codes: dict[int, np.ndarray] = {}  # column -> the categorical codes the reference has
        categorical = set(ms.monitor.categorical) if ms.monitor is not None else set()
        if g.input_domain == "reference" and reference is not None:
            lo, hi, codes, _ = reference_domain(reference, features, [f in categorical for f in features], dtype)
            ranged = np.isfinite(lo)  # continuous, with finite values: a margin of its range on each side
            pad = g.margin * (hi[ranged] - lo[ranged])
            self.lo[ranged], self.hi[ranged] = lo[ranged] - pad, hi[ranged] + pad
            self.codes = {j: c for j, c in enumerate(codes) if c is not None}
        for name, (low, high) in g.bounds.items():
            j = features.index(name)
            self.lo[j], self.hi[j] = low, high
            self.codes.pop(j, None)
        self.checks_inputs = bool(np.isfinite(self.lo).any() or np.isfinite(self.hi).any() or self.codes)
        self.score = g.score or (ms.performance.output if ms.performance is not None else None)
        self.min_confidence, self.interval = g.min_confidence, g.interval
        self.checks_outputs = self.min_confidence is not None or self.interval is not None
        self.counts: dict[tuple[str, str], int] = {}  # (guard, action) -> rows (scorewire_guard_rows_total)

    def count(self, bits: np.ndarray | None, action: str) -> None:
        if bits is None or not bits.any():
            return
        for bit, name in NAMES.items():
            n = int(np.count_nonzero(bits & bit))
            if n:
                self.counts[(name, action)] = self.counts.get((name, action), 0) + n

    # -- bits --------------------------------------------------------------------------------
    def input_bits(self, inputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Bit 1 per row (None when the inputs are not guarded)."""
        if not self.checks_inputs:
            return None
        x = inputs.get(self.input)
        if x is None or x.ndim != 2 or x.shape[1] != len(self.features):
            return None
        x = x.astype(np.float64, copy=False)
        bad = ((x < self.lo) | (x > self.hi)).any(axis=1)
        for j, codes in self.codes.items():
            bad |= ~np.isin(x[:, j], codes)
        return bad.astype(np.uint8) * INPUT_DOMAIN

    def output_bits(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Bits 2 and 4 per row (None when the outputs are not guarded)."""
        if not self.checks_outputs or self.score not in outputs:
            return None
        y = np.asarray(outputs[self.score], np.float64)
        bits = np.zeros(len(y), np.uint8)
        if self.min_confidence is not None and y.ndim == 2:
            bits |= (y.max(axis=1) < self.min_confidence).astype(np.uint8) * CONFIDENCE
        if self.interval is not None:
            prediction = y.reshape(len(y), -1)[:, 0]
            bits |= ((prediction < self.interval[0]) | (prediction > self.interval[1])).astype(np.uint8) * INTERVAL
        return bits

    def flags(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The `scorewire_guard` output of a scored batch (action "flag")."""
        rows = len(next(iter(outputs.values())))
        bits = np.zeros(rows, np.uint8)
        for part in (self.input_bits(inputs), self.output_bits(outputs)):
            if part is not None:
                bits |= part
        return bits

    def spec(self) -> TensorSpec:
        return TensorSpec(OUTPUT, "UINT8", np.dtype(np.uint8), (-1,))

    # -- refusals ------------------------------------------------------------------------------
    def why(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None, bits: np.ndarray) -> str:
        """One line naming the first violating row, what violated and the bound."""
        row = int(np.flatnonzero(bits)[0])
        b = int(bits[row])
        if b & INPUT_DOMAIN:
            x = np.asarray(inputs[self.input], np.float64)[row]
            for j, name in enumerate(self.features):
                if x[j] < self.lo[j] or x[j] > self.hi[j]:
                    return (f"row {row}: feature {name} = {x[j]:.6g} is outside [{self.lo[j]:.6g}, {self.hi[j]:.6g}] "
                            f"(model {self.label}'s input domain)")
                codes = self.codes.get(j)
                if codes is not None and x[j] not in codes:
                    return f"row {row}: feature {name} = {x[j]:.6g} is a category the reference never had"
        y = np.asarray(outputs[self.score], np.float64)[row]
        if b & CONFIDENCE:
            return f"row {row}: confidence {y.max():.4g} is below min_confidence {self.min_confidence:g}"
        prediction = float(np.ravel(y)[0])
        return f"row {row}: prediction {prediction:.6g} is outside the interval {list(self.interval)}"

    def refuse(self, message: str) -> EngineError:
        return EngineError(ErrorCode.INVALID_ARGUMENT, f"refused by the guards of {self.label}: {message}")

    def check_request(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None) -> None:
        """action "reject": raise INVALID_ARGUMENT for a request with a violating row (its
        inputs before it is batched; its outputs after)."""
        bits = self.input_bits(inputs) if outputs is None else self.output_bits(outputs)
        if bits is not None and bits.any():
            self.count(bits, "reject")
            raise self.refuse(self.why(inputs, outputs, bits))


def for_version(ms: ModelSettings, inputs: Sequence[TensorSpec]) -> Guards | None:
    """The guards of a version whose model takes `inputs`."""
    if ms.guards is None:
        return None
    reference = None
    if ms.guards.input_domain == "reference":
        from engine.monitor.drift import load_reference

        reference = load_reference(ms.monitor.reference)
        missing = [f for f in ms.monitor.features if f not in reference]
        if missing:
            raise ValueError(f"guards.input_domain: the reference has no column {missing[:5]}")
    return Guards(ms, inputs, reference)


__all__ = ["CONFIDENCE", "Guards", "INPUT_DOMAIN", "INTERVAL", "NAMES", "OUTPUT", "for_version"]
