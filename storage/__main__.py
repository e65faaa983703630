"""`iot writer` / `python -m storage`: migrate the schema, then write aggregates until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from prometheus_client import start_http_server

from gateway.cassandra_session import CassandraUnavailable, connect
from gateway.service_main import run_main
from storage.config import StorageSettings
from storage.migrate import migrate
from storage.writer import AggregatesWriter, WriterError

log = logging.getLogger("storage")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("iot writer", __doc__, _run, argv, expected=(WriterError, CassandraUnavailable))


def _run(args: argparse.Namespace) -> int:
    del args
    settings = StorageSettings()
    log.info("settings: %s", settings.model_dump_json())
    session = connect(settings)
    cluster = session.cluster
    try:
        migrate(session, settings)
    finally:
        cluster.shutdown()
    writer = AggregatesWriter(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: writer.stop())
    start_http_server(settings.writer_metrics_port, addr="127.0.0.1")
    writer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
