"""Getting a scored chunk's results and dead letters to the broker: one interface, two ways.

`Delivery` (the interface and what both share: the producer, its restart after a fatal error,
records refused for good, the polling task) and `AtLeastOnce`: records produced with delivery
reports, a chunk settled when the broker acknowledged every one, failed deliveries retried or
dead-lettered, offsets committed by the reader. `Transactional` (transactions.py) puts chunks
into transactions that commit the input offsets with them.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from confluent_kafka import KafkaError, KafkaException, Producer

from engine.ingress.kafka.chunk import Chunk, State
from engine.ingress.kafka.errors import FATAL, PERMANENT, classify

log = logging.getLogger("engine.ingress.kafka")

# A topic missing from the cluster's metadata. A produce or delivery error says so only with the
# client's own _UNKNOWN_TOPIC (after topic.metadata.propagation.max.ms); a broker's
# UNKNOWN_TOPIC_OR_PART there is retriable (seen while a restarted broker loads its partitions).
TOPIC_GONE = {KafkaError._UNKNOWN_TOPIC}  # in a produce or delivery error


class Delivery:
    """What the stream asks of a delivery, on the event loop."""

    commits_offsets = False  # True: offsets go in its transactions, the reader commits none

    def __init__(self, stream, producer_conf: dict):
        self.stream = stream
        self.conf = producer_conf
        self.producer = Producer(producer_conf)
        self._poller: asyncio.Task | None = None

    # -- the interface ---------------------------------------------------------------------
    def start(self) -> None:
        self._poller = self.stream.loop.create_task(self._poll_deliveries(), name=f"kafka-deliveries:{self.stream.label}")

    @property
    def busy(self) -> bool:
        """True while nothing may be produced (exactly-once: a transactional call runs)."""
        return False

    def produce(self, chunk: Chunk) -> None:
        """Hand a scored chunk to the broker (chunks come in consume order)."""
        raise NotImplementedError

    def not_scored(self, chunk: Chunk) -> None:
        """A chunk abandoned before it was produced reached its turn."""

    def produced_all(self) -> None:
        """The stream produced what was ready (exactly-once: the driver may commit)."""

    def lost(self, partitions: set[int]) -> None:
        """On the loop: partitions lost in a rebalance."""
        self.stream.tracker.forget(partitions)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await self.stream.loop.run_in_executor(None, self.producer.flush, self.stream.settings.settle_timeout_s)

    # -- shared ----------------------------------------------------------------------------
    def poll(self) -> None:
        """Delivery reports; a fatal error surfacing here replaces the producer."""
        try:
            self.producer.poll(0)
        except KafkaException as exc:
            if classify(exc.args[0]) == FATAL:
                self.fatal(exc.args[0])
            else:
                log.warning("stream %s: polling the producer: %s", self.stream.label, exc)

    def fatal(self, err: KafkaError) -> None:
        self.restart(err)

    def restart(self, err: KafkaError | str) -> None:
        """A fatal producer error: what is in flight is abandoned (it will be consumed again),
        a new producer takes over, and the reader rewinds to the end of what was delivered."""
        stream = self.stream
        if stream.failure is not None:
            return
        log.error("stream %s: the producer failed fatally (%s); starting a new one and consuming again from "
                  "what was delivered", stream.label, err)
        stream.stats.producer_restarts += 1
        self.abandon_in_flight()
        old, self.producer = self.producer, Producer(self.conf)
        self._restarted()
        try:
            old.purge()  # its reports (for abandoned chunks) are never polled: it is dropped
        except Exception:  # it is being dropped anyway
            log.debug("stream %s: purging the failed producer failed", stream.label, exc_info=True)

    def _restarted(self) -> None:
        """A new producer took over."""

    def abandon_in_flight(self) -> None:
        """Give up every chunk in flight; the reader consumes again from what was delivered
        (exactly-once: committed), and drops what it consumed before it rewinds."""
        stream = self.stream
        stream.generation += 1
        for chunk in stream.tracker.in_flight():
            produced = chunk.state is State.PRODUCED
            if chunk.abandon():
                stream.stats.abandoned += chunk.size
                if produced:  # not produced: the stream finishes it when its turn comes
                    stream.finish(chunk)
        for chunk in stream.order:
            if chunk.abandon():
                stream.stats.abandoned += chunk.size
        stream.tracker.forget(None)

    def topic_gone(self, err: KafkaError, topic: str) -> bool:
        """A record refused because its topic was deleted under the stream: the stream stops
        (dead-lettering every event helps nobody). True when it did."""
        if err.code() not in TOPIC_GONE:
            return False
        stream = self.stream
        stream.halt(stream.redact(f"the {stream.topic_role(topic)} does not exist any more ({err}); create it and "
                                  "restart"))
        return True

    def refused_for_good(self, chunk: Chunk, err: KafkaError, topic: str, value, headers):
        """A record the broker will never take. A result: its event's dead letter, (raw, key,
        headers), to send instead. A dead letter: there is nowhere left to put the event, the
        stream stops (None)."""
        stream = self.stream
        if self.topic_gone(err, topic):
            return None
        if headers is not None:
            stream.halt(stream.redact(f"the dead-letter topic {topic!r} refuses records: {err}"))
            return None
        i = chunk.source_of(value)
        stream.stats.results_refused += 1
        stream.stats.dead_lettered += 1
        message = stream.redact(f"producing the result to {topic!r} failed: {err}")
        stream.client_log.say(logging.WARNING, f"{message}; the event goes to the dead-letter topic")
        return chunk.values[i], chunk.keys[i], stream.scorer.dead_headers(chunk, i, message)

    async def _poll_deliveries(self) -> None:
        """Delivery reports (and retries of failed deliveries) on the loop."""
        while True:
            try:
                self.poll()
            except Exception:
                log.exception("stream %s: delivery polling failed", self.stream.label)
            await self._retry_pass()
            await asyncio.sleep(0.002 if self.stream.in_flight else 0.02)

    async def _retry_pass(self) -> None:
        """Send again what failed (at-least-once)."""


class AtLeastOnce(Delivery):
    """Results and dead letters with delivery reports; a chunk settles when all are acknowledged."""

    def __init__(self, stream, producer_conf: dict):
        super().__init__(stream, producer_conf)
        self._retry: list[tuple[str, bytes | None, bytes | None, list | None, Chunk]] = []

    def produce(self, chunk: Chunk) -> None:
        chunk.state = State.PRODUCED
        chunk.owner = self
        chunk.pending = len(chunk.results) + len(chunk.dead)
        if chunk.pending == 0:
            self.settled(chunk)
            return
        stream = self.stream
        produce = self.producer.produce
        topic = stream.settings.output_topic
        on_delivery = chunk.delivered
        results = chunk.results
        i = 0
        while i < len(results):
            try:
                for key, value in results[i:] if i else results:
                    produce(topic, value, key, on_delivery=on_delivery)
                    i += 1
            except BufferError:  # the producer's queue is full: the retry pass sends the rest
                self._retry.extend((topic, value, key, None, chunk) for key, value in results[i:])
                break
            except KafkaException as exc:  # refused at once: this one is handled, the rest go on
                key, value = results[i]
                i += 1
                self._refused(chunk, exc.args[0], topic, value, key, None)
                if chunk.abandoned or stream.failure is not None:  # the producer was replaced, or the stream stopped
                    return
                produce = self.producer.produce
        dead_topic = stream.settings.dead_letter_topic
        for key, raw, headers in chunk.dead:
            self._send(dead_topic, raw, key, headers, chunk)
            if chunk.abandoned:
                return
        chunk.dead = None
        self.poll()

    def _send(self, topic, value, key, headers, chunk: Chunk) -> None:
        if chunk.abandoned:
            return
        try:
            if headers is None:
                self.producer.produce(topic, value, key, on_delivery=chunk.delivered)
            else:
                self.producer.produce(topic, value, key, headers=headers,
                                      on_delivery=functools.partial(chunk.delivered_dead, headers))
        except BufferError:  # the producer's queue is full: keep it for the retry pass
            self._retry.append((topic, value, key, headers, chunk))
        except KafkaException as exc:
            self._refused(chunk, exc.args[0], topic, value, key, headers)

    def failed(self, chunk: Chunk, err, msg, headers) -> None:
        """A delivery report with an error."""
        if chunk.abandoned:  # a producer restart dropped it: it is consumed again
            return
        self.stream.stats.delivery_errors += 1
        self._refused(chunk, err, msg.topic(), msg.value(), msg.key(), headers)

    def _refused(self, chunk: Chunk, err: KafkaError, topic: str, value, key, headers) -> None:
        """A result or dead letter the producer or the broker did not take: retry it, send the
        event to the dead-letter topic instead, stop the stream, or restart the producer."""
        stream = self.stream
        if self.topic_gone(err, topic):
            return
        kind = classify(err)
        if kind == FATAL:
            self.restart(err)
            return
        if kind == PERMANENT:
            dead = self.refused_for_good(chunk, err, topic, value, headers)
            if dead is not None:
                self._send(stream.settings.dead_letter_topic, *dead, chunk)
            return
        stream.client_log.say(logging.WARNING, stream.redact(f"delivery to {topic} failed ({err}); retrying"))
        self._retry.append((topic, value, key, headers, chunk))

    def settled(self, chunk: Chunk) -> None:
        """Every record of `chunk` acknowledged."""
        if chunk.abandoned:  # acknowledged after a producer restart gave it up: consumed again
            return
        chunk.state = State.SETTLED
        stream = self.stream
        stream.finish(chunk)
        stream.stats.delivered += chunk.size
        stream.tracker.settled(chunk)

    def abandon_in_flight(self) -> None:
        super().abandon_in_flight()
        self._retry = [item for item in self._retry if not item[4].abandoned]

    async def _retry_pass(self) -> None:
        if not self._retry:
            return
        retry, self._retry = self._retry, []
        for k, (topic, value, key, headers, chunk) in enumerate(retry):
            try:
                self._send(topic, value, key, headers, chunk)
            except Exception:  # keep the rest of the pass: none is lost
                log.exception("stream %s: a retry failed", self.stream.label)
                self._retry.extend(retry[k:])
                break
        await asyncio.sleep(0.1)  # back off before the next retry pass
