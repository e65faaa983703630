"""`python -m console` / `iot console`: the web console under uvicorn, one worker, graceful stop."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import uvicorn

from console.config import ConsoleSettings
from console.main import create_app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="console", description=__doc__)
    parser.add_argument("--host", help="listen address (default IOT_CONSOLE_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default IOT_CONSOLE_PORT)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "cassandra"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides: dict[str, object] = {}
    if args.host:
        overrides["console_host"] = args.host
    if args.port:
        overrides["console_port"] = args.port
    settings = ConsoleSettings(**overrides)  # type: ignore[arg-type]
    config = uvicorn.Config(
        create_app(settings),
        host=settings.console_host,
        port=settings.console_port,
        workers=1,
        access_log=settings.access_log,
        log_config=None,
        # SIGTERM/SIGINT: stop accepting, let running requests finish, then run the lifespan exit.
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
