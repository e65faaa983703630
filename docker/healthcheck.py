"""Container health checks of our own services (docker/docker-compose.yml `healthcheck:`).

The slim Python image has no curl, and the emulator has no port of its own, so one small
standard-library script answers both questions the native runner asks (stack/services/apps.py):

    healthcheck.py http URL        exit 0 when GET URL answers 200 (bridge, writer, query API)
    healthcheck.py peer PORT       exit 0 when this container holds an established TCP connection
                                   to a remote PORT (the emulator's devices connected to the broker)
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

# /proc/net/tcp* state of an established connection (include/net/tcp_states.h: TCP_ESTABLISHED).
_ESTABLISHED = "01"


def http_ok(url: str, timeout_s: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def established_peers(lines: Iterable[str]) -> set[int]:
    """Remote ports of established connections in /proc/net/tcp or tcp6 text (header skipped)."""
    ports: set[int] = set()
    for line in lines:
        fields = line.split()
        # sl local_address rem_address st ...; addresses are HEXIP:HEXPORT.
        if len(fields) < 4 or ":" not in fields[2] or fields[3] != _ESTABLISHED:
            continue
        try:
            ports.add(int(fields[2].rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    return ports


def has_peer(port: int, proc_net: Path = Path("/proc/net")) -> bool:
    for name in ("tcp", "tcp6"):
        try:
            text = (proc_net / name).read_text()
        except OSError:
            continue
        if port in established_peers(text.splitlines()[1:]):
            return True
    return False


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        return 0 if http_ok(argv[1]) else 1
    if len(argv) == 2 and argv[0] == "peer" and argv[1].isdigit():
        return 0 if has_peer(int(argv[1])) else 1
    sys.stderr.write("usage: healthcheck.py http URL | peer PORT\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
