"""Device groups: a tenant's named sets of devices, kept in Cassandra beside the device registry.

A group belongs to one tenant and holds only that tenant's devices; a device may be in several
groups. Its aggregates are computed in the stream: the bridge tags each reading with the groups
its device belongs to when the bridge receives it, and the aggregation counts the reading once
per group, under the group's aggregate key. So a change of membership takes effect for the
readings received after the bridge's next refresh of its membership cache
(IOT_BRIDGE_GROUPS_REFRESH_S) and never rewrites the past: windows already counted keep the
members they had.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import endpoints
from gateway.registry import DeviceRegistry, RegistryError, RegistryUnavailable

GROUP_NAME_PATTERN = r"[A-Za-z0-9_-]{1,64}"
_GROUP_NAME = re.compile(GROUP_NAME_PATTERN)
# Aggregates of a group are stored under this key where a device's are under its id; the ':'
# can never appear in a device id, so the two never meet.
_KEY_PREFIX = "group:"

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS {ks}.device_groups ("
    " tenant text, name text, created_at timestamp, PRIMARY KEY (tenant, name))",
    "CREATE TABLE IF NOT EXISTS {ks}.group_members ("
    " tenant text, name text, device_id text, PRIMARY KEY ((tenant, name), device_id))",
    # The bridge's question is the other way round: which groups is this device in?
    "CREATE TABLE IF NOT EXISTS {ks}.groups_of_device ("
    " device_id text, tenant text, name text, PRIMARY KEY (device_id, name))",
]


class GroupError(RegistryError):
    """A group command that cannot be carried out (unknown group, wrong tenant, bad name)."""


def is_valid_group_name(name: str) -> bool:
    return _GROUP_NAME.fullmatch(name) is not None


def check_group_name(name: str) -> None:
    if not is_valid_group_name(name):
        raise GroupError(f"invalid group name {name[:70]!r}: must match ^{GROUP_NAME_PATTERN}$")


def aggregate_key(tenant: str, name: str) -> str:
    """Where the group's windows are stored in the aggregate tables."""
    return f"{_KEY_PREFIX}{tenant}:{name}"


@dataclass(frozen=True)
class Group:
    tenant: str
    name: str
    created_at: dt.datetime
    devices: int


# A statement and its parameters for one device.
_PerDevice = tuple[str, Callable[[str], tuple[str, ...]]]


class GroupRegistry:
    """create / add / remove / list over the three group tables; driver errors are RegistryErrors."""

    def __init__(
        self, session: Any, devices: DeviceRegistry, keyspace: str = endpoints.CASSANDRA_KEYSPACE
    ) -> None:
        self._session = session
        self._devices = devices
        self._ks = keyspace
        for statement in SCHEMA:
            self._call(session.execute, statement.format(ks=keyspace), timeout=60)

    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryUnavailable(
                f"Cassandra {self._ks} groups: {exc.__class__.__name__}: {exc}"
            ) from exc

    def create(self, tenant: str, name: str) -> Group:
        check_group_name(name)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        row = self._call(
            self._session.execute,
            f"INSERT INTO {self._ks}.device_groups (tenant, name, created_at) VALUES (%s, %s, %s)"
            " IF NOT EXISTS",
            (tenant, name, now),
        ).one()
        if not row.applied:
            raise GroupError(f"group {name!r} of tenant {tenant!r} exists already")
        return Group(tenant, name, now, 0)

    def _tenant_of_group(self, name: str, tenant: str | None) -> str:
        """The tenant owning a group name; with several tenants using the name, --tenant decides."""
        check_group_name(name)
        rows = list(self._call(
            self._session.execute,
            f"SELECT tenant FROM {self._ks}.device_groups WHERE name = %s ALLOW FILTERING",
            (name,),
        ))
        owners: list[str] = sorted(r.tenant for r in rows)
        if tenant is not None:
            if tenant not in owners:
                raise GroupError(f"no group {name!r} in tenant {tenant!r}")
            return tenant
        if not owners:
            raise GroupError(f"no group {name!r}; create it with `iot groups create {name} --tenant T`")
        if len(owners) > 1:
            raise GroupError(f"group {name!r} exists in tenants {', '.join(owners)}: pass --tenant")
        return owners[0]

    def add(self, name: str, device_ids: Sequence[str], tenant: str | None = None) -> str:
        """Add devices to a group; every device must be the group's tenant's. Returns the tenant."""
        owner = self._tenant_of_group(name, tenant)
        for device_id in device_ids:
            device_tenant = self._devices.get_tenant(device_id)
            if device_tenant != owner:
                # Another tenant's device is reported exactly like a missing one.
                raise GroupError(f"no device {device_id!r} in tenant {owner!r}")
        self._write_both(device_ids, (
            f"INSERT INTO {self._ks}.group_members (tenant, name, device_id) VALUES (%s, %s, %s)",
            lambda device_id: (owner, name, device_id),
        ), (
            f"INSERT INTO {self._ks}.groups_of_device (device_id, tenant, name) VALUES (%s, %s, %s)",
            lambda device_id: (device_id, owner, name),
        ))
        return owner

    def remove(self, name: str, device_ids: Sequence[str], tenant: str | None = None) -> str:
        owner = self._tenant_of_group(name, tenant)
        self._write_both(device_ids, (
            f"DELETE FROM {self._ks}.group_members WHERE tenant = %s AND name = %s AND device_id = %s",
            lambda device_id: (owner, name, device_id),
        ), (
            f"DELETE FROM {self._ks}.groups_of_device WHERE device_id = %s AND name = %s",
            lambda device_id: (device_id, name),
        ))
        return owner

    def _write_both(self, device_ids: Sequence[str], *statements: _PerDevice) -> None:
        """Each device's change in both tables: the members of a group, the groups of a device."""
        for device_id in device_ids:
            for cql, params in statements:
                self._call(self._session.execute, cql, params(device_id))

    def members(self, tenant: str, name: str) -> list[str]:
        rows = self._call(
            self._session.execute,
            f"SELECT device_id FROM {self._ks}.group_members WHERE tenant = %s AND name = %s",
            (tenant, name),
        )
        return sorted(r.device_id for r in rows)

    def exists(self, tenant: str, name: str) -> bool:
        row = self._call(
            self._session.execute,
            f"SELECT name FROM {self._ks}.device_groups WHERE tenant = %s AND name = %s",
            (tenant, name),
        ).one()
        return row is not None

    def list(self, tenant: str | None = None) -> list[Group]:
        if tenant is None:
            rows = self._call(self._session.execute, f"SELECT * FROM {self._ks}.device_groups")
        else:
            rows = self._call(
                self._session.execute,
                f"SELECT * FROM {self._ks}.device_groups WHERE tenant = %s",
                (tenant,),
            )
        groups = []
        for row in rows:
            created = row.created_at.replace(tzinfo=dt.UTC) if row.created_at else None
            groups.append(Group(row.tenant, row.name, created or dt.datetime.fromtimestamp(0, dt.UTC),
                                len(self.members(row.tenant, row.name))))
        return sorted(groups, key=lambda g: (g.tenant, g.name))

    def memberships(self) -> dict[str, tuple[str, ...]]:
        """Every device's aggregate keys of the groups it is in (one read of a small table)."""
        rows = self._call(
            self._session.execute, f"SELECT device_id, tenant, name FROM {self._ks}.groups_of_device"
        )
        keys: dict[str, list[str]] = {}
        for row in rows:
            keys.setdefault(row.device_id, []).append(aggregate_key(row.tenant, row.name))
        return {device: tuple(sorted(groups)) for device, groups in keys.items()}


class MembershipCache:
    """Device -> group keys for the bridge's hot path: the whole table, re-read every refresh_s.

    Lookups never touch Cassandra; a failed refresh keeps the last good map (and says so through
    `last_error`), so a registry outage delays membership changes but never readings."""

    def __init__(self, load: Callable[[], dict[str, tuple[str, ...]]], refresh_s: float) -> None:
        self._load = load
        self._refresh_s = refresh_s
        self._groups: dict[str, tuple[str, ...]] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def refresh_if_due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self._loaded_at < self._refresh_s:
            return False
        with self._lock:
            try:
                self._groups = self._load()
                self.last_error = None
            except RegistryError as exc:
                self.last_error = str(exc)
            self._loaded_at = now
        return True

    def groups_of(self, device_id: str) -> tuple[str, ...]:
        return self._groups.get(device_id, ())

    def __len__(self) -> int:
        return len(self._groups)


def format_groups(groups: Iterable[Group]) -> str:
    return "".join(f"{g.tenant}\t{g.name}\t{g.devices} devices\t{g.created_at:%Y-%m-%dT%H:%M:%SZ}\n"
                   for g in groups)
