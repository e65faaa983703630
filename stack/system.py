"""Debian packages the stack needs (Mosquitto and its clients; Maven and Java 17 when missing)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading

from stack.errors import StackError

log = logging.getLogger(__name__)

_updated = False
# Services install in parallel threads, and dpkg takes one installer at a time.
_lock = threading.Lock()
# Another apt run on the machine (a second `iot up`, unattended upgrades) holds dpkg's lock for a
# while; wait for it instead of failing.
_DPKG_LOCK_TIMEOUT_S = 300


def apt_install(packages: list[str]) -> None:
    """apt-get install, once `apt-get update` has run in this process; a clear error otherwise."""
    global _updated
    if shutil.which("apt-get") is None:
        raise StackError(f"apt-get not found: install {' '.join(packages)} by hand")
    prefix: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = [*prefix, "apt-get", "-o", f"DPkg::Lock::Timeout={_DPKG_LOCK_TIMEOUT_S}"]
    with _lock:
        steps = [] if _updated else [[*apt, "update", "-qq"]]
        steps.append([*apt, "install", "-y", "-qq", "--no-install-recommends", *packages])
        for cmd in steps:
            log.info("running %s", " ".join(cmd))
            result = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
            if result.returncode != 0:
                raise StackError(
                    f"could not install {' '.join(packages)} ({' '.join(cmd)} exited "
                    f"{result.returncode}): {result.stderr.strip()[-800:]}"
                )
        _updated = True
