"""Scoring a chunk: routed by the Router, scored through the Pipeline, encoded as results.

The rows of a chunk are routed like requests (`Router.resolve_rows`: one group, or one per
split arm and decision), cut into pieces of at most max_batch_size rows and submitted through
the front door to the model's batcher, each row its own event (`Pipeline.submit_rows`): a row that breaks the model
fails alone and becomes a dead letter, its piece-mates are scored. A full queue (gRPC traffic)
is waited out; an engine that is stopping abandons the chunk (consumed again after restart).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from engine.batching.batch import Origin, source_id
from engine.codec.kafka import Decoded, ResultTemplate, encode_results
from engine.errors import EngineError, ErrorCode
from engine.ingress.kafka.chunk import Chunk
from engine.ingress.kafka.delivery import log
from engine.routing.router import Role
from engine.runtime.registry import Served


class Scorer:
    def __init__(self, stream, served: Served):
        self.stream = stream
        self.settings = stream.settings
        self.front = stream.front
        self.router = stream.front.pipeline.router
        self.model = served.name
        self.version = self.settings.version  # empty: the model's route (or highest version) decides
        self.piece_rows = max(1, min(served.batcher.max_batch_size, served.limits.max_rows))
        # Rows this stream keeps queued in the model's batcher: leaves room for gRPC callers.
        self.piece_slots = max(2, min(16, served.batcher.capacity // (2 * self.piece_rows)))
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> None:
        self._slots = asyncio.Semaphore(self.piece_slots)

    async def score(self, chunk: Chunk) -> None:
        """Fill the chunk's results and dead letters; abandon it when it cannot be scored."""
        stream, decoded = self.stream, chunk.decoded
        stats = stream.stats
        try:
            started = time.monotonic_ns()
            good = decoded.good
            keys = chunk.keys if len(good) == chunk.size else [chunk.keys[i] for i in good.tolist()]
            groups = self._fallen_back(decoded, self.router.resolve_rows(self.model, self.version, keys))
            outcomes = await asyncio.gather(*(self._group(chunk, decoded, *group) for group in groups))
            groups, outcomes = await self._fall_back_outputs(chunk, decoded, groups, outcomes)
            if chunk.abandoned:  # given up meanwhile (its data is gone): consumed again
                return
            timings = {"wait_us": (started - chunk.consumed_ns) // 1000,
                       "score_us": (time.monotonic_ns() - started) // 1000}
            errors = list(decoded.errors)
            scored = 0
            for (served, _role, _routing, picked), (at, outputs, failures) in zip(groups, outcomes):
                every = len(at) == len(good)  # positions in decoded.good
                rows = good if every else good[at]
                if len(rows):
                    template = ResultTemplate(self.model, served.version, self.settings.input_topic, outputs, timings)
                    values = encode_results(template, decoded.id_text, decoded.id_spans if every else decoded.id_spans[at],
                                            chunk.partitions[rows], chunk.offsets[rows], outputs)
                    picked_keys = chunk.keys if len(rows) == chunk.size else [chunk.keys[i] for i in rows.tolist()]
                    chunk.results.extend(zip(picked_keys, values))
                    chunk.result_rows.append(rows)
                scored += len(rows)
                errors += [(int(good[r]), message) for r, message in failures]
            for i, message in errors:
                chunk.dead.append((chunk.keys[i], chunk.values[i], self.dead_headers(chunk, i, message)))
            stats.scored += scored
            stats.dead_lettered += len(errors)
        except EngineError as exc:
            if chunk.abandon():
                stats.abandoned += chunk.size
                log.warning("stream %s: %d events not scored (%s); they will be consumed again", stream.label,
                            chunk.size, exc.message)
        except Exception:
            if chunk.abandon():
                stats.abandoned += chunk.size
                log.exception("stream %s: %d events not scored; they will be consumed again", stream.label, chunk.size)

    async def _group(self, chunk: Chunk, decoded: Decoded, served: Served, role: str, routing: str,
                     picked: np.ndarray | None):
        """Score one group's rows in pieces; returns (positions in decoded.good of the rows
        scored, their outputs, [(position in decoded.good, error)] of the rows that failed).
        `decoded` is the chunk's, held here: a chunk given up meanwhile lets its own go."""
        inputs = decoded.inputs if picked is None else {n: a[picked] for n, a in decoded.inputs.items()}
        at = decoded.good if picked is None else decoded.good[picked]  # message index of each row
        positions = np.arange(len(at)) if picked is None else picked  # of each row, in decoded.good
        refused: list[tuple[int, str]] = []
        guards = served.model.guards if role != Role.FALLBACK else None  # a fallback answers as it is
        rejects = guards is not None and guards.action == "reject"
        if rejects and len(at):  # out of the model's domain: a dead letter each, never batched
            bits = guards.input_bits(inputs)
            if bits is not None and bits.any():
                guards.count(bits, "reject")
                refused += [(int(positions[r]), "invalid_argument: " + guards.refuse(
                    guards.why({n: a[r:r + 1] for n, a in inputs.items()}, None, bits[r:r + 1])).message)
                    for r in np.flatnonzero(bits).tolist()]
                keep = np.flatnonzero(bits == 0)
                inputs, at, positions = {n: a[keep] for n, a in inputs.items()}, at[keep], positions[keep]
                picked = positions
        rows = len(at)
        if rows == 0:
            return np.zeros(0, np.int64), {}, refused
        topic = self.settings.input_topic
        step = self.piece_rows
        ids = self._ids(decoded, picked) if self._joined() else None

        def piece(a: int, b: int):
            index = at[a:b]
            origin = Origin(role, routing, topic=topic, partitions=chunk.partitions[index],
                            offsets=chunk.offsets[index], keys=[chunk.keys[i] for i in index.tolist()],
                            ids=None if ids is None else ids[a:b])
            return self._submit(served, {name: array[a:b] for name, array in inputs.items()}, origin)

        starts = range(0, rows, step)
        outcomes = await asyncio.gather(*(piece(a, min(a + step, rows)) for a in starts))
        done, parts, failures = [], [], []
        for a, outcome in zip(starts, outcomes):
            if len(outcome.scored):
                done.append(outcome.scored + a)
                parts.append(outcome.outputs)
            failures += [(r + a, message) for r, message in outcome.failures]
        failures = refused + [(int(positions[r]), m) for r, m in failures]
        if not parts:
            return np.zeros(0, np.int64), {}, failures
        index = np.concatenate(done)
        outputs = parts[0] if len(parts) == 1 else {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        if rejects and guards.checks_outputs:  # unconfident or out of the interval: scored, logged, dead-lettered
            bits = guards.output_bits(outputs)
            if bits is not None and bits.any():
                guards.count(bits, "reject")
                for r in np.flatnonzero(bits).tolist():
                    one = {n: a[r:r + 1] for n, a in outputs.items()}
                    failures.append((int(positions[index[r]]), "invalid_argument: " + guards.refuse(
                        guards.why({}, one, bits[r:r + 1])).message))
                keep = bits == 0
                index, outputs = index[keep], {n: a[keep] for n, a in outputs.items()}
        return positions[index], outputs, failures

    def _fallen_back(self, decoded: Decoded, groups: list) -> list:
        """Guards with action "fallback": a group's rows outside its version's input domain go
        to the fallback version, as a group of their own (role "fallback": its result events
        name the version that answered)."""
        out = []
        for served, role, routing, picked in groups:
            guards = served.model.guards
            if guards is None or guards.action != "fallback" or not guards.checks_inputs:
                out.append((served, role, routing, picked))
                continue
            inputs = decoded.inputs if picked is None else {n: a[picked] for n, a in decoded.inputs.items()}
            bits = guards.input_bits(inputs)
            if bits is None or not bits.any():
                out.append((served, role, routing, picked))
                continue
            guards.count(bits, "fallback")
            positions = np.arange(len(decoded.good)) if picked is None else picked
            if not bits.all():
                out.append((served, role, routing, positions[bits == 0]))
            fallback = self.front.registry.get(served.name, guards.fallback_version)
            out.append((fallback, Role.FALLBACK, routing, positions[bits != 0]))
        return out

    async def _fall_back_outputs(self, chunk: Chunk, decoded: Decoded, groups: list, outcomes: list):
        """Guards with action "fallback": rows their version scored unconfident or out of its
        interval are scored again by the fallback version, whose answer goes out instead."""
        more_groups, more = [], []
        for i, ((served, role, routing, picked), (at, outputs, failures)) in enumerate(zip(groups, outcomes)):
            guards = served.model.guards
            if (role == Role.FALLBACK or guards is None or guards.action != "fallback" or not guards.checks_outputs
                    or not len(at)):
                continue
            bits = guards.output_bits(outputs)
            if bits is None or not bits.any():
                continue
            guards.count(bits, "fallback")
            keep = bits == 0
            outcomes[i] = (at[keep], {n: a[keep] for n, a in outputs.items()}, failures)
            fallback = self.front.registry.get(served.name, guards.fallback_version)
            more_groups.append((fallback, Role.FALLBACK, routing, at[~keep]))
        if more_groups:
            more = await asyncio.gather(*(self._group(chunk, decoded, *group) for group in more_groups))
        return groups + more_groups, outcomes + list(more)

    def _joined(self) -> bool:
        """Whether a version of the model has [models.performance]: its rows join labels by id."""
        return any(s.model.settings.performance is not None for s in self.front.registry.all() if s.name == self.model)

    @staticmethod
    def _ids(decoded: Decoded, picked: np.ndarray | None) -> list:
        """Each row's "id" as its JSON token (bytes; None when the event has none: the join
        falls back to the message key)."""
        spans = decoded.id_spans if picked is None else decoded.id_spans[picked]
        text = decoded.id_text
        return [None if text[a:b] == b"null" else text[a:b] for a, b in spans.tolist()]

    async def _submit(self, served: Served, piece: dict[str, np.ndarray], origin: Origin):
        async with self._slots:
            while True:
                try:
                    return await self.front.score_rows(served, piece, origin)
                except EngineError as exc:
                    if exc.code is not ErrorCode.RESOURCE_EXHAUSTED:
                        raise
                await asyncio.sleep(0.001)  # the model's queue is full (gRPC traffic): wait our turn

    def dead_headers(self, chunk: Chunk, i: int, message: str) -> list:
        source = source_id(self.settings.input_topic, chunk.partitions[i], chunk.offsets[i])
        return [("scorewire.error", message.encode()), ("scorewire.source", source.encode()),
                ("scorewire.model", self._model_tag().encode())]

    def _model_tag(self) -> str:
        """model:version that scores this stream (just the model when a split decides per key)."""
        router = self.router
        if router.split_of(self.model, self.version) is not None:
            return self.model
        try:
            return f"{self.model}:{router.resolve(self.model, self.version, None)[0].version}"
        except EngineError:
            return self.model
