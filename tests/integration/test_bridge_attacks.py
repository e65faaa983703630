"""A hostile device against the real Mosquitto, bridge and Kafka (Cassandra for the registry):
poison numbers, a near-megabyte payload, ids with a trailing newline, a registry outage, a flood.
Each attack is dead-lettered with its reason (or refused at the edge), the bridge's connection
stays up, nothing stalls, and good readings after it still flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from emulator.device import DeviceClient, Stats
from gateway import pki
from gateway.contract import MQTT_MAX_PACKET_BYTES, Reason, telemetry_payload
from harness.bridge import (
    BridgeProcess,
    KafkaRecord,
    create_topics,
    free_port,
    private_stack,
    provision,
    publish,
    read_topic,
)
from stack.config import StackSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(
    services: Callable[..., contextlib.AbstractContextManager[StackSettings]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StackSettings]:
    with services({"cassandra"}), \
            private_stack(tmp_path_factory.mktemp("bridge-attacks"), {"mosquitto", "kafka"}) as s:
        yield s


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


def start_bridge(stack: StackSettings, run_id: str, tmp_path: Path,
                 **env: str) -> BridgeProcess:
    proc = BridgeProcess(stack, run_id, tmp_path, extra_env=env)
    create_topics(proc.kafka_bootstrap, proc.readings_topic, proc.dlq_topic)
    proc.start()
    return proc


@pytest.fixture
def bridge(stack: StackSettings, run_id: str, tmp_path: Path) -> Iterator[BridgeProcess]:
    proc = start_bridge(stack, run_id, tmp_path)
    yield proc
    proc.close()
    print(f"\nbridge log tail:\n{proc.log_tail(10)}")


def now_ms() -> int:
    return int(time.time() * 1000)


def connections(bridge: BridgeProcess) -> float:
    return sum(v for k, v in bridge.metrics().items() if k.startswith("bridge_mqtt_disconnects_total"))


def test_poison_payloads_are_dead_lettered_with_their_reasons_and_the_connection_stays_up(
    stack: StackSettings, bridge: BridgeProcess, run_id: str
) -> None:
    device = f"bra-{run_id}-p"
    provision(stack, [device])
    ts = now_ms()
    near_megabyte = b'{"ts": %d, "metrics": {"t": 1}, "pad": "' % ts
    near_megabyte += b"x" * (MQTT_MAX_PACKET_BYTES - len(near_megabyte) - 200) + b'"}'
    poison = [
        (b'{"ts": %d, "metrics": {"t": 1%s}}' % (ts, b"0" * 400), Reason.METRIC_OUT_OF_RANGE),
        (b'{"ts": %d, "metrics": {"t": 1}, "seq": 18446744073709551616}' % ts, Reason.SEQ_OUT_OF_RANGE),
        # Through the standard library's decoder (orjson refuses the lone surrogate), where
        # 2^64 stays an int: it used to reach the encoder and close the connection.
        (b'{"ts": %d, "n": "\\ud800", "metrics": {"t": 1}, "seq": 18446744073709551616}' % ts,
         Reason.SEQ_OUT_OF_RANGE),
        (near_megabyte, Reason.TOO_LARGE),
        (b'{"ts": %d, "metrics": {"t\\n": 1}}' % ts, Reason.BAD_METRIC_NAME),
    ]
    good = [telemetry_payload(now_ms(), {"t": float(i)}, seq=i) for i in range(5)]
    stats = publish(stack, {device: [p for p, _ in poison] + good})
    assert stats.acked == len(poison) + len(good)  # nothing left unacknowledged at the broker
    dlq = read_topic(bridge.kafka_bootstrap, bridge.dlq_topic, expect=len(poison))
    assert sorted(r.headers["reason"].decode() for r in dlq) == sorted(r.value for _, r in poison)
    [large] = [r for r in dlq if r.headers["reason"] == Reason.TOO_LARGE.value.encode()]
    assert int(large.headers["payload_bytes"]) == len(near_megabyte)
    assert near_megabyte.startswith(large.value) and 0 < len(large.value) < 64 * 1024
    readings = read_topic(bridge.kafka_bootstrap, bridge.readings_topic, expect=len(good))
    assert sorted(int(r.json()["seq"]) for r in readings) == list(range(5))  # type: ignore[call-overload]
    assert connections(bridge) == 0, "the bridge's MQTT connection was dropped"
    deadline = time.monotonic() + 10
    while bridge.metrics()["bridge_messages_in_flight"] and time.monotonic() < deadline:
        time.sleep(0.2)  # the last PUBACKs follow Kafka's delivery reports
    assert bridge.metrics()["bridge_messages_in_flight"] == 0, "the PUBACK window stalled"
    assert bridge.health()["status"] == "ok"


def test_an_id_with_a_trailing_newline_is_refused_at_every_edge(
    stack: StackSettings, bridge: BridgeProcess, run_id: str
) -> None:
    device = f"bra-{run_id}-n"
    with pytest.raises(pki.PkiError):
        pki.issue_device(stack.pki_dir, device + "\n")
    provision(stack, [device])

    async def publish_to(topic: bytes) -> int:
        """A device publishing outside its own topic: the broker takes none of it to the bridge."""
        stats = Stats()
        client = DeviceClient(device, pki.device_paths(stack.pki_dir, device), "localhost",
                              stack.mqtt_port, stats, window=5)
        client.topic = topic
        await client.connect()
        with contextlib.suppress(TimeoutError):
            for i in range(3):
                await asyncio.wait_for(client.publish(telemetry_payload(now_ms(), {"t": 1.0}, seq=i)), 5)
            await asyncio.wait_for(client.drain(), 5)
        client.close()
        return stats.sent

    asyncio.run(publish_to(f"devices/{device}\n/telemetry".encode()))
    asyncio.run(publish_to(f"devices/{device}/telemetry\n".encode()))
    good = [telemetry_payload(now_ms(), {"t": 1.0}, seq=9)]
    publish(stack, {device: good})
    [reading] = read_topic(bridge.kafka_bootstrap, bridge.readings_topic, expect=1)
    assert reading.json()["seq"] == 9
    # The broker refuses a device's publish outside its own topic; had one reached the bridge,
    # it would be dead-lettered as a bad topic or device id, never read as the device's.
    for record in read_topic(bridge.kafka_bootstrap, bridge.dlq_topic, expect=1, timeout_s=3):
        assert record.headers["reason"] in (b"bad_topic", b"bad_device_id")
    assert connections(bridge) == 0 and bridge.health()["status"] == "ok"


class TcpProxy:
    """localhost:port -> target, which the test can cut (every connection dropped) and restore."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def up(self) -> None:
        self._call(self._start())

    def down(self) -> None:
        self._call(self._cut())


def test_registry_down_for_seconds_pauses_reads_without_blocking_the_loop(
    stack: StackSettings, run_id: str, tmp_path: Path
) -> None:
    proxy = TcpProxy(stack.cassandra_port)
    proxy.up()
    bridge = start_bridge(stack, run_id, tmp_path, IOT_CASSANDRA_PORT=str(proxy.port))
    try:
        known = f"bra-{run_id}-k"
        provision(stack, [known])
        publish(stack, {known: [telemetry_payload(now_ms(), {"t": 1.0}, seq=0)]})
        read_topic(bridge.kafka_bootstrap, bridge.readings_topic, expect=1)  # the tenant is cached
        proxy.down()
        late = f"bra-{run_id}-l"  # provisioned after the cut: only the registry knows its tenant
        provision(stack, [late])
        # The new device's readings first; the known device's behind them wait too (in order).
        threads = [
            threading.Thread(target=publish, daemon=True, args=(stack, {device: [
                telemetry_payload(now_ms(), {"t": 1.0}, seq=i) for i in seqs]}))
            for device, seqs in ((late, range(3)), (known, range(1, 4)))
        ]
        threads[0].start()
        time.sleep(1.5)
        threads[1].start()
        slowest = 0.0
        outage_end = time.monotonic() + 6
        while time.monotonic() < outage_end:
            started = time.monotonic()
            health = httpx.get(f"http://127.0.0.1:{bridge.metrics_port}/health", timeout=5).json()
            slowest = max(slowest, time.monotonic() - started)
            assert health["mqtt"] == "connected"
            time.sleep(0.5)
        # Sleeping on the loop (the old backoff: 0.2 .. 3.2 s) held every request that long.
        assert slowest < 2.0, f"the bridge's loop stalled for {slowest:.1f}s"
        assert bridge.metrics()["bridge_messages_produced_total"] == 1  # held, not dead-lettered
        proxy.up()
        for thread in threads:
            thread.join(60)
        records = read_topic(bridge.kafka_bootstrap, bridge.readings_topic, expect=7, timeout_s=60)
        assert len({(r.key, r.json()["seq"]) for r in records}) == 7
        assert read_topic(bridge.kafka_bootstrap, bridge.dlq_topic, expect=1, timeout_s=2) == []
        assert connections(bridge) == 0
    finally:
        bridge.close()
        proxy.down()


def test_a_flooding_device_costs_another_device_no_reading_and_a_bounded_delay(
    stack: StackSettings, bridge: BridgeProcess, run_id: str
) -> None:
    hostile, steady = f"bra-{run_id}-h", f"bra-{run_id}-s"
    provision(stack, [hostile, steady])
    rate, seconds = 20.0, 10.0
    poison = b'{"ts": %d, "metrics": {"t": 1%s}}' % (now_ms(), b"0" * 400)

    async def flood(stop: asyncio.Event, stats: Stats) -> None:
        client = DeviceClient(hostile, pki.device_paths(stack.pki_dir, hostile), "localhost",
                              stack.mqtt_port, stats, window=200)
        await client.connect()
        while not stop.is_set():
            await client.publish(poison)
        client.close()

    async def steady_device(stats: Stats) -> list[float]:
        client = DeviceClient(steady, pki.device_paths(stack.pki_dir, steady), "localhost",
                              stack.mqtt_port, stats, window=20)
        await client.connect()
        started = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            await client.publish(telemetry_payload(now_ms(), {"t": float(i)}, seq=i))
        await asyncio.wait_for(client.drain(), 30)
        client.close()
        return [time.monotonic() - started]

    async def both() -> tuple[Stats, Stats, float]:
        stop = asyncio.Event()
        hostile_stats, steady_stats = Stats(), Stats()
        flooding = asyncio.create_task(flood(stop, hostile_stats))
        await asyncio.sleep(1.0)  # the flood is on before the steady device starts
        [took] = await steady_device(steady_stats)
        stop.set()
        await flooding
        return hostile_stats, steady_stats, took

    hostile_stats, _steady_stats, took = asyncio.run(both())
    expected = int(rate * seconds)
    records = read_topic(bridge.kafka_bootstrap, bridge.readings_topic, expect=expected, timeout_s=60)
    steady_records: list[KafkaRecord] = [r for r in records if r.key == steady.encode()]
    assert len({r.json()["seq"] for r in steady_records}) == expected
    latencies = sorted(r.timestamp_ms - int(r.json()["ts"]) for r in steady_records)  # type: ignore[call-overload]
    p95 = latencies[int(len(latencies) * 0.95)]
    print(f"\nflood: hostile sent {hostile_stats.sent} poison messages in ~{took:.0f}s; the steady "
          f"device's {expected} readings took {took:.1f}s, p95 publish-to-Kafka {p95} ms")
    assert hostile_stats.sent > 10 * expected  # it really flooded
    assert took < seconds + 5, "the steady device's publishing was held back"
    # One device publishes poison faster (measured: ~41,000/s over TLS) than the bridge refuses
    # it on two shared cores, so Mosquitto's queue for the bridge grows during the flood and the
    # steady device's readings wait their turn in it (measured p95: 5.2 s after a 10 s flood).
    # None is lost and the wait is bounded by the flood; keeping it short needs a per-client
    # rate limit at the broker (docs/bridge.md).
    assert p95 < 2 * seconds * 1000, f"the steady device's readings waited {p95} ms (p95)"
    assert connections(bridge) == 0 and bridge.health()["status"] == "ok"
