"""Capacity of one box: the highest paced rate of readings, published live over MQTT (TLS,
client certificates) by 1,000 devices, that the whole path (Mosquitto -> bridge -> Kafka ->
Flink -> Cassandra) sustains for 3 minutes with nothing lost, consumer lag bounded and
freshness p99 <= 15 s; beside it, in the same run, the rate Mosquitto alone carries from the
same publishers to `mosquitto_sub`.

Targets (default profile): >= 20,000 readings/s end to end, and >= 50 % of Mosquitto alone.

How: short steps (45 s, each starting 30 s before a minute ends, so a 1m window closes under
load) find the knee (bench/capacity_search.py), then 3 minutes at the chosen rate. Every step
has 1,000 devices of its own (tenant `capacity`; the default emulator's devices stay apart),
so that the oracle compares, per device, the readings acknowledged to it with the readings the
1m windows in Cassandra count for it. Freshness: window end -> row, on a sample of 25 devices
(bench/flink.py's sightings); lag: Kafka end offsets vs the position the job's sources have
read to (their `currentOffset`), the committed offsets' lag printed beside it. Mosquitto
alone: a private broker (bench/mqtt_edge.py's), the publishers unpaced, `mosquitto_sub` live.

`python -m bench capacity [--profile default]`; `python -m bench.capacity --only mosquitto`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from bench import capacity_search as search
from bench.capacity_cpu import CpuBudget
from bench.capacity_live import Fleet, LiveSubscriber, mosquitto_alone_broker
from bench.flink import consumer_lag, position_lag, record_windows
from flink_jobs.config import FlinkJobSettings
from flink_jobs.rest import FlinkRest
from gateway import endpoints, pki, topics
from gateway.registry import DeviceRegistry, connect, ensure_provisioned
from gateway.settings import KafkaConnection
from stack import topology
from stack.config import StackSettings

log = logging.getLogger("bench.capacity")

TENANT = "capacity"
DEVICES = 1_000
STEP_S = 45.0
CONFIRM_S = 180.0
START_RATE = 20_000
# The default profile's target, end to end.
TARGET_RATE = 20_000
CEILING = 60_000
MAX_STEPS = 5
FRESHNESS_SAMPLE = 25
# Steps start this many seconds into a minute: the window ending 30 s later closes under load.
START_SECOND = 30
PROFILES = ("default", "replicated")


def _settings(profile: str) -> StackSettings:
    """The stack of `profile`, which must be the one running (both use the contract's ports)."""
    settings = StackSettings.for_profile("replicated" if profile == "replicated" else "default")
    running = StackSettings().profile
    if running != settings.profile:
        raise RuntimeError(
            f"the {running} profile runs, not {profile}: `iot down`, then `iot up --profile {profile}`"
        )
    return settings


@contextlib.contextmanager
def _client_env(settings: StackSettings) -> Iterator[None]:
    """The profile's Kafka and Cassandra addresses and credentials for this process's clients
    (and the publishers'), as client.env hands them to users; nothing for the default."""
    saved = dict(os.environ)
    os.environ.update(topology.service_env(settings))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _next_start(after: float) -> float:
    """The next wall-clock moment START_SECOND into a minute, at least 2 s after `after`."""
    start = math.floor(after / 60) * 60 + START_SECOND
    while start < after + 2:
        start += 60
    return start


class _Sampler(threading.Thread):
    """Freshness sightings of sampled devices and the job's consumer lag, during one step."""

    def __init__(self, settings: StackSettings, session: Any, devices: list[str], since_ms: int) -> None:
        super().__init__(daemon=True)
        self.seen: dict[tuple[str, int], float] = {}
        # Kafka's end offsets minus the job's own read position, and minus its committed offsets
        # (which move only when a checkpoint completes).
        self.lag: list[int] = []
        self.committed_lag: list[int] = []
        self.stop = threading.Event()
        self._session, self._devices, self._since = session, devices, since_ms
        self._kafka = KafkaConnection().kafka_client_config()
        job = FlinkJobSettings()
        self._group, self._job_name = job.consumer_group, job.job_name
        self._rest = FlinkRest(f"http://localhost:{settings.flink_rest_port}")
        self._partitions = _partitions(self._kafka)

    def _position_lag(self) -> int | None:
        job = self._rest.active_job(self._job_name)
        if job is None:
            return None
        offsets = self._rest.source_offsets(job["jid"], topics.KAFKA_READINGS)
        if not offsets:
            return None
        return position_lag(self._kafka["bootstrap.servers"], topics.KAFKA_READINGS, offsets,
                            self._kafka)

    def run(self) -> None:
        tick = 0
        while not self.stop.wait(1.0):
            try:
                record_windows(self._session, self._devices, self.seen, self._since)
                if tick % 3 == 0:
                    self.committed_lag.append(consumer_lag(
                        self._kafka["bootstrap.servers"], self._group, topics.KAFKA_READINGS,
                        self._partitions, self._kafka,
                    ))
                    position = self._position_lag()
                    if position is not None:
                        self.lag.append(position)
            except Exception as exc:  # a slow answer under load is a sample missed, not a stop
                log.warning("sampler: %s: %s", exc.__class__.__name__, exc)
            tick += 1
        self._rest.close()


def _partitions(kafka: dict[str, Any]) -> int:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient(kafka).list_topics(topics.KAFKA_READINGS, timeout=10)
    return len(meta.topics[topics.KAFKA_READINGS].partitions)


class Run:
    """One bench run against a running stack: its steps, their devices and their figures."""

    def __init__(self, settings: StackSettings, devices: int, procs: int) -> None:
        self.settings, self.devices, self.procs = settings, devices, procs
        self.session = connect()
        self.session.set_keyspace(endpoints.CASSANDRA_KEYSPACE)
        self.registry = DeviceRegistry(self.session, endpoints.CASSANDRA_KEYSPACE)
        self.steps: list[dict[str, Any]] = []
        self.log_dir = settings.stack_dir / "bench-capacity"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.session.cluster.shutdown()

    def provision(self, steps: int) -> None:
        """Certificates and registry entries of every step's devices, before the first step
        (issued once; later runs find them): a step then connects within the gap before it."""
        started = time.monotonic()
        ids = [f"cap-s{n}-{i:05d}" for n in range(steps) for i in range(self.devices)]
        issued = ensure_provisioned(self.settings.pki_dir, self.registry, ids, TENANT)
        log.info("%d devices of tenant %s ready (%d issued) in %.1f s", len(ids), TENANT, issued,
                 time.monotonic() - started)

    def step(self, rate: int, seconds: float) -> dict[str, Any]:
        prefix = f"cap-s{len(self.steps)}"
        fleet = Fleet(self.settings.mqtt_port, self.settings.pki_dir, prefix, self.devices, rate,
                      seconds, self.procs, self.log_dir)
        every = max(1, self.devices // FRESHNESS_SAMPLE)
        sample = [f"{prefix}-{i:05d}" for i in range(0, self.devices, every)]
        cpu = CpuBudget(self.settings.run_dir)
        try:
            fleet.wait_ready()
            cpu.mark("idle")
            go = _next_start(time.time())
            sampler = _Sampler(self.settings, self.session, sample, int((go - START_SECOND) * 1000))
            time.sleep(max(0.0, go - time.time()))
            cpu.mark("go")
            fleet.go()
            sampler.start()
            try:
                result = fleet.result()
                # A row up to 3 s past the freshness target is still reported by its delay.
                time.sleep(max(0.0, go + seconds + 3 - time.time()))
                cpu.mark("end")
            finally:
                sampler.stop.set()
                sampler.join(10)
        finally:
            fleet.kill()  # the ones still running after a failure
        # Windows that closed 10 s or more into the step; one never seen counts as too late.
        ends = [e for e in range(int(go) // 60 * 60 + 60, int(go + seconds) + 1, 60) if e >= go + 10]
        fresh = [sampler.seen.get((d, e), math.inf) for d in sample for e in ends]
        figures = search.StepFigures(
            rate=rate, planned=result["planned"], sent=result["sent"], acked=result["acked"],
            window_full_share=result["window_full_ticks"] / max(1, result["ticks"]),
            freshness_s=fresh, lag_samples=sampler.lag, committed_lag_samples=sampler.committed_lag,
            checkpoint_interval_s=FlinkJobSettings().checkpoint_interval_s,
        )
        kept, limit, reasons = search.verdict(figures)
        row = {
            "prefix": prefix, "rate": rate, "seconds": seconds, "started": go, "kept_up": kept,
            "limited_by": limit, "reasons": reasons, "planned": result["planned"],
            "sent": result["sent"], "acked": result["acked"],
            "publishers_readings_per_s": round(result["sent"] / max(1e-3, result["paced_s"])),
            "publishers_cpu_us_per_reading": round(result["cpu_s"] / max(1, result["sent"]) * 1e6, 1),
            "window_full_share": round(figures.window_full_share, 3),
            "behind_max": result["behind_max"], "disconnects": result["disconnects"],
            "freshness_p50_s": round(search.percentile(fresh, 0.5), 1),
            "freshness_p99_s": round(search.percentile(fresh, 0.99), 1),
            "freshness_windows": len(fresh),
            "lag_max": max(sampler.lag, default=0), "lag_samples": sampler.lag,
            "committed_lag_max": max(sampler.committed_lag, default=0),
            "committed_lag_samples": sampler.committed_lag,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "cpu": cpu.figures(result["sent"], result["cpu_s"], TARGET_RATE),
            "expected": {d: a for d, (_, a) in result["by_device"].items()},
        }
        log.info("step %s at %d/s: kept up %s %s; sent %d, acked %d, fresh p99 %s s, lag max %d "
                 "(committed %d)", prefix, rate, kept, reasons, row["sent"], row["acked"],
                 row["freshness_p99_s"], row["lag_max"], row["committed_lag_max"])
        log.info("step %s CPU: machine %.0f %% busy, %.1f us per reading (publishers %.1f), idle %.2f "
                 "cores; at %d/s the path would need %.2f cores: %s", prefix,
                 100 * (row["cpu"]["machine_busy_share"] or 0), row["cpu"]["us_per_reading"],
                 row["cpu"]["publishers_us_per_reading"], row["cpu"]["idle_cores"], TARGET_RATE,
                 row["cpu"]["cores_at_target"],
                 ", ".join(f"{k} {v['us_per_reading']}" for k, v in row["cpu"]["stages"].items()))
        self.steps.append(row)
        return row

    def counted(self, prefix: str, since_ms: int) -> dict[str, int]:
        """Readings per device in the 1m windows from `since_ms` (the temperature metric: every
        reading carries it once)."""
        from cassandra.concurrent import execute_concurrent_with_args

        from storage.rows import bucket_month

        statement = self.session.prepare(
            "SELECT metric, count FROM agg_1m WHERE device_id=? AND bucket_month=? AND window_start>=?"
        )
        months = sorted({bucket_month(since_ms), bucket_month(int(time.time() * 1000))})
        ids = [f"{prefix}-{i:05d}" for i in range(self.devices)]
        args = [(d, m, since_ms) for d in ids for m in months]
        counted = dict.fromkeys(ids, 0)
        for (device, _, _), (ok, rows) in zip(
            args, execute_concurrent_with_args(self.session, statement, args, concurrency=64), strict=True
        ):
            if not ok:
                raise RuntimeError(f"oracle read of {device}: {rows}")
            counted[device] += sum(r.count for r in rows if r.metric == "temperature")
        return counted

    def oracle(self, timeout_s: float = 120.0) -> None:
        """Every step's devices, once the last window of the last step has closed: poll until
        the counts match or the timeout (readings still on their way count as lost)."""
        last_end = max(s["started"] + s["seconds"] for s in self.steps)
        time.sleep(max(0.0, math.ceil(last_end / 60) * 60 + search.FRESHNESS_P99_S - time.time()))
        deadline = time.time() + timeout_s
        pending = list(self.steps)
        while pending:
            for step in list(pending):
                since = int(step["started"] - START_SECOND) * 1000
                result = search.compare_counts(step["expected"], self.counted(step["prefix"], since))
                step["oracle"] = {k: v for k, v in vars(result).items()}
                if result.exact:
                    pending.remove(step)
            if not pending or time.time() > deadline:
                break
            time.sleep(5)


def mosquitto_alone(devices: int, seconds: float, procs: int) -> dict[str, Any]:
    """The same publishers, unpaced, to a broker of its own read live by `mosquitto_sub`."""
    with mosquitto_alone_broker() as settings:
        pki.ensure_ca(settings.pki_dir)
        prefix = "cap-m"
        for i in range(devices):
            identity = pki.device_paths(settings.pki_dir, f"{prefix}-{i:05d}")
            if not identity.cert.exists():
                pki.issue_device(settings.pki_dir, f"{prefix}-{i:05d}")
        log_dir = StackSettings().stack_dir / "bench-capacity"
        log_dir.mkdir(parents=True, exist_ok=True)
        fleet = Fleet(settings.mqtt_port, settings.pki_dir, prefix, devices, 10 * CEILING, seconds,
                      procs, log_dir)
        with LiveSubscriber(settings) as sub:
            try:
                fleet.wait_ready()
                started = time.monotonic()
                fleet.go()
                result = fleet.result()
            finally:
                fleet.kill()
            time.sleep(2)
            # From 3 s in (every publisher writing) to the end of the publishing.
            received = sub.count_at(started + seconds) - sub.count_at(started + 3)
    return {
        "devices": devices, "seconds": seconds,
        "mosquitto_sub_readings_per_s": round(received / (seconds - 3)),
        "publishers_sent": result["sent"], "publishers_acked": result["acked"],
        "publishers_readings_per_s": round(result["sent"] / max(1e-3, result["paced_s"])),
        "publishers_cpu_us_per_reading": round(result["cpu_s"] / max(1, result["sent"]) * 1e6, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _search(bench: Run, start: int, max_steps: int) -> int | None:
    tried: list[search.Step] = []
    while len(tried) < max_steps and (rate := search.next_rate(tried, start, CEILING)) is not None:
        tried.append(search.Step(rate, bench.step(rate, STEP_S)["kept_up"]))
    return search.chosen_rate(tried)


def run(profile: str = "default", devices: int = DEVICES, procs: int = 2, start: int = START_RATE,
        only: str = "", max_steps: int = MAX_STEPS, confirm_s: float = CONFIRM_S) -> dict[str, Any]:
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: one of {', '.join(PROFILES)}")
    settings = _settings(profile)
    figures: dict[str, Any] = {"profile": profile, "devices": devices, "publisher_processes": procs}
    if only in ("", "mosquitto"):
        figures["mosquitto_alone"] = mosquitto_alone(devices, 30.0, procs)
        log.info("Mosquitto alone: %s", figures["mosquitto_alone"])
    if only == "mosquitto":
        return figures
    with _client_env(settings):
        bench = Run(settings, devices, procs)
        try:
            bench.provision(max_steps + 1)
            chosen = _search(bench, start, max_steps)
            confirmed = None
            if chosen is not None:
                confirmed = bench.step(chosen, confirm_s)
            bench.oracle()
        finally:
            bench.close()
    for step in bench.steps:
        step.pop("expected")
    figures["steps"] = bench.steps
    return {**figures, **_summary(figures, chosen, confirmed)}


def _summary(figures: dict[str, Any], chosen: int | None, confirmed: dict[str, Any] | None) -> dict[str, Any]:
    alone = figures.get("mosquitto_alone", {}).get("mosquitto_sub_readings_per_s")
    sustained = bool(confirmed and confirmed["kept_up"] and confirmed.get("oracle", {}).get("lost") == 0
                     and confirmed["oracle"]["counted_twice"] == 0)
    rate = confirmed["rate"] if confirmed and sustained else 0
    limits = {s["limited_by"] for s in figures["steps"] if s["limited_by"]}
    return {
        "knee_readings_per_s": chosen,
        "sustained_3_min_readings_per_s": rate,
        "confirmation": {k: v for k, v in (confirmed or {}).items()
                         if k not in ("lag_samples", "committed_lag_samples")},
        "vs_mosquitto_alone": round(rate / alone, 3) if alone else None,
        "limited_by": sorted(limits),
        "targets": {"readings_per_s": TARGET_RATE, "vs_mosquitto_alone": 0.5},
        "met": {
            "readings_per_s": rate >= TARGET_RATE,
            "vs_mosquitto_alone": bool(alone and rate / alone >= 0.5),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    p.add_argument("--profile", choices=PROFILES, default="default")
    p.add_argument("--devices", type=int, default=DEVICES)
    p.add_argument("--procs", type=int, default=2, help="publisher processes")
    p.add_argument("--start", type=int, default=START_RATE, help="first step's readings/s")
    p.add_argument("--only", choices=("mosquitto", "pipeline"), default="")
    p.add_argument("--max-steps", type=int, default=MAX_STEPS, help="short steps of the search")
    p.add_argument("--confirm-seconds", type=float, default=CONFIRM_S)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cassandra").setLevel(logging.ERROR)
    figures = run(args.profile, args.devices, args.procs, args.start, args.only, args.max_steps,
                  args.confirm_seconds)
    sys.stdout.write(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
