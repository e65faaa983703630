"""`python -m bridge` / `iot bridge`: run the MQTT -> Kafka bridge until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bridge.app import run
from bridge.config import BridgeSettings
from bridge.errors import BridgeError
from gateway.service_main import run_main

DESCRIPTION = "MQTT -> Kafka bridge; configured by IOT_* environment variables (see bridge/config.py)"


def _run(args: argparse.Namespace) -> int:
    del args
    return asyncio.run(run(BridgeSettings()))


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("iot bridge", DESCRIPTION, _run, argv, expected=(BridgeError,))


if __name__ == "__main__":
    sys.exit(main())
