"""The bridge's MQTT 5 connection over the shared codec: one case of the protocol per test, the
broker's side played by bytes fed to the connection (no services)."""

from __future__ import annotations

import asyncio

import pytest

from bridge.mqtt5 import Mqtt5Connection, MqttProtocolError
from gateway import mqtt_codec as codec
from gateway.mqtt_codec import Publish

MAX_PACKET = 64 * 1024


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def connack(session_present: bool = False, reason: int = 0, props: bytes = b"") -> bytes:
    return codec.packet(codec.CONNACK, bytes([int(session_present), reason])
                        + codec.varint(len(props)) + props)


def publish(topic: str, payload: bytes, packet_id: int, qos: int = 1, dup: bool = False) -> bytes:
    return codec.publish(topic.encode(), payload, packet_id, qos, dup, v5=True)


def connection(reads: list[list[Publish]] | None = None) -> tuple[Mqtt5Connection, FakeTransport]:
    sink: list[list[Publish]] = reads if reads is not None else []
    conn = Mqtt5Connection(sink.append, keepalive_s=30, max_packet=MAX_PACKET)
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


async def test_publishes_are_parsed_across_fragments_and_acks_batched_in_order() -> None:
    reads: list[list[Publish]] = []
    conn, transport = connection(reads)
    stream = (
        connack(session_present=True)
        + publish("devices/a/telemetry", b'{"ts":1}', 7)
        + publish("devices/b/telemetry", b"x" * 300, 8, dup=True)
        + publish("$SYS/broker/publish/messages/sent", b"5", 0, qos=0)
    )
    for i in range(0, len(stream), 5):  # TLS records split packets anywhere
        conn.data_received(stream[i:i + 5])
    assert (await conn.connected).session_present is True
    assert [p for read in reads for p in read] == [
        ("devices/a/telemetry", b'{"ts":1}', 7, False),
        ("devices/b/telemetry", b"x" * 300, 8, True),
        ("$SYS/broker/publish/messages/sent", b"5", 0, False),
    ]
    conn.ack([8, 7])
    assert transport.written == [b"\x40\x02\x00\x08\x40\x02\x00\x07"]


async def test_one_read_hands_its_publishes_over_in_one_list() -> None:
    reads: list[list[Publish]] = []
    conn, _ = connection(reads)
    conn.data_received(connack())
    packets = b"".join(publish(f"devices/d{i}/telemetry", b"p" * i, i + 1) for i in range(200))
    conn.data_received(packets[:-3])  # the last packet completes with the next read
    conn.data_received(packets[-3:])
    assert [len(r) for r in reads] == [199, 1]
    assert reads[0][150] == ("devices/d150/telemetry", b"p" * 150, 151, False)


async def test_acks_from_another_thread_are_written_by_the_loop_in_order() -> None:
    conn, transport = connection()
    await asyncio.to_thread(conn.ack, [1, 2])
    await asyncio.to_thread(conn.ack, [3])
    conn.ack([4])
    await asyncio.sleep(0.01)
    assert b"".join(transport.written) == b"".join(b"\x40\x02\x00" + bytes([i]) for i in (1, 2, 3, 4))


async def test_refused_connack_fails_the_connection() -> None:
    conn, transport = connection()
    conn.data_received(connack(reason=0x87))  # not authorized
    with pytest.raises(MqttProtocolError, match="0x87"):
        await conn.connected
    assert transport.closed


async def test_malformed_input_is_answered_with_disconnect_0x81_then_closed() -> None:
    reads: list[list[Publish]] = []
    conn, transport = connection(reads)
    conn.data_received(connack())
    conn.data_received(b"\x36\x05\x00\x01a\x00\x01")  # QoS 3
    assert transport.written[-1] == b"\xe0\x01\x81"
    assert transport.closed and reads == []
    conn.data_received(publish("devices/a/telemetry", b"{}", 1))  # after close: ignored
    assert reads == []


async def test_unbounded_length_is_malformed() -> None:
    conn, transport = connection()
    conn.data_received(connack())
    conn.data_received(b"\x30\xff\xff\xff\xff\x7f")
    assert transport.written[-1] == b"\xe0\x01\x81" and transport.closed


async def test_a_packet_above_our_maximum_packet_size_is_refused_with_0x95() -> None:
    conn, transport = connection()
    conn.data_received(connack())
    conn.data_received(b"\x30" + codec.varint(MAX_PACKET + 1))  # only the header has come
    assert transport.written[-1] == b"\xe0\x01\x95" and transport.closed


async def test_a_second_connack_is_a_protocol_error_not_an_exception() -> None:
    conn, transport = connection()
    conn.data_received(connack())
    conn.data_received(connack())  # must not raise out of data_received
    assert transport.written[-1] == b"\xe0\x01\x82" and transport.closed
    assert "second CONNACK" in conn.close_cause


async def test_a_packet_no_server_may_send_is_a_protocol_error() -> None:
    conn, transport = connection()
    conn.data_received(connack())
    conn.data_received(codec.subscribe_v5(1, "x", 1))
    assert transport.written[-1] == b"\xe0\x01\x82" and transport.closed


async def test_publish_before_connack_is_a_protocol_error() -> None:
    reads: list[list[Publish]] = []
    conn, transport = connection(reads)
    conn.data_received(publish("devices/a/telemetry", b"{}", 1))
    assert transport.written[-1] == b"\xe0\x01\x82" and reads == []
    with pytest.raises(MqttProtocolError):
        await conn.connected


async def test_qos2_is_answered_with_pubrec_then_pubcomp_never_puback() -> None:
    reads: list[list[Publish]] = []
    conn, transport = connection(reads)
    conn.data_received(connack() + publish("devices/a/telemetry", b"{}", 9, qos=2))
    [[(_, _, mid, _)]] = reads
    assert mid == 9 | codec.QOS2_FLAG
    conn.ack([mid])  # Kafka has it
    assert transport.written == [b"\x50\x02\x00\x09"]  # PUBREC
    conn.data_received(codec.ack(codec.PUBREL, 9))
    assert transport.written[-1] == b"\x70\x02\x00\x09"  # PUBCOMP
    assert not transport.closed


async def test_connack_server_keep_alive_and_maximum_packet_size_are_honoured() -> None:
    conn, _ = connection()
    props = b"\x13\x00\x05" + b"\x27\x00\x00\x00\x10"  # keep alive 5 s, packets up to 16 bytes
    conn.data_received(connack(props=props))
    await conn.connected
    assert conn.keepalive_s == 5
    with pytest.raises(MqttProtocolError, match="maximum 16"):
        await conn.subscribe(1, "$share/bridge/devices/+/telemetry", 1)


async def test_disconnect_reason_is_kept() -> None:
    conn, transport = connection()
    props = b"\x1f\x00\x05taken"
    conn.data_received(connack() + codec.packet(codec.DISCONNECT, b"\x8e" + codec.varint(len(props))
                                                + props))
    assert conn.disconnect_reason == codec.SESSION_TAKEN_OVER
    assert "session taken over" in conn.close_cause and "taken" in conn.close_cause
    assert transport.closed


async def test_pingresp_clears_the_outstanding_ping() -> None:
    conn, transport = connection()
    conn.data_received(connack())
    conn.ping()
    assert conn.ping_sent_at is not None and transport.written[-1] == b"\xc0\x00"
    conn.data_received(b"\xd0\x00")
    assert conn.ping_sent_at is None


async def test_paused_reading_reaches_the_transport() -> None:
    conn, transport = connection()
    conn.pause_reading()
    assert transport.paused and conn.reading_paused
    conn.resume_reading()
    assert not transport.paused and not conn.reading_paused
