"""Device -> tenant, read from the registry (Cassandra iot.devices) and cached.

A device's tenant is fixed when it is provisioned, so a hit is cached for good; a miss (a device
not provisioned yet, or never) is re-read at most every `unknown_ttl_s`, so a newly provisioned
device is recognised quickly and an unknown one cannot hammer Cassandra.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class TenantLookupError(Exception):
    """The registry could not be asked (not: the device is unknown)."""


class TenantLookup(Protocol):
    def tenant_of(self, device_id: str) -> str | None: ...


class CachedTenants:
    def __init__(
        self,
        load: Callable[[str], str | None],
        unknown_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._unknown_ttl_s = unknown_ttl_s
        self._clock = clock
        self._known: dict[str, str] = {}
        self._unknown: dict[str, float] = {}
        self._lock = threading.Lock()

    def tenant_of(self, device_id: str) -> str | None:
        tenant = self._known.get(device_id)
        if tenant is not None:
            return tenant
        now = self._clock()
        checked = self._unknown.get(device_id)
        if checked is not None and now - checked < self._unknown_ttl_s:
            return None
        tenant = self._load(device_id)
        with self._lock:
            if tenant is None:
                if len(self._unknown) > 100_000:  # bound the memory an id-spraying client can use
                    self._unknown.clear()
                self._unknown[device_id] = now
            else:
                self._known[device_id] = tenant
                self._unknown.pop(device_id, None)
        return tenant


class CassandraTenants:
    """Loads one device's tenant from iot.devices; opens its session lazily, on first use."""

    def __init__(self, hosts: list[str], port: int, keyspace: str) -> None:
        self._hosts = hosts
        self._port = port
        self._keyspace = keyspace
        self._session: Any = None
        self._statement: Any = None
        self._cluster: Any = None

    def _connect(self) -> None:
        from cassandra.cluster import Cluster

        cluster = Cluster(self._hosts, port=self._port)
        session = cluster.connect(self._keyspace)
        self._statement = session.prepare("SELECT tenant FROM devices WHERE device_id = ?")
        self._cluster, self._session = cluster, session

    def __call__(self, device_id: str) -> str | None:
        try:
            if self._session is None:
                self._connect()
            row = self._session.execute(self._statement, (device_id,)).one()
        except Exception as exc:  # the driver's errors have no common base (NoHostAvailable...)
            raise TenantLookupError(f"registry lookup of {device_id!r} failed: {exc}") from exc
        return None if row is None else str(row.tenant)

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
