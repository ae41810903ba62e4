"""Apache Kafka itself, one KRaft node on loopback, for the real-broker tests and benchmarks.

The jars come from Maven Central: `mvn dependency:copy-dependencies` on bench/kafka-broker/pom.xml
(org.apache.kafka:kafka_2.13 and its runtime dependencies) copies them into
bench/kafka-broker/target/lib once; later runs reuse them (Maven's own cache is ~/.m2). The
broker runs with the machine's Java (17+) as a child process: combined broker and controller,
a throwaway log directory, PLAINTEXT on 127.0.0.1, replication factor 1 everywhere, no topic
auto-creation (topics are made with the admin API). Unlike librdkafka's mock cluster it
persists to disk, enforces transactions (read_committed, fencing) and survives SIGKILL and
restart with its data, which is what exactly-once needs to be verified against.

    python -m bench.kafka_broker --topic events:16 --topic scores:16
prints `bootstrap.servers=127.0.0.1:PORT` and holds the broker until killed.
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

KAFKA_VERSION = "4.4.0"  # keep in step with bench/kafka-broker/pom.xml
POM_DIR = Path(__file__).resolve().parent / "kafka-broker"
LIB_DIR = POM_DIR / "target" / "lib"


class BrokerUnavailable(RuntimeError):
    """Java or Maven is missing, or the jars cannot be fetched: the real-broker tier cannot run."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jars(quiet: bool = True) -> list[Path]:
    """The broker's classpath, fetched with Maven on first use (one fetch at a time: a lock)."""
    marker = LIB_DIR / f"kafka_2.13-{KAFKA_VERSION}.jar"
    if not marker.exists():
        if shutil.which("mvn") is None:
            raise BrokerUnavailable("Maven (mvn) is not installed: it fetches Apache Kafka's jars")
        POM_DIR.joinpath("target").mkdir(exist_ok=True)
        with open(POM_DIR / "target" / ".fetch.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not marker.exists():
                command = ["mvn", "-B", "-q" if quiet else "-ntp", "-f", str(POM_DIR / "pom.xml"),
                           "dependency:copy-dependencies", f"-DoutputDirectory={LIB_DIR}",
                           "-DincludeScope=runtime"]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0 or not marker.exists():
                    raise BrokerUnavailable(f"fetching Apache Kafka {KAFKA_VERSION} with Maven failed "
                                            f"({' '.join(command)}):\n{(done.stdout + done.stderr)[-2000:]}")
    return sorted(LIB_DIR.glob("*.jar"))


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found or not Path(found).exists():
        raise BrokerUnavailable("Java (17 or later) is not installed: it runs Apache Kafka's broker")
    return found


def available() -> str | None:
    """None when the real broker can run here, else why not."""
    try:
        java()
        if not (LIB_DIR / f"kafka_2.13-{KAFKA_VERSION}.jar").exists() and shutil.which("mvn") is None:
            raise BrokerUnavailable("Maven (mvn) is not installed: it fetches Apache Kafka's jars")
    except BrokerUnavailable as exc:
        return str(exc)
    return None


class KafkaBroker:
    """One Apache Kafka node (KRaft: broker and controller) on loopback; `bootstrap` is what
    clients connect to. kill() is a SIGKILL; start() again brings it back with its data."""

    def __init__(self, directory: str | Path | None = None, heap_mb: int = 512):
        self._own_dir = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="scorewire-kafka-")) if directory is None else Path(directory)
        self.port = _free_port()
        self.controller_port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.heap_mb = heap_mb
        self.proc: subprocess.Popen | None = None
        self._classpath = os.pathsep.join(str(j) for j in jars())
        self._java = java()
        self._write_config()
        self._format()

    def _write_config(self) -> None:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.directory / "data"),
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            # tests use session.timeout.ms = 3000 so a killed consumer's partitions move quickly
            "group.min.session.timeout.ms": "1000",
            # After a SIGKILL the restarted node cannot register until the controller has let the
            # dead one's session expire (default 9 s).
            "broker.session.timeout.ms": "2000",
            "broker.heartbeat.interval.ms": "500",
        }
        self.config = self.directory / "server.properties"
        self.config.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))

    def _java_command(self, main: str, *args: str) -> list[str]:
        return [self._java, f"-Xmx{self.heap_mb}m", "-Xms128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Xshare:auto", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={POM_DIR / 'log4j2.properties'}", "-cp", self._classpath, main, *args]

    def _format(self) -> None:
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's own Uuid: "-..." would read as an option (1 in 64)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        done = subprocess.run(self._java_command("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c",
                                                 str(self.config), "--standalone"),
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerUnavailable(f"formatting the Kafka log directory failed:\n{(done.stdout + done.stderr)[-2000:]}")

    def start(self, timeout_s: float = 60.0) -> "KafkaBroker":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._log = open(self.directory / "broker.log", "ab")
        self.proc = subprocess.Popen(self._java_command("kafka.Kafka", str(self.config)), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(f"the Kafka broker exited with {self.proc.returncode}; see "
                                        f"{self.directory / 'broker.log'}:\n{self.log_tail()}")
            try:
                metadata = admin.list_topics(timeout=1)
                if metadata.brokers:
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.2)
        raise BrokerUnavailable(f"the Kafka broker did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.directory / "broker.log").read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return ""

    def create_topic(self, name: str, partitions: int, **config: str) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(name, partitions, 1, config=config)], operation_timeout=30)
        futures[name].result(60)
        # The topic exists once every partition has a leader in the metadata clients see.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            topic = admin.list_topics(name, timeout=5).topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions and all(
                    p.leader >= 0 for p in topic.partitions.values()):
                return
            time.sleep(0.1)
        raise RuntimeError(f"topic {name!r} has no leaders 30 s after it was created")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no flush; start() recovers from the log directory."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self._close_log()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._close_log()

    def _close_log(self) -> None:
        log_file = getattr(self, "_log", None)
        if log_file is not None:
            log_file.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    from engine.mock_kafka import cluster_arguments, hold

    parser = cluster_arguments("python -m bench.kafka_broker", __doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="log directory (kept); default: a temporary one, removed at exit")
    args = parser.parse_args(argv)
    try:
        broker = KafkaBroker(args.dir).start()
    except BrokerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return hold(broker.create_topic, args.topic, broker.bootstrap, lambda: None if broker.proc.poll() is None
                    else f"the broker exited with {broker.proc.returncode}:\n{broker.log_tail()}")
    finally:
        broker.close()


if __name__ == "__main__":
    sys.exit(main())
