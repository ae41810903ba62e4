"""Kafka ingress: a consumer-group worker scoring an input topic into an output topic.

Threads. The blocking consumer lives on its own thread (the reader): it consumes batches,
decodes them (the JSON kernel releases the GIL), pauses and resumes partitions, commits
offsets and runs the rebalance callbacks. Scoring, producing and delivery reports run on the
event loop, through the same `Pipeline.submit()` as gRPC requests.

At-least-once. Every consumed batch (a chunk) is scored, its results and dead letters are
produced in consume order, and the chunk is settled when the broker has acknowledged every
one of them. A partition's offset is committed only up to the end of the longest prefix of
its settled chunks. On revoke the reader waits (settle_timeout_s) for the chunks holding the
revoked partitions, commits what they delivered and lets go; on shutdown likewise for all.
A chunk that cannot be scored because the engine is stopping is never committed: it is
consumed again after restart. Results carry their source (topic/partition/offset), so a
consumer can drop the duplicates a crash causes.

Errors (engine/ingress/kafka_errors.py says which is which). A message the decoder cannot
handle is a dead letter, never the end of the reader. A produce or delivery error is retried
when retrying can help; when it cannot, a result goes to the dead-letter topic instead (with
the cause), and a dead letter the broker refuses stops the stream. A fatal producer error
(an idempotent producer's broken sequence) abandons what is in flight, makes a new producer
and consumes again from the end of what was delivered. A stream that stops says why once
(log, `on_down`), and reports itself down (`up`, health NOT_SERVING, a gauge).

Exactly-once (semantics = "exactly_once"). The worker's producer is transactional
(transactional.id = the stream's prefix + the worker's number, stable across restarts). Chunks
are produced in consume order into the open transaction, results and dead letters alike,
without delivery callbacks; one task (the transaction driver) then adds the input offsets
of those chunks (send_offsets_to_transaction with the consumer's group metadata, so a member
fenced by a rebalance cannot commit) and commits, on a thread. While it commits the loop
produces nothing: chunks scored meanwhile wait and go into the next transaction together,
so a transaction holds whatever was scored during the previous commit (one chunk or many,
never one event). A chunk that is not scored, a record refused mid-transaction or an
abortable commit error aborts the transaction: everything in flight is given up and the
reader consumes again from the last committed offsets (the generation mechanism of a fatal
producer error). A restarted worker's init_transactions aborts what its killed predecessor
left open. A producer fenced by a newer one with the same transactional.id (another server
with the same id) stops the stream: that is a configuration error to fix, and the other
server owns the id now.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import socket
import threading
import time

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from engine.batching.batch import Origin
from confluent_kafka import OFFSET_BEGINNING

from engine.codec.kafka import Decoded, ResultTemplate, StreamCodec, encode_results
from engine.errors import EngineError, ErrorCode
from engine.ingress.kafka_errors import FATAL, PERMANENT, classify
from engine.ingress.kafka_log import ClientLog, Redactor
from engine.pipeline import Pipeline
from engine.runtime.registry import Served
from engine.settings import SecretRef, SettingsError, StreamSettings

log = logging.getLogger(__name__)

_CONSUME_TIMEOUT_S = 0.1
PAUSE_AFTER_S = 1.0
LAG_EVERY_S = 1.0
TXN_CALL_TIMEOUT_S = 5.0  # one transactional call's wait; a retriable failure is tried again
MAX_ABORTS_IN_A_ROW = 5  # transactions aborted for the same stream without a commit between: it stops
REWIND_TRIES = 50  # a rewind a partition refuses is tried again after each poll (0.1 s), this many times
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED}
# A topic missing from the cluster's metadata. A produce or delivery error says so only with the
# client's own _UNKNOWN_TOPIC (after topic.metadata.propagation.max.ms); a broker's
# UNKNOWN_TOPIC_OR_PART there is retriable (seen while a restarted broker loads its partitions).
_NO_SUCH_TOPIC = {KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART}  # in metadata
_TOPIC_GONE = {KafkaError._UNKNOWN_TOPIC}  # in a produce or delivery error
TOPICS_FIRST_WAIT_S = 1.0  # start: how long the cluster's metadata (which topics exist) is waited for...
TOPICS_TIMEOUT_S = 5.0  # ...and then, no broker having answered, each later try (the stream runs meanwhile)


def _reveal(table: dict) -> dict:
    """Secret references ({ env = ... } / { file = ... }) replaced by their values."""
    return {key: value.reveal(key) if isinstance(value, SecretRef) else value for key, value in table.items()}


class _Chunk:
    """One consume() call's messages, from decoding to the broker's acknowledgements."""

    __slots__ = ("stream", "size", "consumed_ns", "values", "keys", "partitions", "offsets", "decoded", "ends",
                 "ready", "abandoned", "settled", "pending", "results", "dead", "generation", "result_rows",
                 "produced", "finished", "_sources")

    def __init__(self, stream: "KafkaStream", values, keys, partitions, offsets, consumed_ns, generation: int = 0):
        self.stream = stream
        self.generation = generation  # the producer generation it was consumed in (see _restart_producer)
        self.size = len(values)
        self.values = values
        self.keys = keys
        self.partitions = partitions
        self.offsets = offsets
        self.consumed_ns = consumed_ns
        self.decoded: Decoded | None = None
        # partition -> offset after its last message here (offsets grow within a partition)
        reverse = partitions[::-1]
        present, last = np.unique(reverse, return_index=True)
        self.ends: dict[int, int] = dict(zip(present.tolist(), (offsets[::-1][last] + 1).tolist()))
        self.ready = False  # scored and encoded
        self.abandoned = False  # not scored (engine stopping), or given up by a producer restart: never committed
        self.settled = False  # every result and dead letter acknowledged
        self.pending = 0
        self.results: list[tuple[bytes | None, bytes]] = []
        self.result_rows: list[np.ndarray] = []  # the message index of each result, in pieces
        self.dead: list[tuple[bytes | None, bytes, list]] = []
        self.produced = False
        self.finished = False  # counted as settled or abandoned
        self._sources: dict[bytes, int] | None = None

    def source_of(self, result: bytes) -> int:
        """The index of the message a result was scored from (built on first use: failures only)."""
        if self._sources is None:
            rows = np.concatenate(self.result_rows).tolist() if self.result_rows else []
            self._sources = {value: row for (_, value), row in zip(self.results, rows)}
        return self._sources[result]

    # Delivery reports, one per produced message, on the event loop (producer.poll()). Two
    # copies of the same few lines on purpose: `delivered` runs once per result, and one more
    # Python call per message is measurable at 200k+ events/s.
    def delivered(self, err, msg) -> None:
        if err is not None:
            self.stream._failed(self, err, msg, None)
            return
        self.pending -= 1
        if not self.pending:
            self.stream._settled(self)

    def delivered_dead(self, headers, err, msg) -> None:
        if err is not None:
            self.stream._failed(self, err, msg, headers)
            return
        self.pending -= 1
        if not self.pending:
            self.stream._settled(self)


class _Stuck(Exception):
    """A transactional call of the Kafka client that did not return."""


class StreamStats:
    __slots__ = ("consumed", "chunks", "scored", "dead_lettered", "delivered", "delivery_errors", "commits",
                 "commit_errors", "pauses", "rebalances", "abandoned", "consumer_errors", "results_refused",
                 "producer_restarts", "decoder_failures", "transactions", "transactions_aborted")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)


def transactional_id(settings: StreamSettings, member: int) -> str:
    prefix = settings.transactional_id or "-".join(
        ("scorewire", settings.group_id, settings.input_topic, socket.gethostname()))
    return f"{prefix}-{member}"


class KafkaStream:
    def __init__(self, settings: StreamSettings, pipeline: Pipeline, served: Served, member: int = 0):
        self.settings = settings
        self.exactly_once = settings.semantics == "exactly_once"
        # the worker's number: the last part of its transactional.id (exactly_once)
        self.transactional_id = transactional_id(settings, member) if self.exactly_once else None
        self.pipeline = pipeline
        self.model = served.name
        self.version = settings.version  # empty: the model's route (or highest version) decides
        self.name = f"{settings.input_topic}->{settings.output_topic}"
        self.label = f"{self.name} ({served.model.label})"
        self.health_name = f"scorewire.stream/{self.name}"  # in grpc.health.v1: NOT_SERVING once stopped
        self.lag: dict[int, int] = {}  # assigned partition -> high watermark - committed (the reader replaces it)
        self.input_partitions: int | None = None  # the input topic's partitions (0: it does not exist; None: unknown)
        self._committed: dict[int, int] = {}  # partition -> last offset this worker committed (reader only)
        self._lag_at = 0.0
        self.codec = StreamCodec(served.model.schema, settings.format, settings.max_message_bytes,
                                 served.limits.allow_non_finite)
        self.piece_rows = max(1, min(served.batcher.max_batch_size, served.limits.max_rows))
        # Rows this stream keeps queued in the model's batcher: leaves room for gRPC callers.
        self.piece_slots = max(2, min(16, served.batcher.capacity // (2 * self.piece_rows)))
        self.stats = StreamStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._reader: threading.Thread | None = None
        self._topic_check: asyncio.Task | None = None
        self._stop = threading.Event()
        self._room = threading.Event()  # set by the loop when in-flight events drop to half the bound
        self._lock = threading.Lock()
        self._commit_ready: dict[int, int] = {}  # partition -> offset to commit (loop writes, reader takes)
        self._settled_upto: dict[int, int] = {}  # partition -> end of its settled prefix (loop writes)
        self._finished = 0  # events settled or abandoned (loop writes; the reader reads)
        self._consumed = 0  # events consumed (the reader writes)
        self._paused = False
        self._order: collections.deque[_Chunk] = collections.deque()  # chunks not yet produced, consume order
        self._by_partition: dict[int, collections.deque[_Chunk]] = {}  # unsettled chunks per partition
        self._tasks: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None
        self._retry: list[tuple[str, bytes | None, bytes | None, list | None, _Chunk]] = []
        self._poller: asyncio.Task | None = None
        self._generation = 0  # the producer's; a fatal error makes a new one (the loop writes)
        self._reader_generation = 0  # the generation the reader last rewound to (the reader writes)
        self._rewind_tries = 0  # rewinds a partition refused since the last one that went through (the reader's)
        self._producer_conf: dict = {}
        self.failure: str | None = None  # why the stream stopped, when it did
        self.on_down = None  # called on the loop, once, with (stream, reason) when the stream stops
        # False from librdkafka's "all brokers are down" until its statistics show a broker up
        # again (set by the client's threads; said on the loop)
        self.brokers_reachable = True
        self.on_reachable = None  # called on the loop with (stream, reachable) when that changes
        # exactly_once (the loop owns these)
        self._txn_driver: asyncio.Task | None = None
        self._txn_wake: asyncio.Event | None = None
        self._txn_busy = False  # a transactional call runs on a thread: the loop produces nothing meanwhile
        self._txn_open = False
        self._txn_chunks: list[_Chunk] = []  # produced into the open transaction, in consume order
        self._need_init = self.exactly_once  # init_transactions() before the (new) producer produces
        self._need_abort: str | None = None  # why the open transaction must be aborted
        self._aborts_in_a_row = 0
        self._later: tuple[str, bool] | None = None  # a _start_over that waits for the running call
        # The consumer's group metadata (member, generation) for send_offsets_to_transaction.
        # The reader fetches it: asked from another thread while the reader polls, it waits for
        # the poll to end (measured: for as long as the reader keeps polling).
        self._group_meta = None
        self._group_meta_stale = threading.Event()
        self._group_meta_fresh = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------
    def client_configs(self) -> tuple[dict, dict]:
        """librdkafka configs. They hold revealed secrets: never log them (the client's own log
        lines and errors go through a Redactor that cuts them out)."""
        s = self.settings
        tables = [s.kafka, s.consumer, s.producer]
        revealed = [_reveal(t) for t in tables]
        self.redact = Redactor.for_tables(tables, revealed)
        self._client_log = ClientLog(log, self.label, self.redact)
        common = {"bootstrap.servers": s.bootstrap_servers, "error_cb": self._client_error,
                  "logger": self._client_log, **revealed[0]}
        consumer = {
            "group.id": s.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": 65536,
            # When the local fetch queue is over its thresholds librdkafka postpones the next
            # fetch by this much (default 1000 ms): at high rates the worker then sat idle for
            # most of a second at a time (measured: 46% of the run, 140k vs 250k events/s).
            "fetch.queue.backoff.ms": 10,
            # A fetch with nothing to return waits at most this long (default 500 ms); brokers
            # that do not answer early when data arrives then add up to that much latency.
            "fetch.wait.max.ms": 20,
            # Incremental rebalancing: a worker joining or leaving moves only the partitions that
            # change owner; the others keep flowing and keep their in-flight work (with eager
            # rebalancing every partition is revoked and commits race the rebalance).
            "partition.assignment.strategy": "cooperative-sticky",
            # Broker states once a second (stats_cb): how the stream learns that a broker it
            # could not reach is back.
            "statistics.interval.ms": 1000,
            "stats_cb": self._client_stats,
            **common,
            **revealed[1],
        }
        producer = {
            "enable.idempotence": True,  # per-partition order survives retries
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": max(100_000, 4 * s.max_in_flight),
            "partitioner": "murmur2_random",  # Java clients' partitioner: same key, same partition
            **common,
            **revealed[2],
        }
        if self.exactly_once:
            producer["transactional.id"] = self.transactional_id
            # librdkafka refuses a message timeout longer than the transaction's (60 s by default)
            if "transaction.timeout.ms" not in producer and "message.timeout.ms" in producer:
                producer["transaction.timeout.ms"] = max(60000, int(producer["message.timeout.ms"]))
            # The first records of the next transaction get CONCURRENT_TRANSACTIONS until the
            # coordinator has written the last one's markers, and wait a retry backoff (100 ms by
            # default; measured here: commits took 100 ms median, 64 ms with 10 ms).
            producer.setdefault("retry.backoff.ms", 10)
            consumer.setdefault("isolation.level", "read_committed")
        return consumer, producer

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.piece_slots)
        await self._loop.run_in_executor(None, self.codec.warm_up)
        consumer_conf, producer_conf = self.client_configs()
        self._producer_conf = producer_conf
        try:
            self._producer = Producer(producer_conf)
            self._consumer = Consumer(consumer_conf)
            self._consumer.subscribe([self.settings.input_topic], on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_lost)
        except (KafkaException, ValueError, TypeError) as exc:  # the message may quote a secret value
            raise SettingsError(f"stream {self.label}: the Kafka client refuses its settings: "
                                f"{self.redact(str(exc))}") from None
        missing = await self._loop.run_in_executor(None, self._missing_topics, TOPICS_FIRST_WAIT_S)
        if missing is None:  # no broker answered yet: start, and check once one does
            self._topic_check = self._loop.create_task(self._check_topics_later(), name=f"kafka-topics:{self.label}")
        elif self._topics_checked(missing):
            return
        self._poller = self._loop.create_task(self._poll_deliveries(), name=f"kafka-deliveries:{self.label}")
        if self.exactly_once:
            self._txn_wake = asyncio.Event()
            self._txn_wake.set()  # init_transactions first
            self._txn_driver = self._loop.create_task(self._drive_transactions(), name=f"kafka-txn:{self.label}")
        self._reader = threading.Thread(target=self._read, name=f"kafka:{self.settings.input_topic}", daemon=True)
        self._reader.start()

    def _role(self, topic: str) -> str:
        s = self.settings
        return {s.input_topic: f"input topic {topic!r}", s.output_topic: f"output topic {topic!r}",
                s.dead_letter_topic: f"dead-letter topic {topic!r}"}[topic]

    def _missing_topics(self, timeout_s: float) -> list[str] | None:
        """The stream's topics the cluster does not have, by its metadata (None when no broker
        answered within `timeout_s`). A full listing, which creates nothing on brokers that
        create topics on demand."""
        wanted = [self.settings.input_topic, self.settings.output_topic, self.settings.dead_letter_topic]
        try:
            topics = self._producer.list_topics(timeout=timeout_s).topics
        except KafkaException:
            return None
        return [t for t in wanted if t not in topics
                or (topics[t].error is not None and topics[t].error.code() in _NO_SUCH_TOPIC)]

    def _topics_checked(self, missing: list[str]) -> bool:
        """On the loop: act on the missing topics; True when the stream stopped for them."""
        if self.settings.input_topic in missing:
            self.input_partitions = 0
            log.warning("stream %s: the input topic %r does not exist (yet); the stream consumes it once it does",
                        self.label, self.settings.input_topic)
        gone = [t for t in missing if t != self.settings.input_topic]
        if gone:  # nowhere to put results: consuming would dead-letter or lose every event
            self._halt(f"the {' and the '.join(self._role(t) for t in gone)} does not exist; create it "
                       "(scorewire creates no topic) and restart")
        return bool(gone)

    async def _check_topics_later(self) -> None:
        while not self._stop.is_set():
            missing = await self._loop.run_in_executor(None, self._missing_topics, TOPICS_TIMEOUT_S)
            if missing is not None:
                self._topics_checked(missing)
                return

    async def stop(self) -> None:
        """Stop consuming, settle what is in flight, commit, leave the group."""
        self._stop.set()
        loop = asyncio.get_running_loop()
        if self._reader is not None:
            await loop.run_in_executor(None, self._reader.join)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._topic_check is not None:  # still no broker: stopping does not wait for one
            self._topic_check.cancel()
            await asyncio.gather(self._topic_check, return_exceptions=True)
        if self._txn_driver is not None:
            await self._stop_transactions()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._producer is not None:
            await loop.run_in_executor(None, self._producer.flush, self.settings.settle_timeout_s)
        log.info("stream %s stopped: %s", self.label,
                 ", ".join(f"{name} {getattr(self.stats, name)}" for name in self.stats.__slots__))

    @property
    def in_flight(self) -> int:
        return self._consumed - self._finished

    @property
    def up(self) -> bool:
        return self.failure is None

    def _halt(self, reason: str) -> None:
        """On the loop: the stream cannot go on. Nothing past what was delivered is committed."""
        if self.failure is not None:
            return
        self.failure = reason
        log.error("stream %s stopped: %s; what was delivered is committed, the rest will be consumed again "
                  "after a restart", self.label, reason)
        self._stop.set()
        if self.on_down is not None:
            self.on_down(self, reason)

    # -- the reader thread ---------------------------------------------------------------------
    def _read(self) -> None:
        consumer = self._consumer
        try:
            while not self._stop.is_set():
                generation = self._generation
                if generation != self._reader_generation:
                    if not self._rewind():
                        # serve rebalances meanwhile; a message returned now lies past the
                        # rewind's target: dropped here, it is consumed again after the rewind
                        consumer.poll(_CONSUME_TIMEOUT_S)
                        continue
                    self._reader_generation = generation
                self._commit(asynchronous=True)
                self._update_lag()
                timeout = self._flow_control()
                # consume(n, t) waits until n messages or t: take what is there now, and
                # when nothing is, wait for the first message only.
                if self.exactly_once and self._group_meta_stale.is_set():
                    self._refresh_group_meta()
                messages = consumer.consume(self.settings.consume_batch, 0)
                if not messages and timeout:
                    first = consumer.poll(timeout)
                    if first is not None:
                        messages = [first] + consumer.consume(self.settings.consume_batch - 1, 0)
                if messages:
                    self._take(messages, generation)
            self._settle_and_commit(None)
        except Exception as exc:
            log.exception("stream %s: the reader failed", self.label)
            self._loop.call_soon_threadsafe(self._halt, f"the reader failed: {exc!r}")
            try:
                self._settle_and_commit(None)
            except Exception:
                log.exception("stream %s: committing what was delivered failed", self.label)
        finally:
            try:
                consumer.close()  # leaves the group; the revoke callback settles (nothing left)
            except Exception:
                log.exception("stream %s: closing the consumer failed", self.label)

    def _refresh_group_meta(self) -> None:
        """On the reader (also inside rebalance callbacks): the group metadata commits use."""
        self._group_meta_stale.clear()
        self._group_meta = self._consumer.consumer_group_metadata()
        self._group_meta_fresh.set()

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        consumer = self._consumer
        if self.input_partitions == 0:  # waiting for the input topic: is it there now?
            try:
                found = consumer.list_topics(timeout=TOPICS_TIMEOUT_S).topics.get(self.settings.input_topic)
            except KafkaException:
                found = None
            if found is not None and (found.error is None or found.error.code() not in _NO_SUCH_TOPIC):
                self.input_partitions = len(found.partitions)
                log.warning("stream %s: the input topic %r exists now", self.label, self.settings.input_topic)
        lag = {}
        try:
            for tp in consumer.position(consumer.assignment()):
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                done = self._committed.get(tp.partition, tp.offset)
                lag[tp.partition] = max(0, high - done) if high >= 0 and done >= 0 else 0
        except KafkaException as exc:
            log.debug("stream %s: lag not updated: %s", self.label, exc)
            return
        self.lag = lag

    def _rewind(self) -> bool:
        """On the reader, after a fatal producer error (or an aborted transaction): consume every
        assigned partition again from the end of what was delivered (else from the group's
        committed offset). False: the committed offsets could not be read; try again."""
        consumer = self._consumer
        assignment = consumer.assignment()
        with self._lock:
            settled = dict(self._settled_upto)
        unknown = [tp for tp in assignment if tp.partition not in settled]
        try:
            committed = {tp.partition: tp.offset for tp in consumer.committed(unknown, timeout=10)} if unknown else {}
        except KafkaException as exc:
            log.warning("stream %s: reading the committed offsets to consume again from failed (%s); retrying",
                        self.label, exc)
            return False
        refused = []
        for tp in assignment:
            offset = settled.get(tp.partition, committed.get(tp.partition, -1))
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset if offset >= 0 else OFFSET_BEGINNING))
            except KafkaException as exc:
                refused.append((tp.partition, exc.args[0]))
        if refused and self._rewind_tries < REWIND_TRIES:
            # _STATE: a partition just assigned, whose fetch position is still being looked up
            # (measured after a broker restart, while its events were already being consumed
            # again): skipping it would let those go by. Tried again after the next poll.
            self._rewind_tries += 1
            return False
        for partition, err in refused:
            # Still refused: a partition lost in a rebalance and still listed (measured after a
            # broker restart: _STATE). It is not fetched; when assigned again it starts from the
            # committed offset.
            log.info("stream %s: partition %d not rewound (%s); it starts from its committed offset when "
                     "assigned again", self.label, partition, err)
        self._rewind_tries = 0
        log.warning("stream %s: consuming again from what was delivered on partitions %s", self.label,
                    sorted(tp.partition for tp in assignment))
        return True

    def _decode(self, values, keys) -> Decoded:
        try:
            return self.codec.decode(values, keys)
        except Exception:  # a decoder bug, not a bad message: find the message, let the others through
            self.stats.decoder_failures += 1
            log.exception("stream %s: decoding a batch of %d messages failed; decoding them one by one",
                          self.label, len(values))
            return self.codec.decode_each(values, keys)

    def _take(self, messages, generation: int = 0) -> None:
        consumed_ns = time.monotonic_ns()
        if any(m.error() is not None for m in messages):
            for m in messages:
                if m.error() is not None:
                    self.stats.consumer_errors += 1
                    self._client_log.say(logging.WARNING, f"consumer error: {self.redact(str(m.error()))}")
            messages = [m for m in messages if m.error() is None]
            if not messages:
                return
        n = len(messages)
        chunk = _Chunk(self, [m.value() for m in messages], [m.key() for m in messages],
                       np.fromiter([m.partition() for m in messages], dtype=np.int64, count=n),
                       np.fromiter([m.offset() for m in messages], dtype=np.int64, count=n), consumed_ns, generation)
        chunk.decoded = self._decode(chunk.values, chunk.keys)
        self._consumed += chunk.size
        self.stats.consumed += chunk.size
        self.stats.chunks += 1
        self._loop.call_soon_threadsafe(self._accept, chunk)

    def _flow_control(self) -> float:
        """Bound the events in flight; returns the timeout for the next consume().

        At the bound the reader first waits (librdkafka keeps prefetching into its own bounded
        queue, and a pause would throw that away); if there is still no room after
        PAUSE_AFTER_S, it pauses its partitions until in-flight work is down to half."""
        limit = self.settings.max_in_flight
        if not self._paused:
            if self.in_flight < limit:
                return _CONSUME_TIMEOUT_S
            self._room.clear()
            if self.in_flight < limit or self._room.wait(PAUSE_AFTER_S):
                return _CONSUME_TIMEOUT_S
            self._consumer.pause(self._consumer.assignment())
            self._paused = True
            self.stats.pauses += 1
            log.info("stream %s: %d events in flight; partitions paused", self.label, self.in_flight)
        if self.in_flight <= limit // 2:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
            log.info("stream %s: partitions resumed", self.label)
            return _CONSUME_TIMEOUT_S
        self._room.clear()
        if self.in_flight > limit // 2:
            self._room.wait(_CONSUME_TIMEOUT_S)
        return 0.0  # keep serving rebalances and heartbeats while paused

    def _commit(self, asynchronous: bool, only: set[int] | None = None) -> None:
        """Commit what is ready. Synchronous (rebalance, shutdown): every settled offset of
        `only`, again, since an asynchronous commit still in flight may fail in the rebalance.
        Exactly-once commits offsets in its transactions instead."""
        if self.exactly_once:
            return
        with self._lock:
            if asynchronous:
                ready, self._commit_ready = self._commit_ready, {}
            else:
                ready = {p: o for p, o in self._settled_upto.items() if only is None or p in only}
                for p in ready:
                    self._commit_ready.pop(p, None)
        if not ready:
            return
        topic = self.settings.input_topic
        try:
            self._consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in ready.items()],
                                  asynchronous=asynchronous)
            self.stats.commits += 1
            self._committed.update(ready)
        except KafkaException as exc:
            self.stats.commit_errors += 1
            log.warning("stream %s: commit of %s failed: %s", self.label, ready, exc)

    def _settle_and_commit(self, partitions: set[int] | None) -> None:
        """On the reader: wait for the loop to settle chunks of `partitions` (None: all), then
        commit what they delivered, synchronously."""
        future = asyncio.run_coroutine_threadsafe(self._settle(partitions), self._loop)
        try:
            future.result(self.settings.settle_timeout_s + 5)
        except Exception as exc:
            log.warning("stream %s: settling in-flight events failed (%r); committing what was delivered",
                        self.label, exc)
        self._commit(asynchronous=False, only=partitions)

    def _on_assign(self, consumer, partitions) -> None:
        """Partitions added (cooperative rebalancing: the ones held before stay held)."""
        self.stats.rebalances += 1
        if self.exactly_once:
            self._refresh_group_meta()
        # Start over unpaused (flow control pauses again if still needed). The new partitions
        # too: a partition lost while paused comes back paused (measured against Apache Kafka:
        # after a broker restart the stream was assigned everything and consumed nothing).
        if self._paused or partitions:
            consumer.resume(consumer.assignment() + list(partitions))
            self._paused = False
        self._lag_at = 0.0
        if partitions:
            log.info("stream %s: assigned partitions %s", self.label, sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        revoked = {p.partition for p in partitions}
        log.info("stream %s: partitions %s revoked; settling their in-flight events", self.label, sorted(revoked))
        if self.exactly_once:
            self._refresh_group_meta()
            self._group_meta_stale.set()  # once more after the rebalance
        self._settle_and_commit(revoked)
        self._let_go(revoked)

    def _let_go(self, partitions: set[int]) -> None:
        with self._lock:
            for p in partitions:
                self._settled_upto.pop(p, None)
                self._commit_ready.pop(p, None)
        for p in partitions:
            self._committed.pop(p, None)
        self.lag = {p: n for p, n in self.lag.items() if p not in partitions}
        self._lag_at = 0.0

    def _on_lost(self, consumer, partitions) -> None:
        lost = {p.partition for p in partitions}
        if self.exactly_once:
            self._group_meta_stale.set()
        log.warning("stream %s: partitions %s lost; their in-flight results may be produced again by another "
                    "worker", self.label, sorted(lost))
        self._let_go(lost)
        if self.exactly_once:  # the open transaction may hold their offsets: it cannot commit
            self._loop.call_soon_threadsafe(self._start_over, f"partitions {sorted(lost)} lost", False)
        else:
            self._loop.call_soon_threadsafe(self._forget, lost)

    def _client_error(self, error: KafkaError) -> None:
        self._client_log.say(logging.ERROR if error.fatal() else logging.WARNING, self.redact(str(error)))
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
            self._loop.call_soon_threadsafe(self._reachability_changed, reachable)
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

    # -- the loop --------------------------------------------------------------------------------
    def _finish(self, chunk: _Chunk) -> None:
        """Count a chunk's events as no longer in flight (once), and let its data go."""
        if not chunk.finished:
            chunk.finished = True
            self._finished += chunk.size
            self._signal_room()
        chunk.values = chunk.decoded = chunk.results = chunk.dead = None
        chunk.result_rows = []
        chunk._sources = None

    def _accept(self, chunk: _Chunk) -> None:
        if chunk.generation != self._generation:  # consumed before a producer restart: consumed again
            chunk.abandoned = True
            self.stats.abandoned += chunk.size
            self._finish(chunk)
            return
        for p in chunk.ends:
            self._by_partition.setdefault(p, collections.deque()).append(chunk)
        self._order.append(chunk)
        task = self._loop.create_task(self._score(chunk))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _route(self, chunk: _Chunk) -> list[tuple[str, str, str, np.ndarray | None]]:
        """(version, role, routing, positions in decoded.good or None for all) per group of
        rows: one group, or with an A/B or canary split one per arm, chosen by message key."""
        router = self.pipeline.router
        split = router.split_of(self.model, self.version)
        if split is None:
            served, role, routing = router.resolve(self.model, self.version, None)
            return [(served.version, role, routing, None)]
        good = chunk.decoded.good
        keys = chunk.keys if len(good) == chunk.size else [chunk.keys[i] for i in good.tolist()]
        arms = split.arms(keys)
        groups = []
        for i, version in enumerate(split.versions):
            picked = np.flatnonzero(arms == i)
            if len(picked):
                groups.append((version, router.role_of(self.model, version), "sticky", picked))
        return groups

    async def _score_group(self, chunk: _Chunk, version: str, role: str, routing: str, picked):
        decoded = chunk.decoded
        inputs = decoded.inputs if picked is None else {n: a[picked] for n, a in decoded.inputs.items()}
        rows_of = decoded.good if picked is None else decoded.good[picked]
        topic = self.settings.input_topic

        def origin(a: int, b: int) -> Origin:
            return Origin(role, routing, topic=topic, partitions=chunk.partitions, offsets=chunk.offsets,
                          keys=chunk.keys, index=rows_of[a:b])

        return await self._run(inputs, version, origin)

    async def _score(self, chunk: _Chunk) -> None:
        decoded = chunk.decoded
        try:
            started = time.monotonic_ns()
            groups = self._route(chunk)
            outcomes = await asyncio.gather(*(self._score_group(chunk, *group) for group in groups))
            scored_ns = time.monotonic_ns()
            keys = chunk.keys
            timings = {"wait_us": (started - chunk.consumed_ns) // 1000, "score_us": (scored_ns - started) // 1000}
            errors = list(decoded.errors)
            scored = 0
            for (version, _role, _routing, picked), (scored_rows, outputs, failures) in zip(groups, outcomes):
                at = scored_rows if picked is None else picked[scored_rows]  # positions in decoded.good
                every = len(at) == len(decoded.good)
                rows = decoded.good if every else decoded.good[at]
                if len(rows):
                    template = ResultTemplate(self.model, version, self.settings.input_topic, outputs, timings)
                    values = encode_results(template, decoded.id_text,
                                            decoded.id_spans if every else decoded.id_spans[at],
                                            chunk.partitions[rows], chunk.offsets[rows], outputs)
                    picked_keys = keys if len(rows) == chunk.size else [keys[i] for i in rows.tolist()]
                    chunk.results.extend(zip(picked_keys, values))
                    chunk.result_rows.append(rows)
                scored += len(rows)
                base = decoded.good if picked is None else decoded.good[picked]
                errors += [(int(base[r]), message) for r, message in failures]
            for i, message in errors:
                chunk.dead.append((keys[i], chunk.values[i], self._dead_headers(chunk, i, message)))
            self.stats.scored += scored
            self.stats.dead_lettered += len(errors)
        except EngineError as exc:
            chunk.abandoned = True
            self.stats.abandoned += chunk.size
            log.warning("stream %s: %d events not scored (%s); they will be consumed again", self.label, chunk.size,
                        exc.message)
        except Exception:
            chunk.abandoned = True
            self.stats.abandoned += chunk.size
            log.exception("stream %s: %d events not scored; they will be consumed again", self.label, chunk.size)
        chunk.ready = True
        chunk.decoded = None  # the raw values stay until settled: a refused result becomes a dead letter
        self._drain()

    def _drain(self) -> None:
        """Produce the scored chunks at the head of the consume order (exactly-once: not while
        a transactional call runs; the driver drains when it is done)."""
        while self._order and self._order[0].ready and not self._txn_busy:
            head = self._order.popleft()
            try:
                self._produce(head)
            except Exception as exc:  # a bug: say so and stop rather than lose events silently
                log.exception("stream %s: producing failed", self.label)
                self._halt(f"producing failed: {exc!r}")
        if self._txn_chunks and self._txn_wake is not None:
            self._txn_wake.set()

    def _dead_headers(self, chunk: _Chunk, i: int, message: str) -> list:
        source = f"{self.settings.input_topic}/{chunk.partitions[i]}/{chunk.offsets[i]}"
        return [("scorewire.error", message.encode()), ("scorewire.source", source.encode()),
                ("scorewire.model", self._model_tag().encode())]

    def _model_tag(self) -> str:
        """model:version that scores this stream (just the model when a split decides per key)."""
        router = self.pipeline.router
        if router.split_of(self.model, self.version) is not None:
            return self.model
        try:
            return f"{self.model}:{router.resolve(self.model, self.version, None)[0].version}"
        except EngineError:
            return self.model

    async def _run(self, inputs: dict[str, np.ndarray], version: str, origin):
        """Score rows in pieces of at most max_batch_size rows; returns (indices of the rows
        scored, their outputs, [(row, error)] for rows that made the model fail)."""
        first = next(iter(inputs.values()))
        rows = first.shape[0]
        if rows == 0:
            return np.zeros(0, np.int64), {}, []
        step = self.piece_rows
        pieces = [(a, min(a + step, rows)) for a in range(0, rows, step)]
        results = await asyncio.gather(*(self._piece(inputs, a, b, version, origin) for a, b in pieces))
        done_rows: list[np.ndarray] = []
        parts: list[dict[str, np.ndarray]] = []
        failures: list[tuple[int, str]] = []
        for part_rows, outputs, errors in results:
            done_rows.extend(part_rows)
            parts.extend(outputs)
            failures.extend(errors)
        if not parts:
            return np.zeros(0, np.int64), {}, failures
        index = np.concatenate(done_rows)
        if len(parts) == 1:
            return index, parts[0], failures
        return index, {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, failures

    async def _piece(self, inputs, a: int, b: int, version: str, origin):
        piece = {name: array[a:b] for name, array in inputs.items()}
        try:
            outputs = await self._submit(piece, version, origin(a, b))
            return [np.arange(a, b)], [outputs], []
        except EngineError as exc:
            if exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.NOT_FOUND):
                raise
            if b - a == 1:
                return [], [], [(a, f"{exc.code.value}: {exc.message}")]
        # One of these rows breaks the model: score them one by one so only the culprit fails.
        done, outs, errors = [], [], []
        for r in range(a, b):
            sub_rows, sub_outs, sub_errors = await self._piece(inputs, r, r + 1, version, origin)
            done += sub_rows
            outs += sub_outs
            errors += sub_errors
        return done, outs, errors

    async def _submit(self, piece, version: str, origin: Origin):
        async with self._slots:
            while True:
                try:
                    _, outputs = await self.pipeline.submit(self.model, version, piece, origin=origin)
                    return outputs
                except EngineError as exc:
                    if exc.code is not ErrorCode.RESOURCE_EXHAUSTED:
                        raise
                await asyncio.sleep(0.001)  # the model's queue is full (gRPC traffic): wait our turn

    def _produce(self, chunk: _Chunk) -> None:
        if chunk.abandoned:
            self._finish(chunk)
            if self.exactly_once and chunk.generation == self._generation and self.failure is None:
                # later chunks of its partitions must not commit past it: consume them all again
                self._start_over("a consumed batch was not scored", count=False)
            return
        if self.exactly_once:
            self._produce_in_transaction(chunk)
            return
        chunk.produced = True
        chunk.pending = len(chunk.results) + len(chunk.dead)
        if chunk.pending == 0:
            self._settled(chunk)
            return
        produce = self._producer.produce
        topic = self.settings.output_topic
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
                if chunk.abandoned or self.failure is not None:  # the producer was replaced, or the stream stopped
                    return
                produce = self._producer.produce
        dead_topic = self.settings.dead_letter_topic
        for key, raw, headers in chunk.dead:
            self._send(dead_topic, raw, key, headers, chunk)
            if chunk.abandoned:
                return
        chunk.dead = None
        self._poll()

    def _poll(self) -> None:
        """Delivery reports; a fatal error surfacing here replaces the producer."""
        try:
            self._producer.poll(0)
        except KafkaException as exc:
            if classify(exc.args[0]) == FATAL:
                if self.exactly_once:
                    if not self._txn_busy:  # else the transactional call running now raises it
                        self._producer_failed(exc.args[0])
                    return
                self._restart_producer(exc.args[0])
            else:
                log.warning("stream %s: polling the producer: %s", self.label, exc)

    def _send(self, topic, value, key, headers, chunk) -> None:
        if chunk.abandoned:
            return
        try:
            if headers is None:
                self._producer.produce(topic, value, key, on_delivery=chunk.delivered)
            else:
                self._producer.produce(topic, value, key, headers=headers,
                                       on_delivery=functools.partial(chunk.delivered_dead, headers))
        except BufferError:  # the producer's queue is full: keep it for the retry pass
            self._retry.append((topic, value, key, headers, chunk))
        except KafkaException as exc:
            self._refused(chunk, exc.args[0], topic, value, key, headers)

    def _failed(self, chunk: _Chunk, err, msg, headers) -> None:
        if chunk.abandoned:  # a producer restart dropped it: it is consumed again
            return
        self.stats.delivery_errors += 1
        self._refused(chunk, err, msg.topic(), msg.value(), msg.key(), headers)

    def _refused(self, chunk: _Chunk, err: KafkaError, topic: str, value, key, headers) -> None:
        """A result or dead letter the producer or the broker did not take: retry it, send the
        event to the dead-letter topic instead, stop the stream, or restart the producer."""
        if err.code() in _TOPIC_GONE:  # deleted under the stream: dead-lettering every event helps nobody
            self._halt(self.redact(f"the {self._role(topic)} does not exist any more ({err}); create it and "
                                   "restart"))
            return
        kind = classify(err)
        if kind == FATAL:
            self._restart_producer(err)
            return
        if kind == PERMANENT:
            dead = self._refused_for_good(chunk, err, topic, value, headers)
            if dead is not None:
                self._send(self.settings.dead_letter_topic, *dead, chunk)
            return
        self._client_log.say(logging.WARNING, self.redact(f"delivery to {topic} failed ({err}); retrying"))
        self._retry.append((topic, value, key, headers, chunk))

    def _refused_for_good(self, chunk: _Chunk, err: KafkaError, topic: str, value, headers):
        """A record the broker will never take. A result: its event's dead letter, (raw, key,
        headers), to send instead. A dead letter: there is nowhere left to put the event, the
        stream stops (None)."""
        if err.code() in _TOPIC_GONE:
            self._halt(self.redact(f"the {self._role(topic)} does not exist any more ({err}); create it and "
                                   "restart"))
            return None
        if headers is not None:
            self._halt(self.redact(f"the dead-letter topic {topic!r} refuses records: {err}"))
            return None
        i = chunk.source_of(value)
        self.stats.results_refused += 1
        self.stats.dead_lettered += 1
        message = self.redact(f"producing the result to {topic!r} failed: {err}")
        self._client_log.say(logging.WARNING, f"{message}; the event goes to the dead-letter topic")
        return chunk.values[i], chunk.keys[i], self._dead_headers(chunk, i, message)

    def _restart_producer(self, err: KafkaError | str) -> None:
        """A fatal producer error: what is in flight is abandoned (it will be consumed again),
        a new producer takes over, and the reader rewinds to the end of what was delivered."""
        if self.failure is not None:
            return
        log.error("stream %s: the producer failed fatally (%s); starting a new one and consuming again from "
                  "what was delivered", self.label, err)
        self.stats.producer_restarts += 1
        self._abandon_in_flight()
        old, self._producer = self._producer, Producer(self._producer_conf)
        if self.exactly_once:
            self._txn_open = False
            self._need_init = True
            self._txn_wake.set()
        try:
            old.purge()  # its reports (for abandoned chunks) are never polled: it is dropped
        except Exception:  # it is being dropped anyway
            log.debug("stream %s: purging the failed producer failed", self.label, exc_info=True)

    def _abandon_in_flight(self) -> None:
        """Give up every chunk in flight; the reader consumes again from what was delivered
        (exactly-once: committed), and drops what it consumed before it rewinds."""
        self._generation += 1
        for queue in self._by_partition.values():
            for chunk in queue:
                if not chunk.settled and not chunk.abandoned:
                    chunk.abandoned = True
                    self.stats.abandoned += chunk.size
                    if chunk.produced:  # not produced: _produce finishes it when its turn comes
                        self._finish(chunk)
        for chunk in self._order:
            if not chunk.abandoned:
                chunk.abandoned = True
                self.stats.abandoned += chunk.size
        self._by_partition.clear()
        self._retry = [item for item in self._retry if not item[4].abandoned]
        self._txn_chunks = []

    # -- exactly-once: transactions (on the loop; blocking calls on a thread, one at a time) -----
    def _produce_in_transaction(self, chunk: _Chunk) -> None:
        if not self._txn_open:
            try:
                self._producer.begin_transaction()
            except KafkaException as exc:
                self._transaction_failed(exc.args[0], "beginning a transaction")
                return
            self._txn_open = True
        chunk.produced = True
        produce = self._producer.produce
        topic = self.settings.output_topic
        results = chunk.results
        i = 0
        while i < len(results):
            try:
                for key, value in results[i:] if i else results:
                    produce(topic, value, key)
                    i += 1
            except (KafkaException, BufferError) as exc:
                key, value = results[i]
                i += 1
                if not self._refused_in_transaction(chunk, exc, topic, value, key):
                    return
        dead_topic = self.settings.dead_letter_topic
        for key, raw, headers in chunk.dead:
            try:
                produce(dead_topic, raw, key, headers=headers)
            except (KafkaException, BufferError) as exc:
                if not self._refused_in_transaction(chunk, exc, dead_topic, raw, key, headers):
                    return
        chunk.dead = None
        self._txn_chunks.append(chunk)

    def _refused_in_transaction(self, chunk: _Chunk, exc: Exception, topic: str, value, key,
                                headers=None) -> bool:
        """A record produce() refused at once. A result refused for good goes to the dead-letter
        topic instead (in the transaction); anything else ends the transaction. False: the
        chunk was given up (or the stream stopped)."""
        if isinstance(exc, BufferError):
            self._start_over("the producer's queue is full (queue.buffering.max.messages is below the "
                             "stream's max_in_flight)")
            return False
        err = exc.args[0]
        if classify(err) != PERMANENT:
            self._transaction_failed(err, f"producing to {topic!r}")
            return False
        dead = self._refused_for_good(chunk, err, topic, value, headers)
        if dead is None:
            return False
        raw, key, dead_headers = dead
        chunk.dead.append((key, raw, dead_headers))  # produced after the results, in this transaction
        return True

    def _transaction_failed(self, err: KafkaError, doing: str) -> None:
        reason = self.redact(f"{doing}: {err}")
        if self._gave_up(reason):
            return
        if err.fatal() or classify(err) == FATAL:
            self._producer_failed(err)
        else:
            self._start_over(reason, count=False)

    def _gave_up(self, reason: str) -> bool:
        """One more failed transaction; past MAX_ABORTS_IN_A_ROW without a commit the stream stops."""
        self._aborts_in_a_row += 1
        if self._aborts_in_a_row <= MAX_ABORTS_IN_A_ROW:
            return False
        self._abandon_in_flight()
        self._halt(f"{MAX_ABORTS_IN_A_ROW} transactions in a row failed; the last because {reason}")
        return True

    def _producer_failed(self, err: KafkaError) -> None:
        """A fatal error of the transactional producer. Fenced: a newer producer with the same
        transactional.id took over, so this one must stop. Anything else: a new producer."""
        if err.code() in _FENCED:
            self._abandon_in_flight()
            self._halt(f"the producer was fenced ({err}): another producer initialised transactional.id "
                       f"{self.transactional_id!r}, so this worker may no longer commit. Two servers consuming "
                       f"group {self.settings.group_id!r} on one host need different streams[].transactional_id")
            return
        self._restart_producer(err)

    def _start_over(self, reason: str, count: bool = True) -> None:
        """Abort the open transaction and consume again from the last committed offsets. While
        a transactional call runs (a commit that may still succeed) this waits for it: the
        reader must rewind to offsets that include that commit."""
        if self.failure is not None:
            return
        if self._txn_busy:
            self._later = (reason, count)
            return
        if count and self._gave_up(reason):
            return
        log.warning("stream %s: %s; the transaction is aborted and its events are consumed again from the last "
                    "committed offsets", self.label, reason)
        self._abandon_in_flight()
        if self._txn_open:
            self._need_abort = reason
            self._txn_wake.set()

    async def _drive_transactions(self) -> None:
        """The one place that makes blocking transactional calls: init, commit, abort."""
        while True:
            await self._txn_wake.wait()
            self._txn_wake.clear()
            while self.failure is None:
                producer = self._producer
                self._txn_busy = True
                try:
                    if self._need_init:
                        await self._init(producer)
                        self._need_init = False
                        log.info("stream %s: transactional producer %r ready", self.label, self.transactional_id)
                    elif self._need_abort is not None:
                        self._need_abort = None
                        self._txn_open = False
                        await self._abort(producer)
                        self.stats.transactions_aborted += 1
                    elif self._txn_chunks:
                        await self._commit_transaction(producer)
                    else:
                        break
                except KafkaException as exc:
                    self._txn_open = False
                    if producer is self._producer:
                        self._transaction_failed(exc.args[0], "a transactional call")
                except _Stuck as exc:
                    self._txn_open = False
                    log.error("stream %s: %s; starting a new producer (it aborts this one's transaction) and "
                              "consuming again from the last committed offsets", self.label, exc)
                    if not self._gave_up(str(exc)):
                        self._restart_producer(str(exc))
                except Exception as exc:  # a bug: stop rather than commit something wrong
                    log.exception("stream %s: the transaction driver failed", self.label)
                    self._abandon_in_flight()
                    self._halt(f"the transaction driver failed: {exc!r}")
                finally:
                    self._txn_busy = False
                if self._later is not None:
                    (reason, count), self._later = self._later, None
                    self._start_over(reason, count)
                self._drain()

    async def _commit_transaction(self, producer: Producer) -> None:
        chunks, self._txn_chunks = self._txn_chunks, []
        offsets: dict[int, int] = {}
        for chunk in chunks:  # consume order: a partition's later chunk ends further on
            offsets.update(chunk.ends)
        topic = self.settings.input_topic
        positions = [TopicPartition(topic, p, o) for p, o in offsets.items()]
        self._txn_open = False
        aborted = await self._commit_txn(producer, positions)
        if aborted is not None:
            self.stats.transactions_aborted += 1
            self._start_over(self.redact(f"committing the transaction failed: {aborted}"))
            return
        self._aborts_in_a_row = 0
        self.stats.transactions += 1
        self.stats.commits += 1
        for chunk in chunks:
            chunk.settled = True
            self.stats.delivered += chunk.size
            self._finish(chunk)
            for p in chunk.ends:
                queue = self._by_partition.get(p)
                if queue and queue[0] is chunk:
                    queue.popleft()
        with self._lock:
            self._settled_upto.update(offsets)
        self._committed.update(offsets)

    async def _call(self, method, *args):
        """One blocking transactional call, on a thread of its own. librdkafka's calls can block
        past their own timeout (send_offsets_to_transaction after the broker restarts, measured
        here: for good; confluentinc/librdkafka#5456 and #5511): one that has not returned
        5 s after its timeout raises _Stuck, and its thread is left behind."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(result, error) -> None:
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(result)

        def run() -> None:
            try:
                result = method(*args)
            except BaseException as exc:  # handed to the loop
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        threading.Thread(target=run, name=f"kafka-txn:{method.__name__}", daemon=True).start()
        try:
            return await asyncio.wait_for(asyncio.shield(future), TXN_CALL_TIMEOUT_S + 5)
        except asyncio.TimeoutError:
            raise _Stuck(f"the Kafka client's {method.__name__.lstrip('_')}() has not returned in "
                         f"{TXN_CALL_TIMEOUT_S + 5:.0f} s") from None

    async def _retried(self, what: str, method, give_up) -> None:
        """`method(TXN_CALL_TIMEOUT_S)` through _call, again while its error is retriable and
        `give_up(err)` is false (each retry logged as `what`)."""
        while True:
            try:
                await self._call(method, TXN_CALL_TIMEOUT_S)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or give_up(err):
                    raise
                self._client_log.say(logging.WARNING, self.redact(f"{what}: {err}; retrying"))

    async def _init(self, producer: Producer) -> None:
        """Register the transactional.id (aborting what a predecessor left open); retried while
        the coordinator cannot be reached."""
        await self._retried("initialising transactions", producer.init_transactions, lambda err: self._stop.is_set())

    def _send_offsets(self, producer: Producer, positions: list[TopicPartition]) -> None:
        self._group_meta_fresh.wait(TXN_CALL_TIMEOUT_S)  # the first assignment's
        producer.send_offsets_to_transaction(positions, self._group_meta, TXN_CALL_TIMEOUT_S)

    async def _commit_txn(self, producer: Producer, positions: list[TopicPartition]) -> str | None:
        """The input offsets into the open transaction, then commit it. None when committed;
        else why it was aborted. A fatal error raises."""
        sent = False
        given_up_at = None
        while True:
            try:
                if not sent:
                    await self._call(self._send_offsets, producer, positions)
                    sent = True
                await self._call(producer.commit_transaction, TXN_CALL_TIMEOUT_S)
                return None
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    raise
                if err.txn_requires_abort() or not err.retriable() or not sent:
                    # Offsets that could not be added are not sent again: after a broker restart
                    # that second send_offsets_to_transaction() hung for good (measured here), and
                    # the producer made to replace the hung one left a transaction half resolved
                    # (read_committed readers missed results, or saw dead letters twice).
                    await self._abort(producer)
                    return str(err)
                if self._stop.is_set():  # stopping while the broker cannot be reached: leave it open
                    given_up_at = given_up_at or time.monotonic() + self.settings.settle_timeout_s
                    if time.monotonic() > given_up_at:
                        return f"{err} (stopping; the coordinator aborts it when it times out)"
                self._client_log.say(logging.WARNING, self.redact(f"committing a transaction: {err}; retrying"))

    async def _abort(self, producer: Producer) -> None:
        """Abort the open transaction; retried, while stopping for settle_timeout_s at most."""
        deadline = time.monotonic() + self.settings.settle_timeout_s
        await self._retried("aborting a transaction", producer.abort_transaction, lambda err: err.fatal() or (
            self._stop.is_set() and time.monotonic() > deadline))

    async def _stop_transactions(self) -> None:
        """After the reader settled everything it could: the driver has nothing left to do."""
        while self._txn_busy:
            await asyncio.sleep(0.01)
        self._txn_driver.cancel()
        await asyncio.gather(self._txn_driver, return_exceptions=True)
        if self._txn_open:  # produced but never committed (stopping in a failure): consumed again later
            try:
                await self._abort(self._producer)
            except (KafkaException, _Stuck) as exc:
                log.warning("stream %s: aborting the last transaction failed: %s", self.label, exc)

    def _signal_room(self) -> None:
        if self.in_flight <= self.settings.max_in_flight // 2 and not self._room.is_set():
            self._room.set()

    def _settled(self, chunk: _Chunk) -> None:
        if chunk.abandoned:  # acknowledged after a producer restart gave it up: consumed again
            return
        chunk.settled = True
        self._finish(chunk)
        self.stats.delivered += chunk.size
        for p in chunk.ends:
            queue = self._by_partition.get(p)
            end = None
            while queue and queue[0].settled:
                end = queue.popleft().ends[p]
            if end is not None:
                with self._lock:
                    self._commit_ready[p] = end
                    self._settled_upto[p] = end

    async def _poll_deliveries(self) -> None:
        """Delivery reports (and retries of failed deliveries) on the loop."""
        while True:
            try:
                self._poll()
            except Exception:
                log.exception("stream %s: delivery polling failed", self.label)
            if self._retry:
                retry, self._retry = self._retry, []
                for k, (topic, value, key, headers, chunk) in enumerate(retry):
                    try:
                        self._send(topic, value, key, headers, chunk)
                    except Exception:  # keep the rest of the pass: none is lost
                        log.exception("stream %s: a retry failed", self.label)
                        self._retry.extend(retry[k:])
                        break
                await asyncio.sleep(0.1)  # back off before the next retry pass
            await asyncio.sleep(0.002 if self.in_flight else 0.02)

    async def _settle(self, partitions: set[int] | None) -> None:
        """Wait until every chunk holding `partitions` (None: any) is settled or abandoned."""
        deadline = time.monotonic() + self.settings.settle_timeout_s

        def busy() -> bool:
            if partitions is None:
                if self._tasks or self._order:
                    return True
                queues = list(self._by_partition.values())
            else:
                queues = [self._by_partition.get(p, ()) for p in partitions]
            return any(not c.abandoned for q in queues for c in q)

        while busy():
            if time.monotonic() > deadline:
                log.warning("stream %s: in-flight events not settled after %.0f s; committing what was delivered",
                            self.label, self.settings.settle_timeout_s)
                break
            self._poll()
            await asyncio.sleep(0.005)
        self._forget(partitions)

    def _forget(self, partitions: set[int] | None) -> None:
        for p in list(self._by_partition) if partitions is None else partitions:
            self._by_partition.pop(p, None)
