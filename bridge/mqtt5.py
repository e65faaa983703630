"""A minimal MQTT 5 subscriber on asyncio, for the bridge's hot path.

Only what the bridge needs: CONNECT (clean start off, session expiry, Receive Maximum),
SUBSCRIBE, incoming PUBLISH, outgoing PUBACK, PINGREQ, DISCONNECT. It parses whole buffers at a
time instead of paho's per-field socket reads and per-message Properties objects, which were
half of the bridge's CPU per message (py-spy), and hands the PUBLISHes of each read over as one
list. PUBACKs are handed in, in runs, from any thread and written in the order given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import threading
from collections.abc import Callable

from gateway import mqtt_wire

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0


class MqttProtocolError(Exception):
    """The broker refused us or broke the protocol; the connection is closed."""


def _utf8(text: str) -> bytes:
    return mqtt_wire.string(text.encode())


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + mqtt_wire.remaining_length(len(body)) + body


def connect_packet(client_id: str, keepalive_s: int, session_expiry_s: int,
                   receive_maximum: int, clean_start: bool = False) -> bytes:
    props = b"\x11" + struct.pack("!I", session_expiry_s) + b"\x21" + struct.pack(
        "!H", receive_maximum)
    flags = 0x02 if clean_start else 0x00
    body = (_utf8("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive_s)
            + mqtt_wire.remaining_length(len(props)) + props + _utf8(client_id))
    return _packet(CONNECT, body)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return _packet(SUBSCRIBE, struct.pack("!H", packet_id) + b"\x00" + _utf8(topic_filter)
                   + bytes([qos]))


def _read_varint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
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
    raise MqttProtocolError("malformed variable byte integer")


# (topic, payload, packet id or 0 for QoS 0, dup)
Publish = tuple[str, bytes, int, bool]
OnPublishes = Callable[[list[Publish]], None]


class Mqtt5Connection(asyncio.Protocol):
    """One connection. `connected` resolves with session_present after CONNACK.

    Incoming PUBLISHes are handed over a read at a time (`on_publishes`), in arrival order: the
    per-message work downstream then runs in one tight loop instead of a chain of calls.
    """

    def __init__(self, on_publishes: OnPublishes, keepalive_s: int) -> None:
        self._on_publishes = on_publishes
        self._keepalive_s = keepalive_s
        self._rest = b""  # the start of a packet that the next read completes
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[bool] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.subacks: dict[int, asyncio.Future[bytes]] = {}
        self._acks: list[int] = []
        self._acks_lock = threading.Lock()
        self._loop_thread = threading.get_ident()
        self._flush_scheduled = False
        self._alive = True

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._alive = False
        if not self.connected.done():
            self.connected.set_exception(MqttProtocolError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._rest + data if self._rest else data
        pos, end = 0, len(buf)
        publishes: list[Publish] = []
        append = publishes.append
        try:
            while end - pos >= 2:
                header = buf[pos]
                start = pos + 2
                length = buf[pos + 1]
                if length & 0x80:
                    parsed = _read_varint(buf, pos + 1)
                    if parsed is None:
                        break
                    length, start = parsed
                stop = start + length
                if stop > end:
                    break
                pos = stop
                if header & 0xF0 != PUBLISH:
                    self._handle(header, buf[start:stop])
                    continue
                at = start + 2 + ((buf[start] << 8) | buf[start + 1])
                topic = buf[start + 2:at].decode()
                packet_id = 0
                if header & 0x06:
                    packet_id = (buf[at] << 8) | buf[at + 1]
                    at += 2
                props_len = buf[at]
                if props_len & 0x80:
                    parsed = _read_varint(buf, at)
                    if parsed is None:
                        raise MqttProtocolError("truncated PUBLISH properties")
                    props_len, at = parsed
                else:
                    at += 1
                append((topic, buf[at + props_len:stop], packet_id, bool(header & 0x08)))
        except (MqttProtocolError, IndexError, UnicodeDecodeError) as exc:
            log.error("MQTT protocol error: %s", exc)
            self.close()
            return
        finally:
            # Handed over even when a later packet was malformed: these were received whole.
            if publishes:
                self._on_publishes(publishes)
        self._rest = buf[pos:]

    # -- packets
    def _handle(self, header: int, body: bytes) -> None:
        kind = header & 0xF0
        if kind == CONNACK:
            if len(body) < 2 or body[1] >= 0x80:
                reason = body[1] if len(body) > 1 else -1
                self.connected.set_exception(MqttProtocolError(f"CONNACK reason {reason:#x}"))
                self.close()
            else:
                self.connected.set_result(bool(body[0] & 0x01))
        elif kind == SUBACK:
            packet_id = (body[0] << 8) | body[1]
            parsed = _read_varint(body, 2)
            codes = body[parsed[1] + parsed[0]:] if parsed else b""
            future = self.subacks.pop(packet_id, None)
            if future is not None and not future.done():
                future.set_result(codes)
        elif kind == DISCONNECT:
            reason = body[0] if body else 0
            log.warning("Mosquitto sent DISCONNECT (reason %#x)", reason)
            self.close()
        # PINGRESP and anything else: nothing to do.

    def send(self, data: bytes) -> None:
        if self._transport is not None and self._alive:
            self._transport.write(data)

    async def subscribe(self, packet_id: int, topic_filter: str, qos: int) -> bytes:
        future: asyncio.Future[bytes] = self._loop.create_future()
        self.subacks[packet_id] = future
        self.send(subscribe_packet(packet_id, topic_filter, qos))
        return await asyncio.wait_for(future, 10.0)

    def ack(self, packet_ids: list[int]) -> None:
        """Send PUBACKs in the order given; thread-safe: from another thread they are queued and
        written by the event loop, after any queued before them."""
        with self._acks_lock:
            self._acks.extend(packet_ids)
            if self._flush_scheduled:
                return  # a flush is on its way and takes these too
            on_loop = threading.get_ident() == self._loop_thread
            self._flush_scheduled = not on_loop
        if on_loop:
            self._flush_acks()
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the broker redelivers
            self._loop.call_soon_threadsafe(self._flush_acks)

    def _flush_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
            self._flush_scheduled = False
        if acks:
            # PUBACK = 0x40, remaining length 2, packet id: one big-endian word per ack.
            self.send(struct.pack(f">{len(acks)}I", *[0x40020000 | mid for mid in acks]))

    def ping(self) -> None:
        self.send(bytes([PINGREQ, 0]))

    def disconnect(self) -> None:
        self._flush_acks()
        self.send(bytes([DISCONNECT, 0]))
        self.close()

    def close(self) -> None:
        self._alive = False
        if self._transport is not None:
            self._transport.close()


def tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    return context
