"""Kafka 4.x in KRaft mode: one JVM that is both broker and controller, no ZooKeeper.

The jars come from Maven Central (stack/maven/kafka.pom.xml); we run `kafka.Kafka` with our own
server.properties and log4j2 config instead of the distribution's shell scripts.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports NewTopic without __all__, which mypy --strict rejects.
from confluent_kafka.cimpl import NewTopic

from gateway import contract, topics
from stack import artifacts
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import NotReady, Service
from stack.services import prometheus

log = logging.getLogger(__name__)

NODE_ID = 1

_BRIDGE_TOPIC_CONFIG = {"max.message.bytes": str(contract.KAFKA_MAX_MESSAGE_BYTES)}
# (topic, partitions, topic configs) created by initialise(); names are defined in gateway.topics.
TOPICS: list[tuple[str, int, dict[str, str]]] = [
    # The bridge's record limit, stated (it is Kafka's default): its producer uses the same one.
    (topics.KAFKA_READINGS, topics.KAFKA_READINGS_PARTITIONS, _BRIDGE_TOPIC_CONFIG),
    (topics.KAFKA_DLQ, topics.KAFKA_READINGS_PARTITIONS, _BRIDGE_TOPIC_CONFIG),
    (topics.KAFKA_AGG_1M, topics.KAFKA_READINGS_PARTITIONS, {}),
    (topics.KAFKA_AGG_1H, topics.KAFKA_READINGS_PARTITIONS, {}),
    # Latest all-time rollup per key is all a reader needs: compaction keeps the topic small.
    (topics.KAFKA_AGG_ALL, topics.KAFKA_READINGS_PARTITIONS, {"cleanup.policy": "compact"}),
]

_LOG4J2 = """\
# Written by stack/services/kafka.py on every start.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
# The request and state-change chatter of a single local broker is noise.
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.kafka-clients.name = org.apache.kafka
logger.kafka-clients.level = INFO
"""


def new_cluster_id() -> str:
    """Kafka's Uuid text form: URL-safe base64 of 16 random bytes, unpadded, never starting with
    '-' (1 in 64 would): the storage tool's argument parser takes such an id for an option
    ("--cluster-id: expected one argument"), which is why Kafka's own Uuid.randomUuid avoids it."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaService(Service):
    name = "kafka"
    stage = 0

    @property
    def data_dir(self) -> Path:
        return self.settings.service_dir(self.name) / "data"

    @property
    def config_file(self) -> Path:
        return self.settings.service_dir(self.name) / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.settings.service_dir(self.name) / "log4j2.properties"

    @property
    def log_file(self) -> Path:
        return self.settings.log_dir / f"{self.name}.log"

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.settings.kafka_port}"

    def install(self) -> None:
        artifacts.fetch(self.settings, self.name)
        prometheus.install_jmx_agent(self.settings)
        self.settings.service_dir(self.name).mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._server_properties())
        self.log4j_file.write_text(_LOG4J2.format(log_file=self.log_file))
        self._format_storage()

    def _cluster_id(self) -> str:
        """Generated once and kept in .stack, so the formatted log dirs always match it."""
        path = self.settings.service_dir(self.name) / "cluster.id"
        if path.exists():
            stored = path.read_text().strip()
            # An id from before new_cluster_id avoided a leading '-' is kept once it is in use.
            if not stored.startswith("-") or (self.data_dir / "meta.properties").exists():
                return stored
        cluster_id = new_cluster_id()
        path.write_text(cluster_id + "\n")
        return cluster_id

    def _format_storage(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        log.info("kafka: formatting storage in %s", self.data_dir)
        argv = [
            *self._java(),
            "kafka.tools.StorageTool", "format",
            "--cluster-id", self._cluster_id(),
            "--config", str(self.config_file),
            "--ignore-formatted",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise StackError(f"kafka: formatting the storage failed:\n{tail}")

    def _server_properties(self) -> str:
        s = self.settings
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@localhost:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://localhost:{s.kafka_port},"
                         f"CONTROLLER://localhost:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://localhost:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            # A single node: every internal topic has one replica, and small partition counts
            # keep the first consumer group / transaction fast to set up.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Flink's exactly-once Kafka sink defaults to 1 h transactions; the broker's 15 min
            # default cap would refuse them.
            "transaction.max.timeout.ms": "3600000",
            "group.initial.rebalance.delay.ms": "0",
            # Two cores: few threads.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 2**20),
            "log.retention.hours": "168",
            "log.segment.bytes": str(256 * 2**20),
        }
        lines = ["# Written by stack/services/kafka.py on every `iot up`; edit that instead."]
        lines += [f"{key}={value}" for key, value in props.items()]
        return "\n".join(lines) + "\n"

    def _java(self) -> list[str]:
        heap = self.settings.kafka_heap
        return [
            str(self.settings.java17_home / "bin" / "java"),
            f"-Xms{heap}", f"-Xmx{heap}",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            # Bound the non-heap memory so the broker stays near its RSS budget.
            "-XX:MaxDirectMemorySize=128m",
            "-XX:MaxMetaspaceSize=128m",
            "-XX:ReservedCodeCacheSize=64m",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            f"-Dkafka.logs.dir={self.settings.log_dir}",
            "-cp", artifacts.classpath(self.settings, self.name),
        ]

    def own_ports(self) -> tuple[int, ...]:
        return (self.settings.kafka_port, self.settings.kafka_controller_port)

    def adopt_marker(self) -> str:
        return f"kafka.Kafka {self.config_file}"

    def processes(self) -> list[ProcessSpec]:
        # The JMX exporter agent on the broker only (not on the storage tool's JVM).
        agent = prometheus.jmx_agent_args(self.settings, self.name)
        argv = [*self._java(), *agent, "kafka.Kafka", str(self.config_file)]
        return [self.spec(self.name, argv, stop_timeout_s=30.0)]

    def _admin(self) -> AdminClient:
        # log_level 0 keeps librdkafka quiet while the broker is still starting.
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def check_ready(self) -> None:
        try:
            metadata = self._admin().list_topics(timeout=2.0)
        except KafkaException as exc:
            raise NotReady(f"kafka metadata from {self.bootstrap}: {exc}") from exc
        if not metadata.brokers:
            raise NotReady(f"kafka metadata from {self.bootstrap}: no broker registered yet")

    def initialise(self) -> None:
        admin = self._admin()
        existing = set(admin.list_topics(timeout=10.0).topics)
        wanted = [
            NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
            for name, partitions, config in TOPICS
            if name not in existing
        ]
        if not wanted:
            return
        for name, future in admin.create_topics(wanted, request_timeout=30.0).items():
            try:
                future.result()
                log.info("kafka: created topic %s", name)
            except KafkaException as exc:
                # Another `iot up` may have created it in the meantime: that is the goal anyway.
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise StackError(f"kafka: creating topic {name} failed: {exc}") from exc

    def describe(self) -> str:
        metadata = self._admin().list_topics(timeout=2.0)
        user_topics = [t for t in metadata.topics if not t.startswith("__")]
        return f"broker {metadata.controller_id} at {self.bootstrap}, {len(user_topics)} topics"
