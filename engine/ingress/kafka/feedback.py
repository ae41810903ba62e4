"""Labels from a Kafka topic ([[feedback]]): a consumer thread per worker, one group for all.

Each message is what POST /v2/models/NAME/feedback takes: one {"id", "labels"} object or an
array of them. A batch of messages goes to the event loop, through the front door (the same
checks and counts as REST: a bad object is refused alone, counted), and its offsets are
committed (synchronously) once the loop took it: at least once (a label read again after a crash is counted
a duplicate by the join, never joined twice).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from confluent_kafka import Consumer, KafkaError, KafkaException

from engine.ingress.kafka.client_log import ClientLog, Redactor
from engine.ingress.kafka.config import reveal
from engine.settings import FeedbackSettings, SettingsError

log = logging.getLogger("engine.ingress.kafka")

BATCH = 1000
POLL_S = 0.2


class FeedbackReader:
    def __init__(self, settings: FeedbackSettings, front):
        self.settings = settings
        self.front = front
        self.label = f"feedback {settings.topic} ({settings.model})"
        self.messages = 0
        self.refused = 0
        self.commits_refused = 0  # commits the group refused (rebalancing): what they covered is read again
        self._said = 0  # refusals logged (the first few; the rest are counted only)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.settings
        revealed = reveal(s.kafka)
        redact = Redactor.for_tables([s.kafka], [revealed])
        client_log = ClientLog(log, self.label, redact)
        conf = {"bootstrap.servers": s.bootstrap_servers, "group.id": s.group_id, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "logger": client_log,
                "error_cb": lambda err: client_log.say(logging.WARNING, redact(str(err))), **revealed}
        try:
            self._consumer = Consumer(conf)
            self._consumer.subscribe([s.topic])
        except (KafkaException, ValueError, TypeError) as exc:
            raise SettingsError(f"{self.label}: the Kafka client refuses its settings: {redact(str(exc))}") from None
        self._thread = threading.Thread(target=self._run, args=(loop,), name=f"feedback:{s.topic}", daemon=True)
        self._thread.start()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        consumer = self._consumer
        try:
            while not self._stop.is_set():
                messages = consumer.consume(BATCH, POLL_S)
                values = [m.value() for m in messages if m.error() is None and m.value() is not None]
                if not values:
                    continue
                done = asyncio.run_coroutine_threadsafe(self._hand_on(values), loop)
                try:
                    done.result(30)
                except Exception:  # the loop is stopping: not committed, read again after the restart
                    log.warning("%s: %d messages not handed on; they are read again after a restart",
                                self.label, len(values))
                    return
                self._commit(consumer)
        except Exception:
            log.exception("%s: the reader failed", self.label)
        finally:
            try:
                consumer.close()
            except Exception:
                log.exception("%s: closing the consumer failed", self.label)

    def _commit(self, consumer: Consumer) -> None:
        """Synchronous, before the next consume(): a rebalance (a worker joining or leaving)
        happens inside consume(), so what was handed on is committed before its partition can
        move, and the next owner does not read it again (an asynchronous commit still in flight
        then left it to be read twice, counted duplicates). A commit refused (the group
        rebalancing meanwhile) leaves those labels to be read again: said, counted
        (scorewire_feedback_commits_refused_total), and their labels counted duplicates by the
        join."""
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() == KafkaError._NO_OFFSET:
                return  # nothing new to commit
            self.commits_refused += 1
            log.warning("%s: committing what was read failed (%s); its labels may be read again "
                        "(counted duplicates, never joined twice)", self.label, exc.args[0] if exc.args else exc)

    async def _hand_on(self, values: list[bytes]) -> None:
        for value in values:
            _, errors = self.front.feedback(self.settings.model, value)
            self.messages += 1
            self.refused += len(errors)
            if errors and self._said < 10:
                self._said += 1
                log.warning("%s: %d label objects of a message refused (%s)%s", self.label, len(errors), errors[0][1],
                            "; further refusals are only counted (scorewire_feedback_refused_total)"
                            if self._said == 10 else "")

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
