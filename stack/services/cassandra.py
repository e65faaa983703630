"""Cassandra 5.0 as one small local node, run straight from the Maven Central jars.

We render a minimal cassandra.yaml and logback.xml under .stack/cassandra/ and start
CassandraDaemon with the JVM options the distribution's jvm17-server.options would give it,
plus the system properties that skip the waits a multi-node cluster needs (gossip settling,
ring delay), so a single node answers CQL within seconds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

from cassandra import ProtocolVersion
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import RoundRobinPolicy

from gateway import endpoints
from stack import artifacts
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import NotReady, Service
from stack.services import prometheus

log = logging.getLogger(__name__)

CLUSTER_NAME = "iot"

# From Cassandra 5.0's conf/jvm17-server.options ("JPMS"): the daemon reaches into JDK internals.
_JPMS = [
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
]

_LOGBACK = """\
<!-- Written by stack/services/cassandra.py on every start. Stdout is the service's log file. -->
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
"""


def _initial_heap(max_heap: str, initial_mib: int = 192) -> str:
    """-Xms: a small start, never above -Xmx (a JVM size string such as 768m or 1g)."""
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    suffix = max_heap[-1].lower()
    max_mib = float(max_heap[:-1]) * units[suffix] if suffix in units else int(max_heap) / 2**20
    return f"{min(initial_mib, int(max_mib))}m"


def _no_mlock() -> list[str]:
    """A prefix that keeps Cassandra from locking its whole heap into RAM.

    The daemon calls mlockall(MCL_CURRENT) at start-up, which faults in every committed page
    (the whole -Xms heap) and pins it. As a normal user RLIMIT_MEMLOCK makes that call fail
    harmlessly; as root CAP_IPC_LOCK bypasses the limit, so drop that one capability
    (setpriv execs java in place: the pid we record stays the JVM's).
    """
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return []
    return [setpriv, "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", "--"]


class CassandraService(Service):
    name = "cassandra"
    stage = 0

    @property
    def home_dir(self) -> Path:
        return self.settings.service_dir(self.name)

    @property
    def config_file(self) -> Path:
        return self.home_dir / "conf" / "cassandra.yaml"

    @property
    def logback_file(self) -> Path:
        return self.home_dir / "conf" / "logback.xml"

    def install(self) -> None:
        artifacts.fetch(self.settings, self.name)
        prometheus.install_jmx_agent(self.settings)
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._yaml())
        self.logback_file.write_text(_LOGBACK)

    def _yaml(self) -> str:
        s = self.settings
        data = self.home_dir
        # JSON is valid YAML: no YAML library needed to write an exact config.
        config: dict[str, object] = {
            "cluster_name": CLUSTER_NAME,
            # One token: a lone node owns the whole ring; nothing to allocate at start-up.
            "num_tokens": 1,
            "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
            "data_file_directories": [str(data / "data")],
            "commitlog_directory": str(data / "commitlog"),
            "saved_caches_directory": str(data / "saved_caches"),
            "hints_directory": str(data / "hints"),
            "cdc_raw_directory": str(data / "cdc_raw"),
            "commitlog_sync": "periodic",
            "commitlog_sync_period": "10000ms",
            "commitlog_segment_size": "16MiB",
            "commitlog_total_space": "256MiB",
            "seed_provider": [{
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                "parameters": [{"seeds": f"127.0.0.1:{s.cassandra_storage_port}"}],
            }],
            "listen_address": "127.0.0.1",
            "rpc_address": "127.0.0.1",
            "storage_port": s.cassandra_storage_port,
            "native_transport_port": s.cassandra_port,
            "start_native_transport": True,
            "endpoint_snitch": "SimpleSnitch",
            "authenticator": "AllowAllAuthenticator",
            "authorizer": "AllowAllAuthorizer",
            "role_manager": "CassandraRoleManager",
            # Small memory footprint: memtables, caches and buffers sized for a dev laptop.
            "memtable_heap_space": "96MiB",
            "memtable_offheap_space": "64MiB",
            "memtable_allocation_type": "offheap_objects",
            "key_cache_size": "16MiB",
            "row_cache_size": "0MiB",
            "counter_cache_size": "0MiB",
            "file_cache_size": "32MiB",
            "networking_cache_size": "16MiB",
            "index_summary_capacity": "8MiB",
            "prepared_statements_cache_size": "8MiB",
            # Plain reads instead of mmap: mapped sstables would count towards RSS.
            "disk_access_mode": "standard",
            "concurrent_reads": 8,
            "concurrent_writes": 8,
            "concurrent_counter_writes": 4,
            "concurrent_materialized_view_writes": 2,
            "concurrent_compactors": 1,
            "memtable_flush_writers": 1,
            "native_transport_max_threads": 32,
            # Tests create and drop many tables; snapshots of dropped ones would only fill the disk.
            "auto_snapshot": False,
            "hinted_handoff_enabled": False,
        }
        header = "# Written by stack/services/cassandra.py on every `iot up`; edit that instead.\n"
        return header + json.dumps(config, indent=2) + "\n"

    def _java(self) -> list[str]:
        s = self.settings
        lib = artifacts.lib_dir(s, self.name)
        jamm = sorted(lib.glob("jamm-*.jar"))
        return [
            str(s.java17_home / "bin" / "java"),
            # The heap starts small and G1 hands idle memory back (periodic GC, low free ratio):
            # the idle stack's RSS budget matters more here than avoiding heap resizes.
            f"-Xms{_initial_heap(s.cassandra_heap)}", f"-Xmx{s.cassandra_heap}",
            "-XX:G1PeriodicGCInterval=30000", "-XX:MinHeapFreeRatio=10", "-XX:MaxHeapFreeRatio=30",
            "-Xss256k",
            "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxGCPauseMillis=300",
            "-XX:MaxTenuringThreshold=1",
            "-XX:MaxDirectMemorySize=256m",
            "-XX:MaxMetaspaceSize=192m",
            "-XX:ReservedCodeCacheSize=96m",
            "-XX:+PerfDisableSharedMem",
            "-XX:+HeapDumpOnOutOfMemoryError", f"-XX:HeapDumpPath={self.home_dir}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.net.preferIPv4Stack=true",
            "-Djdk.attach.allowAttachSelf=true",
            "-Dio.netty.tryReflectionSetAccessible=true",
            *_JPMS,
            # jamm measures object sizes for memtable accounting; it wants to be an agent.
            *([f"-javaagent:{jamm[0]}"] if jamm else []),
            # Metrics for Prometheus (observability/jmx/cassandra.yml).
            *prometheus.jmx_agent_args(s, self.name),
            f"-Dcassandra.config=file://{self.config_file}",
            f"-Dlogback.configurationFile={self.logback_file}",
            f"-Dcassandra.storagedir={self.home_dir}",
            f"-Dcassandra.logdir={self.settings.log_dir}",
            "-Dcassandra-foreground=yes",
            # A single seed node: nobody to gossip with, so do not wait for gossip or the ring.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=100",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-Dcassandra.libjemalloc=-",
            "-cp", artifacts.classpath(s, self.name),
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def own_ports(self) -> tuple[int, ...]:
        return (self.settings.cassandra_port, self.settings.cassandra_storage_port)

    def adopt_marker(self) -> str:
        return f"-Dcassandra.config=file://{self.config_file}"

    def processes(self) -> list[ProcessSpec]:
        # Flushing memtables on SIGTERM can take a while; give it time before SIGKILL.
        return [self.spec(self.name, _no_mlock() + self._java(), cwd=self.home_dir,
                          stop_timeout_s=60.0)]

    def _cluster(self) -> Cluster:
        profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=10.0)
        return Cluster(
            [endpoints.HOST],
            port=self.settings.cassandra_port,
            # Cassandra 5.0 speaks v5; saying so skips the driver's noisy downgrade dance.
            protocol_version=ProtocolVersion.V5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=2.0,
            control_connection_timeout=2.0,
        )

    def _session(self) -> tuple[Cluster, Session]:
        cluster = self._cluster()
        try:
            return cluster, cluster.connect()
        except Exception:
            cluster.shutdown()
            raise

    def check_ready(self) -> None:
        port = self.settings.cassandra_port
        # A plain TCP probe first: the driver logs a traceback for every refused connection.
        try:
            socket.create_connection((endpoints.HOST, port), timeout=1.0).close()
        except OSError as exc:
            raise NotReady(f"CQL port localhost:{port} not open: {exc}") from exc
        try:
            cluster, session = self._session()
        except Exception as exc:  # the driver raises several unrelated types while starting
            raise NotReady(f"CQL connect to localhost:{port}: {exc}") from exc
        try:
            row = session.execute("SELECT release_version FROM system.local").one()
        except Exception as exc:
            raise NotReady(f"CQL SELECT release_version FROM system.local: {exc}") from exc
        finally:
            cluster.shutdown()
        if row is None:
            raise NotReady("CQL SELECT release_version FROM system.local: no row")

    def initialise(self) -> None:
        keyspace = endpoints.CASSANDRA_KEYSPACE
        replication = {
            "class": "SimpleStrategy",
            "replication_factor": str(self.settings.cassandra_replication_factor),
        }
        # CQL map literals use single quotes; the values are ours, not user input.
        cql = (
            f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
            + json.dumps(replication).replace('"', "'")
        )
        cluster, session = self._session()
        try:
            session.execute(cql)
        except Exception as exc:
            raise StackError(f"cassandra: creating keyspace {keyspace} failed: {exc}") from exc
        finally:
            cluster.shutdown()
        log.info("cassandra: keyspace %s present", keyspace)

    def describe(self) -> str:
        cluster, session = self._session()
        try:
            row = session.execute("SELECT release_version FROM system.local").one()
            keyspaces = session.execute(
                "SELECT keyspace_name FROM system_schema.keyspaces"
            ).all()
        finally:
            cluster.shutdown()
        user = [k.keyspace_name for k in keyspaces if not k.keyspace_name.startswith("system")]
        version = row.release_version if row is not None else "?"
        return f"Cassandra {version} at localhost:{self.settings.cassandra_port}, keyspaces {user}"
