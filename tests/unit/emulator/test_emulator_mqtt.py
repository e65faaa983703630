"""emulator.mqtt packet encoding and decoding; the fleet's signals and id scheme (no services)."""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path

import pytest

from emulator.device import Signals
from emulator.fleet import Faults, FleetConfig
from emulator.mqtt import MAX_PACKET, MqttProtocol, connect_packet, publish_packet
from gateway import mqtt_codec as codec
from gateway.registry import TenantCache


@pytest.mark.parametrize(("n", "encoded"), [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"),
                                            (16_383, b"\xff\x7f"), (16_384, b"\x80\x80\x01")])
def test_remaining_length(n: int, encoded: bytes) -> None:
    assert codec.varint(n) == encoded


def test_connect_packet() -> None:
    packet = connect_packet("dev-1", 60)
    assert packet[0] == 0x10
    assert packet[2:10] == b"\x00\x04MQTT\x04\x02"
    assert packet[10:12] == struct.pack("!H", 60)
    assert packet.endswith(b"\x00\x05dev-1")


def test_publish_packet_qos1() -> None:
    packet = publish_packet(b"devices/d/telemetry", b"{}", 7, dup=True)
    assert packet[0] == 0x3A  # PUBLISH, DUP, QoS 1
    assert packet[1] == len(packet) - 2
    assert packet[2:23] == b"\x00\x13devices/d/telemetry"
    assert packet[23:25] == b"\x00\x07" and packet[25:] == b"{}"


async def test_protocol_parses_split_and_coalesced_packets() -> None:
    acks: list[int] = []
    protocol = MqttProtocol("d", 60, acks.append, lambda exc: None)
    stream = b"\x20\x02\x00\x00" + b"".join(b"\x40\x02" + struct.pack("!H", i) for i in (1, 2, 3))
    for i in range(0, len(stream), 3):  # arbitrary TLS record boundaries
        protocol.data_received(stream[i:i + 3])
    assert protocol.connack.done() and protocol.connack.exception() is None
    assert acks == [1, 2, 3]


async def test_refused_connack_is_an_error() -> None:
    protocol = MqttProtocol("d", 60, lambda pid: None, lambda exc: None)
    protocol.data_received(b"\x20\x02\x00\x05")
    with pytest.raises(Exception, match="not authorised"):
        await asyncio.wait_for(protocol.connack, 1)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def device() -> tuple[MqttProtocol, FakeTransport, list[int]]:
    acks: list[int] = []
    protocol = MqttProtocol("d", 60, acks.append, lambda exc: None)
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"\x20\x02\x00\x00")
    return protocol, transport, acks


@pytest.mark.parametrize("bad", [
    b"\x40\xff\xff\xff\xff\x01",  # five bytes of remaining length: unbounded before
    b"\x40" + codec.varint(MAX_PACKET),  # a length no device ever needs: refused at once
    b"\x40\x02\x00\x00",  # PUBACK of packet id 0
    b"\x20\x02\x00\x00",  # a second CONNACK
    b"\x82\x02\x00\x01",  # SUBSCRIBE: no server sends it
])
async def test_protocol_errors_close_the_connection_without_raising(bad: bytes) -> None:
    protocol, transport, acks = device()
    protocol.data_received(bad)
    assert transport.closing and acks == []
    assert protocol.close_cause


async def test_an_unanswered_ping_is_overdue_and_a_pingresp_answers_it() -> None:
    protocol, _, _ = device()
    protocol.ping()
    assert protocol.ping_sent_at is not None
    assert protocol.ping_overdue(protocol.ping_sent_at + 31, 30)
    protocol.data_received(b"\xd0\x00")
    assert not protocol.ping_overdue(protocol.ping_sent_at or 1e12, 30)


def test_signals_drift_within_realistic_bounds() -> None:
    signals = Signals(random.Random(3))
    readings = [signals.next() for _ in range(5000)]
    assert all(set(r) == {"temperature", "humidity", "battery"} for r in readings)
    assert all(0 <= r["humidity"] <= 100 and 0 <= r["battery"] <= 100 for r in readings)
    assert readings[-1]["battery"] <= readings[0]["battery"]
    assert abs(readings[-1]["temperature"] - readings[0]["temperature"]) < 10


def test_device_ids_and_reading_counts(tmp_path: Path) -> None:
    config = FleetConfig(pki_dir=tmp_path, devices=3, prefix="t", first_index=7)
    assert config.device_ids() == ["t-00007", "t-00008", "t-00009"]
    assert FleetConfig(pki_dir=tmp_path, rate=2, duration_s=5).readings_per_device() == 10
    assert FleetConfig(pki_dir=tmp_path, rate=2, count=3).readings_per_device() == 3
    assert FleetConfig(pki_dir=tmp_path, duration_s=0).readings_per_device() is None


def test_fault_shares_pick_kinds_and_ages() -> None:
    rng = random.Random(3)
    assert {Faults().timing(rng) for _ in range(100)} == {("reading", 0)}
    picks = [Faults(out_of_order=0.3, late=0.2).timing(rng) for _ in range(5_000)]
    kinds = {kind: sum(1 for k, _ in picks if k == kind) for kind in ("late", "out_of_order", "reading")}
    # Late first (0.2), then out of order on what is left (0.8 * 0.3), then on time.
    assert abs(kinds["late"] / 5_000 - 0.2) < 0.03 and abs(kinds["out_of_order"] / 5_000 - 0.24) < 0.03
    assert all(3_600_000 <= age <= 6 * 3_600_000 for kind, age in picks if kind == "late")
    assert all(500 <= age <= 10_000 for kind, age in picks if kind == "out_of_order")


def test_tenant_cache_fills_on_miss_and_remembers_misses() -> None:
    calls: list[str] = []
    known = {"a": "tenant-a"}

    def lookup(device_id: str) -> str | None:
        calls.append(device_id)
        return known.get(device_id)

    cache = TenantCache(lookup, negative_ttl_s=60)
    assert cache.get("a") == "tenant-a" and cache.get("a") == "tenant-a"
    assert cache.get("b") is None and cache.get("b") is None
    assert calls == ["a", "b"]
    cache.preload([])
    assert len(cache) == 1
