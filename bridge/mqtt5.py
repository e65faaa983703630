"""The bridge's MQTT 5 connection on asyncio, over the shared codec (gateway/mqtt_codec.py).

Only what the bridge needs: CONNECT (clean start off, session expiry, Receive Maximum, Maximum
Packet Size), SUBSCRIBE, incoming PUBLISH at QoS 0, 1 and 2, their acknowledgements, PINGREQ and
DISCONNECT. Whole reads are parsed at a time, and the PUBLISHes of each read handed over as one
list. Acknowledgements are handed in, in runs, from any thread and written in the order given:
PUBACK for QoS 1, PUBREC for QoS 2 (PUBCOMP follows the broker's PUBREL).

Nothing the broker sends raises out of `data_received`: malformed bytes are answered with
DISCONNECT 0x81 (0x95 for a packet above our Maximum Packet Size), a broken protocol (a second
CONNACK, a packet a server may not send) with 0x82, then the connection closes and
`close_cause` says why. A DISCONNECT from the broker is kept in `disconnect_reason`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable

from gateway import mqtt_codec as codec
from gateway.mqtt_codec import Connack, Publish

log = logging.getLogger(__name__)

OnPublishes = Callable[[list[Publish]], None]
# What a server may send a client; anything else is a protocol error.
_FROM_SERVER = {codec.CONNACK, codec.PUBLISH, codec.PUBREL, codec.SUBACK, codec.UNSUBACK,
                codec.PINGRESP, codec.DISCONNECT}


class MqttProtocolError(Exception):
    """The broker refused us or broke the protocol; the connection is closed."""


class Mqtt5Connection(asyncio.Protocol):
    """One connection. `connected` resolves with the CONNACK (session present, properties)."""

    def __init__(self, on_publishes: OnPublishes, keepalive_s: int, max_packet: int) -> None:
        self._on_publishes = on_publishes
        self.keepalive_s = keepalive_s
        self._max_packet = max_packet
        self._rest = b""  # the start of a packet that the next read completes
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[Connack] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.subacks: dict[int, asyncio.Future[bytes]] = {}
        self._acks: list[int] = []
        self._acks_lock = threading.Lock()
        self._loop_thread = threading.get_ident()
        self._flush_scheduled = False
        self._alive = True
        self.reading_paused = False
        self.server_max_packet = codec.MAX_VARINT + 5  # until CONNACK says otherwise
        self.ping_sent_at: float | None = None  # an unanswered PINGREQ
        self.disconnect_reason: int | None = None  # the broker's DISCONNECT, if it sent one
        self.close_cause = ""

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop: not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._alive = False
        self.close_cause = self.close_cause or f"connection lost: {exc or 'closed by the broker'}"
        if not self.connected.done():
            self.connected.set_exception(MqttProtocolError(self.close_cause))
        for future in self.subacks.values():  # nobody waits 10 s for a SUBACK that cannot come
            if not future.done():
                future.set_exception(MqttProtocolError(self.close_cause))
        self.subacks.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self._alive:
            return
        buf = self._rest + data if self._rest else data
        try:
            publishes, controls, used = codec.split(buf, self._max_packet, v5=True)
            for header, body in controls:
                self._handle(header, body)
        except codec.MqttCodecError as exc:
            self.abort(exc.reason_code, f"from the broker: {exc}")
            return
        except MqttProtocolError as exc:
            self.abort(codec.PROTOCOL_ERROR, str(exc))
            return
        self._rest = buf[used:]
        if publishes and self._alive:
            if not self.connected.done():
                self.abort(codec.PROTOCOL_ERROR, "PUBLISH before CONNACK")
                return
            self._on_publishes(publishes)

    # -- packets
    def _handle(self, header: int, body: bytes) -> None:
        kind = header & 0xF0
        if header not in _FROM_SERVER:
            raise MqttProtocolError(f"unexpected packet {header:#04x} from the broker")
        if kind != codec.CONNACK and not self.connected.done():
            raise MqttProtocolError(f"packet {header:#04x} before CONNACK")
        if kind == codec.PINGRESP:
            self.ping_sent_at = None
        elif kind == codec.CONNACK:
            self._on_connack(codec.decode_connack(body, v5=True))
        elif kind == codec.SUBACK:
            packet_id, codes = codec.decode_suback(body, v5=True)
            future = self.subacks.pop(packet_id, None)
            if future is not None and not future.done():
                future.set_result(codes)
        elif header == codec.PUBREL:
            # Our PUBREC went out after Kafka had the message: the exchange is complete.
            self.send(codec.ack(codec.PUBCOMP, codec.decode_packet_id(body)))
        elif kind == codec.DISCONNECT:
            reason, text = codec.decode_disconnect(body)
            self.disconnect_reason = reason
            self.close_cause = f"DISCONNECT {codec.reason_name(reason)}" + (f": {text}" if text else "")
            self.close()

    def _on_connack(self, connack: Connack) -> None:
        if self.connected.done():
            raise MqttProtocolError("a second CONNACK")
        if connack.reason_code >= 0x80:
            self.close_cause = f"CONNACK {codec.reason_name(connack.reason_code)}"
            self.connected.set_exception(MqttProtocolError(self.close_cause))
            self.close()
            return
        props = connack.properties
        keepalive = props.get(codec.SERVER_KEEP_ALIVE)
        if isinstance(keepalive, int) and keepalive != self.keepalive_s:
            log.info("Mosquitto sets the keep alive to %ds (we asked for %ds)", keepalive,
                     self.keepalive_s)
            self.keepalive_s = keepalive
        max_packet = props.get(codec.MAXIMUM_PACKET_SIZE)
        if isinstance(max_packet, int):
            self.server_max_packet = max_packet
        self.connected.set_result(connack)

    def send(self, data: bytes) -> None:
        if self._transport is not None and self._alive:
            self._transport.write(data)

    def send_packet(self, data: bytes) -> None:
        """A packet of ours other than acknowledgements, within the broker's Maximum Packet Size."""
        if len(data) > self.server_max_packet:
            raise MqttProtocolError(
                f"packet of {len(data)} bytes above the broker's maximum {self.server_max_packet}"
            )
        self.send(data)

    async def subscribe(self, packet_id: int, topic_filter: str, qos: int) -> bytes:
        future: asyncio.Future[bytes] = self._loop.create_future()
        self.subacks[packet_id] = future
        self.send_packet(codec.subscribe_v5(packet_id, topic_filter, qos))
        return await asyncio.wait_for(future, 10.0)

    def ack(self, packet_ids: list[int]) -> None:
        """Acknowledge in the order given; thread-safe: from another thread they are queued and
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
            self.send(codec.acks(acks))

    def ping(self) -> None:
        if self.ping_sent_at is None:
            self.ping_sent_at = time.monotonic()
        self.send(codec.PINGREQ_PACKET)

    def pause_reading(self) -> None:
        if self._transport is not None and self._alive and not self.reading_paused:
            self.reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and self._alive and self.reading_paused:
            self.reading_paused = False
            self.ping_sent_at = None  # a PINGRESP may have waited behind the paused reads
            self._transport.resume_reading()

    def disconnect(self) -> None:
        self._flush_acks()
        self.send(codec.disconnect_v5())
        self.close()

    def abort(self, reason_code: int, why: str) -> None:
        """DISCONNECT with the reason, then close (the broker redelivers what is unacknowledged)."""
        if not self._alive:
            return
        self.close_cause = f"{codec.reason_name(reason_code)}: {why}"
        log.error("MQTT protocol error, disconnecting with %s", self.close_cause)
        self.send(codec.disconnect_v5(reason_code))
        if not self.connected.done():
            self.connected.set_exception(MqttProtocolError(self.close_cause))
        self.close()

    def close(self) -> None:
        self._alive = False
        if self._transport is not None:
            self._transport.close()


def tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    return context
