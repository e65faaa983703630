"""`iot certs ...`, `iot devices ...` and `iot groups ...`: provisioning devices (certificate +
registry entry) and grouping them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic_settings import SettingsConfigDict

from gateway import pki
from gateway.contract import TENANT_PATTERN, is_valid_tenant
from gateway.groups import GroupRegistry, format_groups
from gateway.registry import DeviceRegistry, RegistryError, connect, provision_device
from gateway.settings import CassandraConnection
from stack.config import StackSettings

log = logging.getLogger("iot.certs")


class CertsSettings(StackSettings, CassandraConnection):
    """The stack's paths and ports (IOT_ prefix) plus where the registry lives."""

    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")


class CliError(Exception):
    """A user-facing failure: the message is printed, the exit code is 1."""


@contextmanager
def open_registry(settings: CertsSettings) -> Iterator[DeviceRegistry]:
    """The registry for one command; the driver's threads are shut down afterwards."""
    session = connect(settings)
    try:
        yield DeviceRegistry(session, settings.cassandra_keyspace)
    finally:
        session.cluster.shutdown()


def _check_tenant(tenant: str | None) -> None:
    if tenant is not None and not is_valid_tenant(tenant):
        raise CliError(f"invalid tenant {tenant!r}: must match {TENANT_PATTERN}")


def _report(heading: str, rows: Sequence[tuple[str, object]]) -> int:
    """What a command made: a heading, then one indented `label value` line per row, the values
    aligned; the command's exit code."""
    width = max(len(label) for label, _ in rows)
    sys.stdout.write(heading + "\n" + "".join(f"  {label:<{width}} {value}\n" for label, value in rows))
    return 0


def _issue(args: argparse.Namespace, settings: CertsSettings) -> int:
    pki.check_device_id(args.device_id)
    _check_tenant(args.tenant)
    with open_registry(settings) as registry:
        identity = provision_device(settings.pki_dir, registry, args.device_id, args.tenant)
    return _report(f"issued {args.device_id} (tenant {args.tenant})",
                   [("certificate", identity.cert), ("key", identity.key), ("ca", identity.ca)])


def _revoke(args: argparse.Namespace, settings: CertsSettings) -> int:
    from stack.services.mosquitto import reload

    pki.check_device_id(args.device_id)
    identity = pki.device_paths(settings.pki_dir, args.device_id)
    if not identity.cert.exists():
        raise CliError(f"device {args.device_id!r} has no certificate at {identity.cert}")
    # The CRL first: it is what keeps the device out, even if the registry is down.
    serial = pki.revoke_certificate(settings.pki_dir, identity.cert)
    reloaded = reload(settings)
    with open_registry(settings) as registry:
        registry.revoke(args.device_id)
    sys.stdout.write(
        f"revoked {args.device_id} (serial {serial}); "
        + ("mosquitto reloaded the CRL\n" if reloaded else "mosquitto is not running\n")
    )
    return 0


def _operator(args: argparse.Namespace, settings: CertsSettings) -> int:
    identity = pki.operator_identity(settings.pki_dir)
    sys.stdout.write(
        f"mosquitto_sub -h localhost -p {settings.mqtt_port} --cafile {identity.ca} "
        f"--cert {identity.cert} --key {identity.key} -t 'devices/#' -v\n"
    )
    return 0


def _init(args: argparse.Namespace, settings: CertsSettings) -> int:
    """What the broker and the bridge need before they start; idempotent (docker/ pki-init)."""
    pki_dir = settings.pki_dir
    ca = pki.ensure_ca(pki_dir)
    server = pki.server_identity(pki_dir, extra_names=args.server_name)
    bridge = pki.service_identity(pki_dir, pki.BRIDGE_CN)
    operator = pki.operator_identity(pki_dir)
    dns = ", ".join(pki.server_dns_names(server.cert))
    return _report(f"pki ready in {pki_dir}", [
        ("ca", ca), ("server", f"{server.cert} (DNS {dns})"), ("bridge", bridge.cert),
        ("operator", operator.cert),
    ])


def _list(args: argparse.Namespace, settings: CertsSettings) -> int:
    _check_tenant(args.tenant)
    with open_registry(settings) as registry:
        devices = registry.list(args.tenant)
    if args.json:
        rows = [
            {
                "deviceId": d.device_id, "tenant": d.tenant, "fingerprint": d.cert_fingerprint,
                "createdAt": d.created_at.isoformat(),
                "revokedAt": d.revoked_at.isoformat() if d.revoked_at else None,
            }
            for d in devices
        ]
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return 0
    for d in devices:
        revoked = f"  revoked {d.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if d.revoked_at else ""
        sys.stdout.write(
            f"{d.device_id}\t{d.tenant}\t{d.created_at:%Y-%m-%dT%H:%M:%SZ}\t"
            f"{d.cert_fingerprint[:16]}{revoked}\n"
        )
    return 0


def _run(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    args = parser.parse_args(list(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The driver logs a traceback per failed connection attempt; our error says it in one line.
    logging.getLogger("cassandra").setLevel(logging.CRITICAL)
    try:
        result: int = args.func(args, CertsSettings())
        return result
    except (CliError, pki.PkiError, RegistryError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1


Handler = Callable[[argparse.Namespace, CertsSettings], int]
# One argument: its names, then add_argument's keywords.
Argument = tuple[tuple[str, ...], dict[str, Any]]

TENANT: Argument = (("--tenant",), {"required": True})
ANY_TENANT: Argument = (("--tenant",), {"help": "only this tenant's"})
AS_JSON: Argument = (("--json",), {"action": "store_true"})


def _main(
    prog: str, description: str, commands: Sequence[tuple[str, str, Handler, Sequence[Argument]]],
    argv: Sequence[str],
) -> int:
    """`prog ACTION ...`: one subcommand per (action, help, handler, arguments)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="action", required=True)
    for action, help_text, handler, arguments in commands:
        command = sub.add_parser(action, help=help_text)
        for names, options in arguments:
            command.add_argument(*names, **options)
        command.set_defaults(func=handler)
    return _run(parser, argv)


def certs_main(argv: Sequence[str]) -> int:
    device: Argument = (("device_id",), {})
    server_name: Argument = (("--server-name",), {
        "action": "append", "default": [], "metavar": "DNS",
        "help": "another DNS name of the broker (repeatable), e.g. `mosquitto` in docker compose",
    })
    return _main("iot certs", "device certificates", [
        ("issue", "issue a device certificate and register the device", _issue, [device, TENANT]),
        ("revoke", "revoke a device certificate (CRL) and reload mosquitto", _revoke, [device]),
        ("operator", "create the operator certificate if missing; print a mosquitto_sub command",
         _operator, []),
        ("init", "create the CA, the broker's, the bridge's and the operator's certificates", _init,
         [server_name]),
    ], argv)


def devices_main(argv: Sequence[str]) -> int:
    return _main("iot devices", "provisioned devices", [
        ("list", "devices, optionally of one tenant", _list, [ANY_TENANT, AS_JSON]),
    ], argv)


@contextmanager
def open_groups(settings: CertsSettings) -> Iterator[GroupRegistry]:
    session = connect(settings)
    try:
        devices = DeviceRegistry(session, settings.cassandra_keyspace)
        yield GroupRegistry(session, devices, settings.cassandra_keyspace)
    finally:
        session.cluster.shutdown()


def _group_create(args: argparse.Namespace, settings: CertsSettings) -> int:
    _check_tenant(args.tenant)
    with open_groups(settings) as groups:
        group = groups.create(args.tenant, args.name)
    sys.stdout.write(f"created group {group.name} (tenant {group.tenant})\n")
    return 0


def _group_members(args: argparse.Namespace, settings: CertsSettings) -> int:
    """`add` or `remove` (args.action): the same checks, one change of membership."""
    _check_tenant(args.tenant)
    with open_groups(settings) as groups:
        change = groups.add if args.action == "add" else groups.remove
        tenant = change(args.name, args.device_ids, args.tenant)
    done = "added" if args.action == "add" else "removed"
    where = "to" if args.action == "add" else "from"
    sys.stdout.write(f"{done} {len(args.device_ids)} device(s) {where} {args.name} (tenant {tenant})\n")
    return 0


def _group_list(args: argparse.Namespace, settings: CertsSettings) -> int:
    _check_tenant(args.tenant)
    with open_groups(settings) as groups:
        found = groups.list(args.tenant)
        if args.json:
            rows = [{"group": g.name, "tenant": g.tenant, "devices": groups.members(g.tenant, g.name),
                     "createdAt": g.created_at.isoformat()} for g in found]
            sys.stdout.write(json.dumps(rows, indent=1) + "\n")
            return 0
    sys.stdout.write(format_groups(found))
    return 0


def groups_main(argv: Sequence[str]) -> int:
    name: Argument = (("name",), {})
    members: Argument = (("device_ids",), {"nargs": "+", "metavar": "DEVICE_ID"})
    which: Argument = (("--tenant",), {"help": "needed only when several tenants use the name"})
    return _main("iot groups", "a tenant's named device groups", [
        ("create", "create an empty group in a tenant", _group_create, [name, TENANT]),
        ("add", "add devices (of the group's tenant) to a group", _group_members, [name, members, which]),
        ("remove", "remove devices from a group", _group_members, [name, members, which]),
        ("list", "groups, optionally of one tenant, with their size", _group_list, [ANY_TENANT, AS_JSON]),
    ], argv)
