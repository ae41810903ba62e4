"""Do the stream's topics exist? Checked at start (and later, when no broker answered then).

A missing output or dead-letter topic stops the stream (consuming would dead-letter or lose
every event; scorewire creates no topic); a missing input topic is waited for, and said
(`scorewire_stream_input_missing`).
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from engine.ingress.kafka.delivery import log

_NO_SUCH_TOPIC = {KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART}  # in metadata
TOPICS_FIRST_WAIT_S = 1.0  # start: how long the cluster's metadata (which topics exist) is waited for...
TOPICS_TIMEOUT_S = 5.0  # ...and then, no broker having answered, each later try (the stream runs meanwhile)


class Topics:
    def __init__(self, stream):
        self.stream = stream
        s = stream.settings
        self.roles = {s.input_topic: "input topic", s.output_topic: "output topic",
                      s.dead_letter_topic: "dead-letter topic"}

    def role(self, topic: str) -> str:
        return f"{self.roles[topic]} {topic!r}"

    def missing(self, client, timeout_s: float) -> list[str] | None:
        """The stream's topics the cluster does not have, by its metadata (None when no broker
        answered within `timeout_s`). A full listing, which creates nothing on brokers that
        create topics on demand."""
        try:
            topics = client.list_topics(timeout=timeout_s).topics
        except KafkaException:
            return None
        return [t for t in self.roles if t not in topics
                or (topics[t].error is not None and topics[t].error.code() in _NO_SUCH_TOPIC)]

    def act_on(self, missing: list[str]) -> bool:
        """On the loop: act on the missing topics; True when the stream stopped for them."""
        stream = self.stream
        input_topic = stream.settings.input_topic
        if input_topic in missing:
            stream.input_partitions = 0
            log.warning("stream %s: the input topic %r does not exist (yet); the stream consumes it once it does",
                        stream.label, input_topic)
        gone = [t for t in missing if t != input_topic]
        if gone:  # nowhere to put results: consuming would dead-letter or lose every event
            stream.halt(f"the {' and the '.join(self.role(t) for t in gone)} does not exist; create it "
                        "(scorewire creates no topic) and restart")
        return bool(gone)

    async def check_later(self, client) -> None:
        stream = self.stream
        while not stream.stopping.is_set():
            missing = await stream.loop.run_in_executor(None, self.missing, client, TOPICS_TIMEOUT_S)
            if missing is not None:
                self.act_on(missing)
                return

    def input_topic_now(self, consumer) -> int | None:
        """On the reader, while the input topic is missing: its partitions once it exists."""
        try:
            found = consumer.list_topics(timeout=TOPICS_TIMEOUT_S).topics.get(self.stream.settings.input_topic)
        except KafkaException:
            return None
        if found is not None and (found.error is None or found.error.code() not in _NO_SUCH_TOPIC):
            return len(found.partitions)
        return None
