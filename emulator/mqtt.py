"""The small part of MQTT 3.1.1 a device needs: CONNECT, PUBLISH at QoS 1, PUBACK, PINGREQ, DISCONNECT.

Why not paho or gmqtt: an emulator holding 10,000 TLS connections in one process spends its time in
per-connection and per-message overhead. paho does the TLS handshake blocking inside connect() and
keeps a thread-oriented client object per connection; an asyncio Protocol over the event loop's own
TLS (memory BIO) handshakes without blocking and costs a few objects per connection. The packets
are encoded and decoded by the codec the bridge uses too (gateway/mqtt_codec.py), whose decoder
is bounded: a broker (or anything posing as one) cannot make a device buffer more than
MAX_PACKET bytes. Malformed input, a second CONNACK or a packet a server may not send closes
the connection (MQTT 3.1.1 has no reason codes); the device then reconnects. A PINGREQ left
unanswered for `ping_timeout_s` closes it too: the connection is half-open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

from gateway import mqtt_codec as codec

log = logging.getLogger(__name__)

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}
# A device receives CONNACK, PUBACK and PINGRESP: four bytes each, and nothing near this.
MAX_PACKET = 64 * 1024
_FROM_SERVER = {codec.CONNACK, codec.PUBACK, codec.PINGRESP}


class MqttError(Exception):
    """The root error of the emulator's MQTT client."""


def connect_packet(client_id: str, keepalive_s: int, clean_session: bool = True) -> bytes:
    return codec.connect_v311(client_id, keepalive_s, clean_session)


def publish_packet(topic: bytes, payload: bytes, packet_id: int, dup: bool = False) -> bytes:
    """QoS 1, not retained."""
    return codec.publish(topic, payload, packet_id, 1, dup)


PINGREQ_PACKET = codec.PINGREQ_PACKET
DISCONNECT_PACKET = codec.DISCONNECT_V311


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
        self._rest = b""
        self._outgoing: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ping_sent_at: float | None = None  # an unanswered PINGREQ
        self.close_cause = ""

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

    def ping(self) -> None:
        if self.ping_sent_at is None:
            self.ping_sent_at = time.monotonic()
        self.write(PINGREQ_PACKET)

    def ping_overdue(self, now: float, timeout_s: float) -> bool:
        return self.ping_sent_at is not None and now - self.ping_sent_at > timeout_s

    def data_received(self, data: bytes) -> None:
        if self.transport is not None and self.transport.is_closing():
            return
        buf = self._rest + data if self._rest else data
        try:
            _publishes, controls, used = codec.split(buf, MAX_PACKET, v5=False)
            for header, body in controls:
                self._packet(header, body)
        except (codec.MqttCodecError, MqttError) as exc:
            self.abort(str(exc))
            return
        self._rest = buf[used:]
        # PUBLISHes (a device subscribes to nothing) are ignored.

    def _packet(self, header: int, body: bytes) -> None:
        if header not in _FROM_SERVER:
            raise MqttError(f"unexpected packet {header:#04x} from the broker")
        if header == codec.PUBACK:
            if not self.connack.done():
                raise MqttError("PUBACK before CONNACK")
            self._on_puback(codec.decode_packet_id(body))
        elif header == codec.PINGRESP:
            self.ping_sent_at = None
        else:
            connack = codec.decode_connack(body, v5=False)
            if self.connack.done():
                raise MqttError("a second CONNACK")
            if connack.reason_code == 0:
                self.connack.set_result(None)
                return
            reason = CONNACK_REASONS.get(connack.reason_code, f"code {connack.reason_code}")
            self.connack.set_exception(MqttError(f"{self._client_id}: CONNACK refused: {reason}"))
            if self.transport is not None:
                self.transport.close()

    def abort(self, why: str) -> None:
        """Close on a protocol error (MQTT 3.1.1: no DISCONNECT from the client for it)."""
        self.close_cause = why
        log.warning("device %s: MQTT protocol error from the broker, closing: %s",
                    self._client_id, why)
        if not self.connack.done():
            self.connack.set_exception(MqttError(f"{self._client_id}: {why}"))
        if self.transport is not None:
            self.transport.close()

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
