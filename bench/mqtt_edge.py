"""The MQTT edge: concurrent TLS device connections one emulator process holds, and the rate of
acknowledged QoS-1 publishes through Mosquitto, next to `mosquitto_pub` as the baseline (same run).

`python -m bench.mqtt_edge [--devices 10000] [--messages 200000] [--only publish|connections]`;
`run()` returns the figures. Runs its own Mosquitto (the stack's templates, state under
.stack/bench-mqtt/, port 18883) and stops it afterwards; `--shared` measures the stack's broker.
Wall-clock rates depend on what else the machine runs; CPU per message and per connection of
client and broker are printed alongside because they do not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.mosquitto_clients import pub_lines_argv
from emulator.fleet import FleetConfig, FleetResult, run_fleet
from emulator.fleet import run as run_emulator
from emulator.runtime import event_loop_factory, raise_nofile_limit
from gateway import pki
from gateway.contract import telemetry_payload
from stack import orchestrator, process
from stack.config import StackSettings
from stack.service import NotReady
from stack.services.mosquitto import MosquittoService, open_telemetry_gate

log = logging.getLogger("bench.mqtt_edge")

PARTS = ("publish", "connections")
# The private broker's port (the contract's 8883 stays with the stack).
BENCH_PORT = 18883


def _rss_mib(pid: int | None) -> float:
    return process.resident_memory_bytes(pid) / 2**20 if pid else 0.0


def _self_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CpuMeter:
    """CPU seconds used by this process (or its children) and by the broker over a block: on a
    shared machine wall-clock rates vary with the neighbours, CPU per message does not."""

    def __init__(self, settings: StackSettings, children: bool = False) -> None:
        self._who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
        self._broker = process.read_pid(MosquittoService(settings).processes()[0])

    def _client(self) -> float:
        usage = resource.getrusage(self._who)
        return usage.ru_utime + usage.ru_stime

    def _broker_cpu(self) -> float:
        if self._broker is None:
            return 0.0
        fields = Path(f"/proc/{self._broker}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuMeter:
        self.client_s, self.broker_s = self._client(), self._broker_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client_s = self._client() - self.client_s
        self.broker_s = self._broker_cpu() - self.broker_s

    def per_message(self, messages: int) -> dict[str, float]:
        n = max(1, messages)
        return {
            "client_cpu_us_per_msg": round(self.client_s / n * 1e6, 1),
            "broker_cpu_us_per_msg": round(self.broker_s / n * 1e6, 1),
        }


def connections(settings: StackSettings, devices: int, hold_s: float = 20.0) -> dict[str, Any]:
    """Every device connects with its own certificate and publishes once within `hold_s`;
    nobody disconnects before the last one has published, so the peak is held at once."""
    broker = MosquittoService(settings)
    config = FleetConfig(
        pki_dir=settings.pki_dir,
        devices=devices,
        rate=1.0 / hold_s,
        count=1,
        prefix="bench-conn",
        port=settings.mqtt_port,
        connect_concurrency=128,
        keepalive_s=300,
        progress_interval_s=5.0,
        drain_timeout_s=60.0,
    )
    peak: dict[str, float] = {"broker_rss_mib": 0.0, "emulator_rss_mib": 0.0}

    async def sample() -> None:
        pid = process.read_pid(broker.processes()[0])
        while True:
            peak["broker_rss_mib"] = max(peak["broker_rss_mib"], _rss_mib(pid))
            peak["emulator_rss_mib"] = max(peak["emulator_rss_mib"], _self_rss_mib())
            await asyncio.sleep(1.0)

    async def main() -> FleetResult:
        sampler = asyncio.create_task(sample())
        try:
            return await run_fleet(config)
        finally:
            sampler.cancel()

    started = time.monotonic()
    with CpuMeter(settings) as cpu, asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        result = runner.run(main())
    connected = max(1, result.peak_connected)
    return {
        "target": devices,
        "peak_connected": result.peak_connected,
        "connect_s": round(result.connect_s, 1),
        "connects_per_s": round(result.peak_connected / result.connect_s, 1) if result.connect_s else 0.0,
        "acked": result.acked,
        "unacked": result.unacked,
        "connect_errors": result.connect_errors,
        "wall_s": round(time.monotonic() - started, 1),
        **{k: round(v) for k, v in peak.items()},
        # Handshake + certificate loading + one publish, per device.
        "client_cpu_ms_per_connection": round(cpu.client_s / connected * 1000, 2),
        "broker_cpu_ms_per_connection": round(cpu.broker_s / connected * 1000, 2),
    }


def emulator_rate(settings: StackSettings, devices: int, messages: int) -> dict[str, Any]:
    config = FleetConfig(
        pki_dir=settings.pki_dir,
        devices=devices,
        rate=0.0,
        count=max(1, messages // devices),
        prefix="bench-rate",
        port=settings.mqtt_port,
        window=100,
        progress_interval_s=5.0,
    )
    with CpuMeter(settings) as cpu:
        result = run_emulator(config)
    return {
        "client": f"emulator ({devices} TLS connections, window 100)",
        "acked": result.acked,
        "unacked": result.unacked,
        "seconds": round(result.publish_s, 2),
        "acks_per_s": round(result.ack_rate),
        **cpu.per_message(result.acked),
    }


def mosquitto_pub_rate(settings: StackSettings, clients: int, messages: int) -> dict[str, Any]:
    """`mosquitto_pub -l -q 1`, one process per client, each with its own device certificate."""
    binary = shutil.which("mosquitto_pub")
    if binary is None:
        return {"client": "mosquitto_pub", "error": "mosquitto_pub not installed"}
    per_client = max(1, messages // clients)
    procs = []
    inputs = []
    for index in range(clients):
        device_id = f"bench-pub-{index:05d}"
        identity = pki.device_paths(settings.pki_dir, device_id)
        if not identity.cert.exists():
            identity = pki.issue_device(settings.pki_dir, device_id)
        lines = b"".join(
            telemetry_payload(int(time.time() * 1000), {"temperature": 21.5 + i % 7}, seq=i) + b"\n"
            for i in range(per_client)
        )
        argv = pub_lines_argv(settings, device_id, identity)
        inputs.append((argv, lines))
    errors = []
    with CpuMeter(settings, children=True) as cpu:
        started = time.monotonic()
        for argv, lines in inputs:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append((proc, lines))
        for proc, lines in procs:
            _, err = proc.communicate(lines, timeout=600)
            if proc.returncode != 0:
                errors.append(err.decode(errors="replace")[-200:])
        elapsed = time.monotonic() - started
    total = per_client * clients
    return {
        "client": f"mosquitto_pub -l -q 1 ({clients} processes)",
        "messages": total,
        "seconds": round(elapsed, 2),
        "acks_per_s": round(total / elapsed),
        "errors": errors,
        **cpu.per_message(total),
    }


def bench_settings(shared: bool = False) -> StackSettings:
    """A private broker by default: same templates and PKI code, its own state dir and port, so
    hundreds of thousands of bench messages never reach the stack's bridge (whose persistent
    session would queue them) and the figures are not skewed by the bridge reading along."""
    base = StackSettings()
    if shared:
        return base
    return StackSettings(stack_dir=base.stack_dir / "bench-mqtt", mqtt_port=BENCH_PORT)


def run(
    devices: int = 10_000,
    messages: int = 200_000,
    parts: frozenset[str] = frozenset(PARTS),
    shared: bool = False,
) -> dict[str, Any]:
    settings = bench_settings(shared)
    raise_nofile_limit()
    broker = MosquittoService(settings)
    started_here = False
    try:
        broker.check_ready()
    except NotReady:
        if shared:
            orchestrator.up(settings, only={"mosquitto"})
        else:
            broker.install()
            broker.start()
            broker.wait_ready(settings.ready_timeout_s)
        started_here = True
    # No bridge subscribes to this broker: let device telemetry in (mosquitto/iot_edge.c).
    open_telemetry_gate(settings)
    try:
        results: dict[str, Any] = {}
        if "publish" in parts:
            results["publish"] = [
                mosquitto_pub_rate(settings, 1, messages // 4),
                emulator_rate(settings, 1, messages // 4),
                mosquitto_pub_rate(settings, 4, messages),
                emulator_rate(settings, 4, messages),
                emulator_rate(settings, 50, messages),
            ]
        if "connections" in parts:
            results["connections"] = connections(settings, devices)
    finally:
        if started_here:
            broker.stop()
    return results


def _print(results: dict[str, Any]) -> None:
    out = sys.stdout
    out.write("\nMQTT edge: acknowledged QoS-1 publishes through Mosquitto (TLS, client certs)\n")
    for row in results.get("publish", []):
        if "error" in row:
            out.write(f"  {row['client']:<48} error: {row['error']}\n")
            continue
        out.write(
            f"  {row['client']:<48} {row['acks_per_s']:>8,} msg/s  ({row['seconds']} s)  "
            f"CPU/msg: client {row['client_cpu_us_per_msg']} us, "
            f"broker {row['broker_cpu_us_per_msg']} us\n"
        )
    conn = results.get("connections")
    if conn is None:
        return
    out.write(
        f"\nConcurrent TLS device connections from one emulator process: "
        f"{conn['peak_connected']:,} of {conn['target']:,} in {conn['connect_s']} s "
        f"({conn['connects_per_s']}/s); emulator RSS {conn['emulator_rss_mib']} MiB, "
        f"mosquitto RSS {conn['broker_rss_mib']} MiB; acked {conn['acked']:,}, "
        f"unacked {conn['unacked']}, connect errors {conn['connect_errors']}; CPU per connection: "
        f"client {conn['client_cpu_ms_per_connection']} ms, "
        f"broker {conn['broker_cpu_ms_per_connection']} ms\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt_edge", description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--only", choices=PARTS, help="run one part of the benchmark")
    parser.add_argument(
        "--shared", action="store_true", help="measure the stack's broker on the contract port instead"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parts = frozenset([args.only] if args.only else PARTS)
    results = run(args.devices, args.messages, parts, shared=args.shared)
    if args.json:
        sys.stdout.write(json.dumps(results, indent=1) + "\n")
    else:
        _print(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
