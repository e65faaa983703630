"""Cassandra for the operator views: the keyspace's tables with approximate sizes, one device's rows.

cassandra-driver's connect and execute block; callers run these in a worker thread.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cassandra.cluster import Cluster, Session
from cassandra.query import dict_factory

from console.config import ConsoleSettings
from console.errors import BadInput, Upstream
from console.ops import TIMEOUT_S
from gateway.cassandra_session import CassandraUnavailable, connect
from gateway.contract import DEVICE_ID_PATTERN

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
ROWS_SHOWN = 30


@dataclass(frozen=True, slots=True)
class TableInfo:
    name: str
    partitions: int
    bytes: int


class CassandraView:
    def __init__(self, settings: ConsoleSettings) -> None:
        self._settings = settings
        self._keyspace = settings.cassandra_keyspace
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._lock = threading.Lock()

    def _connect(self) -> Session:
        with self._lock:
            if self._session is None:
                try:
                    session = connect(self._settings, timeout_s=TIMEOUT_S, row_factory=dict_factory)
                except CassandraUnavailable as exc:
                    raise Upstream(str(exc)) from exc
                self._cluster, self._session = session.cluster, session
            return self._session

    def close(self) -> None:
        with self._lock:
            if self._cluster is not None:
                self._cluster.shutdown()
            self._cluster = self._session = None

    def _rows(self, cql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        session = self._connect()
        try:
            return list(session.execute(cql, params))
        except Exception as exc:
            raise Upstream(f"Cassandra: {exc.__class__.__name__}: {exc}"[:300]) from exc

    def tables(self) -> list[TableInfo]:
        """Every table of the keyspace; sizes from the node's own estimates (system.size_estimates,
        refreshed by Cassandra every few minutes, so a new table may show 0 for a while)."""
        names = [
            row["table_name"]
            for row in self._rows(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (self._keyspace,)
            )
        ]
        sizes: dict[str, list[int]] = {name: [0, 0] for name in names}
        for row in self._rows(
            "SELECT table_name, mean_partition_size, partitions_count FROM system.size_estimates"
            " WHERE keyspace_name = %s",
            (self._keyspace,),
        ):
            entry = sizes.setdefault(row["table_name"], [0, 0])
            entry[0] += row["partitions_count"] or 0
            entry[1] += (row["partitions_count"] or 0) * (row["mean_partition_size"] or 0)
        return [TableInfo(name, parts, size) for name, (parts, size) in sorted(sizes.items())]

    def device_rows(self, device_id: str, now: datetime | None = None) -> dict[str, list[dict[str, Any]]]:
        """The device's registry row, all-time rows and newest 1m and 1h windows."""
        if not _DEVICE_ID.match(device_id):
            raise BadInput("device id: letters, digits, '-' and '_', at most 64")
        now = now or datetime.now(UTC)
        ks = self._keyspace
        return {
            "devices": self._rows(f"SELECT * FROM {ks}.devices WHERE device_id = %s", (device_id,)),
            "agg_all": self._rows(f"SELECT * FROM {ks}.agg_all WHERE device_id = %s", (device_id,)),
            "agg_1m": self._rows(
                f"SELECT * FROM {ks}.agg_1m WHERE device_id = %s AND bucket_month = %s"
                f" ORDER BY window_start DESC LIMIT {ROWS_SHOWN}",
                (device_id, now.strftime("%Y-%m")),
            ),
            "agg_1h": self._rows(
                f"SELECT * FROM {ks}.agg_1h WHERE device_id = %s AND bucket_year = %s"
                f" ORDER BY window_start DESC LIMIT {ROWS_SHOWN}",
                (device_id, now.year),
            ),
        }
