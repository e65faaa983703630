"""`python -m bridge` / `iot bridge`: run the MQTT -> Kafka bridge until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from bridge.app import run
from bridge.config import BridgeSettings
from bridge.errors import BridgeError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="iot bridge",
        description="MQTT -> Kafka bridge; configured by IOT_* environment variables "
        "(see bridge/config.py)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("bridge")
    try:
        settings = BridgeSettings()
        return asyncio.run(run(settings))
    except (BridgeError, ValidationError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
