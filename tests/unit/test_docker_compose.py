"""docker/: the compose file and the Dockerfiles mirror the native stack (no Docker engine needed).

Each test states one invariant between docker/ and the code the native stack runs from, so a
change on either side that breaks the mirror fails here rather than on a user's machine.
`docker compose config` also runs when the compose plugin happens to be installed.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from string import Template
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from gateway import endpoints, pki, topics
from stack.config import REPO_ROOT, StackSettings

DOCKER = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"

# Which compose service publishes which contract port (docs/contract.md "Ports").
PUBLISHED = {
    "mosquitto": endpoints.MQTT_TLS_PORT,
    "kafka": endpoints.KAFKA_PORT,
    "cassandra": endpoints.CASSANDRA_PORT,
    "keycloak": endpoints.KEYCLOAK_PORT,
    "jobmanager": endpoints.FLINK_REST_PORT,
    "query-api": endpoints.QUERY_API_PORT,
    "prometheus": endpoints.PROMETHEUS_PORT,
    "grafana": 3000,
}
ONE_SHOT_RESTART = {"no", "on-failure"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def _is_one_shot(service: dict[str, Any]) -> bool:
    return "healthcheck" not in service and str(service.get("restart", "no")) in ONE_SHOT_RESTART


def _pom_version(name: str, prop: str) -> str:
    text = (REPO_ROOT / "stack" / "maven" / f"{name}.pom.xml").read_text()
    match = re.search(rf"<{re.escape(prop)}>([^<]+)</{re.escape(prop)}>", text)
    assert match, f"{prop} not in stack/maven/{name}.pom.xml"
    return match.group(1)


def _tag(image: str) -> str:
    return image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""


# --- structure -----------------------------------------------------------------------------------


def test_every_component_of_the_pipeline_is_a_service(services: dict[str, Any]) -> None:
    assert set(services) == {
        "pki-init", "mosquitto", "kafka", "kafka-init", "cassandra", "keycloak", "jobmanager",
        "taskmanager", "flink-job", "writer", "bridge", "query-api", "emulator",
        "jmx-agent", "stack-exporter", "prometheus", "grafana",
    }


def test_contract_ports_are_published_on_localhost_only(services: dict[str, Any]) -> None:
    published: dict[str, set[int]] = {}
    for name, service in services.items():
        for mapping in service.get("ports", []):
            host_ip, host_port, container_port = str(mapping).split(":")
            # Same as the native stack: every port on the loopback address only.
            assert host_ip == "127.0.0.1", f"{name}: {mapping}"
            assert host_port == container_port, f"{name}: {mapping}"
            published.setdefault(name, set()).add(int(host_port))
    assert published == {name: {port} for name, port in PUBLISHED.items()}


def test_depends_on_targets_exist_and_wait_for_the_right_condition(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        for target, condition in _depends(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            other = services[target]
            if "healthcheck" in other:
                assert condition == "service_healthy", f"{name} -> {target}: {condition}"
            else:
                assert _is_one_shot(other), f"{target} has no health check and is not a one-shot"
                assert condition == "service_completed_successfully", f"{name} -> {target}"


def test_every_service_has_a_healthcheck_or_completes(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, name
            assert str(service.get("restart")) == "unless-stopped", name
        else:
            assert _is_one_shot(service), f"{name}: no health check, yet runs for ever"
            assert not service.get("ports"), f"{name}: a one-shot publishes no port"


def test_dependencies_have_no_cycle(services: dict[str, Any]) -> None:
    done: set[str] = set()
    pending = dict.fromkeys(services)
    while pending:
        ready = [n for n in pending if set(_depends(services[n])) <= done]
        assert ready, f"dependency cycle among {sorted(pending)}"
        for name in ready:
            done.add(name)
            del pending[name]


def test_named_volumes_are_declared_and_used(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    used: set[str] = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                # Bind mounts are relative to the compose file's directory.
                assert (DOCKER / source).resolve().exists(), f"{name}: {source} does not exist"
            else:
                used.add(source)
    assert used == set(compose["volumes"])


def test_environment_values_are_strings(services: dict[str, Any]) -> None:
    # Compose rejects booleans in `environment` (and YAML 1.1 reads `no`/`on` as booleans).
    for name, service in services.items():
        env = service.get("environment") or {}
        for key, value in env.items():
            assert isinstance(value, str | int) and not isinstance(value, bool), f"{name}: {key}"



def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in _strings(key) + _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def test_dollars_meant_for_the_shell_are_escaped(compose: dict[str, Any]) -> None:
    # Compose interpolates `$NAME` from the caller's environment; `$$` passes one `$` through.
    for text in _strings(compose):
        assert "$" not in text.replace("$$", ""), text

# --- images --------------------------------------------------------------------------------------


def test_images_are_pinned_to_a_version(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service["image"]
        tag = _tag(image)
        # Prometheus tags its images with a leading `v`.
        assert tag and tag != "latest" and re.match(r"v?\d+\.\d+", tag), f"{name}: {image}"
    for dockerfile in ("Dockerfile", "Dockerfile.flink"):
        for line in (DOCKER / dockerfile).read_text().splitlines():
            if line.startswith("FROM ") and "${" not in line:
                base = line.split()[1]
                if base in {"build", "connector", "app"}:
                    continue
                assert re.match(r"\d+\.\d+", _tag(base)), f"{dockerfile}: {line}"
    arg = re.search(r"ARG PYTHON_IMAGE=(\S+)", (DOCKER / "Dockerfile").read_text())
    assert arg and _tag(arg.group(1)).startswith("3.11-"), "the project's Python (3.11)"


def test_images_have_the_native_versions(services: dict[str, Any]) -> None:
    assert _tag(services["kafka"]["image"]) == _pom_version("kafka", "kafka.version")
    assert _tag(services["kafka-init"]["image"]) == _pom_version("kafka", "kafka.version")
    assert _tag(services["cassandra"]["image"]) == _pom_version("cassandra", "cassandra.version")
    assert _tag(services["keycloak"]["image"]) == _pom_version("keycloak", "keycloak.version")
    mosquitto_from = re.search(r"^ARG MOSQUITTO_IMAGE=(\S+)",
                               (DOCKER / "mosquitto" / "Dockerfile").read_text(), re.M)
    assert mosquitto_from and mosquitto_from.group(1).startswith("eclipse-mosquitto:2.0.")
    assert _tag(services["mosquitto"]["image"]) == _tag(mosquitto_from.group(1))
    # The cluster runs the minor version of the wheel that plans the job.
    wheel = importlib.metadata.version("apache-flink")
    minor = ".".join(wheel.split(".")[:2])
    flink_from = re.search(r"^FROM (\S+)", (DOCKER / "Dockerfile.flink").read_text(), re.M)
    assert flink_from and _tag(flink_from.group(1)).startswith(f"{minor}-java17")


def test_built_images_use_the_project_dockerfiles(services: dict[str, Any]) -> None:
    ours = {name: s for name, s in services.items() if "build" in s}
    assert set(ours) == {
        "pki-init", "jobmanager", "taskmanager", "flink-job", "writer", "bridge", "query-api",
        "emulator", "mosquitto", "jmx-agent", "stack-exporter",
    }
    for name, service in ours.items():
        build = service["build"]
        dockerfile = (DOCKER / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile.is_file(), name
        if "target" in build:
            assert f" AS {build['target']}" in dockerfile.read_text(), f"{name}: {build}"


def test_the_dockerfile_installs_every_package_of_the_project() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert include
    packages = [p.strip(' "*') for p in include.group(1).split(",") if p.strip()]
    ignored = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    for package in packages:
        assert f"COPY {package} ./{package}" in text, package
        assert package not in ignored, f".dockerignore drops {package}"
    assert "COPY pyproject.toml" in text
    assert "docker" not in ignored, "the image copies docker/healthcheck.py"


def test_the_connector_jar_is_the_native_one() -> None:
    version = _pom_version("flink", "flink.kafka.connector.version")
    text = (DOCKER / "Dockerfile").read_text()
    assert f"ARG KAFKA_CONNECTOR_VERSION={version}" in text
    assert "openjdk-17-jre-headless" in text, "PyFlink's client is a JVM"


# --- what the services run -----------------------------------------------------------------------


def test_python_services_run_the_native_entry_points(services: dict[str, Any]) -> None:
    modules = {
        "flink-job": "flink_jobs", "writer": "storage", "bridge": "bridge",
        "query-api": "query_api", "emulator": "emulator",
    }
    for name, module in modules.items():
        command = services[name]["command"]
        assert command[:3] == ["python", "-m", module], name
        assert importlib.util.find_spec(f"{module}.__main__") is not None, module
    emulator = services["emulator"]["command"]
    settings = StackSettings(profile="default")
    args = dict(zip(emulator[3::2], emulator[4::2], strict=True))
    assert float(args["--rate"]) == settings.emulator_rate
    assert int(args["--devices"]) == settings.emulator_devices
    assert args["--tenant"] == settings.emulator_tenant


def test_pki_init_uses_the_project_cli(services: dict[str, Any]) -> None:
    script = services["pki-init"]["command"][-1]
    assert "iot certs init --server-name mosquitto" in script
    # The broker reads its key as the image's user; nothing else is handed over.
    assert re.findall(r"chown \S+ (\S+)", script) == ["/data/pki/server.key"]


def test_kafka_init_creates_the_native_topics(services: dict[str, Any]) -> None:
    from stack.services.kafka import TOPICS

    script = services["kafka-init"]["command"][0]
    created: dict[str, tuple[int, dict[str, str]]] = {}
    for line in script.splitlines():
        if not line.startswith("create "):
            continue
        words = shlex.split(line)
        opts: dict[str, list[str]] = {}
        for flag, value in zip(words[1::2], words[2::2], strict=True):
            opts.setdefault(flag, []).append(value)
        config = dict(item.split("=", 1) for item in opts.get("--config", []))
        created[opts["--topic"][0]] = (int(opts["--partitions"][0]), config)
    assert created == {name: (partitions, config) for name, partitions, config in TOPICS}
    assert {topics.KAFKA_READINGS, topics.KAFKA_DLQ} <= set(created)
    assert "--if-not-exists" in script and "kafka:29092" in script


def test_kafka_listens_for_the_network_and_the_host(services: dict[str, Any]) -> None:
    env = _env(services["kafka"])
    advertised = dict(
        item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    assert advertised["EXTERNAL"] == endpoints.KAFKA_BOOTSTRAP
    assert advertised["INTERNAL"] == _env(services["writer"])["IOT_KAFKA_BOOTSTRAP"]
    # CLUSTER_ID is Kafka's Uuid text: URL-safe base64 of 16 bytes, unpadded.
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16


def test_heaps_match_the_native_stack(services: dict[str, Any]) -> None:
    settings = StackSettings(profile="default")
    assert f"-Xmx{settings.kafka_heap}" in _env(services["kafka"])["KAFKA_HEAP_OPTS"]
    cassandra = _env(services["cassandra"])["MAX_HEAP_SIZE"]
    assert cassandra.lower() == settings.cassandra_heap.lower()
    assert f"-Xmx{settings.keycloak_heap}" in _env(services["keycloak"])["JAVA_OPTS_KC_HEAP"]


def _flink_properties(services: dict[str, Any], name: str) -> dict[str, str]:
    text = _env(services[name])["FLINK_PROPERTIES"]
    # A value may be quoted (YAML would read a leading `*` as an alias).
    return dict(
        (key.strip(), value.strip().strip('"'))
        for key, value in (line.split(":", 1) for line in text.splitlines() if line.strip())
    )


def test_flink_configuration_mirrors_the_native_cluster(services: dict[str, Any]) -> None:
    from stack.services.flink import cluster_config

    native = cluster_config(StackSettings(profile="default"))
    props = _flink_properties(services, "jobmanager")
    assert props == _flink_properties(services, "taskmanager")
    # Addresses and paths differ by construction; everything else is the native value.
    # The reporter's port: one per container here, one per daemon natively (-D on each command line).
    local = {"jobmanager.rpc.address", "execution.checkpointing.dir",
             "execution.checkpointing.savepoint-dir", "metrics.reporter.prom.port"}
    for key, value in props.items():
        if key not in local:
            assert key in native and native[key] == value, key
    for key in ("jobmanager.memory.process.size", "taskmanager.memory.process.size",
                "taskmanager.numberOfTaskSlots", "restart-strategy.type",
                "execution.checkpointing.externalized-checkpoint-retention"):
        assert key in props, key
    checkpoint_dir = _env(services["flink-job"])["IOT_FLINK_CHECKPOINT_DIR"]
    assert props["execution.checkpointing.dir"] == Path(checkpoint_dir).as_uri()
    assert props["jobmanager.rpc.address"] == "jobmanager"


def test_flink_state_is_shared_by_the_cluster_and_the_submitter(services: dict[str, Any]) -> None:
    checkpoint_dir = Path(_env(services["flink-job"])["IOT_FLINK_CHECKPOINT_DIR"])
    for name in ("jobmanager", "taskmanager", "flink-job"):
        mounts = dict(str(v).split(":", 1) for v in services[name]["volumes"])
        assert checkpoint_dir.is_relative_to(mounts["flink-state"]), name


def test_keycloak_imports_the_native_realm(services: dict[str, Any]) -> None:
    from stack.services.keycloak import REALM_FILE

    keycloak = services["keycloak"]
    mounts = [str(v).split(":") for v in keycloak["volumes"]]
    realm = [m for m in mounts if m[0].endswith(".json")]
    assert len(realm) == 1
    assert (DOCKER / realm[0][0]).resolve() == REALM_FILE.resolve()
    assert realm[0][1].startswith("/opt/keycloak/data/import/")
    assert "--import-realm" in keycloak["command"]
    assert f"--http-port={endpoints.KEYCLOAK_PORT}" in keycloak["command"]
    issuer = _env(services["query-api"])["IOT_KEYCLOAK_ISSUER"]
    assert f"--hostname={endpoints.KEYCLOAK_URL}" in keycloak["command"]
    assert issuer == f"{endpoints.KEYCLOAK_URL}/realms/{endpoints.KEYCLOAK_REALM}"


# --- the environment of our programs -------------------------------------------------------------


def _settings_classes() -> list[type[BaseSettings]]:
    from bridge.config import BridgeSettings
    from emulator.config import EmulatorSettings
    from flink_jobs.config import FlinkJobSettings
    from query_api.config import QueryApiSettings
    from stack.commands.devices import CertsSettings
    from stack.services.prometheus import ObservabilitySettings
    from storage.config import StorageSettings

    return [BridgeSettings, EmulatorSettings, FlinkJobSettings, CertsSettings, QueryApiSettings,
            StorageSettings, ObservabilitySettings]


def _known_variables() -> set[str]:
    names: set[str] = set()
    for cls in _settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field_name, field in cls.model_fields.items():
            names.add(f"{prefix}{field_name}".upper())
            if isinstance(field.validation_alias, str):
                names.add(field.validation_alias.upper())
    return names


def test_iot_variables_exist_and_point_at_services(services: dict[str, Any]) -> None:
    known = _known_variables()
    for name, service in services.items():
        for key, value in _env(service).items():
            if not key.startswith("IOT_"):
                continue
            assert key in known, f"{name}: {key} is read by no settings class"
            if key.endswith(("_HOST", "_HOSTS", "_URL", "_BOOTSTRAP")) and key not in {
                "IOT_QUERY_API_HOST", "IOT_EXPORTER_HOST",  # listen addresses, not peers
            }:
                host = re.sub(r"^\w+://", "", value).split(":")[0].split("/")[0]
                assert host in services, f"{name}: {key}={value} is no compose service"


def test_settings_validate_with_the_compose_environment(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(services["bridge"]).items():
        monkeypatch.setenv(key, value)
    for cls in _settings_classes():
        settings = cls()
        dumped = settings.model_dump()
        for field_name in ("mqtt_host", "kafka_bootstrap", "cassandra_hosts"):
            if field_name in dumped:
                assert "localhost" not in str(dumped[field_name]), f"{cls.__name__}.{field_name}"
    from bridge.config import BridgeSettings

    assert BridgeSettings().cert_file == Path(f"/data/pki/services/{pki.BRIDGE_CN}.crt")


def test_stateful_programs_mount_the_pki(services: dict[str, Any]) -> None:
    stack_dir = _env(services["bridge"])["IOT_STACK_DIR"]
    for name in ("pki-init", "bridge", "emulator"):
        mounts = dict(str(v).split(":", 1) for v in services[name]["volumes"])
        assert mounts["pki"].split(":")[0] == f"{stack_dir}/pki", name
    # The broker reads it where its configuration says.
    mosquitto_mounts = dict(str(v).split(":", 1) for v in services["mosquitto"]["volumes"])
    assert mosquitto_mounts["pki"] == "/pki:ro"


# --- Mosquitto: the native templates rendered for the container ----------------------------------


def _directives(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition(" ")
            pairs.append((key, value))
    return pairs


def _render_native(template: str) -> str:
    from stack.services.mosquitto import conf_values

    settings = StackSettings(stack_dir=Path("/stack"))
    server = pki.Identity(Path("/pki/server.crt"), Path("/pki/server.key"), Path("/pki/ca.crt"))
    values = conf_values(settings, server, Path("/mosquitto"),
                         Path("/usr/lib/mosquitto/iot_edge.so"))
    values.update({"user": "mosquitto", "log_file": "/dev/stdout", "crlfile": "/pki/ca.crl",
                   "revoked_file": "/pki/revoked-names.txt"})
    return Template((REPO_ROOT / "mosquitto" / template).read_text()).substitute(values)


def test_mosquitto_conf_is_the_native_template_for_the_container() -> None:
    ours = _directives((DOCKER / "mosquitto" / "mosquitto.conf").read_text())
    native = _directives(_render_native("mosquitto.conf.tmpl"))
    container_only = {"user", "pid_file", "log_dest"}
    assert [d for d in ours if d[0] not in container_only] == [
        d for d in native if d[0] not in container_only
    ]
    assert ("log_dest", "stdout") in ours
    assert ("listener", str(endpoints.MQTT_TLS_PORT)) in ours
    assert ("allow_anonymous", "false") in ours and ("require_certificate", "true") in ours
    assert ("use_username_as_clientid", "true") in ours
    assert not any(key == "acl_file" for key, _ in ours), "acl_file allows every SUBSCRIBE"


def test_mosquitto_image_builds_the_native_plugin_source() -> None:
    dockerfile = (DOCKER / "mosquitto" / "Dockerfile").read_text()
    assert "COPY mosquitto/iot_edge.c" in dockerfile
    assert "/usr/lib/mosquitto/iot_edge.so" in dockerfile


# --- docker/healthcheck.py -----------------------------------------------------------------------


def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_healthcheck", DOCKER / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_finds_established_peers() -> None:
    lines = [
        # local 127.0.0.1:40000 -> remote 172.18.0.3:8883, ESTABLISHED
        "   0: 0100007F:9C40 030012AC:22B3 01 00000000:00000000 00:00000000 00000000 0 0 1",
        # listening socket on 8883 (state 0A): not a peer
        "   1: 00000000:22B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 2",
        "garbage",
    ]
    assert _healthcheck().established_peers(lines) == {8883}


def test_healthcheck_http_and_usage(tmp_path: Path) -> None:
    module = _healthcheck()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert module.main(["http", f"{base}/health"]) == 0
        assert module.main(["http", f"{base}/other"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert module.main(["peer", "nope"]) == 2
    proc_net = tmp_path / "net"
    proc_net.mkdir()
    (proc_net / "tcp").write_text("header\n")
    assert module.has_peer(8883, proc_net) is False


# --- observability: Prometheus, Grafana, the exporters ---------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (resolved) of the service's bind mounts."""
    result = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            result[target] = str((DOCKER / source).resolve())
    return result


def test_prometheus_scrapes_what_the_native_one_scrapes(services: dict[str, Any]) -> None:
    from stack.services import prometheus

    mounts = _mounts(services["prometheus"])
    config = yaml.safe_load(Path(mounts["/etc/prometheus/prometheus.yml"]).read_text())
    assert Path(mounts["/etc/prometheus/alerts.yml"]) == prometheus.RULES_FILE
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    obs = prometheus.ObservabilitySettings()
    native = prometheus.scrape_targets(StackSettings(profile="default"), obs)
    jobs = {c["job_name"]: c["static_configs"][0]["targets"][0] for c in config["scrape_configs"]}
    # The web console is not part of the compose stack.
    assert set(jobs) == set(native) - {"console"}
    for job, target in jobs.items():
        host = target.split(":")[0]
        assert host in services or host == "localhost", f"{job}: {target}"
    assert config["global"]["scrape_interval"] == obs.prometheus_scrape_interval
    jvm = {c["job_name"]: c.get("scrape_interval") for c in config["scrape_configs"]}
    for job in prometheus.JVM_JOBS:
        assert jvm[job] == obs.prometheus_jvm_scrape_interval, job


def test_grafana_is_provisioned_with_the_dashboards_and_the_prometheus(
    services: dict[str, Any],
) -> None:
    mounts = _mounts(services["grafana"])
    provisioning = Path(mounts["/etc/grafana/provisioning"])
    dashboards = Path(mounts["/var/lib/grafana/dashboards"])
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    datasource = source["datasources"][0]
    assert datasource["url"] == f"http://prometheus:{endpoints.PROMETHEUS_PORT}"
    provider = yaml.safe_load((provisioning / "dashboards" / "iot-pipeline.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    files = sorted(dashboards.glob("*.json"))
    # An overview and one per stage.
    assert {f.stem for f in files} >= {"iot-overview", "iot-edge-bridge", "iot-kafka", "iot-flink",
                                       "iot-storage", "iot-query-api"}
    uids = set()
    for path in files:
        board = json.loads(path.read_text())
        assert board["uid"] == path.stem and board["uid"] not in uids
        uids.add(board["uid"])
        assert board["panels"], path.name
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], f"{path.name}: {panel['title']}"
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    home = _env(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/var/lib/grafana/dashboards/iot-overview.json"


def test_kafka_and_cassandra_load_the_jmx_agent_with_the_native_rules(
    services: dict[str, Any],
) -> None:
    from stack.services import prometheus

    obs = prometheus.ObservabilitySettings()
    agent = re.search(r"ARG JMX_EXPORTER_VERSION=(\S+)", (DOCKER / "Dockerfile").read_text())
    assert agent and agent.group(1) == _pom_version("prometheus", "jmx.exporter.version")
    for name, variable, port in (("kafka", "KAFKA_OPTS", obs.kafka_jmx_port),
                                 ("cassandra", "JVM_EXTRA_OPTS", obs.cassandra_jmx_port)):
        service = services[name]
        option = next(o for o in _env(service)[variable].split() if o.startswith("-javaagent:"))
        jar, rest = option.removeprefix("-javaagent:").split("=", 1)
        agent_port, rules = rest.split(":", 1)
        assert int(agent_port) == port, name
        mounts = _mounts(service)
        rules_dir = next(target for target in mounts if rules.startswith(target + "/"))
        assert Path(mounts[rules_dir]) == prometheus.JMX_CONFIGS
        assert (prometheus.JMX_CONFIGS / Path(rules).name).is_file()
        agent_mounts = [str(v).split(":")[1] for v in service["volumes"]
                        if str(v).startswith("jmx-agent:")]
        assert agent_mounts and jar.startswith(agent_mounts[0] + "/"), name
        assert _depends(service).get("jmx-agent") == "service_completed_successfully"


def test_flink_reports_to_prometheus(services: dict[str, Any]) -> None:
    from stack.services import prometheus

    props = _flink_properties(services, "taskmanager")
    for key, value in prometheus.flink_reporter_config().items():
        assert props[key] == value
    assert props["metrics.reporter.prom.port"] == "9249"


# --- the real linter, when it is installed --------------------------------------------------------


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr

