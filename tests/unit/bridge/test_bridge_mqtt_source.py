"""The bridge's MQTT side against a fake broker on plain TCP (a unit test: no services): the
half-open connection, the lost session, the session taken over, and the CONNECT it sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from bridge.config import BridgeSettings
from bridge.forwarder import Forwarder
from bridge.metrics import BridgeMetrics
from bridge.mqtt_source import MqttSource
from gateway import mqtt_codec as codec
from gateway.topics import KAFKA_DLQ, KAFKA_READINGS


class Peer:
    """The broker's side of one connection: read packets, write bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._rest = b""
        self._controls: list[codec.Control] = []

    async def packet(self) -> codec.Control:
        while not self._controls:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError
            buf = self._rest + data
            _, controls, used = codec.split(buf, 1 << 20, v5=True)
            self._controls += controls
            self._rest = buf[used:]
        return self._controls.pop(0)

    async def handshake(self, session_present: bool = True, props: bytes = b"") -> bytes:
        """CONNACK, then SUBACK for both subscriptions; returns the CONNECT body."""
        header, connect = await self.packet()
        assert header == codec.CONNECT
        self.send(codec.packet(codec.CONNACK, bytes([int(session_present), 0])
                               + codec.varint(len(props)) + props))
        for _ in range(2):
            header, body = await self.packet()
            assert header == codec.SUBSCRIBE
            self.send(codec.packet(codec.SUBACK, body[:2] + b"\x00\x01"))
        return connect

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def idle(self, answer_pings: bool) -> None:
        with contextlib.suppress(EOFError, ConnectionError):
            while True:
                header, _ = await self.packet()
                if header == codec.PINGREQ and answer_pings:
                    self.send(b"\xd0\x00")


Script = Callable[[Peer, int], Awaitable[None]]


class FakeBroker:
    def __init__(self, script: Script) -> None:
        self._script = script
        self.connections = 0
        self.connected_at: list[float] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeBroker:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        self.connected_at.append(time.monotonic())
        try:
            await self._script(Peer(reader, writer), index)
        except (EOFError, ConnectionError):
            pass
        except BaseException as exc:
            logging.getLogger("fake-broker").exception("script failed: %r", exc)
            raise
        finally:
            writer.close()


class NoTenants:
    def tenant_of(self, device_id: str) -> str | None:
        return None

    def cached(self, device_id: str) -> str | None:
        return None

    def needs_lookup(self, device_id: str) -> bool:
        return False


class NoSink:
    def produce(self, *args: object) -> None:
        pass


def source_for(port: int, **overrides: object) -> tuple[MqttSource, BridgeMetrics]:
    fields: dict[str, object] = {
        "mqtt_host": "127.0.0.1", "mqtt_port": port, "bridge_keepalive_s": 1,
        "bridge_ping_timeout_s": 0.5, "bridge_reconnect_min_s": 0.05, "bridge_reconnect_max_s": 0.1,
    }
    settings = BridgeSettings(**{**fields, **overrides})  # type: ignore[arg-type]
    metrics = BridgeMetrics()
    forwarder = Forwarder(NoSink(), NoTenants(), metrics, KAFKA_READINGS, KAFKA_DLQ)
    return MqttSource(settings, forwarder, metrics, use_tls=False), metrics


async def run_until(source: MqttSource, done: Callable[[], bool], timeout_s: float = 8.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    deadline = time.monotonic() + timeout_s
    reached = False
    try:
        while not (reached := done()) and time.monotonic() < deadline:  # noqa: ASYNC110 (a poll of plain state)
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await source.stop(1.0)
        await asyncio.wait_for(task, 5.0)
    assert reached, "condition not reached in time"


def counted(metrics: BridgeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_connect_carries_maximum_packet_size_and_an_unanswered_ping_reconnects() -> None:
    connects: list[bytes] = []

    async def script(peer: Peer, index: int) -> None:
        connects.append(await peer.handshake())
        await peer.idle(answer_pings=index > 0)  # the first connection is half-open

    async with FakeBroker(script) as broker:
        source, metrics = source_for(broker.port)
        await run_until(source, lambda: broker.connections >= 2 and source.connected)
    props, _ = codec.decode_properties(connects[0], 10)
    assert props[codec.MAXIMUM_PACKET_SIZE] == BridgeSettings().bridge_max_packet_bytes
    assert counted(metrics, "bridge_mqtt_disconnects_total", cause="ping_timeout") == 1


async def test_server_keep_alive_replaces_ours() -> None:
    pings: list[float] = []

    async def script(peer: Peer, index: int) -> None:
        await peer.handshake(props=b"\x13\x00\x04")  # Server Keep Alive 4 s
        while True:
            header, _ = await peer.packet()
            if header == codec.PINGREQ:
                pings.append(time.monotonic())
                peer.send(b"\xd0\x00")

    async with FakeBroker(script) as broker:
        source, _ = source_for(broker.port)
        started = time.monotonic()
        await run_until(source, lambda: time.monotonic() - started > 1.5)
    assert pings == []  # with our 1 s keep alive there would have been pings every 0.5 s


async def test_a_session_lost_on_reconnect_is_a_counted_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def script(peer: Peer, index: int) -> None:
        await peer.handshake(session_present=False)
        if index == 0:
            return  # the broker drops the connection (and, restarted, forgot the session)
        await peer.idle(answer_pings=True)

    async with FakeBroker(script) as broker:
        source, metrics = source_for(broker.port)
        with caplog.at_level(logging.INFO, logger="bridge.mqtt_source"):
            await run_until(source, lambda: broker.connections >= 2 and source.connected)
    assert counted(metrics, "bridge_mqtt_sessions_lost_total") == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "no longer had" in
                r.getMessage()]
    assert len(warnings) == 1


async def test_session_taken_over_is_an_error_with_the_longest_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def script(peer: Peer, index: int) -> None:
        await peer.handshake()
        if index == 0:
            peer.send(codec.packet(codec.DISCONNECT, b"\x8e\x00"))
            await asyncio.sleep(0.1)
            return
        await peer.idle(answer_pings=True)

    async with FakeBroker(script) as broker:
        source, metrics = source_for(broker.port, bridge_reconnect_max_s=1.0)
        with caplog.at_level(logging.INFO, logger="bridge.mqtt_source"):
            await run_until(source, lambda: broker.connections >= 2 and source.connected)
    assert broker.connected_at[1] - broker.connected_at[0] >= 0.5  # max backoff x jitter >= 0.5
    assert counted(metrics, "bridge_mqtt_disconnects_total", cause="session_taken_over") == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "another client" in
              r.getMessage()]
    assert len(errors) == 1


async def test_malformed_bytes_from_the_broker_are_answered_and_the_bridge_reconnects() -> None:
    seen: list[codec.Control] = []

    async def script(peer: Peer, index: int) -> None:
        await peer.handshake()
        if index == 0:
            peer.send(b"\x30\xff\xff\xff\xff\x7f")
            seen.append(await peer.packet())
            return
        await peer.idle(answer_pings=True)

    async with FakeBroker(script) as broker:
        source, metrics = source_for(broker.port)
        await run_until(source, lambda: broker.connections >= 2 and source.connected)
    assert seen == [(codec.DISCONNECT, b"\x81")]
    assert counted(metrics, "bridge_mqtt_disconnects_total", cause="protocol_error") == 1
