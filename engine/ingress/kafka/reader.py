"""The reader thread: consumes, decodes, bounds what is in flight, commits and rebalances.

The blocking consumer lives here: it consumes batches (chunks), decodes them (the JSON
kernel releases the GIL) and hands them to the loop; pauses and resumes partitions to keep
the events in flight under max_in_flight; commits what the loop settled (at-least-once); runs
the rebalance callbacks (a revoked partition's chunks are settled and committed first); and,
after the delivery gave everything in flight up, rewinds to the end of what was delivered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from engine.codec.kafka import Decoded
from engine.ingress.kafka.chunk import Chunk
from engine.ingress.kafka.delivery import log

CONSUME_TIMEOUT_S = 0.1
PAUSE_AFTER_S = 1.0
LAG_EVERY_S = 1.0
STALL_CHECK_TIMEOUT_S = 2.0  # each broker question of a stall check (committed offsets, watermarks)
REWIND_TRIES = 50  # a rewind a partition refuses is tried again after each poll (0.1 s), this many times
EXIT_COMMIT_S = 10.0  # how long the last commit may rejoin a group that moved on
GROUP_MOVED = (KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.UNKNOWN_MEMBER_ID)


class Reader:
    def __init__(self, stream, consumer_conf: dict):
        self.stream = stream
        self.settings = stream.settings
        self.consumer = Consumer(consumer_conf)
        # where a partition with no committed offset starts (librdkafka's names for the end)
        self._from_end = str(consumer_conf.get("auto.offset.reset", "earliest")).lower() in ("latest", "largest", "end")
        self.committed: dict[int, int] = {}  # partition -> last offset this worker committed
        self._lag_at = 0.0
        self._assigned_at: dict[int, float] = {}  # partition -> when it was assigned (monotonic)
        self._stall_checked: dict[int, float] = {}  # partition -> its last stall check
        self._paused = False
        self._generation = 0  # the generation the reader last rewound to
        self._rewind_tries = 0  # rewinds a partition refused since the last one that went through
        self._thread: threading.Thread | None = None
        # The consumer's group metadata (member, generation) for send_offsets_to_transaction.
        # The reader fetches it: asked from another thread while the reader polls, it waits for
        # the poll to end (measured: for as long as the reader keeps polling).
        self.group_meta = None
        self.group_meta_fresh = threading.Event()
        self._group_meta_stale = threading.Event()
        self._transactional = stream.delivery.commits_offsets  # offsets go in its transactions

    def subscribe(self) -> None:
        self.consumer.subscribe([self.settings.input_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"kafka:{self.settings.input_topic}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        stream, consumer = self.stream, self.consumer
        try:
            while not stream.stopping.is_set():
                generation = stream.generation
                if generation != self._generation:
                    if not self._rewind():
                        # serve rebalances meanwhile; a message returned now lies past the
                        # rewind's target: dropped here, it is consumed again after the rewind
                        consumer.poll(CONSUME_TIMEOUT_S)
                        continue
                    self._generation = generation
                self._commit(asynchronous=True)
                self._update_lag()
                timeout = self._flow_control()
                # consume(n, t) waits until n messages or t: take what is there now, and
                # when nothing is, wait for the first message only.
                if self._transactional and self._group_meta_stale.is_set():
                    self._refresh_group_meta()
                messages = consumer.consume(self.settings.consume_batch, 0)
                if not messages and timeout:
                    first = consumer.poll(timeout)
                    if first is not None:
                        messages = [first] + consumer.consume(self.settings.consume_batch - 1, 0)
                if messages:
                    self._take(messages, generation)
            self._settle(None)
            self._commit_at_exit()
        except Exception as exc:
            log.exception("stream %s: the reader failed", stream.label)
            stream.loop.call_soon_threadsafe(stream.halt, f"the reader failed: {exc!r}")
            try:
                self._settle_and_commit(None)
            except Exception:
                log.exception("stream %s: committing what was delivered failed", stream.label)
        finally:
            try:
                consumer.close()  # leaves the group; the revoke callback settles (nothing left)
            except Exception:
                log.exception("stream %s: closing the consumer failed", stream.label)

    def _refresh_group_meta(self) -> None:
        """On the reader (also inside rebalance callbacks): the group metadata commits use."""
        self._group_meta_stale.clear()
        self.group_meta = self.consumer.consumer_group_metadata()
        self.group_meta_fresh.set()

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        stream, consumer = self.stream, self.consumer
        if stream.input_partitions == 0:  # waiting for the input topic: is it there now?
            found = stream.topics.input_topic_now(consumer)
            if found is not None:
                stream.input_partitions = found
                log.warning("stream %s: the input topic %r exists now", stream.label, self.settings.input_topic)
        lag, unpositioned = {}, []
        try:
            for tp in consumer.position(consumer.assignment()):
                if tp.offset < 0:  # nothing consumed since it was assigned
                    unpositioned.append(tp)
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                done = self.committed.get(tp.partition, tp.offset)
                lag[tp.partition] = max(0, high - done) if high >= 0 and done >= 0 else 0
        except KafkaException as exc:
            log.debug("stream %s: lag not updated: %s", stream.label, exc)
            return
        stalled = self._stalls(unpositioned, now)
        stream.lag = {**lag, **stalled}

    def _stall_clock(self, partitions: set[int]) -> None:
        """Nothing consumed from `partitions` is expected yet: assigned, sought or resumed now."""
        now = time.monotonic()
        for p in partitions:
            self._assigned_at[p] = now
            self._stall_checked.pop(p, None)

    def _stalls(self, unpositioned: list[TopicPartition], now: float) -> dict[int, int]:
        """The stalled partitions and their events waiting: assigned (or sought, or resumed)
        stalled_after_s ago or more, not paused, nothing consumed since, and events between the
        group's committed offset (or where auto.offset.reset starts) and the high watermark. Each
        is asked about (the broker, STALL_CHECK_TIMEOUT_S each question) once per
        stalled_after_s; said once when it stalls, and when it consumes again. Measured against
        Apache Kafka: after a broker was killed mid-transaction an exactly-once stream was
        assigned every partition and consumed nothing for minutes, its lag reading 0."""
        stream, after = self.stream, self.settings.stalled_after_s
        waiting = {tp.partition for tp in unpositioned}
        moving = stream.stalled - waiting
        if moving:
            stream.stalled -= moving
            log.info("stream %s: stalled partitions %s are consumed again", stream.label, sorted(moving))
        due = [] if self._paused else [  # paused (flow control): waiting on purpose
            tp for tp in unpositioned if now - self._assigned_at.get(tp.partition, now) >= after
            and now - self._stall_checked.get(tp.partition, -after) >= after]
        found = self._waiting(due, now) if due else {}
        return {p: n for p, n in {**stream.lag, **found}.items() if p in stream.stalled}

    def _waiting(self, due: list[TopicPartition], now: float) -> dict[int, int]:
        """Ask the brokers which of `due` have events waiting (how many); the stalled set and
        the warning follow."""
        stream, consumer = self.stream, self.consumer
        for tp in due:
            self._stall_checked[tp.partition] = now
        try:
            committed = {tp.partition: tp.offset for tp in consumer.committed(due, timeout=STALL_CHECK_TIMEOUT_S)}
            reading = "works"
        except KafkaException as exc:
            committed, reading = {}, f"fails ({stream.redact(str(exc.args[0]))})"
        found = {}
        for tp in due:
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=STALL_CHECK_TIMEOUT_S, cached=False)
            except KafkaException:
                continue  # no broker to ask (scorewire_stream_brokers_reachable says so)
            start = committed.get(tp.partition, -1)
            if start < 0:  # no committed offset: where auto.offset.reset starts it
                start = high if self._from_end else low
            start = max(start, low)  # records retention removed are not waiting
            if high > start:
                found[tp.partition] = high - start
            else:
                stream.stalled.discard(tp.partition)  # nothing waits: idle, not stalled
        new = sorted(set(found) - stream.stalled)
        stream.stalled |= set(found)
        if new:
            log.warning("stream %s: partitions %s have %d events waiting and none was consumed for %.0f s "
                        "(since they were assigned, sought or resumed): the consumer has no position to fetch "
                        "from. Reading the group's committed offsets %s. A transaction the brokers still hold "
                        "open on the group's offsets keeps them from a read_committed consumer (exactly-once); "
                        "the brokers' transaction tools (kafka-transactions.sh) list and abort it", stream.label,
                        new, sum(found[p] for p in new), now - min(self._assigned_at.get(p, now) for p in new),
                        reading)
        return found

    def _rewind(self) -> bool:
        """After a fatal producer error (or an aborted transaction): consume every assigned
        partition again from the end of what was delivered (else from the group's committed
        offset). False: the committed offsets could not be read; try again."""
        stream, consumer = self.stream, self.consumer
        assignment = consumer.assignment()
        settled = stream.tracker.settled_copy()
        unknown = [tp for tp in assignment if tp.partition not in settled]
        try:
            committed = {tp.partition: tp.offset for tp in consumer.committed(unknown, timeout=10)} if unknown else {}
        except KafkaException as exc:
            log.warning("stream %s: reading the committed offsets to consume again from failed (%s); retrying",
                        stream.label, exc)
            return False
        refused = []
        for tp in assignment:
            offset = settled.get(tp.partition, committed.get(tp.partition, -1))
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset if offset >= 0 else OFFSET_BEGINNING))
                self._stall_clock({tp.partition})  # a seek forgets the position: not a stall
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
                     "assigned again", stream.label, partition, err)
        self._rewind_tries = 0
        log.warning("stream %s: consuming again from what was delivered on partitions %s", stream.label,
                    sorted(tp.partition for tp in assignment))
        return True

    def _decode(self, values, keys) -> Decoded:
        codec = self.stream.codec
        try:
            return codec.decode(values, keys)
        except Exception:  # a decoder bug, not a bad message: find the message, let the others through
            self.stream.stats.decoder_failures += 1
            log.exception("stream %s: decoding a batch of %d messages failed; decoding them one by one",
                          self.stream.label, len(values))
            return codec.decode_each(values, keys)

    def _take(self, messages, generation: int = 0) -> None:
        stream = self.stream
        consumed_ns = time.monotonic_ns()
        if any(m.error() is not None for m in messages):
            for m in messages:
                if m.error() is not None:
                    stream.stats.consumer_errors += 1
                    stream.client_log.say(logging.WARNING, f"consumer error: {stream.redact(str(m.error()))}")
            messages = [m for m in messages if m.error() is None]
            if not messages:
                return
        n = len(messages)
        chunk = Chunk([m.value() for m in messages], [m.key() for m in messages],
                      np.fromiter([m.partition() for m in messages], dtype=np.int64, count=n),
                      np.fromiter([m.offset() for m in messages], dtype=np.int64, count=n), consumed_ns, generation)
        chunk.decoded = self._decode(chunk.values, chunk.keys)
        stream.consumed += chunk.size
        stream.stats.consumed += chunk.size
        stream.stats.chunks += 1
        stream.loop.call_soon_threadsafe(stream.accept, chunk)

    def _flow_control(self) -> float:
        """Bound the events in flight; returns the timeout for the next consume().

        At the bound the reader first waits (librdkafka keeps prefetching into its own bounded
        queue, and a pause would throw that away); if there is still no room after
        PAUSE_AFTER_S, it pauses its partitions until in-flight work is down to half."""
        stream, consumer = self.stream, self.consumer
        limit = self.settings.max_in_flight
        if not self._paused:
            if stream.in_flight < limit:
                return CONSUME_TIMEOUT_S
            stream.room.clear()
            if stream.in_flight < limit or stream.room.wait(PAUSE_AFTER_S):
                return CONSUME_TIMEOUT_S
            consumer.pause(consumer.assignment())
            self._paused = True
            stream.stats.pauses += 1
            log.info("stream %s: %d events in flight; partitions paused", stream.label, stream.in_flight)
        if stream.in_flight <= limit // 2:
            consumer.resume(consumer.assignment())
            self._paused = False
            self._stall_clock({tp.partition for tp in consumer.assignment()})  # paused time is not a stall
            log.info("stream %s: partitions resumed", stream.label)
            return CONSUME_TIMEOUT_S
        stream.room.clear()
        if stream.in_flight > limit // 2:
            stream.room.wait(CONSUME_TIMEOUT_S)
        return 0.0  # keep serving rebalances and heartbeats while paused

    def _commit(self, asynchronous: bool, only: set[int] | None = None, last_try: bool = True) -> int | None:
        """Commit what is ready. Synchronous (rebalance, shutdown): every settled offset of
        `only`, again, since an asynchronous commit still in flight may fail in the rebalance.
        Exactly-once commits offsets in its transactions instead. Returns the error code of a
        failed commit (counted and logged unless another try follows), else None."""
        if self._transactional:
            return None
        tracker = self.stream.tracker
        ready = tracker.take_ready() if asynchronous else tracker.settled_upto(only)
        if not ready:
            return None
        topic = self.settings.input_topic
        stats = self.stream.stats
        try:
            self.consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in ready.items()],
                                 asynchronous=asynchronous)
            stats.commits += 1
            self.committed.update(ready)
            return None
        except KafkaException as exc:
            if last_try:
                stats.commit_errors += 1
                log.warning("stream %s: commit of %s failed: %s; those events will be consumed again",
                            self.stream.label, ready, exc)
            return exc.args[0].code()

    def _commit_at_exit(self) -> None:
        """The last commit, at shutdown. Every worker stops at once on SIGTERM: a peer leaving
        the group first moves it to a new generation, and a commit from the one before is
        refused (ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS), which would leave the events
        delivered since the last commit to be consumed again after the restart. So rejoin (a
        poll runs the rebalance and its callbacks; a message it returns is not taken, so it is
        consumed again) and commit again, for up to EXIT_COMMIT_S."""
        deadline = time.monotonic() + EXIT_COMMIT_S
        while True:
            last = time.monotonic() >= deadline
            error = self._commit(asynchronous=False, last_try=last)
            if error not in GROUP_MOVED or last:
                return
            log.info("stream %s: the group moved on (a peer left); rejoining to commit what was delivered",
                     self.stream.label)
            self.consumer.poll(CONSUME_TIMEOUT_S)

    def _settle(self, partitions: set[int] | None) -> None:
        """Wait for the loop to settle chunks of `partitions` (None: all)."""
        stream = self.stream
        future = asyncio.run_coroutine_threadsafe(stream.settle(partitions), stream.loop)
        try:
            future.result(self.settings.settle_timeout_s + 5)
        except Exception as exc:
            log.warning("stream %s: settling in-flight events failed (%r); committing what was delivered",
                        stream.label, exc)

    def _settle_and_commit(self, partitions: set[int] | None) -> None:
        """Settle chunks of `partitions` (None: all), then commit what they delivered, synchronously."""
        self._settle(partitions)
        self._commit(asynchronous=False, only=partitions)

    # -- rebalance callbacks (on this thread, inside poll/consume) --------------------------------
    def _on_assign(self, consumer, partitions) -> None:
        """Partitions added (cooperative rebalancing: the ones held before stay held)."""
        self.stream.stats.rebalances += 1
        if self._transactional:
            self._refresh_group_meta()
        # Start over unpaused (flow control pauses again if still needed). The new partitions
        # too: a partition lost while paused comes back paused (measured against Apache Kafka:
        # after a broker restart the stream was assigned everything and consumed nothing).
        if self._paused or partitions:
            consumer.resume(consumer.assignment() + list(partitions))
            self._paused = False
        self._lag_at = 0.0
        self._stall_clock({tp.partition for tp in partitions})
        if partitions:
            log.info("stream %s: assigned partitions %s", self.stream.label, sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        revoked = {p.partition for p in partitions}
        log.info("stream %s: partitions %s revoked; settling their in-flight events", self.stream.label,
                 sorted(revoked))
        if self._transactional:
            self._refresh_group_meta()
            self._group_meta_stale.set()  # once more after the rebalance
        self._settle_and_commit(revoked)
        self._let_go(revoked)

    def _let_go(self, partitions: set[int]) -> None:
        self.stream.tracker.let_go(partitions)
        for p in partitions:
            self.committed.pop(p, None)
            self._assigned_at.pop(p, None)
            self._stall_checked.pop(p, None)
        self.stream.stalled -= partitions
        self.stream.lag = {p: n for p, n in self.stream.lag.items() if p not in partitions}
        self._lag_at = 0.0

    def _on_lost(self, consumer, partitions) -> None:
        stream = self.stream
        lost = {p.partition for p in partitions}
        if self._transactional:
            self._group_meta_stale.set()
        log.warning("stream %s: partitions %s lost; their in-flight results may be produced again by another "
                    "worker", stream.label, sorted(lost))
        self._let_go(lost)
        stream.loop.call_soon_threadsafe(stream.delivery.lost, lost)
