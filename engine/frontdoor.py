"""The front door: what every inference request goes through, whichever transport.

gRPC (ModelInfer, ModelStreamInfer) and REST translate their messages and call `infer`;
Kafka's stream calls `score_rows`. The door holds what is not a transport's business:

- admission: refused with UNAVAILABLE once the drain closes the door; request bytes held by
  requests in flight bounded by server.max_inflight_bytes (`hold`);
- the drain's quiet phase: how long no request has been in flight or arrived (`quiet_for_ns`);
- ids and deadlines: a request without an id gets one (the scoring log pairs rows by it);
  Triton's `timeout` parameter (us) shortens the transport's deadline;
- counts: every request's outcome per model and code (`count`), and Triton's statistics
  (successes with their time, failures) per version.

Labels sent back (`feedback`) are checked here and handed to the sink, for the observer's join.

Kafka events are admitted by their stream's own flow control (max_in_flight) and drained by
the stream's stop, which settles what it consumed: the door lets their rows through even
while closing (a refused chunk would only be consumed again after the restart), and they are
counted in the stream's own counters, not as requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from engine.batching.batch import Origin
from engine.batching.batcher import RowOutcome
from engine.codec.oip import DecodedRequest
from engine.errors import EngineError, ErrorCode, clip
from engine.performance.feedback import parse
from engine.performance.labels import Labels
from engine.pipeline import Pipeline
from engine.runtime.registry import Served


class FrontDoor:
    def __init__(self, pipeline: Pipeline, max_message_bytes: int, max_inflight_bytes: int = 1 << 62,
                 count: Callable[[str, str], None] = lambda model, code: None,
                 put_labels: Callable[[Labels], None] = lambda labels: None):
        self.pipeline = pipeline
        self.put_labels = put_labels  # labels sent back go to the sink, for the observer's join
        self.labels_refused: dict[str, int] = {}  # model -> label objects refused at the door
        self.registry = pipeline.registry
        self.count = count  # (model name, status code name) of every inference request
        self.max_message_bytes = max_message_bytes
        self.max_inflight_bytes = max_inflight_bytes
        self.inflight_bytes = 0  # bytes of the requests in flight (parsed and not yet answered)
        self.ready = False  # set once every model is loaded and warm; cleared on drain
        self.closing = False  # draining, past the quiet phase: inference requests get UNAVAILABLE
        self.active = 0  # inference requests being answered
        self.last_arrival_ns = 0  # monotonic time the last one arrived
        self.succeeded: dict[tuple[str, str], tuple[int, int]] = {}  # (name, version) -> (requests, total ns)
        # (model, version) -> failed requests: the version asked for, else the one that answers
        # a request naming none (a split's arm is not known when a request fails before routing)
        self.failed: dict[tuple[str, str], int] = {}

    # -- admission -----------------------------------------------------------------------------
    def too_large(self, size: int) -> EngineError | None:
        if size > self.max_message_bytes:
            return EngineError(ErrorCode.INVALID_ARGUMENT, f"request is {size} bytes, more than "
                               f"server.max_message_bytes = {self.max_message_bytes}")
        return None

    def over_budget(self, size: int) -> EngineError | None:
        """RESOURCE_EXHAUSTED when `size` more bytes would pass max_inflight_bytes (a request
        alone may always pass it: an idle server takes any request within max_message_bytes)."""
        held = self.inflight_bytes
        if held and held + size > self.max_inflight_bytes:
            return EngineError(ErrorCode.RESOURCE_EXHAUSTED, f"requests in flight hold {held} bytes; this one's "
                               f"{size} more would pass server.max_inflight_bytes = {self.max_inflight_bytes}; "
                               "retry later")
        return None

    def hold(self, size: int) -> None:
        """`size` request bytes in flight until `release(size)`."""
        self.inflight_bytes += size

    def release(self, size: int) -> None:
        self.inflight_bytes -= size

    def quiet_for_ns(self) -> int | None:
        """How long no inference request has been in flight or arrived; None while one is."""
        return None if self.active else time.monotonic_ns() - self.last_arrival_ns

    # -- requests ------------------------------------------------------------------------------
    async def infer(self, name: str, decode: Callable[[], DecodedRequest], deadline_ns: int | None):
        """One request for model `name` (as asked; "" when not even that could be read):
        `decode()` gives it decoded, or raises the EngineError that refuses it. Returns
        (served, request id, outputs); raises EngineError. Counted either way."""
        self.active += 1
        self.last_arrival_ns = time.monotonic_ns()
        try:
            if self.closing:
                self.count(name, ErrorCode.UNAVAILABLE.name)
                raise EngineError(ErrorCode.UNAVAILABLE, "the server is shutting down; send the request to "
                                  "another replica or retry")
            try:
                result = await self._submit(decode(), deadline_ns)
            except EngineError as exc:
                self.count(name, exc.code.name)
                raise
            self.count(name, "OK")
            return result
        finally:
            self.active -= 1

    async def _submit(self, decoded: DecodedRequest, deadline_ns: int | None):
        start = time.monotonic_ns()
        timeout_us = decoded.parameters.get("timeout")
        if isinstance(timeout_us, int) and timeout_us > 0:  # Triton's per-request timeout, in us
            own = start + timeout_us * 1000
            deadline_ns = own if deadline_ns is None else min(deadline_ns, own)
        # A request without an id gets one (returned in the response): the scoring log pairs
        # a champion's rows with its challengers' by it.
        request_id = decoded.request_id or self.pipeline.new_request_id()
        key_name = self.pipeline.router.sticky_key(decoded.model_name)
        routing_key = decoded.parameters.get(key_name) if key_name is not None else None
        try:
            served, outputs = await self.pipeline.submit(
                decoded.model_name, decoded.model_version, decoded.inputs, decoded.requested_outputs, deadline_ns,
                request_id, None if routing_key is None else str(routing_key))
        except EngineError as exc:
            try:  # served names and versions only: the dict stays bounded
                failed = self.pipeline.router.answering(decoded.model_name, decoded.model_version)
            except EngineError:
                raise exc from None
            key = (failed.name, failed.version)
            self.failed[key] = self.failed.get(key, 0) + 1
            raise
        key = (served.name, served.version)
        count, ns = self.succeeded.get(key, (0, 0))
        self.succeeded[key] = (count + 1, ns + time.monotonic_ns() - start)
        return served, request_id, outputs

    def feedback(self, name: str, body: bytes) -> tuple[int, list[tuple[int, str]]]:
        """Labels sent back for model `name` (engine/performance/feedback.py): the good objects
        go to the join; returns (objects taken, [(index, error)] of those refused). EngineError
        when the model is not served (NOT_FOUND) or none of its versions has [models.performance]."""
        versions = [s for s in self.registry.all() if s.name == name]
        if not versions:
            raise EngineError(ErrorCode.NOT_FOUND, f"no model {clip(name)!r} is served")
        tasks = [s.model.settings.performance.task for s in versions if s.model.settings.performance is not None]
        if not tasks:
            raise EngineError(ErrorCode.INVALID_ARGUMENT, f"model {clip(name)!r} takes no labels: none of its "
                              "versions has [models.performance]")
        labels, errors = parse(body, name, tasks[0])
        if labels is not None:
            self.put_labels(labels)
        if errors:
            self.labels_refused[name] = self.labels_refused.get(name, 0) + len(errors)
        return (0 if labels is None else len(labels.ids)), errors

    async def score_rows(self, served: Served, inputs: dict[str, np.ndarray], origin: Origin) -> RowOutcome:
        """A piece of a Kafka chunk (see the module's docstring: not refused while closing)."""
        return await self.pipeline.submit_rows(served, inputs, origin)
