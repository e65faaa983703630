"""Cassandra 5.0 as small local nodes, run straight from the Maven Central jars.

We render a minimal cassandra.yaml and logback.xml under .stack/cassandra/ and start
CassandraDaemon with the JVM options the distribution's jvm17-server.options would give it,
plus the system properties that skip the waits a multi-node cluster needs (gossip settling,
ring delay), so a single node answers CQL within seconds.

The replicated profile (stack/topology.py) runs `replicated_cassandra_nodes` nodes, node N on
127.0.0.N with the contract's ports. A fresh cluster starts all of them at once: every node is a
seed with a precomputed token (nothing to bootstrap or stream, no token allocation, no range
movement to serialise). Password authentication: the built-in superuser is replaced by our own,
and the services log in as the application role, which may do anything in the app keyspace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator

from cassandra import AuthenticationFailed, OperationTimedOut, Timeout, Unavailable
from cassandra.cluster import Cluster, NoHostAvailable, Session
from pydantic import SecretStr

from gateway import endpoints
from gateway.cassandra_session import build_cluster
from gateway.settings import CassandraConnection
from stack import artifacts, topology
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import NodeService, NotReady, StatePath
from stack.services import prometheus

log = logging.getLogger(__name__)

CLUSTER_NAME = "iot"
# How long the first start of a replicated cluster may take to create its built-in superuser.
_DEFAULT_ROLE_WAIT_S = 120.0
# How long one schema or role statement may keep failing while the nodes are still busy starting
# (three nodes and three brokers starting at once on a small machine: a node can stall for tens
# of seconds, its connection declared defunct by the driver's heartbeat). Each statement is
# idempotent, so it is simply stated again.
_SCHEMA_PATIENCE_S = 180.0
_SCHEMA_REQUEST_TIMEOUT_S = 60.0
_BUSY = (OperationTimedOut, NoHostAvailable, Timeout, Unavailable)

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


def _token(node: int, nodes: int) -> str:
    """Murmur3 tokens spread evenly: each of `nodes` nodes owns an equal share of the ring."""
    return str(-(2**63) + (node - 1) * (2**64 // nodes))


class _ProbeFilter(logging.Filter):
    """Drops the driver's records while any probe of ours runs (probes run in parallel threads,
    so a count, not a saved level)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = 0
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        return self.active == 0


_PROBE_FILTER = _ProbeFilter()
logging.getLogger("cassandra.cluster").addFilter(_PROBE_FILTER)


@contextlib.contextmanager
def _quiet_driver() -> Iterator[None]:
    """The driver logs every refused login of a probe as an ERROR with a traceback; our probes
    report what failed themselves (a node of a fresh cluster refuses logins until set up)."""
    with _PROBE_FILTER.lock:
        _PROBE_FILTER.active += 1
    try:
        yield
    finally:
        with _PROBE_FILTER.lock:
            _PROBE_FILTER.active -= 1


def _is_auth_failure(exc: Exception) -> bool:
    if isinstance(exc, AuthenticationFailed):
        return True
    errors = getattr(exc, "errors", {}) if isinstance(exc, NoHostAvailable) else {}
    return bool(errors) and all(isinstance(e, AuthenticationFailed) for e in errors.values())


def _execute_patiently(session: Session, cql: str, params: tuple[object, ...] | None = None) -> None:
    """One idempotent schema or role statement, stated again while the cluster is too busy to
    answer, for up to _SCHEMA_PATIENCE_S."""
    deadline = time.monotonic() + _SCHEMA_PATIENCE_S
    attempt = 0
    while True:
        attempt += 1
        try:
            session.execute(cql, params, timeout=_SCHEMA_REQUEST_TIMEOUT_S)
            return
        except _BUSY as exc:
            if time.monotonic() > deadline:
                raise StackError(
                    f"cassandra: {cql.split(' WITH ')[0]} still failing after "
                    f"{_SCHEMA_PATIENCE_S:.0f}s ({attempt} attempts): {exc}") from exc
            log.warning("cassandra: %s failed (attempt %d), stating it again: %s",
                        cql.split(" WITH ")[0], attempt, exc)
            time.sleep(min(2.0 * attempt, 10.0))


class CassandraService(NodeService):
    name = "cassandra"
    stage = 0
    config_file = StatePath("conf", "cassandra.yaml")
    logback_file = StatePath("conf", "logback.xml")

    @property
    def address(self) -> str:
        return topology.node_host(self.node) if self.node is not None else "127.0.0.1"

    @property
    def nodes(self) -> list[int]:
        return topology.cassandra_nodes(self.settings)

    def install(self) -> None:
        artifacts.fetch(self.settings, "cassandra")
        prometheus.install_jmx_agent(self.settings)
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._yaml())
        self.logback_file.write_text(_LOGBACK)

    def _yaml(self) -> str:
        s = self.settings
        data = self.home
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
                "parameters": [{"seeds": self._seeds()}],
            }],
            "listen_address": self.address,
            "rpc_address": self.address,
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
        if self.node is not None:
            config.update(self._cluster_yaml())
        header = "# Written by stack/services/cassandra.py on every `iot up`; edit that instead.\n"
        return header + json.dumps(config, indent=2) + "\n"

    def _seeds(self) -> str:
        port = self.settings.cassandra_storage_port
        hosts = [topology.node_host(n) for n in self.nodes] or ["127.0.0.1"]
        return ",".join(f"{host}:{port}" for host in hosts)

    def _cluster_yaml(self) -> dict[str, object]:
        """A node of the replicated cluster: its own token, authentication, hints."""
        assert self.node is not None
        return {
            "initial_token": _token(self.node, len(self.nodes)),
            # Every node is a seed of a fresh cluster: none bootstraps (streams) from another.
            "auto_bootstrap": False,
            "authenticator": "PasswordAuthenticator",
            "authorizer": "CassandraAuthorizer",
            # A node that was down gets the writes it missed replayed by the others.
            "hinted_handoff_enabled": True,
            "max_hint_window": "3h",
        }

    def _java(self) -> list[str]:
        s = self.settings
        lib = artifacts.lib_dir(s, "cassandra")
        jamm = sorted(lib.glob("jamm-*.jar"))
        heap = s.cassandra_heap if self.node is None else s.replicated_cassandra_heap
        return [
            str(s.java17_home / "bin" / "java"),
            # The heap starts small and G1 hands idle memory back (periodic GC, low free ratio):
            # the idle stack's RSS budget matters more here than avoiding heap resizes.
            f"-Xms{_initial_heap(heap)}", f"-Xmx{heap}",
            "-XX:G1PeriodicGCInterval=30000", "-XX:MinHeapFreeRatio=10", "-XX:MaxHeapFreeRatio=30",
            "-Xss256k",
            "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxGCPauseMillis=300",
            "-XX:MaxTenuringThreshold=1",
            "-XX:MaxDirectMemorySize=256m",
            "-XX:MaxMetaspaceSize=192m",
            "-XX:ReservedCodeCacheSize=96m",
            "-XX:+PerfDisableSharedMem",
            "-XX:+HeapDumpOnOutOfMemoryError", f"-XX:HeapDumpPath={self.home}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.net.preferIPv4Stack=true",
            "-Djdk.attach.allowAttachSelf=true",
            "-Dio.netty.tryReflectionSetAccessible=true",
            *_JPMS,
            # jamm measures object sizes for memtable accounting; it wants to be an agent.
            *([f"-javaagent:{jamm[0]}"] if jamm else []),
            # Metrics for Prometheus (observability/jmx/cassandra.yml); the replicated profile
            # runs without Prometheus.
            *(prometheus.jmx_agent_args(s, "cassandra") if self.node is None else []),
            f"-Dcassandra.config=file://{self.config_file}",
            f"-Dlogback.configurationFile={self.logback_file}",
            f"-Dcassandra.storagedir={self.home}",
            f"-Dcassandra.logdir={self.settings.log_dir}",
            "-Dcassandra-foreground=yes",
            # A single seed node: nobody to gossip with, so do not wait for gossip or the ring.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=100",
            "-Dcassandra.superuser_setup_delay_ms=0",
            # Nodes of a fresh cluster start together: nothing moves, nothing to serialise.
            *(["-Dcassandra.consistent.rangemovement=false"] if self.node is not None else []),
            "-Dcassandra.libjemalloc=-",
            "-cp", artifacts.classpath(s, "cassandra"),
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def own_ports(self) -> tuple[int, ...]:
        return (self.settings.cassandra_port, self.settings.cassandra_storage_port)

    def listen_host(self) -> str:
        return self.address

    def adopt_marker(self) -> str:
        return f"-Dcassandra.config=file://{self.config_file}"

    def processes(self) -> list[ProcessSpec]:
        # Flushing memtables on SIGTERM can take a while; give it time before SIGKILL.
        return [self.spec(self.name, _no_mlock() + self._java(), cwd=self.home,
                          stop_timeout_s=60.0)]

    def _connection(self, credentials: tuple[str, str] | None) -> CassandraConnection:
        """How the runner reaches this node, at the address it listens on: every field stated, so
        no IOT_CASSANDRA_* variable of the caller's environment changes it."""
        user, password = credentials if credentials else (None, None)
        return CassandraConnection(
            cassandra_hosts=self.address,
            cassandra_port=self.settings.cassandra_port,
            cassandra_keyspace=endpoints.CASSANDRA_KEYSPACE,
            cassandra_local_dc=None,
            cassandra_username=user,
            cassandra_password=SecretStr(password) if password is not None else None,
            # The runner reads node-local tables and states schema: one replica's answer will do.
            cassandra_consistency="LOCAL_ONE",
            cassandra_timeout_s=10.0,
            # Cassandra 5.0 speaks v5; saying so skips the driver's noisy downgrade dance.
            cassandra_protocol_version=5,
        )

    def _cluster(self, credentials: tuple[str, str] | None = None, own_node: bool = False) -> Cluster:
        return build_cluster(
            self._connection(credentials),
            # Three nodes on two cores answer slower than one: more time for the replicated ones.
            connect_timeout_s=2.0 if self.node is None else 5.0,
            # Only this node: its readiness, not whichever node answers first.
            contact_points_only=own_node,
        )

    def _admin_credentials(self) -> tuple[str, str] | None:
        if self.node is None:
            return None
        role = topology.CASSANDRA_ADMIN_ROLE
        return role, topology.cassandra_password(self.settings, role)

    def _session(self, credentials: tuple[str, str] | None = None,
                 own_node: bool = False) -> tuple[Cluster, Session]:
        cluster = self._cluster(credentials or self._admin_credentials(), own_node)
        try:
            return cluster, cluster.connect()
        except Exception:
            cluster.shutdown()
            raise

    def check_ready(self) -> None:
        port = self.settings.cassandra_port
        where = f"{self.address}:{port}"
        # A plain TCP probe first: the driver logs a traceback for every refused connection.
        try:
            socket.create_connection((self.address, port), timeout=1.0).close()
        except OSError as exc:
            raise NotReady(f"CQL port {where} not open: {exc}") from exc
        try:
            with _quiet_driver() if self.node is not None else contextlib.nullcontext():
                cluster, session = self._session(own_node=True)
        except Exception as exc:  # the driver raises several unrelated types while starting
            if self.node is not None and _is_auth_failure(exc):
                # The node answers CQL; our superuser does not exist yet (initialise creates it).
                return
            raise NotReady(f"CQL connect to {where}: {exc}") from exc
        try:
            row = session.execute("SELECT release_version FROM system.local").one()
        except Exception as exc:
            raise NotReady(f"CQL SELECT release_version FROM system.local: {exc}") from exc
        finally:
            cluster.shutdown()
        if row is None:
            raise NotReady("CQL SELECT release_version FROM system.local: no row")

    def initialise(self) -> None:
        if self.node not in (None, 1):
            return  # the cluster's schema and roles are set up once, through its first node
        keyspace = endpoints.CASSANDRA_KEYSPACE
        cql = (
            f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
            + topology.cassandra_replication(self.settings)
        )
        if self.node is not None:
            self._secure_cluster()
        cluster, session = self._session()
        try:
            _execute_patiently(session, cql)
            if self.node is not None:
                self._app_role(session, keyspace)
        except Exception as exc:
            raise StackError(f"cassandra: creating keyspace {keyspace} failed: {exc}") from exc
        finally:
            cluster.shutdown()
        log.info("cassandra: keyspace %s present", keyspace)

    def _secure_cluster(self) -> None:
        """First start of a replicated cluster: our superuser replaces the built-in one, whose
        well-known password is changed and whose login is disabled; the auth keyspace gets one
        replica per node, so a login survives a node's loss."""
        deadline = time.monotonic() + _DEFAULT_ROLE_WAIT_S
        while True:  # a node that just became ready may still be too busy to answer in time
            try:
                with _quiet_driver():
                    self._session()[0].shutdown()
                return  # done on an earlier start
            except Exception as exc:
                if _is_auth_failure(exc):
                    break
                if time.monotonic() > deadline:
                    raise StackError(
                        f"cassandra: connecting as {topology.CASSANDRA_ADMIN_ROLE}: {exc}") from exc
                time.sleep(1.0)
        default = (topology.CASSANDRA_DEFAULT_ROLE, topology.CASSANDRA_DEFAULT_PASSWORD)
        while True:  # the built-in role is created by the nodes a few seconds after they start
            try:
                with _quiet_driver():
                    cluster, session = self._session(default)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"cassandra: the built-in superuser never appeared: {exc}") from exc
                time.sleep(1.0)
        admin_role, admin_password = self._admin_credentials() or ("", "")
        factor = len(self.nodes)
        try:
            _execute_patiently(
                session,
                "ALTER KEYSPACE system_auth WITH replication = "
                f"{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}"
            )
            _execute_patiently(
                session,
                f"CREATE ROLE IF NOT EXISTS {admin_role} WITH SUPERUSER = true AND LOGIN = true "
                "AND PASSWORD = %s", (admin_password,)
            )
        finally:
            cluster.shutdown()
        cluster, session = self._session()
        try:
            retired = topology.cassandra_password(self.settings, topology.CASSANDRA_DEFAULT_ROLE)
            _execute_patiently(
                session,
                f"ALTER ROLE {topology.CASSANDRA_DEFAULT_ROLE} WITH PASSWORD = %s "
                "AND SUPERUSER = false AND LOGIN = false", (retired,)
            )
        finally:
            cluster.shutdown()
        log.info("cassandra: superuser %s created, the built-in one disabled", admin_role)

    def _app_role(self, session: Session, keyspace: str) -> None:
        role = topology.CASSANDRA_APP_ROLE
        password = topology.cassandra_password(self.settings, role)
        _execute_patiently(
            session, f"CREATE ROLE IF NOT EXISTS {role} WITH LOGIN = true AND PASSWORD = %s",
            (password,)
        )
        _execute_patiently(session, f"GRANT ALL PERMISSIONS ON KEYSPACE {keyspace} TO {role}")
        # The writer's migration states CREATE KEYSPACE IF NOT EXISTS, which Cassandra checks
        # against this permission even when the keyspace exists; it reads no other keyspace.
        _execute_patiently(session, f"GRANT CREATE ON ALL KEYSPACES TO {role}")

    def describe(self) -> str:
        cluster, session = self._session()
        try:
            row = session.execute("SELECT release_version FROM system.local").one()
            keyspaces = session.execute(
                "SELECT keyspace_name FROM system_schema.keyspaces"
            ).all()
            hosts = cluster.metadata.all_hosts()
        finally:
            cluster.shutdown()
        user = [k.keyspace_name for k in keyspaces if not k.keyspace_name.startswith("system")]
        version = row.release_version if row is not None else "?"
        if self.node is None:
            return f"Cassandra {version} at localhost:{self.settings.cassandra_port}, keyspaces {user}"
        up = sum(1 for h in hosts if h.is_up)
        return (f"Cassandra {version} at {self.address}:{self.settings.cassandra_port}, token "
                f"{_token(self.node, len(self.nodes))}, {up}/{len(hosts)} nodes up, keyspaces {user}")
