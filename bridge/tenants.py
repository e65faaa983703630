"""Device -> tenant for the hot path: gateway.registry's TenantCache over its DeviceRegistry.

The Cassandra session is opened lazily, on the first lookup, so the bridge starts (and its health
endpoint says what is missing) while Cassandra is still coming up. Lookups raise
gateway.registry.RegistryError when Cassandra cannot answer; the forwarder then holds the message.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from gateway.groups import GroupRegistry
from gateway.registry import DeviceRegistry, RegistryError, TenantCache, connect
from gateway.settings import CassandraConnection

log = logging.getLogger(__name__)


class TenantLookup(Protocol):
    def tenant_of(self, device_id: str) -> str | None:
        """The device's tenant, None if it is not provisioned; RegistryError if unknowable now.
        May block on the registry: the forwarder calls it in a worker thread."""
        ...

    def cached(self, device_id: str) -> str | None:
        """The tenant if already known (never blocks); None otherwise."""
        ...

    def needs_lookup(self, device_id: str) -> bool:
        """Whether only the registry can tell (not known, not missed recently)."""
        ...


class RegistryTenants:
    def __init__(self, cassandra: CassandraConnection, negative_ttl_s: float) -> None:
        self._cassandra = cassandra
        self._keyspace = cassandra.cassandra_keyspace
        self._lock = threading.Lock()
        self._session: Any = None
        self._registry: DeviceRegistry | None = None
        self._groups: GroupRegistry | None = None
        self._cache = TenantCache(self._load, negative_ttl_s)

    def _open(self) -> DeviceRegistry:
        with self._lock:
            if self._registry is None:
                self._session = connect(self._cassandra)
                self._registry = DeviceRegistry(self._session, self._keyspace)
                log.info("device registry open (%s.%s)", self._keyspace, "devices")
            return self._registry

    def _load(self, device_id: str) -> str | None:
        return self._open().get_tenant(device_id)

    def tenant_of(self, device_id: str) -> str | None:
        return self._cache.get(device_id)

    def cached(self, device_id: str) -> str | None:
        return self._cache.cached(device_id)

    def needs_lookup(self, device_id: str) -> bool:
        return self._cache.needs_lookup(device_id)

    def preload(self) -> None:
        """Warm the cache with every provisioned device; a failure only costs the first misses."""
        try:
            devices = self._open().list()
        except RegistryError as exc:
            log.warning("could not preload device tenants: %s", exc)
            return
        self._cache.preload(devices)
        log.info("preloaded the tenants of %d devices", len(devices))

    def group_memberships(self) -> dict[str, tuple[str, ...]]:
        """Every device's groups (gateway.groups), through the registry's session."""
        with self._lock:
            groups = self._groups
        if groups is None:
            registry = self._open()
            groups = GroupRegistry(self._session, registry, self._keyspace)
            with self._lock:
                self._groups = groups
        return groups.memberships()

    def close(self) -> None:
        if self._session is not None:
            self._session.cluster.shutdown()
