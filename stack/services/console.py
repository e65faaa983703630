"""The web console (console/, port 8085): its browser libraries from npm, then `python -m console`.

The libraries are pinned in console/frontend/package-lock.json and installed with `npm ci`
(scripts off: nothing runs at install, no telemetry) when missing or when the lockfile changed;
Node.js and npm come from Debian's packages when the machine has none.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stack.config import REPO_ROOT
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import Service, http_ready
from stack.system import apt_install

log = logging.getLogger(__name__)

FRONTEND_DIR = REPO_ROOT / "console" / "frontend"
_STAMP = "node_modules/.installed-lock.sha256"
# What the pages and the query API's docs load; a partial install is redone.
REQUIRED_ASSETS = (
    "uplot/dist/uPlot.iife.min.js",
    "uplot/dist/uPlot.min.css",
    "swagger-ui-dist/swagger-ui-bundle.js",
)


def _lock_digest(frontend: Path) -> str:
    return hashlib.sha256((frontend / "package-lock.json").read_bytes()).hexdigest()


def frontend_installed(frontend: Path = FRONTEND_DIR) -> bool:
    stamp = frontend / _STAMP
    if not all((frontend / "node_modules" / asset).is_file() for asset in REQUIRED_ASSETS):
        return False
    try:
        return stamp.read_text().strip() == _lock_digest(frontend)
    except OSError:
        return False


def ensure_frontend(frontend: Path = FRONTEND_DIR) -> None:
    """`npm ci` of the pinned libraries unless the lockfile's install is already there."""
    if frontend_installed(frontend):
        return
    if shutil.which("npm") is None:
        apt_install(["nodejs", "npm"])
    env = {**os.environ, "SCARF_ANALYTICS": "false", "npm_config_fund": "false", "npm_config_audit": "false"}
    cmd = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--omit=dev"]
    log.info("console: installing browser libraries (%s in %s)", " ".join(cmd), frontend)
    result = subprocess.run(
        cmd, cwd=frontend, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600
    )
    if result.returncode != 0:
        raise StackError(
            f"console: npm ci failed in {frontend} (exit {result.returncode}): {result.stderr.strip()[-800:]}"
        )
    (frontend / _STAMP).write_text(_lock_digest(frontend) + "\n")


class ConsoleService(Service):
    name = "console"
    stage = 2

    def install(self) -> None:
        ensure_frontend()

    def own_ports(self) -> tuple[int, ...]:
        return (self.settings.console_port,)

    def processes(self) -> list[ProcessSpec]:
        env = {"IOT_STACK_DIR": str(self.settings.stack_dir), "PYTHONUNBUFFERED": "1"}
        return [self.spec(self.name, [sys.executable, "-m", "console"], env=env)]

    def check_ready(self) -> None:
        http_ready(f"http://127.0.0.1:{self.settings.console_port}/health")

    def describe(self) -> str:
        try:
            body = http_ready(f"http://127.0.0.1:{self.settings.console_port}/health")
        except Exception as exc:
            return f"({exc})"
        sessions = body.get("sessions", "?") if isinstance(body, dict) else "?"
        return f"http://localhost:{self.settings.console_port}, {sessions} signed-in session(s)"
