"""Helpers of the bridge tests and benchmark: devices, a bridge subprocess, Kafka reading.

Each run gets its own client id, shared-subscription group and Kafka topics, so it never takes
messages from the stack's own bridge (group `bridge`) nor sees another run's records. The run's
MQTT session is ended on close, so no orphan session keeps receiving a share of the traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bridge.heartbeat import is_heartbeat
from emulator.device import DeviceClient, Stats
from gateway import pki, registry
from gateway.settings import CassandraConnection
from gateway.topics import KAFKA_READINGS_PARTITIONS
from stack.config import REPO_ROOT, StackSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def provision(
    settings: StackSettings, device_ids: Iterable[str], tenant: str = "tenant-a", register: bool = True
) -> None:
    """Certificates (and registry rows) for devices that do not have them yet."""
    cassandra = CassandraConnection(cassandra_port=settings.cassandra_port)
    session = registry.connect(cassandra) if register else None
    try:
        reg = registry.DeviceRegistry(session) if session is not None else None
        for device_id in device_ids:
            if pki.device_paths(settings.pki_dir, device_id).cert.exists():
                continue
            if reg is not None and reg.get(device_id) is None:
                registry.provision_device(settings.pki_dir, reg, device_id, tenant)
            else:
                pki.issue_device(settings.pki_dir, device_id)
    finally:
        if session is not None:
            session.cluster.shutdown()


def create_topics(bootstrap: str, *names: str, config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [
        NewTopic(n, num_partitions=KAFKA_READINGS_PARTITIONS, replication_factor=1,
                 config=config or {})
        for n in names
    ]
    for future in admin.create_topics(new, request_timeout=30).values():
        future.result()


@dataclass
class KafkaRecord:
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    headers: dict[str, bytes] = field(default_factory=dict)
    timestamp_ms: int = 0

    def json(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.value)
        return result


def reading_id(record: KafkaRecord) -> object:
    """A reading's identity: (device, seq). A redelivered reading has another receivedAt."""
    return (record.key, record.json().get("seq"))


def read_topic(
    bootstrap: str,
    topic: str,
    expect: int,
    timeout_s: float = 60.0,
    identity: Callable[[KafkaRecord], object] = lambda r: r.value,
) -> list[KafkaRecord]:
    """Every record of the topic from the start, until `expect` distinct identities or timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bridge-test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 0,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(KAFKA_READINGS_PARTITIONS)])
    records: list[KafkaRecord] = []
    seen: set[object] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(seen) < expect:
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                if msg.error() or is_heartbeat(None, msg.value()):
                    continue
                value = msg.value() or b""
                headers = header_map(msg.headers())
                record = KafkaRecord(
                    msg.key(),
                    value,
                    msg.partition() or 0,
                    msg.offset() or 0,
                    headers,
                    msg.timestamp()[1],
                )
                records.append(record)
                seen.add(identity(record))
    finally:
        consumer.close()
    return records


def wait_for_records(bootstrap: str, topic: str, expect: int, timeout_s: float) -> int:
    """Wait until the topic holds `expect` records (its end offsets), without reading them: a
    benchmark must not spend the cores it measures on decoding what it measures."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks", "log_level": 0})
    deadline = time.monotonic() + timeout_s
    held = 0
    try:
        while time.monotonic() < deadline:
            held = sum(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5.0)[1]
                for p in range(KAFKA_READINGS_PARTITIONS)
            )
            if held >= expect:
                break
            time.sleep(0.2)
    finally:
        consumer.close()
    return held


async def _publish(
    settings: StackSettings,
    plan: Mapping[str, list[bytes]],
    window: int,
    rate_per_device: float,
    stats: Stats,
    start_at: float | None = None,
    restamp: bool = False,
) -> None:
    clients = [
        DeviceClient(
            d, pki.device_paths(settings.pki_dir, d), "localhost", settings.mqtt_port, stats,
            window=window,
        )
        for d in plan
    ]
    gate = asyncio.Semaphore(32)

    async def one(client: DeviceClient, payloads: list[bytes]) -> None:
        async with gate:
            await client.connect_with_retry(asyncio.Event())
        # Paced from a common wall-clock start when given (payload ts = scheduled send time).
        started = time.monotonic() + (start_at - time.time() if start_at is not None else 0.0)
        for i, payload in enumerate(payloads):
            if rate_per_device > 0:
                delay = started + i / rate_per_device - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if restamp:
                # ts = the actual send time (payloads of telemetry_payload start with "ts").
                payload = b'{"ts":%d' % (time.time() * 1000) + payload[payload.index(b","):]
            await client.publish(payload)
        await asyncio.wait_for(client.drain(), 120)

    try:
        await asyncio.gather(*(one(c, plan[c.device_id]) for c in clients))
    finally:
        for client in clients:
            client.close()
        await asyncio.sleep(0.1)


def publish(
    settings: StackSettings, plan: Mapping[str, list[bytes]], window: int = 20, rate_per_device: float = 0.0
) -> Stats:
    """Publish each device's payloads in order at QoS 1; returns once the broker acked them all."""
    stats = Stats()
    asyncio.run(_publish(settings, plan, window, rate_per_device, stats))
    return stats


def publish_in_background(
    settings: StackSettings,
    plan: Mapping[str, list[bytes]],
    window: int = 20,
    rate_per_device: float = 0.0,
    start_at: float | None = None,
    restamp: bool = False,
) -> tuple[threading.Thread, Stats]:
    stats = Stats()
    thread = threading.Thread(
        target=lambda: asyncio.run(
            _publish(settings, plan, window, rate_per_device, stats, start_at, restamp)
        ),
        daemon=True,
    )
    thread.start()
    return thread, stats


class BridgeProcess:
    """`python -m bridge` as a real subprocess (so that kill -9 is real), with a run's own names."""

    def __init__(
        self,
        settings: StackSettings,
        run_id: str,
        log_dir: Path,
        kafka_bootstrap: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        readings_topic: str | None = None,
        dlq_topic: str | None = None,
        group: str | None = None,
        instance: int = 1,
    ) -> None:
        self.settings = settings
        # Instances of one run share the group (and topics) and split the load. Each has its own
        # identity, which the broker also makes its client id (a bridge identity: it may join).
        self.client_id = f"{pki.BRIDGE_PREFIX}test-{run_id}-{instance}"
        self.identity = pki.service_identity(settings.pki_dir, self.client_id)
        self.group = group or f"test-{run_id}"
        self.readings_topic = readings_topic or f"test.bridge.{run_id}.readings"
        self.dlq_topic = dlq_topic or f"test.bridge.{run_id}.dlq"
        self.kafka_bootstrap = kafka_bootstrap or f"localhost:{settings.kafka_port}"
        self.metrics_port = free_port()
        self.log_file = log_dir / f"bridge-{run_id}-{instance}.log"
        self.env = {
            **os.environ,
            "IOT_STACK_DIR": str(settings.stack_dir),
            "IOT_MQTT_PORT": str(settings.mqtt_port),
            "IOT_CASSANDRA_PORT": str(settings.cassandra_port),
            "IOT_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "IOT_BRIDGE_CLIENT_ID": self.client_id,
            "IOT_BRIDGE_SUBSCRIPTION": f"$share/{self.group}/devices/+/telemetry",
            "IOT_BRIDGE_READINGS_TOPIC": self.readings_topic,
            "IOT_BRIDGE_DLQ_TOPIC": self.dlq_topic,
            "IOT_BRIDGE_METRICS_PORT": str(self.metrics_port),
            # A crashed test must not leave a session that takes messages for a week.
            "IOT_BRIDGE_SESSION_EXPIRY_S": "900",
            # These bridges' topics are read back record by record: no heartbeats among them.
            "IOT_BRIDGE_HEARTBEAT_INTERVAL_S": "0",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited {self.proc.returncode}:\n{self.log_tail()}")
            health = self.health()
            if health.get("mqtt") == "connected":
                return
            time.sleep(0.3)
        raise RuntimeError(f"bridge not connected after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def health(self) -> dict[str, object]:
        try:
            body: dict[str, object] = httpx.get(
                f"http://127.0.0.1:{self.metrics_port}/health", timeout=2
            ).json()
            return body
        except (httpx.HTTPError, ValueError):
            return {}

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9

    def end_session(self) -> None:
        """Connect once with a clean start and no expiry: the broker forgets the session."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        identity = self.identity
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(identity.ca), certfile=str(identity.cert), keyfile=str(identity.key))
        try:
            client.connect("localhost", self.settings.mqtt_port, clean_start=True)
            client.loop_start()
            time.sleep(0.5)
            client.disconnect()
            time.sleep(0.2)
        except OSError:
            pass
        finally:
            client.loop_stop()

    def close(self) -> None:
        self.terminate()
        self.end_session()


def header_map(headers: object) -> dict[str, bytes]:
    """A Kafka record's headers as a dict; confluent-kafka returns a list of pairs (or None)."""
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    assert isinstance(pairs, Iterable)
    return {str(k): v.encode() if isinstance(v, str) else (v or b"") for k, v in pairs}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def kafka_is_up(bootstrap: str) -> bool:
    try:
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=3)
    except KafkaException:
        return False
    return True


@contextlib.contextmanager
def private_stack(stack_dir: Path, names: Iterable[str] = ("mosquitto", "kafka")
                  ) -> Iterator[StackSettings]:
    """Start the named services of a private stack (see private_settings); stop them after."""
    from stack import orchestrator
    from stack.services import all_services

    settings = private_settings(stack_dir)
    wanted = set(names)
    services = [s for s in all_services(settings) if s.name in wanted]
    # The JVM's metrics agent port too (read from the environment whenever Kafka starts): the
    # shared stack's Kafka holds the default one.
    saved = {name: os.environ.get(name) for name in _PRIVATE_PORT_VARIABLES}
    os.environ.update({name: str(free_port()) for name in _PRIVATE_PORT_VARIABLES})
    try:
        orchestrator.up(settings, only=wanted)
        yield settings
    finally:
        for service in reversed(services):
            service.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_PRIVATE_PORT_VARIABLES = ("IOT_KAFKA_JMX_PORT", "IOT_CASSANDRA_JMX_PORT")


def private_settings(stack_dir: Path) -> StackSettings:
    """A stack of its own (directory and ports) for Mosquitto and Kafka; Cassandra is shared.

    The bridge tests stop Kafka and kill bridges mid-stream and the benchmark wants a quiet broker:
    on their own instances they neither disturb other sessions nor get disturbed by them.
    """
    return StackSettings(
        stack_dir=stack_dir,
        mqtt_port=free_port(),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
    )
