"""gateway.mqtt_codec: property-based tests of the decoder on arbitrary bytes split anywhere,
round trips of the encoder (no services)."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import mqtt_codec as codec

MAX = 4096

topics = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
payloads = st.binary(max_size=300)
publishes = st.tuples(topics, payloads, st.integers(1, 65535), st.sampled_from([0, 1, 2]),
                      st.booleans())


def decode_stream(chunks: list[bytes], max_packet: int, v5: bool) -> tuple[list[codec.Publish],
                                                                         list[codec.Control]]:
    """Feed the chunks as a connection does (the unused rest carried to the next read)."""
    rest = b""
    got: list[codec.Publish] = []
    controls: list[codec.Control] = []
    for chunk in chunks:
        buf = rest + chunk
        found, more, used = codec.split(buf, max_packet, v5)
        got += found
        controls += more
        rest = buf[used:]
        assert len(rest) < max_packet + 5  # the carried rest is bounded
    return got, controls


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300)
@given(st.lists(publishes, max_size=20), st.lists(st.integers(0, 10_000), max_size=30),
       st.booleans())
def test_publishes_round_trip_whatever_the_read_boundaries(
    items: list[tuple[str, bytes, int, int, bool]], points: list[int], v5: bool
) -> None:
    stream = b"".join(
        codec.publish(t.encode(), p, mid, qos, dup, v5=v5) for t, p, mid, qos, dup in items
    ) + codec.PINGREQ_PACKET.replace(b"\xc0", b"\xd0")  # a PINGRESP at the end
    got, controls = decode_stream(cut(stream, points), MAX, v5)
    expected = [
        (t, p, 0 if qos == 0 else (mid | codec.QOS2_FLAG if qos == 2 else mid), dup)
        for t, p, mid, qos, dup in items
    ]
    assert got == expected
    assert controls == [(codec.PINGRESP, b"")]


@settings(max_examples=1000)
@given(st.binary(max_size=600), st.lists(st.integers(0, 1000), max_size=10), st.booleans(),
       st.integers(2, 700))
def test_arbitrary_bytes_decode_or_raise_the_codec_error_only(
    data: bytes, points: list[int], v5: bool, max_packet: int
) -> None:
    try:
        got, controls = decode_stream(cut(data, points), max_packet, v5)
    except codec.MqttCodecError as exc:
        assert exc.reason_code in (codec.MALFORMED_PACKET, codec.PACKET_TOO_LARGE)
        return
    for topic, payload, mid, _dup in got:
        assert isinstance(topic, str) and isinstance(payload, bytes)
        assert 0 <= mid < 2 * codec.QOS2_FLAG
    for _header, body in controls:
        assert len(body) + 2 <= max_packet
        # Every control packet's body decodes or raises the codec's error, never anything else.
        for decode in (lambda b: codec.decode_connack(b, v5), lambda b: codec.decode_suback(b, v5),
                       codec.decode_packet_id, codec.decode_disconnect):
            with contextlib.suppress(codec.MqttCodecError):
                decode(body)


@given(st.binary(max_size=600), st.booleans())
def test_whole_and_split_decoding_agree(data: bytes, v5: bool) -> None:
    def outcome(chunks: list[bytes]) -> object:
        try:
            return decode_stream(chunks, 700, v5)
        except codec.MqttCodecError as exc:
            return type(exc)

    assert outcome([data]) == outcome([data[i:i + 1] for i in range(len(data))])


@given(st.integers(0, codec.MAX_VARINT))
def test_varint_round_trip(value: int) -> None:
    encoded = codec.varint(value)
    assert len(encoded) <= 4
    assert codec.read_varint(encoded + b"rest", 0) == (value, len(encoded))


def test_varint_bounds() -> None:
    with pytest.raises(ValueError):
        codec.varint(codec.MAX_VARINT + 1)
    with pytest.raises(codec.MalformedPacket):
        codec.read_varint(b"\xff\xff\xff\xff\x01", 0)
    assert codec.read_varint(b"\xff\xff", 0) is None  # incomplete: wait for more


def test_a_length_above_the_maximum_is_refused_before_the_body_arrives() -> None:
    header = b"\x30" + codec.varint(10_000_000)  # a 10 MB PUBLISH announced, 0 bytes of it sent
    with pytest.raises(codec.PacketTooLarge):
        codec.split(header, 1024 * 1024, v5=True)


def test_five_byte_remaining_length_is_malformed() -> None:
    with pytest.raises(codec.MalformedPacket):
        codec.split(b"\x30\xff\xff\xff\xff\x01", 1 << 30, v5=False)


@pytest.mark.parametrize("bad", [
    b"\x36\x05\x00\x01a\x00\x01",  # QoS 3
    b"\x32\x03\x00\x01a",  # QoS 1 without a packet id
    b"\x32\x05\x00\x01a\x00\x00",  # packet id 0
    b"\x30\x03\x00\x05a",  # topic longer than the packet
    b"\x30\x04\x00\x02\xff\xfe",  # topic not UTF-8
])
def test_malformed_publishes(bad: bytes) -> None:
    with pytest.raises(codec.MalformedPacket):
        codec.split(bad, 1024, v5=False)


def test_v5_publish_properties_are_skipped_and_bounded() -> None:
    props = b"\x01\x01" + b"\x03\x00\x04json"
    body = codec.string(b"t/a") + b"\x00\x09" + codec.varint(len(props)) + props + b"payload"
    assert codec.split(codec.packet(0x32, body), 1024, v5=True)[0] == [("t/a", b"payload", 9, False)]
    bad = codec.string(b"t/a") + b"\x00\x09" + b"\x7f" + b"xx"
    with pytest.raises(codec.MalformedPacket):
        codec.split(codec.packet(0x32, bad), 1024, v5=True)


def test_connect_v5_carries_session_expiry_receive_maximum_and_maximum_packet_size() -> None:
    packet = codec.connect_v5("bridge-1", 30, 604_800, 2000, 1_052_672)
    assert packet[0] == codec.CONNECT
    length, start = codec.read_varint(packet, 1) or (0, 0)
    body = packet[start:]
    assert len(body) == length
    assert body[:7] == b"\x00\x04MQTT\x05" and body[7] == 0x00
    assert body[8:10] == struct.pack("!H", 30)
    props, end = codec.decode_properties(body, 10)
    assert props == {codec.SESSION_EXPIRY_INTERVAL: 604_800, codec.RECEIVE_MAXIMUM: 2000,
                     codec.MAXIMUM_PACKET_SIZE: 1_052_672}
    assert body[end:] == codec.string(b"bridge-1")


def test_connack_properties_decode() -> None:
    props = b"\x13\x00\x3c" + b"\x27\x00\x01\x00\x00" + b"\x21\x00\x0a" + b"\x1f\x00\x02hi"
    connack = codec.decode_connack(b"\x01\x00" + codec.varint(len(props)) + props, v5=True)
    assert connack.session_present and connack.reason_code == 0
    assert connack.properties[codec.SERVER_KEEP_ALIVE] == 60
    assert connack.properties[codec.MAXIMUM_PACKET_SIZE] == 65536
    assert connack.properties[codec.RECEIVE_MAXIMUM] == 10
    assert connack.properties[codec.REASON_STRING] == "hi"
    with pytest.raises(codec.MalformedPacket):  # the same property twice
        codec.decode_connack(b"\x00\x00\x06\x13\x00\x01\x13\x00\x02", v5=True)
    with pytest.raises(codec.MalformedPacket):  # unknown property
        codec.decode_connack(b"\x00\x00\x02\x7e\x00", v5=True)


def test_disconnect_reason_and_string() -> None:
    assert codec.decode_disconnect(b"") == (0, "")
    assert codec.decode_disconnect(b"\x8e") == (codec.SESSION_TAKEN_OVER, "")
    props = b"\x1f\x00\x05taken"
    assert codec.decode_disconnect(b"\x8e" + codec.varint(len(props)) + props) == (0x8E, "taken")
    assert codec.disconnect_v5(0x81) == b"\xe0\x01\x81"


def test_acks_are_pubacks_for_qos1_and_pubrecs_for_qos2() -> None:
    assert codec.acks([7, 8]) == b"\x40\x02\x00\x07\x40\x02\x00\x08"
    assert codec.acks([7, 8 | codec.QOS2_FLAG]) == b"\x40\x02\x00\x07\x50\x02\x00\x08"
