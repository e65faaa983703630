"""Artifacts from Maven Central, fetched once into the shared cache and reused by later runs.

Each component has a pom under stack/maven/ used only as a manifest: `mvn dependency:copy-dependencies`
copies its dependency closure into cache_dir/<component>-<pom hash>/lib. Editing a pom changes the
hash, so a version bump fetches anew and never mixes jars of two versions.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

from stack.config import StackSettings
from stack.errors import StackError

log = logging.getLogger(__name__)

MANIFESTS = Path(__file__).resolve().parent / "maven"


def ensure_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn:
        return mvn
    log.info("installing maven from Debian's packages")
    from stack.system import apt_install

    apt_install(["maven"])
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError("mvn is not installed and `apt-get install maven` did not provide it")
    return mvn


def _target(settings: StackSettings, component: str) -> tuple[Path, str]:
    pom = MANIFESTS / f"{component}.pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    return settings.cache_dir / f"{component}-{digest}", digest


def lib_dir(settings: StackSettings, component: str) -> Path:
    """Where fetch() puts the component's jars, without fetching (for command lines and status)."""
    return _target(settings, component)[0] / "lib"


def classpath(settings: StackSettings, component: str) -> str:
    """Every jar of the component, sorted; empty until fetched."""
    return ":".join(str(jar) for jar in sorted(lib_dir(settings, component).glob("*.jar")))


def fetch(settings: StackSettings, component: str) -> Path:
    """The directory holding the component's jars (and zips), fetching them if missing."""
    target, digest = _target(settings, component)
    pom = MANIFESTS / f"{component}.pom.xml"
    marker = target / ".complete"
    if marker.exists():
        return target / "lib"
    mvn = ensure_maven()
    partial = target / "lib"
    if partial.exists():
        shutil.rmtree(partial)
    log.info("fetching %s from Maven Central into %s (first run only)", component, target)
    cmd = [
        mvn, "-B", "-q", "-f", str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise StackError(f"{component}: fetching artifacts with Maven failed:\n{tail}")
    marker.write_text(digest)
    return partial
