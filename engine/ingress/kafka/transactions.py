"""Exactly-once delivery: chunks go into transactions that commit their input offsets.

Chunks are produced in consume order into the open transaction, results and dead letters
alike, without delivery callbacks; one task (the driver) then adds the input offsets of those
chunks (send_offsets_to_transaction with the consumer's group metadata, so a member fenced by a
rebalance cannot commit) and commits, on a thread. While it commits the loop produces nothing:
chunks scored meanwhile wait and go into the next transaction together. A chunk that is not
scored, a record refused mid-transaction or an abortable commit error aborts the transaction:
everything in flight is given up and the reader consumes again from the last committed offsets.
A restarted worker's init_transactions aborts what its killed predecessor left open. A producer
fenced by a newer one with the same transactional.id stops the stream.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from engine.ingress.kafka.chunk import Chunk, State
from engine.ingress.kafka.delivery import Delivery, log
from engine.ingress.kafka.errors import FATAL, PERMANENT, classify

TXN_CALL_TIMEOUT_S = 5.0  # one transactional call's wait; a retriable failure is tried again
MAX_ABORTS_IN_A_ROW = 5  # transactions aborted for the same stream without a commit between: it stops
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED}


class _Stuck(Exception):
    """A transactional call of the Kafka client that did not return."""


class Transactional(Delivery):
    commits_offsets = True

    def __init__(self, stream, producer_conf: dict, txn_id: str):
        super().__init__(stream, producer_conf)
        self.txn_id = txn_id
        self._driver: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._busy = False  # a transactional call runs on a thread: the loop produces nothing meanwhile
        self._open = False
        self._chunks: list[Chunk] = []  # produced into the open transaction, in consume order
        self._need_init = True  # init_transactions() before the (new) producer produces
        self._need_abort: str | None = None  # why the open transaction must be aborted
        self._aborts_in_a_row = 0
        self._later: tuple[str, bool] | None = None  # a start_over that waits for the running call

    def start(self) -> None:
        super().start()
        self._wake = asyncio.Event()
        self._wake.set()  # init_transactions first
        self._driver = self.stream.loop.create_task(self._drive(), name=f"kafka-txn:{self.stream.label}")

    @property
    def busy(self) -> bool:
        return self._busy

    # -- producing (on the loop) -------------------------------------------------------------
    def produce(self, chunk: Chunk) -> None:
        if not self._open:
            try:
                self.producer.begin_transaction()
            except KafkaException as exc:
                self._failed(exc.args[0], "beginning a transaction")
                return
            self._open = True
        chunk.state = State.PRODUCED
        stream = self.stream
        produce = self.producer.produce
        topic = stream.settings.output_topic
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
                if not self._refused(chunk, exc, topic, value, key):
                    return
        dead_topic = stream.settings.dead_letter_topic
        for key, raw, headers in chunk.dead:
            try:
                produce(dead_topic, raw, key, headers=headers)
            except (KafkaException, BufferError) as exc:
                if not self._refused(chunk, exc, dead_topic, raw, key, headers):
                    return
        chunk.dead = None
        self._chunks.append(chunk)

    def produced_all(self) -> None:
        if self._chunks and self._wake is not None:
            self._wake.set()

    def not_scored(self, chunk: Chunk) -> None:
        if chunk.generation == self.stream.generation and self.stream.failure is None:
            # later chunks of its partitions must not commit past it: consume them all again
            self.start_over("a consumed batch was not scored", count=False)

    def lost(self, partitions: set[int]) -> None:
        # the open transaction may hold their offsets: it cannot commit
        self.start_over(f"partitions {sorted(partitions)} lost", False)

    def fatal(self, err: KafkaError) -> None:
        if not self._busy:  # else the transactional call running now raises it
            self._producer_failed(err)

    def _restarted(self) -> None:
        self._open = False
        self._need_init = True
        self._wake.set()

    def abandon_in_flight(self) -> None:
        super().abandon_in_flight()
        self._chunks = []

    def _refused(self, chunk: Chunk, exc: Exception, topic: str, value, key, headers=None) -> bool:
        """A record produce() refused at once. A result refused for good goes to the dead-letter
        topic instead (in the transaction); anything else ends the transaction. False: the
        chunk was given up (or the stream stopped)."""
        if isinstance(exc, BufferError):
            self.start_over("the producer's queue is full (queue.buffering.max.messages is below the "
                            "stream's max_in_flight)")
            return False
        err = exc.args[0]
        if classify(err) != PERMANENT:
            self._failed(err, f"producing to {topic!r}")
            return False
        dead = self.refused_for_good(chunk, err, topic, value, headers)
        if dead is None:
            return False
        raw, key, dead_headers = dead
        chunk.dead.append((key, raw, dead_headers))  # produced after the results, in this transaction
        return True

    # -- failures ------------------------------------------------------------------------------
    def _failed(self, err: KafkaError, doing: str) -> None:
        reason = self.stream.redact(f"{doing}: {err}")
        if self._gave_up(reason):
            return
        if err.fatal() or classify(err) == FATAL:
            self._producer_failed(err)
        else:
            self.start_over(reason, count=False)

    def _gave_up(self, reason: str) -> bool:
        """One more failed transaction; past MAX_ABORTS_IN_A_ROW without a commit the stream stops."""
        self._aborts_in_a_row += 1
        if self._aborts_in_a_row <= MAX_ABORTS_IN_A_ROW:
            return False
        self.abandon_in_flight()
        self.stream.halt(f"{MAX_ABORTS_IN_A_ROW} transactions in a row failed; the last because {reason}")
        return True

    def _producer_failed(self, err: KafkaError) -> None:
        """A fatal error of the transactional producer. Fenced: a newer producer with the same
        transactional.id took over, so this one must stop. Anything else: a new producer."""
        if err.code() in _FENCED:
            self.abandon_in_flight()
            self.stream.halt(f"the producer was fenced ({err}): another producer initialised transactional.id "
                             f"{self.txn_id!r}, so this worker may no longer commit. Two servers consuming "
                             f"group {self.stream.settings.group_id!r} on one host need different "
                             "streams[].transactional_id")
            return
        self.restart(err)

    def start_over(self, reason: str, count: bool = True) -> None:
        """Abort the open transaction and consume again from the last committed offsets. While
        a transactional call runs (a commit that may still succeed) this waits for it: the
        reader must rewind to offsets that include that commit."""
        if self.stream.failure is not None:
            return
        if self._busy:
            self._later = (reason, count)
            return
        if count and self._gave_up(reason):
            return
        log.warning("stream %s: %s; the transaction is aborted and its events are consumed again from the last "
                    "committed offsets", self.stream.label, reason)
        self.abandon_in_flight()
        if self._open:
            self._need_abort = reason
            self._wake.set()

    # -- the driver: the one place that makes blocking transactional calls -----------------------
    async def _drive(self) -> None:
        stream = self.stream
        while True:
            await self._wake.wait()
            self._wake.clear()
            while stream.failure is None:
                producer = self.producer
                self._busy = True
                try:
                    if self._need_init:
                        await self._retried("initialising transactions", producer.init_transactions,
                                            lambda err: stream.stopping.is_set())
                        self._need_init = False
                        log.info("stream %s: transactional producer %r ready", stream.label, self.txn_id)
                    elif self._need_abort is not None:
                        self._need_abort = None
                        self._open = False
                        await self._abort(producer)
                        stream.stats.transactions_aborted += 1
                    elif self._chunks:
                        await self._commit_chunks(producer)
                    else:
                        break
                except KafkaException as exc:
                    self._open = False
                    if producer is self.producer:
                        self._failed(exc.args[0], "a transactional call")
                except _Stuck as exc:
                    self._open = False
                    log.error("stream %s: %s; starting a new producer (it aborts this one's transaction) and "
                              "consuming again from the last committed offsets", stream.label, exc)
                    if not self._gave_up(str(exc)):
                        self.restart(str(exc))
                except Exception as exc:  # a bug: stop rather than commit something wrong
                    log.exception("stream %s: the transaction driver failed", stream.label)
                    self.abandon_in_flight()
                    stream.halt(f"the transaction driver failed: {exc!r}")
                finally:
                    self._busy = False
                if self._later is not None:
                    (reason, count), self._later = self._later, None
                    self.start_over(reason, count)
                stream.drain()

    async def _commit_chunks(self, producer: Producer) -> None:
        stream = self.stream
        chunks, self._chunks = self._chunks, []
        offsets: dict[int, int] = {}
        for chunk in chunks:  # consume order: a partition's later chunk ends further on
            offsets.update(chunk.ends)
        topic = stream.settings.input_topic
        positions = [TopicPartition(topic, p, o) for p, o in offsets.items()]
        self._open = False
        aborted = await self._commit(producer, positions)
        if aborted is not None:
            stream.stats.transactions_aborted += 1
            self.start_over(stream.redact(f"committing the transaction failed: {aborted}"))
            return
        self._aborts_in_a_row = 0
        stream.stats.transactions += 1
        stream.stats.commits += 1
        for chunk in chunks:
            chunk.state = State.SETTLED
            stream.stats.delivered += chunk.size
            stream.finish(chunk)
        stream.tracker.committed(chunks, offsets)
        stream.reader.committed.update(offsets)

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
                self.stream.client_log.say(logging.WARNING, self.stream.redact(f"{what}: {err}; retrying"))

    def _send_offsets(self, producer: Producer, positions: list[TopicPartition]) -> None:
        reader = self.stream.reader
        reader.group_meta_fresh.wait(TXN_CALL_TIMEOUT_S)  # the first assignment's
        producer.send_offsets_to_transaction(positions, reader.group_meta, TXN_CALL_TIMEOUT_S)

    async def _commit(self, producer: Producer, positions: list[TopicPartition]) -> str | None:
        """The input offsets into the open transaction, then commit it. None when committed;
        else why it was aborted. A fatal error raises."""
        stream = self.stream
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
                if stream.stopping.is_set():  # stopping while the broker cannot be reached: leave it open
                    given_up_at = given_up_at or time.monotonic() + stream.settings.settle_timeout_s
                    if time.monotonic() > given_up_at:
                        return f"{err} (stopping; the coordinator aborts it when it times out)"
                stream.client_log.say(logging.WARNING, stream.redact(f"committing a transaction: {err}; retrying"))

    async def _abort(self, producer: Producer) -> None:
        """Abort the open transaction; retried, while stopping for settle_timeout_s at most."""
        stream = self.stream
        deadline = time.monotonic() + stream.settings.settle_timeout_s
        await self._retried("aborting a transaction", producer.abort_transaction, lambda err: err.fatal() or (
            stream.stopping.is_set() and time.monotonic() > deadline))

    async def stop(self) -> None:
        """After the reader settled everything it could: the driver has nothing left to do."""
        if self._driver is None:  # never started (the stream stopped at its topic check)
            await super().stop()
            return
        while self._busy:
            await asyncio.sleep(0.01)
        self._driver.cancel()
        await asyncio.gather(self._driver, return_exceptions=True)
        if self._open:  # produced but never committed (stopping in a failure): consumed again later
            try:
                await self._abort(self.producer)
            except (KafkaException, _Stuck) as exc:
                log.warning("stream %s: aborting the last transaction failed: %s", self.stream.label, exc)
        await super().stop()
