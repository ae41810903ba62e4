"""librdkafka's built-in Kafka cluster, for tests, the demo and benchmarks.

The librdkafka bundled in the confluent-kafka wheel exports the mock-cluster API. Driven
through ctypes it is a real Kafka-protocol broker on 127.0.0.1 that any client reaches
through `bootstrap.servers`. It lives in memory, in the threads of the process that created
it. Known limits (DESIGN.md): no admin API (create topics here), at most 5 MiB or 100k
producer batches per partition, transactions accepted but not enforced.

    python -m engine.mock_kafka --topic events:16 --topic scores:16
prints `bootstrap.servers=127.0.0.1:PORT` and holds the cluster until killed.
"""

from __future__ import annotations

import argparse
import ctypes
import signal
import sys
import threading
from pathlib import Path

import confluent_kafka

_RD_KAFKA_PRODUCER = 0


def _library() -> ctypes.CDLL:
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    candidates = sorted(libs.glob("librdkafka*.so*")) if libs.is_dir() else []
    if not candidates:
        raise RuntimeError(f"no bundled librdkafka under {libs}; install the confluent-kafka wheel")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    for name in ("rd_kafka_mock_broker_set_down", "rd_kafka_mock_broker_set_up"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.rd_kafka_mock_push_request_errors_array.argtypes = [ctypes.c_void_p, ctypes.c_int16, ctypes.c_size_t,
                                                            ctypes.POINTER(ctypes.c_int)]
    lib.rd_kafka_mock_topic_set_error.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    return lib


PRODUCE = 0  # Kafka protocol ApiKey of Produce requests
OFFSET_FETCH = 9  # ... of OffsetFetch requests (a consumer group's committed offsets)


class MockCluster:
    """A Kafka-protocol cluster on loopback; `bootstrap` is what clients connect to."""

    def __init__(self, brokers: int = 1, rebalance_delay_ms: int = 0):
        self._lib = lib = _library()
        conf = lib.rd_kafka_conf_new()
        errstr = ctypes.create_string_buffer(512)
        lib.rd_kafka_conf_set(conf, b"log_level", b"3", errstr, len(errstr))
        self._rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
        if not self._rk:
            raise RuntimeError(f"rd_kafka_new failed: {errstr.value.decode()}")
        self._cluster = lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._cluster:
            lib.rd_kafka_destroy(self._rk)
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._cluster, rebalance_delay_ms)
        self.brokers = brokers
        self.bootstrap: str = lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, name: str, partitions: int) -> None:
        err = self._lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), partitions, 1)
        if err:
            raise RuntimeError(f"cannot create topic {name!r}: librdkafka error {err}")

    def broker_down(self, broker_id: int = 1) -> None:
        """Take a broker down: its connections are closed and new ones refused."""
        self._check(self._lib.rd_kafka_mock_broker_set_down(self._cluster, broker_id), "down", broker_id)

    def broker_up(self, broker_id: int = 1) -> None:
        self._check(self._lib.rd_kafka_mock_broker_set_up(self._cluster, broker_id), "up", broker_id)

    def fail_requests(self, api_key: int, errors: list[int]) -> None:
        """The next len(errors) requests of `api_key` (e.g. PRODUCE) get these error codes
        (KafkaError codes), in order, whichever client sends them."""
        codes = (ctypes.c_int * len(errors))(*errors)
        self._lib.rd_kafka_mock_push_request_errors_array(self._cluster, api_key, len(errors), codes)

    def topic_error(self, topic: str, error: int) -> None:
        """Every request about `topic` gets this error code from now on (0: none)."""
        self._lib.rd_kafka_mock_topic_set_error(self._cluster, topic.encode(), error)

    def all_down(self) -> None:
        for broker in range(1, self.brokers + 1):
            self.broker_down(broker)

    def all_up(self) -> None:
        for broker in range(1, self.brokers + 1):
            self.broker_up(broker)

    @staticmethod
    def _check(err: int, what: str, broker: int) -> None:
        if err:
            raise RuntimeError(f"cannot set broker {broker} {what}: librdkafka error {err}")

    def close(self) -> None:
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._cluster = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None

    def __enter__(self) -> "MockCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cluster_arguments(prog: str, description: str) -> argparse.ArgumentParser:
    """The options a command holding a cluster for others takes: --topic NAME:PARTITIONS."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--topic", action="append", default=[], metavar="NAME:PARTITIONS",
                        help="create a topic (repeatable), e.g. events:16")
    return parser


def hold(create_topic, topics: list[str], bootstrap: str, gone=lambda: None) -> int:
    """Once a cluster is up (here, or bench.kafka_broker's Apache Kafka): create the
    NAME:PARTITIONS topics, print bootstrap.servers, and wait for SIGTERM or SIGINT (then 0).
    `gone()`, asked every second, says why the cluster died (then 1)."""
    for spec in topics:
        name, _, partitions = spec.partition(":")
        create_topic(name, int(partitions or 1))
    print(f"bootstrap.servers={bootstrap}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        why = gone()
        if why is not None:
            print(f"error: {why}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = cluster_arguments("python -m engine.mock_kafka", __doc__.split("\n\n")[0])
    parser.add_argument("--brokers", type=int, default=1)
    args = parser.parse_args(argv)
    cluster = MockCluster(args.brokers)
    try:
        return hold(cluster.create_topic, args.topic, cluster.bootstrap)
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
