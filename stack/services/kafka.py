"""Kafka 4.x in KRaft mode: each JVM is both broker and controller, no ZooKeeper.

The jars come from Maven Central (stack/maven/kafka.pom.xml); we run `kafka.Kafka` with our own
server.properties and log4j2 config instead of the distribution's shell scripts. The default
profile runs one node on localhost; the replicated one (stack/topology.py) runs
`replicated_kafka_brokers` of them, node N on 127.0.0.N, SASL/SCRAM on the client and
inter-broker listener, every topic replicated to 3 with min.insync.replicas 2.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import threading
import uuid
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports NewTopic without __all__, which mypy --strict rejects.
from confluent_kafka.cimpl import NewTopic

from gateway import contract, topics
from stack import artifacts, topology
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import NodeService, NotReady, StatePath
from stack.services import prometheus

log = logging.getLogger(__name__)

NODE_ID = 1
# The nodes of a cluster install in parallel threads: one of them generates the shared cluster id.
_CLUSTER_ID_LOCK = threading.Lock()

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


class KafkaService(NodeService):
    name = "kafka"
    stage = 0
    data_dir = StatePath("data")
    config_file = StatePath("server.properties")
    log4j_file = StatePath("log4j2.properties")

    @property
    def node_id(self) -> int:
        return self.node or NODE_ID

    @property
    def host(self) -> str:
        return topology.node_host(self.node) if self.node is not None else "localhost"

    @property
    def replicas(self) -> int:
        return len(topology.kafka_nodes(self.settings)) or 1

    @property
    def log_file(self) -> Path:
        return self.settings.log_dir / f"{self.name}.log"

    @property
    def bootstrap(self) -> str:
        """This node's own client address (readiness asks this broker, not any broker)."""
        return f"{self.host}:{self.settings.kafka_port}"

    def install(self) -> None:
        artifacts.fetch(self.settings, "kafka")
        prometheus.install_jmx_agent(self.settings)
        self.home.mkdir(parents=True, exist_ok=True)
        # The replicated profile's file holds the inter-broker password: owner only.
        topology.write_private(self.config_file, self._server_properties())
        self.log4j_file.write_text(_LOG4J2.format(log_file=self.log_file))
        self._format_storage()

    def _cluster_id(self) -> str:
        """Generated once and kept in .stack, so the formatted log dirs always match it (one id
        for all nodes of a cluster, written by the first of their parallel installs)."""
        with _CLUSTER_ID_LOCK:
            return self._cluster_id_locked()

    def _cluster_id_locked(self) -> str:
        path = self.settings.service_dir("kafka") / "cluster.id"
        path.parent.mkdir(parents=True, exist_ok=True)
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
            *self._scram_credentials(),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise StackError(f"kafka: formatting the storage failed:\n{tail}")

    def _scram_credentials(self) -> list[str]:
        """SCRAM users written into the new cluster's first metadata (replicated profile)."""
        if self.node is None:
            return []
        args = []
        for user in (topology.KAFKA_ADMIN_USER, topology.KAFKA_APP_USER):
            password = topology.kafka_password(self.settings, user)
            args += ["--add-scram", f"{topology.KAFKA_SASL_MECHANISM}=[name={user},password={password}]"]
        return args

    def _listener_properties(self) -> dict[str, str]:
        s = self.settings
        if self.node is None:
            return {
                "controller.quorum.voters": f"{NODE_ID}@localhost:{s.kafka_controller_port}",
                "listeners": f"PLAINTEXT://localhost:{s.kafka_port},"
                             f"CONTROLLER://localhost:{s.kafka_controller_port}",
                "advertised.listeners": f"PLAINTEXT://localhost:{s.kafka_port}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            }
        voters = ",".join(
            f"{n}@{topology.node_host(n)}:{s.kafka_controller_port}"
            for n in topology.kafka_nodes(s)
        )
        mechanism = topology.KAFKA_SASL_MECHANISM
        admin = topology.KAFKA_ADMIN_USER
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{admin}" password="{topology.kafka_password(s, admin)}";'
        )
        return {
            "controller.quorum.voters": voters,
            "listeners": f"SASL_PLAINTEXT://{self.host}:{s.kafka_port},"
                         f"CONTROLLER://{self.host}:{s.kafka_controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://{self.host}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            # The controllers' quorum stays on loopback without SASL; on separate hosts it gets
            # its own SASL_SSL listener (docs/replicated.md).
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": mechanism,
            "sasl.mechanism.inter.broker.protocol": mechanism,
            f"listener.name.sasl_plaintext.{mechanism.lower()}.sasl.jaas.config": jaas,
        }

    def _server_properties(self) -> str:
        replicas = str(self.replicas)
        min_isr = str(min(self.settings.replicated_kafka_min_insync, self.replicas))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **self._listener_properties(),
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            # Every topic on every node (one on a single node); a write needs min.insync.replicas
            # of them. Small partition counts keep the first consumer group fast to set up.
            **({"default.replication.factor": replicas, "min.insync.replicas": min_isr}
               if self.node is not None else {}),
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
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
        heap = self.settings.kafka_heap if self.node is None else self.settings.replicated_kafka_heap
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
            "-cp", artifacts.classpath(self.settings, "kafka"),
        ]

    def own_ports(self) -> tuple[int, ...]:
        return (self.settings.kafka_port, self.settings.kafka_controller_port)

    def listen_host(self) -> str:
        return topology.node_host(self.node) if self.node is not None else super().listen_host()

    def adopt_marker(self) -> str:
        return f"kafka.Kafka {self.config_file}"

    def processes(self) -> list[ProcessSpec]:
        # The JMX exporter agent on the broker only (not on the storage tool's JVM); the
        # replicated profile runs without Prometheus (one port per node would be needed).
        agent = prometheus.jmx_agent_args(self.settings, "kafka") if self.node is None else []
        argv = [*self._java(), *agent, "kafka.Kafka", str(self.config_file)]
        return [self.spec(self.name, argv, stop_timeout_s=30.0)]

    def _admin(self, own_node: bool = True) -> AdminClient:
        # log_level 0 keeps librdkafka quiet while the broker is still starting.
        config = topology.kafka_client_config(self.settings, topology.KAFKA_ADMIN_USER)
        if own_node:
            config["bootstrap.servers"] = self.bootstrap
        return AdminClient({**config, "log_level": 0})

    def check_ready(self) -> None:
        try:
            metadata = self._admin().list_topics(timeout=2.0)
        except KafkaException as exc:
            raise NotReady(f"kafka metadata from {self.bootstrap}: {exc}") from exc
        if self.node_id not in metadata.brokers:
            raise NotReady(f"kafka metadata from {self.bootstrap}: broker {self.node_id} not "
                           f"registered yet")

    def initialise(self) -> None:
        if self.node not in (None, 1):
            return  # the cluster's topics are created once, through its first node
        admin = self._admin()
        existing = set(admin.list_topics(timeout=10.0).topics)
        extra = ({"min.insync.replicas": str(min(self.settings.replicated_kafka_min_insync,
                                                 self.replicas))}
                 if self.node is not None else {})
        wanted = [
            NewTopic(name, num_partitions=partitions, replication_factor=self.replicas,
                     config={**config, **extra})
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
        if self.node is None:
            metadata = self._admin().list_topics(timeout=2.0)
            user_topics = [t for t in metadata.topics if not t.startswith("__")]
            return f"broker {metadata.controller_id} at {self.bootstrap}, {len(user_topics)} topics"
        # Asked of the cluster, not of this node: the row says what the others see of it.
        metadata = self._admin(own_node=False).list_topics(timeout=3.0)
        partitions = [p for t in metadata.topics.values() for p in t.partitions.values()]
        led = sum(1 for p in partitions if p.leader == self.node_id)
        in_sync = sum(1 for p in partitions if self.node_id in p.isrs)
        under = sum(1 for p in partitions if len(p.isrs) < len(p.replicas))
        registered = "registered" if self.node_id in metadata.brokers else "NOT registered"
        return (f"broker {self.node_id} at {self.bootstrap} {registered}, "
                f"{len(metadata.brokers)}/{self.replicas} brokers, leads {led}, in sync for "
                f"{in_sync}/{len(partitions)} partitions, under-replicated {under}")
