"""The Keycloak distribution in the shared cache: built once, run from per-clone homes.

`kc.sh build` (Quarkus augmentation, ~40 s) runs once per build-option set into the cache; every
start is then `start --optimized`. A Keycloak home is bin/lib/providers/themes linked to the
cached build plus real conf/ and data/ directories (H2 database, import directory), so clones
sharing the cache never share state.

A fresh database costs a schema migration and the realm import (~30 s of CPU). The first fresh
start per (build, realm file) therefore seeds a pristine database in a scratch home and keeps it
in the cache; later fresh homes start from a copy, as fast as a restart. The copy shares the
realm's signing keys with the other clones of this machine: fine for a local stack. Its master
realm administrator has the cache's own generated password (kept beside it, mode 0600), which
each stack replaces with its own after the first start (keycloak_admin.login).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import httpx

from gateway import endpoints
from stack import artifacts
from stack.config import StackSettings
from stack.errors import StackError
from stack.services.keycloak_admin import (
    ADMIN_USER,
    LEGACY_ADMIN_PASSWORD,
    new_password,
    write_secret,
)

log = logging.getLogger(__name__)

REALM_FILE = Path(__file__).resolve().parent.parent / "keycloak" / "iot-realm.json"

# Build-time options, baked into the cached build; `start --optimized` refuses a mismatch.
# Health and metrics stay off: they would open a second (management) port for nothing, since
# readiness is the realm's OpenID configuration.
BUILD_OPTIONS = ["--db=dev-file", "--http-relative-path=/"]
# An IPv4 literal: "localhost" may resolve to ::1 first, and clients fall back to 127.0.0.1.
LISTEN_HOST = "127.0.0.1"
# Directories of the distribution that are read-only at run time and shared with the cache.
_SHARED = ("bin", "lib", "providers", "themes")
_H2 = Path("data") / "h2"
# Beside a cached database: the password of its administrator.
_ADMIN_PASSWORD = "admin-password"


def realm_digest() -> str:
    return hashlib.sha256(REALM_FILE.read_bytes()).hexdigest()


def _build_digest() -> str:
    return hashlib.sha256(" ".join(BUILD_OPTIONS).encode()).hexdigest()[:8]


def _remove_abandoned(parent: Path, prefix: str) -> None:
    """Scratch directories of interrupted runs (their pid no longer runs): up to ~400 MB each."""
    for scratch in parent.glob(f"{prefix}-*"):
        pid = scratch.name.removeprefix(f"{prefix}-")
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(scratch, ignore_errors=True)


def _move_into_cache(built: Path, final: Path, scratch: Path) -> None:
    """A result made in a scratch directory renamed into its place in the cache, so nobody ever
    sees half of it; then the scratch directory goes."""
    try:
        built.rename(final)
    except OSError:
        # Another clone finished the same work first; its result is identical.
        log.info("keycloak: %s already made by another clone", final)
    shutil.rmtree(scratch, ignore_errors=True)


def ensure_server(settings: StackSettings) -> Path:
    """The built distribution in the cache (fetched and built on first use)."""
    lib = artifacts.fetch(settings, "keycloak")
    server = lib.parent / f"server-{_build_digest()}"
    if (server / "lib" / "quarkus-run.jar").exists():
        return server
    zips = sorted(lib.glob("keycloak-quarkus-dist-*.zip"))
    if not zips:
        raise StackError(f"keycloak: no keycloak-quarkus-dist zip in {lib}")
    # Unpack and build beside the final directory, then rename: a concurrent clone or an
    # interrupted build never leaves a half-built server in place.
    _remove_abandoned(lib.parent, "build")
    scratch = lib.parent / f"build-{os.getpid()}"
    log.info("keycloak: unpacking %s and running kc.sh build (first run only)", zips[0].name)
    with zipfile.ZipFile(zips[0]) as archive:
        archive.extractall(scratch)
    (top,) = [p for p in scratch.iterdir() if p.is_dir()]
    kc_sh = top / "bin" / "kc.sh"
    kc_sh.chmod(0o755)
    env = {**os.environ, "JAVA_HOME": str(settings.java21_home)}
    result = subprocess.run(
        [str(kc_sh), "build", *BUILD_OPTIONS],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        shutil.rmtree(scratch, ignore_errors=True)
        raise StackError(f"keycloak: `kc.sh build` failed:\n{tail}")
    _move_into_cache(top, server, scratch)
    return server


def link_home(home: Path, server: Path) -> None:
    """A Keycloak home of our own on top of the cached build; idempotent."""
    (home / "conf").mkdir(parents=True, exist_ok=True)
    (home / "data" / "import").mkdir(parents=True, exist_ok=True)
    for name in _SHARED:
        link = home / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == (server / name).resolve():
                continue
            link.unlink()
        link.symlink_to(server / name)
    # Runtime options go on the command line; an empty keycloak.conf keeps the cached one out.
    (home / "conf" / "keycloak.conf").write_text("# options: see stack/services/keycloak_dist.py\n")
    # Imported only when the realm does not exist yet (Keycloak's IGNORE_EXISTING strategy).
    shutil.copyfile(REALM_FILE, home / "data" / "import" / REALM_FILE.name)


def server_argv(settings: StackSettings, home: Path, port: int) -> list[str]:
    """What kc.sh would run; running java directly makes our pid the JVM itself."""
    return [
        str(settings.java21_home / "bin" / "java"),
        f"-Dkc.home.dir={home}",
        f"-Djboss.server.config.dir={home / 'conf'}",
        "-Djava.util.logging.manager=org.jboss.logmanager.LogManager",
        "-Dpicocli.disable.closures=true",
        "-Dquarkus-log-max-startup-records=10000",
        "-Djava.util.concurrent.ForkJoinPool.common.threadFactory="
        "io.quarkus.bootstrap.forkjoin.QuarkusForkJoinWorkerThreadFactory",
        "-Xms64m", f"-Xmx{settings.keycloak_heap}",
        "-XX:MetaspaceSize=96M", "-XX:MaxMetaspaceSize=256m",
        # A small footprint and a fast start matter more here than peak throughput (the query
        # API validates tokens locally): C1 only halves the start's CPU (22 s -> 10 s), -50 MiB.
        "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        "-XX:+ExitOnOutOfMemoryError",
        "-Dfile.encoding=UTF-8", "-Djava.security.egd=file:/dev/urandom",
        "--add-opens=java.base/java.util=ALL-UNNAMED",
        "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
        "--add-opens=java.base/java.security=ALL-UNNAMED",
        "-Duser.language=en", "-Duser.country=US",
        "-cp", str(home / "lib" / "quarkus-run.jar"),
        "io.quarkus.bootstrap.runner.QuarkusEntryPoint",
        "start", "--optimized",
        "--http-enabled=true",
        f"--http-host={LISTEN_HOST}",
        f"--http-port={port}",
        # A fixed hostname gives every token the same issuer, whichever address was called.
        f"--hostname=http://{endpoints.HOST}:{port}",
        "--hostname-strict=false",
        "--cache=local",
        "--import-realm",
    ]


def server_env(settings: StackSettings, admin_password: str) -> dict[str, str]:
    return {
        "JAVA_HOME": str(settings.java21_home),
        # Creates the master realm's administrator on the first start of an empty database only.
        "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USER,
        "KC_BOOTSTRAP_ADMIN_PASSWORD": admin_password,
    }


def seed_database(settings: StackSettings, server: Path, home: Path) -> str | None:
    """Give a fresh home a copy of the cached pristine database; the password of the copy's
    administrator if it got one, None if not."""
    if (home / _H2).exists():
        return None
    template = server.parent / f"db-{_build_digest()}-{realm_digest()[:12]}"
    if not (template / "h2").exists() and not _make_template(settings, server, template):
        return None
    shutil.copytree(template / "h2", home / _H2)
    log.info("keycloak: database seeded from %s", template)
    try:
        return (template / _ADMIN_PASSWORD).read_text().strip()
    except FileNotFoundError:
        return LEGACY_ADMIN_PASSWORD  # seeded before the cache had a password of its own


def _make_template(settings: StackSettings, server: Path, template: Path) -> bool:
    """Run Keycloak once on a scratch home and keep its database; False (plain import) on failure."""
    _remove_abandoned(server.parent, "seed")
    scratch = server.parent / f"seed-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    link_home(scratch / "home", server)
    port = _free_port()
    log.info("keycloak: seeding a pristine database for the cache (once per realm file)")
    log_file = scratch / "seed.log"
    password = new_password()
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(
            server_argv(settings, scratch / "home", port),
            env={**os.environ, **server_env(settings, password)},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ready = _wait_ready(proc, port, settings.ready_timeout_s)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if not ready or proc.returncode not in (0, 143, -signal.SIGTERM):
        log.warning("keycloak: seeding failed (exit %s), importing instead; see %s",
                    proc.returncode, log_file)
        return False
    staged = scratch / "template"
    staged.mkdir()
    (scratch / "home" / _H2).rename(staged / "h2")
    write_secret(staged / _ADMIN_PASSWORD, password)
    _move_into_cache(staged, template, scratch)
    return True


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> bool:
    url = f"http://{LISTEN_HOST}:{port}/realms/{endpoints.KEYCLOAK_REALM}/.well-known/openid-configuration"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LISTEN_HOST, 0))
        port: int = probe.getsockname()[1]
        return port
