"""The small part of MQTT 3.1.1 a device needs: CONNECT, PUBLISH at QoS 1, PUBACK, PINGREQ, DISCONNECT.

Why not paho or gmqtt: an emulator holding 10,000 TLS connections in one process spends its time in
per-connection and per-message overhead. paho does the TLS handshake blocking inside connect() and
keeps a thread-oriented client object per connection; an asyncio Protocol over the event loop's own
TLS (memory BIO) handshakes without blocking and costs a few objects per connection. Four packet
types are little enough to own; the tests check the result against the real broker.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import cast

from gateway import mqtt_wire

CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 12, 13, 14
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MqttError(Exception):
    """The root error of the emulator's MQTT client."""


_remaining_length = mqtt_wire.remaining_length
_string = mqtt_wire.string


def connect_packet(client_id: str, keepalive_s: int, clean_session: bool = True) -> bytes:
    flags = 0x02 if clean_session else 0x00
    body = _string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s)
    body += _string(client_id.encode())
    return bytes([CONNECT << 4]) + _remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, packet_id: int, dup: bool = False) -> bytes:
    """QoS 1, not retained."""
    header = (PUBLISH << 4) | 0x02 | (0x08 if dup else 0)
    variable = _string(topic) + struct.pack("!H", packet_id)
    return bytes([header]) + _remaining_length(len(variable) + len(payload)) + variable + payload


PINGREQ_PACKET = bytes([PINGREQ << 4, 0])
DISCONNECT_PACKET = bytes([DISCONNECT << 4, 0])


class MqttProtocol(asyncio.Protocol):
    """One device's connection. Sends CONNECT on connection_made; reports PUBACKs by packet id."""

    def __init__(
        self, client_id: str, keepalive_s: int, on_puback: Callable[[int], None],
        on_lost: Callable[[Exception | None], None],
    ) -> None:
        self._client_id = client_id
        self._keepalive_s = keepalive_s
        self._on_puback = on_puback
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(connect_packet(self._client_id, self._keepalive_s))

    def write(self, data: bytes) -> None:
        """Queue a packet; packets written in one loop iteration leave in one TLS record.

        Without this every PUBLISH costs its own TLS record and send() syscall, which was
        the emulator's largest cost at high rates (measured with cProfile).

        On a closing connection the packet is dropped: the transport closes before
        connection_lost() arrives, and a PUBLISH stays in the device's in-flight set, which is
        resent after the reconnect."""
        if self.transport is None or self.transport.is_closing():
            return
        self._outgoing.append(data)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_handle = None
        if self._outgoing and self.transport is not None and not self.transport.is_closing():
            data = b"".join(self._outgoing)
            self._outgoing.clear()
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 2:
            # Remaining length: up to 4 bytes of 7 bits each.
            length, multiplier, pos = 0, 1, 1
            while True:
                if pos >= len(buffer):
                    return
                byte = buffer[pos]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                pos += 1
                if not byte & 0x80:
                    break
            end = pos + length
            if len(buffer) < end:
                return
            self._packet(buffer[0] >> 4, bytes(buffer[pos:end]))
            del buffer[:end]

    def _packet(self, kind: int, body: bytes) -> None:
        if kind == PUBACK:
            self._on_puback(struct.unpack_from("!H", body)[0])
        elif kind == CONNACK:
            code = body[1] if len(body) > 1 else 255
            if self.connack.done():
                return
            if code == 0:
                self.connack.set_result(None)
            else:
                reason = CONNACK_REASONS.get(code, f"code {code}")
                self.connack.set_exception(MqttError(f"{self._client_id}: CONNACK refused: {reason}"))
                if self.transport is not None:
                    self.transport.close()
        # PINGRESP and anything unexpected: nothing to do (a device subscribes to nothing).

    def connection_lost(self, exc: Exception | None) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._outgoing.clear()
        if not self.connack.done():
            self.connack.set_exception(
                MqttError(f"{self._client_id}: connection closed before CONNACK ({exc})")
            )
            # Nobody awaits it when the handshake itself failed; connect() reports that error.
            self.connack.exception()
        self._on_lost(exc)
