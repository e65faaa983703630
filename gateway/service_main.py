"""The one shape of every `python -m <service>`: its arguments (`-v` for all), logging to stderr
one line per event, and the exit codes below, whatever the service.

    def main(argv: Sequence[str] | None = None) -> int:
        return run_main("iot writer", __doc__, _serve, argv, expected=(WriterError,))

Exit codes: 0 done (or stopped by SIGTERM after draining), 1 the service failed (an `expected`
error, logged in one line; anything else with its traceback), 2 bad arguments or settings
(argparse's own, and pydantic's ValidationError), 130 interrupted (Ctrl-C before a handler of
its own was installed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import ValidationError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Client libraries log every request or connection attempt at INFO; services log their own events.
NOISY = ("httpx", "httpcore", "cassandra", "kafka")

log = logging.getLogger(__name__)


def configure_logging(verbose: bool = False, quiet: Iterable[str] = NOISY) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def build_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def add_listen_arguments(parser: argparse.ArgumentParser, env: str) -> None:
    """--host and --port, overriding IOT_<env>_HOST / IOT_<env>_PORT (see `listen_overrides`)."""
    parser.add_argument("--host", help=f"listen address (default IOT_{env}_HOST)")
    parser.add_argument("--port", type=int, help=f"listen port (default IOT_{env}_PORT)")


def listen_overrides(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """Settings keyword arguments from --host/--port: {'<prefix>_host': ..., '<prefix>_port': ...}."""
    overrides: dict[str, Any] = {}
    if args.host:
        overrides[f"{prefix}_host"] = args.host
    if args.port:
        overrides[f"{prefix}_port"] = args.port
    return overrides


def run_main(
    prog: str,
    description: str | None,
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
    *,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    expected: tuple[type[BaseException], ...] = (),
    quiet: Iterable[str] = NOISY,
) -> int:
    """Parse argv (sys.argv[1:] when None), set up logging, run body(args), map its end to an exit
    code. `arguments` adds the service's own options; `expected` are its failures worth one line."""
    parser = build_parser(prog, description)
    if arguments is not None:
        arguments(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(args.verbose, quiet)
    logger = logging.getLogger(prog.split()[-1])
    try:
        return body(args)
    except ValidationError as exc:
        logger.error("invalid settings: %s", exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except expected as exc:
        logger.error("%s", exc)
        return EXIT_FAILED
    except Exception:
        logger.exception("%s failed", prog)
        return EXIT_FAILED


def serve_asgi(app: Any, host: str, port: int, access_log: bool = False) -> int:
    """An ASGI app under uvicorn, one worker, our logging; SIGTERM/SIGINT: stop accepting, let
    running requests finish, then run the lifespan's exit. 1 if it never started (the port was
    taken, the lifespan failed)."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, workers=1, access_log=access_log, log_config=None,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    server.run()
    return EXIT_OK if server.started else EXIT_FAILED
