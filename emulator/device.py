"""One emulated device: its signals, its TLS connection (with reconnects) and its in-flight QoS-1 window."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from dataclasses import dataclass, field

from emulator.mqtt import DISCONNECT_PACKET, MqttError, MqttProtocol, publish_packet
from gateway.pki import Identity
from gateway.retry import Backoff, wait_or_stop

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Counters shared by all devices of a fleet (one event loop: no locks needed)."""

    connected: int = 0
    peak_connected: int = 0
    connections: int = 0
    sent: int = 0
    acked: int = 0
    resent: int = 0
    connect_errors: int = 0
    disconnects: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    last_error: str = ""

    def count(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


class Signals:
    """Temperature, humidity and battery: a slow random-walk drift plus measurement noise."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._temperature = rng.uniform(18.0, 26.0)
        self._humidity = rng.uniform(30.0, 60.0)
        self._battery = rng.uniform(80.0, 100.0)

    def next(self) -> dict[str, float]:
        rng = self._rng
        self._temperature += rng.gauss(0.0, 0.02)
        self._humidity = min(100.0, max(0.0, self._humidity + rng.gauss(0.0, 0.05)))
        self._battery = max(0.0, self._battery - rng.uniform(0.0, 0.002))
        return {
            "temperature": round(self._temperature + rng.gauss(0.0, 0.1), 2),
            "humidity": round(min(100.0, max(0.0, self._humidity + rng.gauss(0.0, 0.3))), 2),
            "battery": round(self._battery, 3),
        }


def limit_tls_read_buffers(size: int = 32 * 1024) -> None:
    """Shrink asyncio's per-connection TLS read buffer (256 KiB by default, allocated up front).

    At 10,000 connections the default alone is 2.5 GiB; a device only ever reads 4-byte acks.
    `max_size` is a class attribute of asyncio.sslproto.SSLProtocol in CPython 3.11+.
    """
    from asyncio import sslproto

    if getattr(sslproto.SSLProtocol, "max_size", 0) > size:
        sslproto.SSLProtocol.max_size = size


def tls_context(identity: Identity) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(identity.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


class DeviceClient:
    """A device's MQTT connection: connects (and reconnects with backoff), publishes at QoS 1 with
    at most `window` unacknowledged messages, resends them with DUP after a reconnect."""

    def __init__(
        self, device_id: str, identity: Identity, host: str, port: int, stats: Stats,
        window: int = 100, keepalive_s: int = 60,
    ) -> None:
        self.device_id = device_id
        self.topic = f"devices/{device_id}/telemetry".encode()
        self._identity = identity
        self._host = host
        self._port = port
        self._stats = stats
        self._window = window
        self._keepalive_s = keepalive_s
        self._context: ssl.SSLContext | None = None
        self._protocol: MqttProtocol | None = None
        self._inflight: dict[int, bytes] = {}
        self._next_id = 0
        self._ready = asyncio.Event()
        self._window_free = asyncio.Event()
        self._window_free.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self.last_write = 0.0

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def connect(self, timeout_s: float = 30.0) -> None:
        """One attempt; MqttError (or OSError/ssl.SSLError/TimeoutError) when it fails."""
        if self._context is None:
            # Built lazily: an SSLContext per device is the largest per-device allocation.
            self._context = tls_context(self._identity)
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: MqttProtocol(self.device_id, self._keepalive_s, self._puback, self._lost),
                self._host, self._port, ssl=self._context, server_hostname=self._host,
            ),
            timeout_s,
        )
        try:
            await asyncio.wait_for(protocol.connack, timeout_s)
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.close()
            raise
        self._protocol = protocol
        self._stats.connected += 1
        self._stats.peak_connected = max(self._stats.peak_connected, self._stats.connected)
        self._stats.connections += 1
        # QoS 1 after a reconnect: resend what the broker never acknowledged.
        for packet_id, payload in self._inflight.items():
            protocol.write(publish_packet(self.topic, payload, packet_id, dup=True))
            self._stats.resent += 1
        self.last_write = time.monotonic()
        self._ready.set()

    async def connect_with_retry(self, stop: asyncio.Event) -> None:
        """Exponential backoff with jitter until connected or stopped."""
        backoff = Backoff(initial_s=0.5, max_s=30.0)
        while not stop.is_set() and not self._closing:
            try:
                await self.connect()
                return
            except (MqttError, OSError, TimeoutError) as exc:
                self._stats.connect_errors += 1
                self._stats.last_error = f"{self.device_id}: {exc.__class__.__name__}: {exc}"
                log.debug("connect %s failed: %s", self.device_id, exc)
            await wait_or_stop(stop, backoff.next_delay())

    def _lost(self, exc: Exception | None) -> None:
        if self._protocol is None:
            return  # a failed attempt; connect() reports it
        self._protocol = None
        self._ready.clear()
        self._stats.connected -= 1
        if self._closing:
            return
        self._stats.disconnects += 1
        self._stats.last_error = f"{self.device_id}: connection lost: {exc}"
        log.warning("device %s lost its connection (%s); reconnecting", self.device_id, exc)
        self._reconnect_task = asyncio.get_running_loop().create_task(
            self.connect_with_retry(asyncio.Event())
        )

    def _puback(self, packet_id: int) -> None:
        if self._inflight.pop(packet_id, None) is None:
            return  # the ack of a resent duplicate
        self._stats.acked += 1
        if len(self._inflight) < self._window:
            self._window_free.set()
        if not self._inflight:
            self._drained.set()

    async def publish(self, payload: bytes) -> None:
        """Send at QoS 1; waits while the window is full or the device is disconnected."""
        while True:
            if len(self._inflight) >= self._window:
                self._window_free.clear()
                await self._window_free.wait()
                continue
            await self._ready.wait()
            # No await from here on: the connection cannot change under us.
            if self._protocol is not None and len(self._inflight) < self._window:
                break
        self._next_id = self._next_id % 65535 + 1
        while self._next_id in self._inflight:
            self._next_id = self._next_id % 65535 + 1
        self._inflight[self._next_id] = payload
        self._drained.clear()
        self._stats.sent += 1
        self._protocol.write(publish_packet(self.topic, payload, self._next_id))
        self.last_write = time.monotonic()

    def ping(self) -> None:
        """PINGREQ; an earlier one still unanswered after half the keep-alive means the
        connection is half-open: it is closed, and the device reconnects."""
        protocol = self._protocol
        if protocol is None:
            return
        now = time.monotonic()
        if protocol.ping_overdue(now, self._keepalive_s / 2):
            protocol.abort(f"no PINGRESP within {self._keepalive_s / 2:.0f}s (half-open connection)")
            return
        protocol.ping()
        self.last_write = now

    async def drain(self) -> None:
        await self._drained.wait()

    def close(self) -> None:
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.write(DISCONNECT_PACKET)
            protocol.flush()
            protocol.transport.close()
