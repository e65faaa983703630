"""`iot emulate` / `python -m emulator`: a fleet of TLS devices publishing contract telemetry."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from emulator.config import EmulatorSettings
from emulator.fleet import Faults, FleetConfig, FleetResult, run_fleet
from emulator.runtime import event_loop_factory
from gateway.contract import TENANT_PATTERN, is_valid_tenant
from gateway.service_main import run_main

log = logging.getLogger("emulator")


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def add_arguments(p: argparse.ArgumentParser, settings: EmulatorSettings) -> None:
    p.add_argument("--devices", type=int, default=settings.emulator_devices)
    p.add_argument("--rate", type=float, default=settings.emulator_rate,
                   help="readings per second per device (0: as fast as acknowledgements allow)")
    p.add_argument("--duration", type=float, default=0.0,
                   help="seconds to publish (0: until SIGTERM/Ctrl-C, or --count readings)")
    p.add_argument("--count", type=int, help="readings per device (instead of --duration)")
    p.add_argument("--tenant", default=settings.emulator_tenant,
                   help="tenant of newly provisioned devices")
    p.add_argument("--prefix", default=settings.emulator_prefix,
                   help="device ids are PREFIX-00000, PREFIX-00001, ...")
    p.add_argument("--first-index", type=int, default=0)
    p.add_argument("--out-of-order", type=_share, default=0.0,
                   help="share of readings with a ts up to 10 s in the past")
    p.add_argument("--late", type=_share, default=0.0,
                   help="share of readings with a ts hours in the past")
    p.add_argument("--duplicate", type=_share, default=0.0,
                   help="share of readings published twice")
    p.add_argument("--malformed", type=_share, default=0.0,
                   help="share of readings followed by a malformed message")
    p.add_argument("--window", type=int, default=100, help="unacknowledged messages per device")
    p.add_argument("--no-register", action="store_true",
                   help="issue missing certificates without recording them in the registry")
    p.add_argument("--seed", type=int)
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="event loop: uvloop when installed (auto), or the standard one")
    p.add_argument("--progress", type=float, default=2.0, help="seconds between progress lines")


def _provisioner(settings: EmulatorSettings) -> Callable[[list[str], str], int]:
    """Certificates plus registry entries (Cassandra must be up), as `iot certs issue` does."""
    from gateway.registry import DeviceRegistry, connect, ensure_provisioned

    def provision(device_ids: list[str], tenant: str) -> int:
        session = connect(settings)
        try:
            registry = DeviceRegistry(session, settings.cassandra_keyspace)
            return ensure_provisioned(settings.pki_dir, registry, device_ids, tenant)
        finally:
            session.cluster.shutdown()

    return provision


async def _main(config: FleetConfig) -> FleetResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run_fleet(config, stop)


def _run(config: FleetConfig, loop: str) -> FleetResult:
    with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
        return runner.run(_main(config))


def main(argv: Sequence[str] | None = None) -> int:
    settings = EmulatorSettings()
    return run_main(
        "iot emulate", __doc__, lambda args: _emulate(args, settings), argv,
        arguments=lambda p: add_arguments(p, settings),
    )


def _emulate(args: argparse.Namespace, settings: EmulatorSettings) -> int:
    # The driver logs a traceback per failed connection attempt; the error says it in one line.
    logging.getLogger("cassandra").setLevel(logging.CRITICAL)
    if not is_valid_tenant(args.tenant):
        log.error("invalid tenant %r: must match %s", args.tenant, TENANT_PATTERN)
        return 2
    if args.devices < 1 or args.rate < 0 or args.duration < 0 or (args.count or 0) < 0:
        log.error("--devices must be at least 1; --rate, --duration and --count not negative")
        return 2
    config = FleetConfig(
        pki_dir=settings.pki_dir, devices=args.devices, rate=args.rate,
        duration_s=args.duration, count=args.count, tenant=args.tenant, prefix=args.prefix,
        first_index=args.first_index, host=settings.mqtt_host, port=settings.mqtt_port,
        faults=Faults(out_of_order=args.out_of_order, late=args.late, duplicate=args.duplicate,
                      malformed=args.malformed),
        window=args.window, seed=args.seed,
        progress_interval_s=args.progress,
        provisioner=None if args.no_register else _provisioner(settings),
    )
    log.info("emulating %d devices %s-%05d.. at %.2f readings/s each against %s:%d",
             config.devices, config.prefix, config.first_index, config.rate, config.host,
             config.port)
    result = _run(config, args.loop)
    log.info("summary: %s", result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
