"""The bridge's MQTT 5 codec: CONNECT fields, PUBLISH parsing across fragments, batched PUBACKs."""

from __future__ import annotations

import asyncio
import struct

from bridge.mqtt5 import Mqtt5Connection, _packet, _utf8, connect_packet
from gateway.mqtt_wire import remaining_length as _varint


def publish(topic: str, payload: bytes, packet_id: int, qos: int = 1, dup: bool = False) -> bytes:
    header = 0x30 | (qos << 1) | (0x08 if dup else 0)
    ident = struct.pack("!H", packet_id) if qos else b""
    props = b"\x03" + b"\x01\x01\x00"  # 3 bytes of properties (payload format indicator + pad)
    return bytes([header]) + _varint(len(_utf8(topic)) + len(ident) + len(props) + len(payload)) \
        + _utf8(topic) + ident + props + payload


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        pass


def test_varint_round_trip_sizes() -> None:
    assert _varint(0) == b"\x00"
    assert _varint(127) == b"\x7f"
    assert _varint(128) == b"\x80\x01"
    assert _varint(16_383) == b"\xff\x7f"


def test_connect_carries_clean_start_off_session_expiry_and_receive_maximum() -> None:
    packet = connect_packet("bridge-1", 30, 604_800, 2000)
    assert packet[0] == 0x10
    body = packet[2:]
    assert body[:6] == b"\x00\x04MQTT" and body[6] == 5
    assert body[7] == 0x00  # no clean start, no credentials
    assert body[8:10] == struct.pack("!H", 30)
    props = body[11:11 + body[10]]
    assert props == b"\x11" + struct.pack("!I", 604_800) + b"\x21" + struct.pack("!H", 2000)
    assert body[11 + body[10]:] == _utf8("bridge-1")


async def test_publishes_are_parsed_across_fragments_and_acks_batched_in_order() -> None:
    got: list[tuple[str, bytes, int, bool]] = []
    reads: list[int] = []

    def on_publishes(publishes: list[tuple[str, bytes, int, bool]]) -> None:
        got.extend(publishes)
        reads.append(len(publishes))

    conn = Mqtt5Connection(on_publishes, keepalive_s=30)
    transport = FakeTransport()
    conn.connection_made(transport)
    stream = (
        _packet(0x20, b"\x01\x00\x00")  # CONNACK, session present
        + publish("devices/a/telemetry", b'{"ts":1}', 7)
        + publish("devices/b/telemetry", b"x" * 300, 8, dup=True)
        + publish("$SYS/broker/publish/messages/sent", b"5", 0, qos=0)
    )
    for i in range(0, len(stream), 5):  # TLS records split packets anywhere
        conn.data_received(stream[i:i + 5])
    assert await conn.connected is True
    assert got == [
        ("devices/a/telemetry", b'{"ts":1}', 7, False),
        ("devices/b/telemetry", b"x" * 300, 8, True),
        ("$SYS/broker/publish/messages/sent", b"5", 0, False),
    ]
    assert sum(reads) == 3
    conn.ack([8, 7])
    assert transport.written == [b"\x40\x02\x00\x08\x40\x02\x00\x07"]


async def test_one_read_hands_its_publishes_over_in_one_list() -> None:
    reads: list[list[tuple[str, bytes, int, bool]]] = []
    conn = Mqtt5Connection(reads.append, keepalive_s=30)
    conn.connection_made(FakeTransport())
    packets = b"".join(publish(f"devices/d{i}/telemetry", b"p" * i, i + 1) for i in range(200))
    conn.data_received(packets[:-3])  # the last packet completes with the next read
    conn.data_received(packets[-3:])
    assert [len(r) for r in reads] == [199, 1]
    assert reads[0][150] == ("devices/d150/telemetry", b"p" * 150, 151, False)


async def test_acks_from_another_thread_are_written_by_the_loop_in_order() -> None:
    conn = Mqtt5Connection(lambda publishes: None, keepalive_s=30)
    transport = FakeTransport()
    conn.connection_made(transport)
    await asyncio.to_thread(conn.ack, [1, 2])
    await asyncio.to_thread(conn.ack, [3])
    conn.ack([4])
    await asyncio.sleep(0.01)
    assert b"".join(transport.written) == b"".join(b"\x40\x02\x00" + bytes([i]) for i in (1, 2, 3, 4))


async def test_refused_connack_fails_the_connection() -> None:
    conn = Mqtt5Connection(lambda publishes: None, keepalive_s=30)
    conn.connection_made(FakeTransport())
    conn.data_received(_packet(0x20, b"\x00\x87\x00"))  # not authorized
    try:
        await conn.connected
    except Exception as exc:
        assert "0x87" in str(exc)
    else:
        raise AssertionError("CONNACK 0x87 accepted")
