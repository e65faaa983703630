"""The device -> tenant registry: the `devices` table in Cassandra, written when a device is
provisioned (`iot certs issue`, the emulator) and read by the bridge (through `TenantCache`) and
the query API (through its own asyncio lookups, remembered in a `TenantMemo`).

`DeviceRegistry` creates its table (and a missing keyspace, single-node) idempotently when it is
opened, so provisioning works before the first `iot migrate`. Callers hand in a session from
`connect` (gateway.cassandra_session, the one session factory); the driver's errors become
`RegistryError`s.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import cassandra_session, endpoints
from gateway.contract import TENANT_PATTERN, is_valid_tenant
from gateway.pki import Identity, check_device_id, device_paths, fingerprint, issue_device
from gateway.settings import CassandraConnection

log = logging.getLogger(__name__)

TABLE = "devices"

SCHEMA = [
    # Single-node default; a real cluster creates the keyspace itself with its own replication.
    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
    "{{'class': 'SimpleStrategy', 'replication_factor': 1}}",
    "CREATE TABLE IF NOT EXISTS {ks}.devices ("
    " device_id text PRIMARY KEY,"
    " tenant text,"
    " cert_fingerprint text,"
    " created_at timestamp,"
    " revoked_at timestamp)",
    # Listing by tenant is an operator command over a small table; an index is enough.
    "CREATE INDEX IF NOT EXISTS devices_by_tenant ON {ks}.devices (tenant)",
]


class RegistryError(RuntimeError):
    """The root error of the registry."""


class RegistryUnavailable(RegistryError):
    """Cassandra did not answer."""


class DuplicateDevice(RegistryError):
    """The device id is registered already."""


class UnknownDevice(RegistryError):
    """No such device in the registry."""


@dataclass(frozen=True)
class Device:
    device_id: str
    tenant: str
    cert_fingerprint: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


def connect(settings: CassandraConnection | None = None) -> Any:
    """A driver Session (gateway.cassandra); RegistryUnavailable with the address when Cassandra
    is not up."""
    try:
        return cassandra_session.connect(settings or CassandraConnection())
    except cassandra_session.CassandraUnavailable as exc:
        raise RegistryUnavailable(f"{exc}; start it with `iot up --only cassandra`") from exc


def _row_to_device(row: Any) -> Device:
    def utc(value: dt.datetime | None) -> dt.datetime | None:
        return value.replace(tzinfo=dt.UTC) if value is not None else None

    created = utc(row.created_at)
    return Device(
        device_id=row.device_id,
        tenant=row.tenant,
        cert_fingerprint=row.cert_fingerprint or "",
        created_at=created if created is not None else dt.datetime.fromtimestamp(0, dt.UTC),
        revoked_at=utc(row.revoked_at),
    )


class DeviceRegistry:
    """register / get / get_tenant / list / revoke over `keyspace.devices`."""

    def __init__(self, session: Any, keyspace: str = endpoints.CASSANDRA_KEYSPACE) -> None:
        self._session = session
        self._ks = keyspace
        self._call(self.ensure_schema)
        ks = keyspace
        self._insert = self._call(
            session.prepare,
            f"INSERT INTO {ks}.devices (device_id, tenant, cert_fingerprint, created_at) "
            "VALUES (?, ?, ?, ?) IF NOT EXISTS",
        )
        select = f"SELECT * FROM {ks}.devices WHERE"
        self._select = self._call(session.prepare, f"{select} device_id = ?")
        self._by_tenant = self._call(session.prepare, f"{select} tenant = ?")
        self._revoke = self._call(
            session.prepare,
            f"UPDATE {ks}.devices SET revoked_at = ? WHERE device_id = ? IF EXISTS",
        )

    def ensure_schema(self) -> None:
        for statement in SCHEMA:
            self._session.execute(statement.format(ks=self._ks), timeout=60)

    def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Driver errors become RegistryErrors naming the table."""
        try:
            return func(*args)
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryUnavailable(
                f"Cassandra {self._ks}.{TABLE}: {exc.__class__.__name__}: {exc}"
            ) from exc

    def register(self, device_id: str, tenant: str, cert_fingerprint: str) -> Device:
        """Record a new device; DuplicateDevice if the id is taken (a lightweight transaction)."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        result = self._call(
            self._session.execute, self._insert, (device_id, tenant, cert_fingerprint, now)
        )
        row = result.one()
        if not row.applied:
            raise DuplicateDevice(
                f"device {device_id!r} is already registered (tenant {row.tenant!r})"
            )
        return Device(device_id, tenant, cert_fingerprint, now)

    def get(self, device_id: str) -> Device | None:
        row = self._call(self._session.execute, self._select, (device_id,)).one()
        return _row_to_device(row) if row is not None else None

    def get_tenant(self, device_id: str) -> str | None:
        device = self.get(device_id)
        return device.tenant if device is not None else None

    def list(self, tenant: str | None = None) -> list[Device]:
        if tenant is None:
            rows = self._call(self._session.execute, f"SELECT * FROM {self._ks}.devices")
        else:
            rows = self._call(self._session.execute, self._by_tenant, (tenant,))
        return sorted((_row_to_device(row) for row in rows), key=lambda d: d.device_id)

    def revoke(self, device_id: str) -> Device:
        """Mark the device revoked (the certificate itself is revoked through gateway.pki)."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        row = self._call(self._session.execute, self._revoke, (now, device_id)).one()
        if not row.applied:
            raise UnknownDevice(f"device {device_id!r} is not registered")
        device = self.get(device_id)
        assert device is not None
        return device


def provision_device(
    pki_dir: Path, registry: DeviceRegistry, device_id: str, tenant: str
) -> Identity:
    """Issue a device certificate and record the device; nothing is left behind on failure.

    DuplicateDevice when the id is registered, PkiError for a bad or reserved id or an existing
    certificate, ValueError for a bad tenant."""
    check_device_id(device_id)
    if not is_valid_tenant(tenant):
        raise ValueError(f"invalid tenant {tenant!r}: must match {TENANT_PATTERN}")
    existing = registry.get(device_id)
    if existing is not None:
        state = " (revoked)" if existing.revoked_at else ""
        raise DuplicateDevice(
            f"device {device_id!r} is already registered to tenant {existing.tenant!r}{state}"
        )
    identity = issue_device(pki_dir, device_id)
    try:
        registry.register(device_id, tenant, fingerprint(identity.cert))
    except BaseException:
        identity.cert.unlink(missing_ok=True)
        identity.key.unlink(missing_ok=True)
        raise
    return identity


def ensure_provisioned(
    pki_dir: Path, registry: DeviceRegistry, device_ids: Sequence[str], tenant: str
) -> int:
    """Every device has a certificate and a registry entry afterwards; how many were issued.

    A certificate issued without the registry (e.g. `iot emulate --no-register`) is registered
    with its fingerprint; a registered device whose certificate is missing here is an error.
    """
    known = {device.device_id for device in registry.list()}
    issued = 0
    for device_id in device_ids:
        identity = device_paths(pki_dir, device_id)
        has_cert = identity.cert.exists() and identity.key.exists()
        if device_id in known:
            if not has_cert:
                raise DuplicateDevice(
                    f"device {device_id!r} is registered but its certificate is not in {pki_dir}"
                )
        elif has_cert:
            registry.register(device_id, tenant, fingerprint(identity.cert))
        else:
            provision_device(pki_dir, registry, device_id, tenant)
            issued += 1
    return issued


class TenantMemo:
    """What the registry last said of each device's tenant, for every reader of it (the bridge's
    hot path, the query API): no I/O of its own, so a threaded or an asyncio caller asks the
    registry its own way when `known` says it must.

    A tenant is kept `hit_ttl_s` (None: for good, since a device's tenant never changes); an
    unknown device only `miss_ttl_s`, so a flood from it does not become a flood of queries, yet
    a device provisioned a moment ago is found soon. At most `max_entries` are kept: past that
    the oldest answer goes first (bounded memory, whatever the ids a client sends).
    """

    def __init__(
        self, miss_ttl_s: float, hit_ttl_s: float | None = None, max_entries: int = 200_000
    ) -> None:
        self._miss_ttl_s = miss_ttl_s
        self._hit_ttl_s = hit_ttl_s
        self._max_entries = max_entries
        # device -> (tenant or None for unknown, monotonic expiry or None for never)
        self._answers: OrderedDict[str, tuple[str | None, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, device_id: str) -> tuple[bool, str | None]:
        """(True, tenant or None) while an answer holds; (False, None) when only the registry can tell."""
        answer = self._answers.get(device_id)
        if answer is None:
            return False, None
        tenant, expires = answer
        if expires is not None and time.monotonic() >= expires:
            return False, None
        return True, tenant

    def remember(self, device_id: str, tenant: str | None) -> None:
        ttl = self._hit_ttl_s if tenant is not None else self._miss_ttl_s
        expires = None if ttl is None else time.monotonic() + ttl
        with self._lock:
            self._answers.pop(device_id, None)
            self._answers[device_id] = (tenant, expires)
            while len(self._answers) > self._max_entries:
                self._answers.popitem(last=False)

    def cached(self, device_id: str) -> str | None:
        """The tenant if known, without a lookup; None for a device not known yet (or not at all)."""
        return self.known(device_id)[1]

    def preload(self, devices: Sequence[Device]) -> None:
        """Fill the memo at start-up (e.g. from DeviceRegistry.list()) to skip the first misses."""
        for device in devices:
            self.remember(device.device_id, device.tenant)

    def __len__(self) -> int:
        return sum(1 for tenant, _ in self._answers.values() if tenant is not None)


class TenantCache(TenantMemo):
    """A TenantMemo that asks the registry itself (a blocking lookup) on a miss: the bridge's."""

    def __init__(self, lookup: Callable[[str], str | None], negative_ttl_s: float = 5.0) -> None:
        super().__init__(miss_ttl_s=negative_ttl_s)
        self._lookup = lookup

    def get(self, device_id: str) -> str | None:
        known, tenant = self.known(device_id)
        if known:
            return tenant
        tenant = self._lookup(device_id)
        self.remember(device_id, tenant)
        return tenant

    def needs_lookup(self, device_id: str) -> bool:
        """Whether `get` would ask the registry (not known, no recent miss)."""
        return not self.known(device_id)[0]
