"""What a Kafka produce or delivery error means for a stream.

- retriable: try again (the broker is down, a leader moved, the message timed out in the
  producer's queue): at-least-once keeps the event until its result is acknowledged;
- permanent: trying again cannot help (no authorization for the topic, a record too large,
  an invalid record): a result goes to the dead-letter topic instead, with the cause; a dead
  letter that is refused so stops the stream (nothing past it is committed);
- fatal: the producer itself is unusable (an idempotent producer's sequence broke): the
  stream makes a new one and consumes again from what was delivered.
Delivery reports carry no retriable flag, so codes decide; an unknown code is retried, as
before (it cannot lose an event).
"""

from __future__ import annotations

from confluent_kafka import KafkaError

RETRIABLE, PERMANENT, FATAL = "retriable", "permanent", "fatal"

_PERMANENT = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_REQUIRED_ACKS,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
    KafkaError.POLICY_VIOLATION,
    KafkaError._INVALID_ARG,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.TOPIC_EXCEPTION,
}


def classify(error: KafkaError) -> str:
    if error.fatal() or error.code() == KafkaError._FATAL:
        return FATAL
    if error.code() in _PERMANENT:
        return PERMANENT
    return RETRIABLE
