"""`python -m query_api` / `iot query-api`: the API under uvicorn, graceful stop; one worker, or
`--workers N` processes sharing the port (each builds its app from the same environment)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.service_main import add_listen_arguments, listen_overrides, run_main, serve_asgi
from query_api.config import QueryApiSettings
from query_api.main import create_app


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_listen_arguments(parser, "QUERY_API")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")


def _serve(args: argparse.Namespace) -> int:
    settings = QueryApiSettings(**listen_overrides(args, "query_api"))
    if args.workers > 1:
        import uvicorn

        # uvicorn's process manager: SIGTERM reaches every worker, each stops gracefully.
        uvicorn.run(
            "query_api.main:create_app", factory=True, host=settings.query_api_host,
            port=settings.query_api_port, workers=args.workers, access_log=settings.access_log,
            log_config=None, timeout_graceful_shutdown=10,
        )
        return 0
    return serve_asgi(
        create_app(settings), settings.query_api_host, settings.query_api_port, settings.access_log
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("iot query-api", __doc__, _serve, argv, arguments=_arguments)


if __name__ == "__main__":
    sys.exit(main())
