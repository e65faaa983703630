"""A fleet of emulated devices in one asyncio process: provision, connect, publish, drain, report."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from emulator.device import DeviceClient, Signals, Stats, limit_tls_read_buffers
from emulator.runtime import event_loop_factory, raise_nofile_limit
from gateway import endpoints, pki
from gateway.contract import telemetry_payload

log = logging.getLogger(__name__)

# Payloads the bridge must dead-letter (one per contract rule family), rotated through.
MALFORMED = [
    b"not json",
    b'{"metrics": {"temperature": 1.0}}',
    b'{"ts": "yesterday", "metrics": {"temperature": 1.0}}',
    b'{"ts": 1, "metrics": {}}',
    b'{"ts": 1764000000000, "metrics": {"temperature": NaN}}',
    b"[1, 2, 3]",
]


@dataclass(frozen=True)
class Faults:
    """Readings sent wrong on purpose, each a probability per reading (0..1): out of order (up to
    10 s old), late (hours old), sent twice, or followed by a malformed payload."""

    out_of_order: float = 0.0
    late: float = 0.0
    duplicate: float = 0.0
    malformed: float = 0.0

    def timing(self, rng: random.Random) -> tuple[str, int]:
        """The kind of the next reading, and how many milliseconds before now its `ts` is."""
        if self.late and rng.random() < self.late:
            return "late", int(rng.uniform(1.0, 6.0) * 3_600_000)
        if self.out_of_order and rng.random() < self.out_of_order:
            return "out_of_order", int(rng.uniform(0.5, 10.0) * 1000)
        return "reading", 0


@dataclass
class FleetConfig:
    """What to emulate; `faults` holds the shares of readings sent wrong on purpose."""

    pki_dir: Path
    devices: int = 50
    rate: float = 1.0  # readings per second per device; 0 = as fast as the window allows
    duration_s: float = 0.0  # 0 = until stopped (or `count` readings)
    count: int | None = None  # readings per device; default duration_s * rate
    tenant: str = "tenant-a"
    prefix: str = "dev"
    first_index: int = 0
    host: str = endpoints.HOST
    port: int = endpoints.MQTT_TLS_PORT
    faults: Faults = field(default_factory=Faults)
    window: int = 100
    connect_concurrency: int = 64
    keepalive_s: int = 60
    drain_timeout_s: float = 30.0
    progress_interval_s: float = 2.0
    seed: int | None = None
    # (device ids, tenant) -> certificates issued; makes sure every device is in the registry
    # too (gateway.registry.ensure_provisioned). None: certificates only, for MQTT-only runs.
    provisioner: Callable[[list[str], str], int] | None = None

    def device_ids(self) -> list[str]:
        return [f"{self.prefix}-{i:05d}" for i in range(self.first_index, self.first_index + self.devices)]

    def readings_per_device(self) -> int | None:
        if self.count is not None:
            return self.count
        if self.duration_s > 0 and self.rate > 0:
            return max(1, round(self.duration_s * self.rate))
        return None


@dataclass
class FleetResult(Stats):
    """The fleet's counters as it finished (`connected`: just before its devices closed), its size
    and how long connecting and publishing took."""

    devices: int = 0
    connect_s: float = 0.0
    publish_s: float = 0.0

    @property
    def unacked(self) -> int:
        return self.sent - self.acked

    @property
    def ok(self) -> bool:
        return self.unacked == 0 and self.connected == self.devices

    @property
    def ack_rate(self) -> float:
        return self.acked / self.publish_s if self.publish_s > 0 else 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        return (
            f"devices {self.devices}, connected {self.connected} in {self.connect_s:.1f}s; "
            f"sent {self.sent}, acknowledged {self.acked}, unacknowledged {self.unacked}, "
            f"resent {self.resent}; {self.ack_rate:.0f} acks/s over {self.publish_s:.1f}s; "
            f"connect errors {self.connect_errors}, disconnects {self.disconnects}"
            + (f"; {kinds}" if kinds else "")
            + (f"; last error: {self.last_error}" if self.last_error else "")
        )


def run(config: FleetConfig, stop: asyncio.Event | None = None, loop: str = "auto") -> FleetResult:
    """run_fleet on a fresh event loop (uvloop when available)."""
    with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
        return runner.run(run_fleet(config, stop))


def provision(config: FleetConfig) -> dict[str, pki.Identity]:
    """Certificates for every device, issuing (and registering) the missing ones."""
    pki.ensure_ca(config.pki_dir)
    device_ids = config.device_ids()
    identities = {d: pki.device_paths(config.pki_dir, d) for d in device_ids}
    issued = 0
    if config.provisioner is not None:
        issued = config.provisioner(device_ids, config.tenant)
    else:
        for device_id, identity in identities.items():
            if not (identity.cert.exists() and identity.key.exists()):
                pki.issue_device(config.pki_dir, device_id)
                issued += 1
    if issued:
        log.info("provisioned %d new device certificates under %s", issued, config.pki_dir)
    return identities


class _Device:
    """Schedules one device's readings and the injected faults."""

    def __init__(self, client: DeviceClient, config: FleetConfig, rng: random.Random) -> None:
        self.client = client
        self._config = config
        self._rng = rng
        self._signals = Signals(rng)
        # Epoch ms at start: seq keeps increasing across emulator restarts (below 1000/s).
        self._seq = int(time.time() * 1000)
        self._malformed = rng.randrange(len(MALFORMED))

    async def run(self, stats: Stats, stop: asyncio.Event, readings: int | None) -> None:
        config, rng = self._config, self._rng
        interval = 1.0 / config.rate if config.rate > 0 else 0.0
        loop = asyncio.get_running_loop()
        # A random phase so a fleet does not publish in lockstep.
        due = loop.time() + rng.uniform(0.0, interval)
        sent = 0
        while not stop.is_set() and (readings is None or sent < readings):
            delay = due - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            await self._publish_one(stats)
            sent += 1
            due += interval

    async def _publish_one(self, stats: Stats) -> None:
        faults, rng = self._config.faults, self._rng
        kind, age_ms = faults.timing(rng)
        now_ms = int(time.time() * 1000) - age_ms
        self._seq += 1
        payload = telemetry_payload(now_ms, self._signals.next(), seq=self._seq)
        await self.client.publish(payload)
        stats.count(kind)
        if faults.duplicate and rng.random() < faults.duplicate:
            await self.client.publish(payload)
            stats.count("duplicate")
        if faults.malformed and rng.random() < faults.malformed:
            self._malformed = (self._malformed + 1) % len(MALFORMED)
            await self.client.publish(MALFORMED[self._malformed])
            stats.count("malformed")


async def _progress(stats: Stats, total: int, interval_s: float) -> None:
    last_acked, last_time, last_error = 0, time.monotonic(), ""
    while True:
        await asyncio.sleep(interval_s)
        now = time.monotonic()
        rate = (stats.acked - last_acked) / (now - last_time)
        last_acked, last_time = stats.acked, now
        log.info(
            "connected %d/%d  sent %d  acked %d  (%.0f/s)  unacked %d  errors %d",
            stats.connected, total, stats.sent, stats.acked, rate, stats.sent - stats.acked,
            stats.connect_errors + stats.disconnects,
        )
        if stats.last_error != last_error:
            # Connect errors are per attempt and per device; the newest one says enough.
            last_error = stats.last_error
            log.warning("latest error: %s", last_error)


async def _keepalive(devices: list[_Device], keepalive_s: int) -> None:
    """PINGREQ for devices idle for half their keepalive (slow rates), so the broker keeps them."""
    while True:
        await asyncio.sleep(max(1.0, keepalive_s / 4))
        threshold = time.monotonic() - keepalive_s / 2
        for device in devices:
            if device.client.last_write < threshold:
                device.client.ping()


async def _until_done_or_stopped(
    tasks: list[asyncio.Task[object]], stop: asyncio.Event, grace_s: float
) -> None:
    """All devices finished their readings, or a stop: then give blocked publishers a grace period."""
    stopper: asyncio.Task[object] = asyncio.create_task(stop.wait())
    try:
        pending: set[asyncio.Task[object]] = set(tasks)
        while pending and not stop.is_set():
            _, pending = await asyncio.wait(
                [*pending, stopper], return_when=asyncio.FIRST_COMPLETED
            )
            pending.discard(stopper)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
            for task in pending:
                task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stopper.cancel()


async def _drain(devices: list[_Device], timeout_s: float) -> None:
    """Wait for the outstanding PUBACKs (a device without a connection keeps its messages)."""
    try:
        await asyncio.wait_for(
            asyncio.gather(*(device.client.drain() for device in devices)), timeout_s
        )
    except TimeoutError:
        log.warning("%d messages still unacknowledged after %.0fs",
                    sum(device.client.inflight for device in devices), timeout_s)


async def run_fleet(config: FleetConfig, stop: asyncio.Event | None = None) -> FleetResult:
    """Provision, connect every device (each starts publishing once connected), publish, drain."""
    stop = stop or asyncio.Event()
    raise_nofile_limit()
    limit_tls_read_buffers()
    identities = await asyncio.to_thread(provision, config)
    stats = Stats()
    seeder = random.Random(config.seed)
    devices = [
        _Device(
            DeviceClient(device_id, identities[device_id], config.host, config.port, stats,
                         window=config.window, keepalive_s=config.keepalive_s),
            config, random.Random(seeder.random()),
        )
        for device_id in config.device_ids()
    ]
    readings = config.readings_per_device()
    gate = asyncio.Semaphore(config.connect_concurrency)
    started = time.monotonic()
    marks = {"connected": started, "first_publish": 0.0}

    async def device_main(device: _Device) -> None:
        # Bounded concurrent handshakes: Mosquitto's listen backlog is 100.
        async with gate:
            await device.client.connect_with_retry(stop)
        marks["connected"] = time.monotonic()
        if not marks["first_publish"]:
            marks["first_publish"] = marks["connected"]
        await device.run(stats, stop, readings)

    background = [
        asyncio.create_task(_progress(stats, len(devices), config.progress_interval_s)),
        asyncio.create_task(_keepalive(devices, config.keepalive_s)),
    ]
    tasks: list[asyncio.Task[object]] = [
        asyncio.create_task(device_main(device)) for device in devices
    ]
    try:
        await _until_done_or_stopped(tasks, stop, config.drain_timeout_s)
        await _drain(devices, config.drain_timeout_s)
    finally:
        ended = time.monotonic()
        for task in [*background, *tasks]:
            task.cancel()
        connected = stats.connected
        for device in devices:
            device.client.close()
        await asyncio.sleep(0.1)  # let the transports write DISCONNECT
    return FleetResult(
        **{**asdict(stats), "connected": connected},
        devices=len(devices),
        connect_s=marks["connected"] - started,
        publish_s=ended - marks["first_publish"] if marks["first_publish"] else 0.0,
    )
