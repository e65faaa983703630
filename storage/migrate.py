"""`iot migrate`: create the keyspace and apply the versioned schema in storage/schema/, once each.

Files are applied in name order; applied versions are recorded in `schema_migrations`. TTLs are
re-applied from the settings on every run, so changing IOT_TTL_1M_S takes effect on the next `make up`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from cassandra.cluster import Session

from gateway.cassandra_session import CassandraUnavailable, connect
from gateway.service_main import run_main
from storage.config import StorageSettings

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"


def statements(cql: str) -> list[str]:
    without_comments = re.sub(r"--[^\n]*", "", cql)
    return [part.strip() for part in without_comments.split(";") if part.strip()]


def migrate(session: Session, settings: StorageSettings) -> list[str]:
    """Apply pending schema files; returns the versions applied now."""
    keyspace = settings.cassandra_keyspace
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {settings.cassandra_replication}"
    )
    session.set_keyspace(keyspace)
    session.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, applied_at timestamp)"
    )
    done = {row.version for row in session.execute("SELECT version FROM schema_migrations")}
    applied = []
    for path in sorted(SCHEMA_DIR.glob("*.cql")):
        version = path.stem
        if version in done:
            continue
        for statement in statements(path.read_text()):
            session.execute(statement)
        session.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, toTimestamp(now()))",
            (version,),
        )
        log.info("applied schema %s", version)
        applied.append(version)
    session.execute(f"ALTER TABLE agg_1m WITH default_time_to_live = {int(settings.ttl_1m_s)}")
    session.execute(f"ALTER TABLE agg_1h WITH default_time_to_live = {int(settings.ttl_1h_s)}")
    return applied


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("iot migrate", __doc__, _run, argv, expected=(CassandraUnavailable,))


def _run(args: argparse.Namespace) -> int:
    del args
    settings = StorageSettings()
    session = connect(settings)
    cluster = session.cluster
    try:
        applied = migrate(session, settings)
        log.info("schema up to date (%d applied now)", len(applied))
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
