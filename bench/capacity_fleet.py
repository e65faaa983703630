"""The capacity bench's publishers: one process of many TLS devices (the emulator's own device
client), all connected before the clock starts, then paced by one ticker at a total rate.

`python -m bench.capacity_fleet --prefix cap-s0 --first 0 --devices 500 --rate 10000 --seconds 45`
prints `{"ready": N}` once every device is connected, starts on a `go` line on stdin, and prints
its figures as one JSON line at the end: per device, readings sent and acknowledged (the
oracle's expectation), and its own achieved rate, so that a publisher that could not keep the
pace is told apart from a pipeline that pushed back (devices whose in-flight window was full).

A process rather than a coroutine of the bench: two of them use both cores, as devices would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

from emulator.device import DeviceClient, Stats, limit_tls_read_buffers
from emulator.runtime import event_loop_factory, raise_nofile_limit
from gateway import pki
from gateway.contract import telemetry_payload

TICK_S = 0.01
CONNECT_CONCURRENCY = 32


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _connect_all(clients: list[DeviceClient], timeout_s: float) -> None:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    stop = asyncio.Event()

    async def one(client: DeviceClient) -> None:
        async with gate:
            await client.connect_with_retry(stop)

    try:
        await asyncio.wait_for(asyncio.gather(*(one(c) for c in clients)), timeout_s)
    finally:
        stop.set()


async def _pace(
    clients: list[DeviceClient], rate: float, seconds: float, window: int, seq0: int
) -> dict[str, Any]:
    """Every device's readings due by now at `rate` in total, phases spread over the fleet so
    the fleet does not publish in lockstep; a device whose window is full waits (backpressure)."""
    loop = asyncio.get_running_loop()
    per_device = rate / len(clients)
    phases = [i / len(clients) for i in range(len(clients))]
    sent = [0] * len(clients)
    planned = [math.floor(seconds * per_device + p) for p in phases]
    blocked_ticks = behind_max = 0
    started = loop.time()
    cpu_before = _cpu_s()
    while (elapsed := loop.time() - started) < seconds:
        ts = int(time.time() * 1000)
        blocked = False
        due_total = 0
        for i, client in enumerate(clients):
            due = min(planned[i], math.floor(elapsed * per_device + phases[i]))
            due_total += due
            while sent[i] < due:
                if client.inflight >= window:
                    blocked = True
                    break
                seq = seq0 + sent[i]
                metrics = {"temperature": 20.0 + seq % 100 / 10, "humidity": 45.5, "battery": 88.0}
                await client.publish(telemetry_payload(ts, metrics, seq=seq))
                sent[i] += 1
        blocked_ticks += blocked
        behind_max = max(behind_max, due_total - sum(sent))
        await asyncio.sleep(TICK_S)
    return {
        "planned": sum(planned),
        "sent_by_device": sent,
        "paced_s": round(loop.time() - started, 3),
        "cpu_s": _cpu_s() - cpu_before,
        # Ticks in which some device could not publish because its window was full.
        "window_full_ticks": blocked_ticks,
        # The most readings the fleet was ever behind its schedule.
        "behind_max": behind_max,
        "ticks": round(seconds / TICK_S),
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile_limit()
    limit_tls_read_buffers()
    stats = Stats()
    ids = [f"{args.prefix}-{i:05d}" for i in range(args.first, args.first + args.devices)]
    clients = [
        DeviceClient(d, pki.device_paths(Path(args.pki_dir), d), args.host, args.port, stats,
                     window=args.window, keepalive_s=120)
        for d in ids
    ]
    await _connect_all(clients, args.connect_timeout)
    sys.stdout.write(json.dumps({"ready": stats.connected}) + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    paced = await _pace(clients, args.rate, args.seconds, args.window, args.seq0)
    drained = True
    try:
        await asyncio.wait_for(asyncio.gather(*(c.drain() for c in clients)), args.drain_timeout)
    except TimeoutError:
        drained = False
    sent = paced.pop("sent_by_device")
    acked = [s - c.inflight for s, c in zip(sent, clients, strict=True)]
    for client in clients:
        client.close()
    await asyncio.sleep(0.2)  # the transports write DISCONNECT
    return {
        **paced,
        "devices": len(clients),
        "connected": stats.peak_connected,
        "sent": sum(sent),
        "acked": sum(acked),
        "drained": drained,
        "disconnects": stats.disconnects,
        "resent": stats.resent,
        "by_device": {d: [s, a] for d, s, a in zip(ids, sent, acked, strict=True)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capacity_fleet")
    p.add_argument("--pki-dir", required=True)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="readings/s of this process in total")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--seq0", type=int, default=int(time.time() * 1000))
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--drain-timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        figures = runner.run(_main(args))
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
