"""The MQTT edge against the real Mosquitto: mTLS identity, access rules (mosquitto/iot_edge.c),
client id = identity, CRL and revocation, the emulator."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from emulator.fleet import Faults, FleetConfig, FleetResult, run_fleet
from emulator.fleet import run as run_on_loop
from emulator.mqtt import connect_packet
from gateway import pki, topics
from gateway.contract import InvalidTelemetry, parse_telemetry
from stack.config import StackSettings
from stack.services.mosquitto import reload
from tests.integration.broker_harness import (
    group_subscription,
    open_telemetry_gate,
    paho_client,
    subscribe_codes,
)

pytestmark = pytest.mark.integration

Services = Callable[..., AbstractContextManager[StackSettings]]


@pytest.fixture(scope="session")
def mqtt_settings(services: Services) -> Iterator[StackSettings]:
    with services({"mosquitto"}) as settings:
        open_telemetry_gate(settings)  # no bridge may be running: devices' telemetry is let in
        yield settings


@pytest.fixture
def prefix() -> str:
    """Unique device ids per test, so tests never see each other's traffic."""
    return f"t{uuid.uuid4().hex[:10]}"


def _context(identity: pki.Identity | None, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


def connack_code(settings: StackSettings, identity: pki.Identity | None) -> int | None:
    """CONNACK return code of a raw MQTT 3.1.1 connect, None when the broker refused the TLS peer.

    With TLS 1.3 the client's handshake completes before the server checks the client
    certificate; the refusal arrives as an alert (or EOF) on the first read.
    """
    context = _context(identity, pki.ca_paths(settings.pki_dir)[0])
    try:
        with socket.create_connection(("localhost", settings.mqtt_port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(connect_packet(f"probe-{uuid.uuid4().hex[:8]}", 10))
            data = tls.recv(4)
    except (ssl.SSLError, ConnectionError):
        return None
    if len(data) < 4:
        return None
    return data[3]


def _client(identity: pki.Identity, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(identity.ca), certfile=str(identity.cert),
                   keyfile=str(identity.key))
    return client


class Collector:
    """An MQTT 5 subscriber (e.g. the operator) recording what it receives."""

    def __init__(self, settings: StackSettings, identity: pki.Identity, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.suback: list[ReasonCode] = []
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = _client(identity, f"collector-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("localhost", settings.mqtt_port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK"

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      codes: list[ReasonCode], props: Properties | None) -> None:
        self.suback = codes
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def wait_for(self, count: int, timeout_s: float = 15.0) -> int:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def operator(mqtt_settings: StackSettings) -> Iterator[Callable[[str], Collector]]:
    made: list[Collector] = []

    def subscribe(topic: str) -> Collector:
        made.append(Collector(mqtt_settings, pki.operator_identity(mqtt_settings.pki_dir), topic))
        return made[-1]

    yield subscribe
    for collector in made:
        collector.close()


def publish_v5(settings: StackSettings, identity: pki.Identity, topic: str,
               payload: bytes) -> ReasonCode | str:
    """QoS-1 publish under MQTT 5: the PUBACK reason code, or why there was none."""
    client = _client(identity, f"pub-{uuid.uuid4().hex[:8]}")
    outcome: list[ReasonCode | str] = []
    done = threading.Event()

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: ReasonCode, p: Properties) -> None:
        outcome.append(rc)
        done.set()

    def on_disconnect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        outcome.append(f"disconnected: {rc}")
        done.set()

    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    client.connect("localhost", settings.mqtt_port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1)
        assert done.wait(10), "neither PUBACK nor disconnect"
        return outcome[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_operator_certificate_is_accepted(mqtt_settings: StackSettings) -> None:
    assert connack_code(mqtt_settings, pki.operator_identity(mqtt_settings.pki_dir)) == 0


def test_no_certificate_is_refused(mqtt_settings: StackSettings) -> None:
    assert connack_code(mqtt_settings, None) is None


def test_certificate_of_another_ca_is_refused(mqtt_settings: StackSettings,
                                              tmp_path: Path, prefix: str) -> None:
    rogue = pki.issue_device(tmp_path / "rogue-pki", f"{prefix}-rogue")
    # Trust our CA for the server, present the rogue client certificate.
    identity = pki.Identity(rogue.cert, rogue.key, pki.ca_paths(mqtt_settings.pki_dir)[0])
    assert connack_code(mqtt_settings, identity) is None


def test_revoked_certificate_is_refused(mqtt_settings: StackSettings, prefix: str) -> None:
    identity = pki.issue_device(mqtt_settings.pki_dir, f"{prefix}-revoked")
    assert connack_code(mqtt_settings, identity) == 0
    pki.revoke_certificate(mqtt_settings.pki_dir, identity.cert)
    assert reload(mqtt_settings), "the test needs the broker's pid to reload the CRL"
    deadline = time.monotonic() + 10
    while connack_code(mqtt_settings, identity) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert connack_code(mqtt_settings, identity) is None
    # Everyone else is unaffected.
    other = pki.issue_device(mqtt_settings.pki_dir, f"{prefix}-other")
    assert connack_code(mqtt_settings, other) == 0


def test_device_may_publish_only_as_itself(mqtt_settings: StackSettings,
                                           operator: Callable[[str], Collector],
                                           prefix: str) -> None:
    a = pki.issue_device(mqtt_settings.pki_dir, f"{prefix}-a")
    pki.issue_device(mqtt_settings.pki_dir, f"{prefix}-b")
    watcher = operator(topics.MQTT_OPERATOR_FILTER)
    spoofed = publish_v5(mqtt_settings, a, topics.telemetry_topic(f"{prefix}-b"), b'{"x":1}')
    assert isinstance(spoofed, str) or spoofed.is_failure, spoofed
    own = publish_v5(mqtt_settings, a, topics.telemetry_topic(f"{prefix}-a"), b'{"own":1}')
    assert isinstance(own, ReasonCode) and not own.is_failure, own
    watcher.wait_for(1)
    time.sleep(0.5)  # the spoofed message would have arrived before the later, legitimate one
    mine = [t for t, _ in watcher.messages if t.startswith(f"devices/{prefix}-")]
    assert mine == [topics.telemetry_topic(f"{prefix}-a")]


@pytest.mark.parametrize("filter_", [
    topics.MQTT_BRIDGE_SUBSCRIPTION,  # the bridge's own group: joining it would starve the bridge
    group_subscription("mine"),
    topics.MQTT_TELEMETRY_FILTER,
    topics.MQTT_OPERATOR_FILTER,
    "#",
    "$SYS/#",
    "$share/bridge/#",
    "devices/{own}/telemetry",
])
def test_device_may_subscribe_to_nothing(mqtt_settings: StackSettings, prefix: str,
                                         filter_: str) -> None:
    """Mosquitto 2.0's acl_file granted every SUBSCRIBE; the plugin refuses them with 0x87."""
    device = pki.issue_device(mqtt_settings.pki_dir, f"{prefix}-sub")
    codes = subscribe_codes(mqtt_settings, device, [filter_.format(own=f"{prefix}-sub")])
    assert codes == [0x87], codes


def test_device_reads_nothing_even_with_a_refused_subscription(
    mqtt_settings: StackSettings, operator: Callable[[str], Collector], prefix: str
) -> None:
    reader = pki.issue_device(mqtt_settings.pki_dir, f"{prefix}-reader")
    writer = pki.issue_device(mqtt_settings.pki_dir, f"{prefix}-writer")
    collector = Collector(mqtt_settings, reader, topics.MQTT_OPERATOR_FILTER)
    watcher = operator(topics.MQTT_OPERATOR_FILTER)
    try:
        assert [code.value for code in collector.suback] == [0x87]
        for topic, identity in ((f"{prefix}-writer", writer), (f"{prefix}-reader", reader)):
            publish_v5(mqtt_settings, identity, topics.telemetry_topic(topic), b"{}")
        assert watcher.wait_for(2) >= 2
        time.sleep(0.3)
        assert collector.messages == []
    finally:
        collector.close()


def test_bridge_identity_joins_a_telemetry_group_and_nothing_else(
    mqtt_settings: StackSettings, prefix: str
) -> None:
    identity = pki.service_identity(mqtt_settings.pki_dir, f"{pki.BRIDGE_PREFIX}test-{prefix}")
    bridge = Collector(mqtt_settings, identity, group_subscription(f"test-{prefix}"))
    try:
        assert not any(code.is_failure for code in bridge.suback), bridge.suback
        device = pki.issue_device(mqtt_settings.pki_dir, f"{prefix}-s")
        publish_v5(mqtt_settings, device, topics.telemetry_topic(f"{prefix}-s"), b"{}")
        assert bridge.wait_for(1) >= 1
    finally:
        bridge.close()
    refused = ["#", topics.MQTT_OPERATOR_FILTER, "$share/x/#", "$share/+/devices/+/telemetry",
               f"$share/test-{prefix}/devices/#"]
    assert subscribe_codes(mqtt_settings, identity, refused) == [0x87] * len(refused)
    # Neither the probe nor another service identity may read telemetry.
    probe = pki.probe_identity(mqtt_settings.pki_dir)
    assert subscribe_codes(mqtt_settings, probe, [topics.MQTT_BRIDGE_SUBSCRIPTION,
                                                  "$SYS/broker/uptime"]) == [0x87, 1]
    other = pki.service_identity(mqtt_settings.pki_dir, "svc-other")
    assert subscribe_codes(mqtt_settings, other, [topics.MQTT_BRIDGE_SUBSCRIPTION]) == [0x87]


def _persistent_session(settings: StackSettings, identity: pki.Identity, filter_: str) -> None:
    """Create (or resume) a persistent MQTT 5 session subscribed to filter_, then leave it."""
    client = paho_client(identity, "ignored-the-broker-uses-the-identity")
    done = threading.Event()
    client.on_subscribe = lambda c, u, m, rcs, p: done.set()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(filter_, qos=1)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    client.connect("localhost", settings.mqtt_port, clean_start=False, properties=props)
    client.loop_start()
    try:
        assert done.wait(10), "no SUBACK"
    finally:
        client.disconnect()
        client.loop_stop()


def _resume(settings: StackSettings, identity: pki.Identity, topic: str, expect: int
            ) -> tuple[bool, list[bytes]]:
    """(session present, messages of `topic` received) when the identity's session is resumed."""
    client = paho_client(identity, "")
    present: list[bool] = []
    got: list[bytes] = []
    client.on_connect = lambda c, u, f, rc, p: present.append(bool(f.session_present))
    client.on_message = lambda c, u, m: got.append(bytes(m.payload)) if m.topic == topic else None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0  # the test's session ends with this connection
    client.connect("localhost", settings.mqtt_port, clean_start=False, properties=props)
    client.loop_start()
    deadline = time.monotonic() + 10
    while len(got) < expect and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    return (present[0] if present else False), got


@pytest.mark.parametrize("victim", ["bridge", "operator"])
def test_no_client_id_takes_over_another_identity_s_session(
    mqtt_settings: StackSettings, prefix: str, victim: str
) -> None:
    """A device connecting with the client id of the bridge (or the operator) used to resume and
    wipe that session, queued readings and all; the client id is now the certificate's name."""
    pki_dir = mqtt_settings.pki_dir
    if victim == "bridge":
        identity = pki.service_identity(pki_dir, f"{pki.BRIDGE_PREFIX}test-{prefix}")
        filter_ = group_subscription(f"test-{prefix}")
    else:
        identity = pki.operator_identity(pki_dir)
        filter_ = f"devices/{prefix}-dev/telemetry"
    victim_id = pki.common_name(identity.cert)
    _persistent_session(mqtt_settings, identity, filter_)
    device = pki.issue_device(pki_dir, f"{prefix}-dev")
    for i in range(5):
        rc = publish_v5(mqtt_settings, device, topics.telemetry_topic(f"{prefix}-dev"), b"%d" % i)
        assert isinstance(rc, ReasonCode) and not rc.is_failure, rc
    # The attack: the victim's client id, a clean start (which would discard that session).
    thief = paho_client(device, victim_id)
    stolen: list[bytes] = []
    thief.on_message = lambda c, u, m: stolen.append(bytes(m.payload))  # the thief may read none
    thief.connect("localhost", mqtt_settings.mqtt_port, clean_start=True)
    thief.loop_start()
    time.sleep(1.0)
    thief.disconnect()
    thief.loop_stop()
    present, got = _resume(mqtt_settings, identity, topics.telemetry_topic(f"{prefix}-dev"), 5)
    assert stolen == []
    assert present, f"{victim_id}'s session was taken over"
    assert sorted(got) == [b"%d" % i for i in range(5)]


def test_revoking_a_device_closes_its_open_connection(mqtt_settings: StackSettings,
                                                      prefix: str) -> None:
    identity = pki.issue_device(mqtt_settings.pki_dir, f"{prefix}-live")
    bystander = pki.issue_device(mqtt_settings.pki_dir, f"{prefix}-bystander")
    dropped: dict[str, threading.Event] = {}
    clients = []
    for name, ident in (("live", identity), ("bystander", bystander)):
        client = paho_client(ident, "")
        dropped[name] = threading.Event()
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p, ev=connected: ev.set()
        client.on_disconnect = lambda c, u, f, rc, p, ev=dropped[name]: ev.set()
        client.connect("localhost", mqtt_settings.mqtt_port, keepalive=60)
        client.loop_start()
        assert connected.wait(10)
        clients.append(client)
    try:
        pki.revoke_certificate(mqtt_settings.pki_dir, identity.cert)
        started = time.monotonic()
        assert reload(mqtt_settings), "the test needs the broker's pid to reload"
        assert dropped["live"].wait(5), "the revoked device is still connected"
        assert time.monotonic() - started < 5
        assert not dropped["bystander"].is_set()
        clients[0].loop_stop()  # no reconnect: the CRL refuses it
        assert connack_code(mqtt_settings, identity) is None
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()


def test_emulator_fleet_is_acknowledged_and_seen_by_the_operator(
    mqtt_settings: StackSettings, operator: Callable[[str], Collector], prefix: str
) -> None:
    watcher = operator(topics.MQTT_OPERATOR_FILTER)
    config = FleetConfig(
        pki_dir=mqtt_settings.pki_dir, devices=200, rate=5.0, count=5, prefix=prefix,
        port=mqtt_settings.mqtt_port, progress_interval_s=1.0, seed=1,
    )
    result = run_on_loop(config)  # as `iot emulate` runs it: uvloop when installed
    assert result.ok, result.summary()
    assert (result.sent, result.acked, result.connected) == (1000, 1000, 200)
    deadline = time.monotonic() + 20
    seen: set[tuple[str, bytes]] = set()
    while time.monotonic() < deadline:
        seen = {(t, p) for t, p in list(watcher.messages) if t.startswith(f"devices/{prefix}-")}
        if len(seen) >= 1000:
            break
        time.sleep(0.1)
    assert len(seen) == 1000
    assert len({t for t, _ in seen}) == 200


def test_emulator_fault_injection(mqtt_settings: StackSettings,
                                  operator: Callable[[str], Collector], prefix: str) -> None:
    watcher = operator(topics.MQTT_OPERATOR_FILTER)
    config = FleetConfig(
        pki_dir=mqtt_settings.pki_dir, devices=5, rate=50.0, count=40, prefix=prefix,
        port=mqtt_settings.mqtt_port, seed=7,
        faults=Faults(out_of_order=0.2, late=0.1, duplicate=0.2, malformed=0.2),
    )
    started_ms = int(time.time() * 1000)
    result = asyncio.run(run_fleet(config))  # the standard event loop
    assert result.ok, result.summary()
    kinds = result.kinds
    assert kinds["reading"] + kinds["out_of_order"] + kinds["late"] == 200
    assert min(kinds["out_of_order"], kinds["late"], kinds["duplicate"], kinds["malformed"]) > 0
    assert result.sent == 200 + kinds["duplicate"] + kinds["malformed"]
    assert watcher.wait_for(result.sent) >= result.sent
    mine = [(t, p) for t, p in watcher.messages if t.startswith(f"devices/{prefix}-")]
    assert len(mine) == result.sent
    valid, invalid, late, lagging = 0, 0, 0, 0
    for topic, payload in mine:
        try:
            reading = parse_telemetry(topic, payload, int(time.time() * 1000))
        except InvalidTelemetry:
            invalid += 1
            continue
        valid += 1
        late += reading.ts < started_ms - 3_600_000
        lagging += started_ms - 10_500 <= reading.ts < started_ms - 400
    assert invalid == kinds["malformed"]
    assert valid == 200 + kinds["duplicate"]
    assert late >= kinds["late"]
    assert lagging >= 1


def test_emulator_survives_losing_its_connections(mqtt_settings: StackSettings,
                                                  prefix: str) -> None:
    """A session takeover (same client id) drops a device mid-run: it reconnects and resends."""
    config = FleetConfig(
        pki_dir=mqtt_settings.pki_dir, devices=3, rate=200.0, count=600, prefix=prefix,
        port=mqtt_settings.mqtt_port, seed=3, window=5,
    )

    async def main() -> FleetResult:
        fleet = asyncio.create_task(run_fleet(config))
        await asyncio.sleep(1.5)
        for device_id in config.device_ids():
            identity = pki.device_paths(mqtt_settings.pki_dir, device_id)
            context = _context(identity, identity.ca)
            _, writer = await asyncio.open_connection(
                "localhost", mqtt_settings.mqtt_port, ssl=context, server_hostname="localhost"
            )
            writer.write(connect_packet(device_id, 10))  # the same client id takes over
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
        return await fleet

    result = asyncio.run(main())
    assert result.ok, result.summary()
    assert result.acked == 1800 and result.disconnects >= 3
