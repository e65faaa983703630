"""Keycloak 26 (Quarkus distribution) with the realm `iot` imported on first start.

The server zip comes from Maven Central (stack/maven/keycloak.pom.xml). `kc.sh build` (Quarkus
augmentation, ~40 s) runs once per build-option set into the shared cache; every start is then
`start --optimized` (~8 s once the database exists). Each clone gets its own Keycloak home under
.stack/keycloak/home: bin/lib/providers/themes link to the cached build, conf/ and data/ (the H2
database, the import directory) are real directories, so clones sharing the cache never share state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import httpx

from gateway import endpoints
from stack import artifacts, process
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import NotReady, Service

log = logging.getLogger(__name__)

REALM_FILE = Path(__file__).resolve().parent.parent / "keycloak" / "iot-realm.json"

# Build-time options, baked into the cached build; `start --optimized` refuses a mismatch.
# Health and metrics stay off: they would open a second (management) port for nothing, since
# readiness is the realm's OpenID configuration.
BUILD_OPTIONS = ["--db=dev-file", "--http-relative-path=/"]
# An IPv4 literal: "localhost" may resolve to ::1 first, and clients fall back to 127.0.0.1.
LISTEN_HOST = "127.0.0.1"
# The master realm's administrator (local stack only; the console is on localhost).
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin"
# Directories of the distribution that are read-only at run time and shared with the cache.
_SHARED = ("bin", "lib", "providers", "themes")


def _realm_digest() -> str:
    return hashlib.sha256(REALM_FILE.read_bytes()).hexdigest()


def _remove_abandoned_builds(parent: Path) -> None:
    """Scratch directories of interrupted builds (their pid no longer runs): ~400 MB each."""
    for scratch in parent.glob("build-*"):
        pid = scratch.name.removeprefix("build-")
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(scratch, ignore_errors=True)


def _server_dir(lib: Path) -> Path:
    """The built distribution in the cache; its name changes with the build options."""
    digest = hashlib.sha256(" ".join(BUILD_OPTIONS).encode()).hexdigest()[:8]
    return lib.parent / f"server-{digest}"


class KeycloakService(Service):
    name = "keycloak"
    stage = 0

    @property
    def state_dir(self) -> Path:
        return self.settings.service_dir(self.name)

    @property
    def kc_home(self) -> Path:
        return self.state_dir / "home"

    @property
    def base_url(self) -> str:
        return f"http://{endpoints.HOST}:{self.settings.keycloak_port}"

    @property
    def java(self) -> Path:
        return self.settings.java21_home / "bin" / "java"

    def install(self) -> None:
        server = self._ensure_server()
        self._link_home(server)

    def _ensure_server(self) -> Path:
        lib = artifacts.fetch(self.settings, self.name)
        server = _server_dir(lib)
        if (server / "lib" / "quarkus-run.jar").exists():
            return server
        zips = sorted(lib.glob("keycloak-quarkus-dist-*.zip"))
        if not zips:
            raise StackError(f"keycloak: no keycloak-quarkus-dist zip in {lib}")
        # Unpack and build beside the final directory, then rename: a concurrent clone or an
        # interrupted build never leaves a half-built server in place.
        _remove_abandoned_builds(lib.parent)
        scratch = lib.parent / f"build-{os.getpid()}"
        log.info("keycloak: unpacking %s and running kc.sh build (first run only)", zips[0].name)
        with zipfile.ZipFile(zips[0]) as archive:
            archive.extractall(scratch)
        (top,) = [p for p in scratch.iterdir() if p.is_dir()]
        kc_sh = top / "bin" / "kc.sh"
        kc_sh.chmod(0o755)
        env = {**os.environ, "JAVA_HOME": str(self.settings.java21_home)}
        result = subprocess.run(
            [str(kc_sh), "build", *BUILD_OPTIONS],
            env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
            shutil.rmtree(scratch, ignore_errors=True)
            raise StackError(f"keycloak: `kc.sh build` failed:\n{tail}")
        try:
            top.rename(server)
        except OSError:
            # Another clone finished the same build first; its result is identical.
            log.info("keycloak: %s already built by someone else", server)
        shutil.rmtree(scratch, ignore_errors=True)
        return server

    def _link_home(self, server: Path) -> None:
        home = self.kc_home
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
        (home / "conf" / "keycloak.conf").write_text("# options: see stack/services/keycloak.py\n")
        # Imported only when the realm does not exist yet (Keycloak's IGNORE_EXISTING strategy).
        shutil.copyfile(REALM_FILE, home / "data" / "import" / REALM_FILE.name)

    def start(self) -> None:
        # A Keycloak we did not start (another clone) on our port: fail now, and clearly.
        if not self.running() and process.listening(self.settings.keycloak_port):
            raise StackError(
                f"keycloak: port {self.settings.keycloak_port} is in use by a process this stack "
                f"did not start (no pid file under {self.settings.run_dir}); stop it or set "
                "IOT_KEYCLOAK_PORT"
            )
        super().start()

    def processes(self) -> list[ProcessSpec]:
        home = self.kc_home
        port = self.settings.keycloak_port
        argv = [
            str(self.java),
            # What kc.sh would pass; running java directly makes our pid the JVM itself.
            f"-Dkc.home.dir={home}",
            f"-Djboss.server.config.dir={home / 'conf'}",
            "-Djava.util.logging.manager=org.jboss.logmanager.LogManager",
            "-Dpicocli.disable.closures=true",
            "-Dquarkus-log-max-startup-records=10000",
            "-Djava.util.concurrent.ForkJoinPool.common.threadFactory="
            "io.quarkus.bootstrap.forkjoin.QuarkusForkJoinWorkerThreadFactory",
            "-Xms64m", f"-Xmx{self.settings.keycloak_heap}",
            "-XX:MetaspaceSize=96M", "-XX:MaxMetaspaceSize=256m",
            # A small idle footprint and a fast start matter more here than peak throughput:
            # the query API validates tokens locally and calls Keycloak only for the JWKS.
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
        env = {
            "JAVA_HOME": str(self.settings.java21_home),
            # Creates the master realm's admin on the first start only.
            "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USER,
            "KC_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        return [
            self.spec(
                "keycloak", argv, cwd=home, env=env,
                marker=f"-Dkc.home.dir={home}",
            )
        ]

    @property
    def _imported_marker(self) -> Path:
        return self.state_dir / "realm-imported.sha256"

    def initialise(self) -> None:
        """Replace the stored realm when iot-realm.json changed since it was imported.

        --import-realm skips an existing realm, so without this an edited realm file would need
        `iot down --purge`. Replacing drops the realm's sessions and keys: only on a change.
        """
        digest = _realm_digest()
        try:
            imported = self._imported_marker.read_text().strip()
        except OSError:
            imported = digest  # just imported by this start (or a state older than the marker)
        if imported != digest:
            log.info("keycloak: %s changed since its import; replacing the realm", REALM_FILE.name)
            self._replace_realm()
        self._imported_marker.write_text(digest + "\n")

    def _replace_realm(self) -> None:
        admin = f"{self.base_url}/admin/realms"
        realm = f"{admin}/{endpoints.KEYCLOAK_REALM}"
        try:
            with httpx.Client(timeout=60.0) as client:
                grant = client.post(
                    f"{self.base_url}/realms/master/protocol/openid-connect/token",
                    data={"grant_type": "password", "client_id": "admin-cli",
                          "username": ADMIN_USER, "password": ADMIN_PASSWORD},
                )
                grant.raise_for_status()
                headers = {"Authorization": f"Bearer {grant.json()['access_token']}"}
                client.delete(realm, headers=headers).raise_for_status()
                realm_json = json.loads(REALM_FILE.read_text())
                client.post(admin, headers=headers, json=realm_json).raise_for_status()
        except httpx.HTTPError as exc:
            raise StackError(f"keycloak: replacing realm {endpoints.KEYCLOAK_REALM}: {exc}") from exc

    def check_ready(self) -> None:
        url = f"{self.base_url}/realms/{endpoints.KEYCLOAK_REALM}/.well-known/openid-configuration"
        try:
            response = httpx.get(url, timeout=2.0)
        except httpx.HTTPError as exc:
            raise NotReady(f"GET {url}: {exc.__class__.__name__}") from exc
        if response.status_code != 200:
            raise NotReady(f"GET {url}: HTTP {response.status_code}")

    def describe(self) -> str:
        return f"{self.base_url}/realms/{endpoints.KEYCLOAK_REALM} (admin console: admin/admin)"
