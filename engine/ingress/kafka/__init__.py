"""Kafka ingress: a consumer-group worker scoring an input topic into an output topic.

The package: `stream.py` (KafkaStream, what the App starts and stops), `reader.py` (the
consumer's thread), `scoring.py` (Router and Pipeline), `delivery.py` (the Delivery interface
and AtLeastOnce), `transactions.py` (Transactional), `offsets.py` (what may be committed,
pure), `chunk.py` (a consumed batch and its State), `config.py` (client configs, pure),
`topics.py`, `errors.py` (which Kafka error is which), `client_log.py`.

Threads. The blocking consumer lives on its own thread (the reader): it consumes batches,
decodes them (the JSON kernel releases the GIL), pauses and resumes partitions, commits
offsets and runs the rebalance callbacks. Scoring, producing and delivery reports run on the
event loop, through the Pipeline (`submit_rows`: the batcher isolates a row that breaks the
model, so it alone is dead-lettered).

At-least-once. Every consumed batch (a chunk) is scored, its results and dead letters are
produced in consume order, and the chunk is settled when the broker has acknowledged every
one of them. A partition's offset is committed only up to the end of the longest prefix of
its settled chunks. On revoke the reader waits (settle_timeout_s) for the chunks holding the
revoked partitions, commits what they delivered and lets go; on shutdown likewise for all.
A chunk that cannot be scored because the engine is stopping is never committed: it is
consumed again after restart. Results carry their source (topic/partition/offset), so a
consumer can drop the duplicates a crash causes.

Errors (errors.py says which is which). A message the decoder cannot
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

from engine.ingress.kafka.stream import KafkaStream, StreamStats

__all__ = ["KafkaStream", "StreamStats"]
