"""`python -m console` / `iot console`: the web console under uvicorn, one worker, graceful stop."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from console.config import ConsoleSettings
from console.main import create_app
from gateway.service_main import add_listen_arguments, listen_overrides, run_main, serve_asgi


def _serve(args: argparse.Namespace) -> int:
    settings = ConsoleSettings(**listen_overrides(args, "console"))
    return serve_asgi(create_app(settings), settings.console_host, settings.console_port, settings.access_log)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(
        "iot console", __doc__, _serve, argv, arguments=lambda p: add_listen_arguments(p, "CONSOLE")
    )


if __name__ == "__main__":
    sys.exit(main())
