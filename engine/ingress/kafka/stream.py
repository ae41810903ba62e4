"""KafkaStream: one input topic scored into an output topic, what the App starts and stops.

The parts: the Reader (its thread), the Scorer, a Delivery (AtLeastOnce or Transactional)
and the OffsetTracker. The stream owns what they share on the loop: the chunks in consume
order, the in-flight count, the producer generation, and the stream's end (`halt`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading

import orjson
from confluent_kafka import KafkaError, KafkaException

from engine.ingress.kafka.chunk import Chunk, State
from engine.ingress.kafka.client_log import ClientLog, Redactor
from engine.ingress.kafka.config import client_configs, reveal, transactional_id
from engine.ingress.kafka.delivery import AtLeastOnce, Delivery, log
from engine.ingress.kafka.offsets import OffsetTracker
from engine.ingress.kafka.reader import Reader
from engine.ingress.kafka.scoring import Scorer
from engine.ingress.kafka.topics import TOPICS_FIRST_WAIT_S, Topics
from engine.ingress.kafka.transactions import Transactional
from engine.codec.kafka import StreamCodec
from engine.frontdoor import FrontDoor
from engine.runtime.registry import Served
from engine.settings import SettingsError, StreamSettings


class StreamStats:
    __slots__ = ("consumed", "chunks", "scored", "dead_lettered", "delivered", "delivery_errors", "commits",
                 "commit_errors", "pauses", "rebalances", "abandoned", "consumer_errors", "results_refused",
                 "producer_restarts", "decoder_failures", "transactions", "transactions_aborted")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)


class KafkaStream:
    def __init__(self, settings: StreamSettings, front: FrontDoor, served: Served, member: int = 0,
                 split: bool = False):
        """`served`: the version a row goes to naming none (the route's champion); `split`: the
        route splits the stream's rows between versions (by message key), so no one version
        names it."""
        self.settings = settings
        self.exactly_once = settings.semantics == "exactly_once"
        # the worker's number: the last part of its transactional.id (exactly_once)
        self.transactional_id = transactional_id(settings, member) if self.exactly_once else None
        self.front = front
        self.model = served.name
        self.name = f"{settings.input_topic}->{settings.output_topic}"
        self.label = f"{self.name} ({served.name}, split by its route)" if split else \
            f"{self.name} ({served.model.label})"
        self.health_name = f"scorewire.stream/{self.name}"  # in grpc.health.v1: NOT_SERVING once stopped
        self.lag: dict[int, int] = {}  # assigned partition -> high watermark - committed (the reader replaces it)
        self.stalled: set[int] = set()  # assigned partitions with events waiting and no fetch position (the reader's)
        self.input_partitions: int | None = None  # the input topic's partitions (0: it does not exist; None: unknown)
        self.codec = StreamCodec(served.model.schema, settings.format, settings.max_message_bytes,
                                 served.limits.allow_non_finite)
        self.stats = StreamStats()
        self.tracker = OffsetTracker()
        self.scorer = Scorer(self, served)
        self.topics = Topics(self)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reader: Reader | None = None
        self.delivery: Delivery | None = None
        self.stopping = threading.Event()
        self.room = threading.Event()  # set by the loop when in-flight events drop to half the bound
        self.consumed = 0  # events consumed (the reader writes)
        self._finished = 0  # events settled or abandoned (the loop writes; the reader reads)
        self.order: collections.deque[Chunk] = collections.deque()  # chunks not yet produced, consume order
        self.generation = 0  # the producer's; a fatal error makes a new one (the loop writes)
        self._tasks: set[asyncio.Task] = set()
        self._topic_check: asyncio.Task | None = None
        self.failure: str | None = None  # why the stream stopped, when it did
        self.on_down = None  # called on the loop, once, with (stream, reason) when the stream stops
        # False from librdkafka's "all brokers are down" until its statistics show a broker up
        # again (set by the client's threads; said on the loop)
        self.brokers_reachable = True
        self.on_reachable = None  # called on the loop with (stream, reachable) when that changes

    # -- lifecycle -----------------------------------------------------------------------------
    def client_configs(self) -> tuple[dict, dict]:
        """librdkafka configs. They hold revealed secrets: never log them (the client's own log
        lines and errors go through a Redactor that cuts them out)."""
        s = self.settings
        tables = [s.kafka, s.consumer, s.producer]
        revealed = [reveal(t) for t in tables]
        self.redact = Redactor.for_tables(tables, revealed)
        self.client_log = ClientLog(log, self.label, self.redact)
        return client_configs(s, revealed, self.transactional_id, {
            "error_cb": self._client_error, "stats_cb": self._client_stats, "logger": self.client_log})

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.scorer.start()
        await self.loop.run_in_executor(None, self.codec.warm_up)
        consumer_conf, producer_conf = self.client_configs()
        try:
            self.delivery = (Transactional(self, producer_conf, self.transactional_id) if self.exactly_once
                             else AtLeastOnce(self, producer_conf))
            self.reader = Reader(self, consumer_conf)
            self.reader.subscribe()
        except (KafkaException, ValueError, TypeError) as exc:  # the message may quote a secret value
            raise SettingsError(f"stream {self.label}: the Kafka client refuses its settings: "
                                f"{self.redact(str(exc))}") from None
        producer = self.delivery.producer
        missing = await self.loop.run_in_executor(None, self.topics.missing, producer, TOPICS_FIRST_WAIT_S)
        if missing is None:  # no broker answered yet: start, and check once one does
            self._topic_check = self.loop.create_task(self.topics.check_later(producer),
                                                      name=f"kafka-topics:{self.label}")
        elif self.topics.act_on(missing):
            return
        self.delivery.start()
        self.reader.start()

    def topic_role(self, topic: str) -> str:
        return self.topics.role(topic)

    async def stop(self) -> None:
        """Stop consuming, settle what is in flight, commit, leave the group."""
        self.stopping.set()
        loop = asyncio.get_running_loop()
        if self.reader is not None:
            await loop.run_in_executor(None, self.reader.join)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._topic_check is not None:  # still no broker: stopping does not wait for one
            self._topic_check.cancel()
            await asyncio.gather(self._topic_check, return_exceptions=True)
        if self.delivery is not None:
            await self.delivery.stop()
        log.info("stream %s stopped: %s", self.label,
                 ", ".join(f"{name} {getattr(self.stats, name)}" for name in self.stats.__slots__))

    @property
    def in_flight(self) -> int:
        return self.consumed - self._finished

    @property
    def up(self) -> bool:
        return self.failure is None

    def halt(self, reason: str) -> None:
        """On the loop: the stream cannot go on. Nothing past what was delivered is committed."""
        if self.failure is not None:
            return
        self.failure = reason
        log.error("stream %s stopped: %s; what was delivered is committed, the rest will be consumed again "
                  "after a restart", self.label, reason)
        self.stopping.set()
        if self.on_down is not None:
            self.on_down(self, reason)

    # -- chunks on the loop ----------------------------------------------------------------------
    def accept(self, chunk: Chunk) -> None:
        """A chunk the reader consumed."""
        if chunk.generation != self.generation:  # consumed before a producer restart: consumed again
            chunk.abandon()
            self.stats.abandoned += chunk.size
            self.finish(chunk)
            return
        self.tracker.add(chunk)
        self.order.append(chunk)
        task = self.loop.create_task(self._score(chunk))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(self, chunk: Chunk) -> None:
        try:
            await self.scorer.score(chunk)
        finally:
            if chunk.state is State.CONSUMED:
                chunk.state = State.SCORED
            if not chunk.abandoned:
                chunk.decoded = None  # the raw values stay until settled: a refused result becomes a dead letter
            self.drain()

    def drain(self) -> None:
        """Produce the scored chunks at the head of the consume order (not while the delivery
        is busy: exactly-once's driver drains when its transactional call is done)."""
        order, delivery = self.order, self.delivery
        while order and order[0].state is not State.CONSUMED and not delivery.busy:
            head = order.popleft()
            try:
                if head.abandoned:
                    self.finish(head)
                    delivery.not_scored(head)
                else:
                    delivery.produce(head)
            except Exception as exc:  # a bug: say so and stop rather than lose events silently
                log.exception("stream %s: producing failed", self.label)
                self.halt(f"producing failed: {exc!r}")
        delivery.produced_all()

    def finish(self, chunk: Chunk) -> None:
        """Count a chunk's events as no longer in flight (once), and let its data go."""
        if not chunk.counted:
            chunk.counted = True
            self._finished += chunk.size
            if self.in_flight <= self.settings.max_in_flight // 2 and not self.room.is_set():
                self.room.set()
        chunk.release()

    async def settle(self, partitions: set[int] | None) -> None:
        """Wait until every chunk holding `partitions` (None: any) is settled or abandoned."""
        deadline = self.loop.time() + self.settings.settle_timeout_s
        while (partitions is None and (self._tasks or self.order)) or self.tracker.busy(partitions):
            if self.loop.time() > deadline:
                log.warning("stream %s: in-flight events not settled after %.0f s; committing what was delivered",
                            self.label, self.settings.settle_timeout_s)
                break
            self.delivery.poll()
            await asyncio.sleep(0.005)
        self.tracker.forget(partitions)

    # -- the client's callbacks (its threads) ------------------------------------------------------
    def _client_error(self, error: KafkaError) -> None:
        self.client_log.say(logging.ERROR if error.fatal() else logging.WARNING, self.redact(str(error)))
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._set_reachable(False)

    def _client_stats(self, stats_json: str) -> None:
        """librdkafka's statistics (the consumer's, each second): a broker in state UP means
        the brokers are reachable again."""
        if self.brokers_reachable:
            return
        try:
            brokers = orjson.loads(stats_json).get("brokers", {})
        except orjson.JSONDecodeError:
            return
        if any(b.get("state") == "UP" for b in brokers.values()):
            self._set_reachable(True)

    def _set_reachable(self, reachable: bool) -> None:
        """From a client thread: note the change, say it on the loop."""
        if reachable == self.brokers_reachable:
            return
        self.brokers_reachable = reachable
        try:
            self.loop.call_soon_threadsafe(self._reachability_changed, reachable)
        except (RuntimeError, AttributeError):  # the loop is closed (or not there yet): nothing to tell
            pass

    def _reachability_changed(self, reachable: bool) -> None:
        if reachable != self.brokers_reachable:  # changed back meanwhile: the later call says it
            return
        if reachable:
            log.info("stream %s: a broker of %s is reachable again; consuming", self.label,
                     self.settings.bootstrap_servers)
        else:
            log.error("stream %s: no broker of bootstrap_servers = %r can be reached, so nothing is consumed: check "
                      "that the broker runs, that this machine can reach it, and the stream's bootstrap_servers "
                      "and [streams.kafka] security settings. Health %r says NOT_SERVING until a broker is back.",
                      self.label, self.settings.bootstrap_servers, self.health_name)
        if self.on_reachable is not None:
            self.on_reachable(self, reachable)
