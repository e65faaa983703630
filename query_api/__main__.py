"""`python -m query_api` / `iot query-api`: the API under uvicorn, graceful stop; one worker, or
`--workers N` processes sharing the port (each builds its app from the same environment)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import uvicorn

from query_api.config import QueryApiSettings
from query_api.main import create_app

log = logging.getLogger("query_api")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="query-api", description=__doc__)
    parser.add_argument("--host", help="listen address (default IOT_QUERY_API_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default IOT_QUERY_API_PORT)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    overrides: dict[str, object] = {}
    if args.host:
        overrides["query_api_host"] = args.host
    if args.port:
        overrides["query_api_port"] = args.port
    settings = QueryApiSettings(**overrides)  # type: ignore[arg-type]
    if args.workers > 1:
        # uvicorn's process manager: SIGTERM reaches every worker, each stops gracefully.
        uvicorn.run(
            "query_api.main:create_app", factory=True, host=settings.query_api_host,
            port=settings.query_api_port, workers=args.workers, access_log=settings.access_log,
            log_config=None, timeout_graceful_shutdown=10,
        )
        return 0
    config = uvicorn.Config(
        create_app(settings),
        host=settings.query_api_host,
        port=settings.query_api_port,
        workers=1,
        access_log=settings.access_log,
        log_config=None,  # keep our logging configuration
        # SIGTERM/SIGINT: stop accepting, let running requests finish, then run the lifespan exit.
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn leaves started=False when it could not bind or the lifespan failed.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
