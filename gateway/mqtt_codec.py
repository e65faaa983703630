"""MQTT packets, encoded and decoded once: the bridge's MQTT 5 subscriber and the emulator's
MQTT 3.1.1 devices both speak through this module.

Both run their own asyncio Protocols (paho's per-field socket reads and per-message objects were
half of their CPU), so the codec works on whole buffers: `split` takes what a read brought and
returns the complete packets in it, the PUBLISHes already parsed into tuples (one loop, no
object per message), the rest as (first byte, body) for the connection to handle.

Hostile input is bounded: the remaining length is at most four bytes and a packet longer than
the connection's Maximum Packet Size is refused as soon as its length is read, so nothing waits
for (or buffers) more than that. Anything malformed raises `MalformedPacket` (reason code
0x81), too large `PacketTooLarge` (0x95): the connection then sends DISCONNECT with that code
(MQTT 5) and closes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# First byte of each packet type (flags zero; PUBREL, SUBSCRIBE and UNSUBSCRIBE carry 0x02).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 0x10, 0x20, 0x30, 0x40, 0x50, 0x62, 0x70
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 0x82, 0x90, 0xA2, 0xB0
PINGREQ, PINGRESP, DISCONNECT, AUTH = 0xC0, 0xD0, 0xE0, 0xF0

MAX_VARINT = 268_435_455  # four bytes of seven bits
MAX_STRING = 65_535

# MQTT 5 reason codes the clients send or tell apart.
SUCCESS = 0x00
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
SESSION_TAKEN_OVER = 0x8E
SERVER_SHUTTING_DOWN = 0x8B
KEEP_ALIVE_TIMEOUT = 0x8D
PACKET_TOO_LARGE = 0x95
REASON_NAMES = {
    0x00: "normal disconnection", 0x04: "disconnect with will message", 0x80: "unspecified error",
    0x81: "malformed packet", 0x82: "protocol error", 0x83: "implementation specific error",
    0x87: "not authorized", 0x89: "server busy", 0x8B: "server shutting down",
    0x8D: "keep alive timeout", 0x8E: "session taken over", 0x93: "receive maximum exceeded",
    0x94: "topic alias invalid", 0x95: "packet too large", 0x97: "quota exceeded",
    0x98: "administrative action", 0x9C: "use another server", 0x9D: "server moved",
    0x9F: "connection rate exceeded",
}

# MQTT 5 properties: identifier -> value type.
SESSION_EXPIRY_INTERVAL, RECEIVE_MAXIMUM, MAXIMUM_PACKET_SIZE = 0x11, 0x21, 0x27
SERVER_KEEP_ALIVE, ASSIGNED_CLIENT_ID, REASON_STRING, USER_PROPERTY = 0x13, 0x12, 0x1F, 0x26
_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _UTF8, 0x08: _UTF8, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _FOUR, 0x12: _UTF8, 0x13: _TWO, 0x15: _UTF8, 0x16: _BINARY, 0x17: _BYTE, 0x18: _FOUR,
    0x19: _BYTE, 0x1A: _UTF8, 0x1C: _UTF8, 0x1F: _UTF8, 0x21: _TWO, 0x22: _TWO, 0x23: _TWO,
    0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}

# A QoS 2 PUBLISH's packet id carries this bit in a Publish tuple: its acknowledgement is a
# PUBREC (then PUBCOMP on PUBREL), never a PUBACK.
QOS2_FLAG = 0x10000

# (topic, payload, packet id (| QOS2_FLAG) or 0 for QoS 0, dup)
Publish = tuple[str, bytes, int, bool]
# (first byte, body) of any other packet
Control = tuple[int, bytes]
Properties = dict[int, int | str | bytes | list[tuple[str, str]]]


class MqttCodecError(ValueError):
    """The bytes are not MQTT the connection can accept; `reason_code` for the DISCONNECT."""

    reason_code = MALFORMED_PACKET


class MalformedPacket(MqttCodecError):
    reason_code = MALFORMED_PACKET


class PacketTooLarge(MqttCodecError):
    reason_code = PACKET_TOO_LARGE


# -- encoding


def varint(value: int) -> bytes:
    """MQTT's variable byte integer (the remaining length, property lengths)."""
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def string(raw: bytes) -> bytes:
    """A length-prefixed MQTT string or binary field."""
    if len(raw) > MAX_STRING:
        raise ValueError(f"{len(raw)} bytes do not fit an MQTT string")
    return struct.pack("!H", len(raw)) + raw


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect_v5(
    client_id: str, keepalive_s: int, session_expiry_s: int, receive_maximum: int,
    maximum_packet_size: int, clean_start: bool = False,
) -> bytes:
    props = (b"\x11" + struct.pack("!I", session_expiry_s) + b"\x21" + struct.pack("!H", receive_maximum)
             + b"\x27" + struct.pack("!I", maximum_packet_size))
    body = (string(b"MQTT") + bytes([5, 0x02 if clean_start else 0x00]) + struct.pack("!H", keepalive_s)
            + varint(len(props)) + props + string(client_id.encode()))
    return packet(CONNECT, body)


def connect_v311(client_id: str, keepalive_s: int, clean_session: bool = True) -> bytes:
    body = (string(b"MQTT") + bytes([4, 0x02 if clean_session else 0x00])
            + struct.pack("!H", keepalive_s) + string(client_id.encode()))
    return packet(CONNECT, body)


def subscribe_v5(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return packet(SUBSCRIBE, struct.pack("!H", packet_id) + b"\x00" + string(topic_filter.encode())
                  + bytes([qos]))


def publish(topic: bytes, payload: bytes, packet_id: int, qos: int = 1, dup: bool = False,
            v5: bool = False) -> bytes:
    """A PUBLISH (not retained); MQTT 5 ones carry no properties."""
    variable = string(topic) + (struct.pack("!H", packet_id) if qos else b"") + (b"\x00" if v5 else b"")
    first = PUBLISH | (qos << 1) | (0x08 if dup else 0)
    return bytes([first]) + varint(len(variable) + len(payload)) + variable + payload


def ack(first_byte: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP with success (the reason code may be left out)."""
    return struct.pack("!BBH", first_byte, 2, packet_id)


def acks(packet_ids: list[int]) -> bytes:
    """The acknowledgements of received PUBLISHes, in the order given: PUBACK for QoS 1, PUBREC
    for ids carrying QOS2_FLAG. One struct call for the common all-QoS-1 run."""
    if max(packet_ids, default=0) < QOS2_FLAG:
        return struct.pack(f">{len(packet_ids)}I", *[0x40020000 | mid for mid in packet_ids])
    return struct.pack(f">{len(packet_ids)}I", *[
        (0x50020000 | (mid & 0xFFFF)) if mid & QOS2_FLAG else (0x40020000 | mid) for mid in packet_ids
    ])


PINGREQ_PACKET = bytes([PINGREQ, 0])
DISCONNECT_V311 = bytes([DISCONNECT, 0])


def disconnect_v5(reason_code: int = SUCCESS) -> bytes:
    return bytes([DISCONNECT, 1, reason_code]) if reason_code else bytes([DISCONNECT, 0])


# -- decoding


def read_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """(value, position after it), None if the data ends first; at most four bytes."""
    value, shift = 0, 0
    for _ in range(4):
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise MalformedPacket("variable byte integer longer than four bytes")


def split(buf: bytes, max_packet: int, v5: bool) -> tuple[list[Publish], list[Control], int]:
    """The whole packets at the start of `buf`: (PUBLISHes, other packets, bytes used).

    Raises MalformedPacket or PacketTooLarge; the caller then drops the connection (and with
    it whatever this read held: unacknowledged, the broker sends it again)."""
    pos, end = 0, len(buf)
    publishes: list[Publish] = []
    controls: list[Control] = []
    append = publishes.append
    while end - pos >= 2:
        header = buf[pos]
        start = pos + 2
        length = buf[pos + 1]
        if length & 0x80:
            parsed = read_varint(buf, pos + 1)
            if parsed is None:
                break
            length, start = parsed
        stop = start + length
        if stop - pos > max_packet:
            raise PacketTooLarge(f"packet of {stop - pos} bytes, at most {max_packet}")
        if stop > end:
            break
        pos = stop
        if header & 0xF0 != PUBLISH:
            controls.append((header, buf[start:stop]))
            continue
        # PUBLISH: topic, packet id (QoS 1, 2), properties (MQTT 5), payload.
        at = start + 2 + ((buf[start] << 8) | buf[start + 1]) if length >= 2 else stop + 1
        qos = (header >> 1) & 0x03
        if qos:
            packet_id = (buf[at] << 8) | buf[at + 1] if at + 2 <= stop else 0
            if not packet_id or qos == 3:
                raise MalformedPacket(f"PUBLISH with QoS {qos} and packet id {packet_id}")
            topic_end, at = at, at + 2
            if qos == 2:
                packet_id |= QOS2_FLAG
        else:
            if at > stop:
                raise MalformedPacket("PUBLISH shorter than its topic")
            topic_end, packet_id = at, 0
        if v5:
            if at >= stop:
                raise MalformedPacket("PUBLISH without its properties")
            props_len = buf[at]
            if props_len & 0x80:
                parsed = read_varint(buf, at)
                if parsed is None:
                    raise MalformedPacket("truncated PUBLISH properties")
                props_len, at = parsed
            else:
                at += 1
            at += props_len
            if at > stop:
                raise MalformedPacket("PUBLISH properties longer than the packet")
        try:
            topic = buf[start + 2:topic_end].decode()
        except UnicodeDecodeError as exc:
            raise MalformedPacket(f"topic is not UTF-8: {exc}") from None
        append((topic, buf[at:stop], packet_id, bool(header & 0x08)))
    return publishes, controls, pos


def decode_properties(body: bytes, pos: int) -> tuple[Properties, int]:
    """MQTT 5 properties from `pos` (their length first); (properties, position after them)."""
    parsed = read_varint(body, pos)
    if parsed is None:
        raise MalformedPacket("truncated property length")
    length, pos = parsed
    stop = pos + length
    if stop > len(body):
        raise MalformedPacket("properties longer than the packet")
    props: Properties = {}
    while pos < stop:
        ident = body[pos]
        kind = _PROPERTY_TYPES.get(ident)
        pos += 1
        value: int | str | bytes
        if kind is None:
            raise MalformedPacket(f"unknown property {ident:#x}")
        if kind == _BYTE:
            value, pos = _fixed(body, pos, 1, stop)
        elif kind == _TWO:
            value, pos = _fixed(body, pos, 2, stop)
        elif kind == _FOUR:
            value, pos = _fixed(body, pos, 4, stop)
        elif kind == _VARINT:
            parsed = read_varint(body[:stop], pos)
            if parsed is None:
                raise MalformedPacket("truncated property")
            value, pos = parsed
        else:
            raw, pos = _field(body, pos, stop)
            if kind == _PAIR:
                second, pos = _field(body, pos, stop)
                pairs = props.setdefault(ident, [])
                assert isinstance(pairs, list)
                pairs.append((_text(raw), _text(second)))
                continue
            value = raw if kind == _BINARY else _text(raw)
        if ident in props:
            raise MalformedPacket(f"property {ident:#x} twice")
        props[ident] = value
    return props, stop


def _fixed(body: bytes, pos: int, size: int, stop: int) -> tuple[int, int]:
    if pos + size > stop:
        raise MalformedPacket("truncated property")
    return int.from_bytes(body[pos:pos + size], "big"), pos + size


def _field(body: bytes, pos: int, stop: int) -> tuple[bytes, int]:
    if pos + 2 > stop:
        raise MalformedPacket("truncated string")
    end = pos + 2 + ((body[pos] << 8) | body[pos + 1])
    if end > stop:
        raise MalformedPacket("string longer than the packet")
    return body[pos + 2:end], end


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"string is not UTF-8: {exc}") from None


class Connack(NamedTuple):
    session_present: bool
    reason_code: int
    properties: Properties


def decode_connack(body: bytes, v5: bool) -> Connack:
    if len(body) < 2 or body[0] & 0xFE:
        raise MalformedPacket("CONNACK shorter than two bytes or with reserved flags")
    props: Properties = {}
    if v5:
        props, end = decode_properties(body, 2)
        if end != len(body):
            raise MalformedPacket("bytes after the CONNACK properties")
    elif len(body) != 2:
        raise MalformedPacket("MQTT 3.1.1 CONNACK of more than two bytes")
    return Connack(bool(body[0] & 0x01), body[1], props)


def decode_suback(body: bytes, v5: bool) -> tuple[int, bytes]:
    """(packet id, reason codes)."""
    if len(body) < 3:
        raise MalformedPacket("SUBACK without reason codes")
    pos = decode_properties(body, 2)[1] if v5 else 2
    codes = body[pos:]
    if not codes:
        raise MalformedPacket("SUBACK without reason codes")
    return (body[0] << 8) | body[1], codes


def decode_packet_id(body: bytes) -> int:
    """PUBACK, PUBREC, PUBREL, PUBCOMP: the packet id (the reason code, if any, follows)."""
    if len(body) < 2:
        raise MalformedPacket("acknowledgement without a packet id")
    packet_id = (body[0] << 8) | body[1]
    if not packet_id:
        raise MalformedPacket("packet id 0")
    return packet_id


def decode_disconnect(body: bytes) -> tuple[int, str]:
    """MQTT 5 DISCONNECT: (reason code, reason string or "")."""
    if not body:
        return SUCCESS, ""
    reason = body[0]
    text = ""
    if len(body) > 1:
        props, end = decode_properties(body, 1)
        if end != len(body):
            raise MalformedPacket("bytes after the DISCONNECT properties")
        value = props.get(REASON_STRING, "")
        text = value if isinstance(value, str) else ""
    return reason, text


def reason_name(code: int) -> str:
    return f"{code:#04x} {REASON_NAMES.get(code, 'reason')}"
