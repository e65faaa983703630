"""The bridge's lifecycle: build the parts, serve until SIGTERM, then drain and exit cleanly.

Shutdown order matters for "lose nothing": stop taking messages, flush Kafka (each confirmation
queues its PUBACK), disconnect MQTT (queued PUBACKs go out before DISCONNECT), close. Whatever
Kafka did not confirm stays unacknowledged and the broker redelivers it to the next session.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal

from bridge.config import BridgeSettings
from bridge.errors import BridgeError
from bridge.forwarder import Forwarder, Token
from bridge.heartbeat import Heartbeat, producer_config, topic_partitions
from bridge.http import serve
from bridge.kafka_sink import KafkaSink
from bridge.metrics import BridgeMetrics
from bridge.mqtt_source import MqttSource
from bridge.tenants import RegistryTenants
from gateway.groups import MembershipCache
from gateway.retry import Backoff, Stopped, retry_async

log = logging.getLogger(__name__)


def _settle_garbage_collector() -> None:
    """Every message allocates a few short-lived containers, and the messages in flight survive a
    young collection or two; with the default thresholds the collector kept re-walking the
    libraries' long-lived objects (cassandra-driver, pydantic, prometheus). Frozen after start-up,
    they are never walked again, and young collections run ten times less often (measured: a
    tenth of the bridge's CPU per message)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    log.info("garbage collector: %d start-up objects frozen, thresholds %s",
             gc.get_freeze_count(), gc.get_threshold())


async def _heartbeats(
    settings: BridgeSettings, source: MqttSource, sink: KafkaSink[Token], metrics: BridgeMetrics,
    stop: asyncio.Event,
) -> None:
    """Watermark heartbeats while the bridge is quiet, so a silent fleet's windows still close.

    Only when connected with nothing unconfirmed: a heartbeat must never overtake a reading the
    bridge holds. The topic's partitions are looked up until Kafka answers."""
    from confluent_kafka import KafkaException, Producer

    interval = settings.bridge_heartbeat_interval_s
    producer = Producer(producer_config(settings, interval))

    def told(exc: BaseException, delay: float) -> None:
        log.warning("heartbeats wait for the partitions of %s: %s; retrying in %.0fs",
                    settings.bridge_readings_topic, exc, delay)

    try:
        partitions = await retry_async(
            lambda: asyncio.to_thread(topic_partitions, producer, settings.bridge_readings_topic),
            (KafkaException, RuntimeError), Backoff(1.0, 30.0), stop=stop, on_retry=told,
        )
    except Stopped:
        return
    heartbeat = Heartbeat(
        producer, settings.bridge_readings_topic, partitions, interval,
        may_beat=lambda: source.connected and source.in_flight == 0 and sink.queued == 0,
        activity=lambda: metrics.counts.received,
    )
    await heartbeat.run(stop)


async def _refresh_groups(cache: MembershipCache, interval_s: float, stop: asyncio.Event) -> None:
    """Re-read the group memberships every interval (in a thread: the driver blocks); a failed
    read keeps the last good map and is logged once per outage."""
    failing = False
    while not stop.is_set():
        await asyncio.to_thread(cache.refresh_if_due)
        if cache.last_error is not None and not failing:
            log.warning("group memberships not refreshed, keeping %d devices' groups: %s",
                        len(cache), cache.last_error)
        failing = cache.last_error is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


async def run(settings: BridgeSettings, stop: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("bridge settings: %s", settings.model_dump_json())

    metrics = BridgeMetrics()
    tenants = RegistryTenants(settings, settings.bridge_unknown_device_ttl_s)
    sink: KafkaSink[Token] = KafkaSink(settings.producer_config())
    sink.on_delivery_error = lambda name: metrics.delivery_errors.labels(error=name).inc()
    metrics.kafka_up.set_function(lambda: 1.0 if sink.brokers_up else 0.0)
    forwarder = Forwarder(
        sink, tenants, metrics, settings.bridge_readings_topic, settings.bridge_dlq_topic
    )
    sink.on_confirmed = forwarder.confirmed
    memberships = MembershipCache(tenants.group_memberships, settings.bridge_groups_refresh_s)
    forwarder.groups_of = memberships.groups_of
    sink.on_rejected = forwarder.rejected
    source = MqttSource(settings, forwarder, metrics)

    def health() -> tuple[bool, dict[str, object]]:
        ok = source.connected and sink.brokers_up and sink.fatal_error is None
        return ok, {
            "mqtt": "connected" if source.connected else "disconnected",
            "kafka": "up" if sink.brokers_up else "down",
            "in_flight": source.in_flight,
            "kafka_queued": sink.queued,
        }

    server = await serve(
        settings.bridge_metrics_host, settings.bridge_metrics_port, metrics.registry, health
    )
    sink.start()
    await asyncio.to_thread(tenants.preload)
    await asyncio.to_thread(sink.warm_up, [settings.bridge_readings_topic, settings.bridge_dlq_topic])
    _settle_garbage_collector()
    exit_code = 0
    mqtt = asyncio.create_task(source.run(stop), name="mqtt")
    beats: asyncio.Task[None] | None = None
    groups = asyncio.create_task(
        _refresh_groups(memberships, settings.bridge_groups_refresh_s, stop), name="groups"
    )
    if settings.bridge_heartbeat_interval_s > 0:
        beats = asyncio.create_task(_heartbeats(settings, source, sink, metrics, stop), name="heartbeats")
    try:
        while not stop.is_set():
            if sink.fatal_error is not None:
                raise BridgeError(f"Kafka producer failed: {sink.fatal_error}")
            if mqtt.done():
                mqtt.result()  # raises what ended it
                raise BridgeError("the MQTT loop ended unexpectedly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        log.info("stopping: no new messages, flushing Kafka")
    except BridgeError as exc:
        log.error("%s", exc)
        exit_code = 1
    finally:
        source.pause()
        await forwarder.stop()
        await sink.stop_serving()
        # In a thread: the loop keeps running, so the confirmations' PUBACKs keep going out.
        remaining = await asyncio.to_thread(sink.close, settings.bridge_flush_timeout_s)
        await source.stop()
        stop.set()
        with contextlib.suppress(BridgeError, asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(mqtt, 5.0)
        groups.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await groups
        if beats is not None:
            try:
                await asyncio.wait_for(beats, settings.bridge_heartbeat_interval_s + 5.0)
            except (asyncio.CancelledError, TimeoutError):
                pass
            except Exception:
                log.exception("heartbeats ended with an error")
        tenants.close()
        server.close()
        await server.wait_closed()
        log.info("bridge stopped (%d records left unconfirmed, unacknowledged)", remaining)
    return exit_code
