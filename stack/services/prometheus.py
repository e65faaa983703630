"""Prometheus (Debian's package) scraping every component, plus the stack's own small exporter.

Targets: our Python services' /metrics, Kafka and Cassandra through the Prometheus JMX exporter
java agent (Maven Central, stack/maven/prometheus.pom.xml), Flink through the Prometheus metrics
reporter its distribution ships (the apache-flink wheel's plugins/metrics-prometheus), and
stack/exporter.py: certificate and CRL expiry, the disk under the stack dir, Mosquitto's $SYS
counters. Rules and alerts live in observability/prometheus/ (checked by `promtool test rules`);
the rendered configuration and the TSDB live under .stack/prometheus/.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic_settings import SettingsConfigDict

from gateway import endpoints, pki
from gateway.settings import MqttConnection
from stack import artifacts, process
from stack.config import REPO_ROOT, StackSettings
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import NotReady, Service, StatePath, http_ready
from stack.system import apt_install

log = logging.getLogger(__name__)

NAME = "prometheus"
OBSERVABILITY = REPO_ROOT / "observability"
RULES_FILE = OBSERVABILITY / "prometheus" / "alerts.yml"
JMX_CONFIGS = OBSERVABILITY / "jmx"
JMX_AGENT_PREFIX = "jmx_prometheus_javaagent-"
FLINK_REPORTER_PLUGIN = "metrics-prometheus"
# The stack exporter's MQTT identity. Client ids are forced to the certificate's CN, so sharing the
# operator's would have every debugging or probe session take its session over. The broker's
# rules let bridge identities read $SYS; this one never joins the telemetry group.
EXPORTER_IDENTITY = f"{pki.BRIDGE_PREFIX}stack-exporter"


class ObservabilitySettings(MqttConnection):
    """Where Prometheus and the exporters listen, and how often it scrapes (env prefix IOT_); the
    broker whose $SYS the stack exporter reads is the bridge's (IOT_MQTT_HOST, gateway.settings)."""

    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")

    prometheus_port: int = endpoints.PROMETHEUS_PORT
    # Every 5 s keeps the freshness alert's resolution tight; the exporters answer in
    # milliseconds, so the cost stays small (bench/observability.py).
    prometheus_scrape_interval: str = "5s"
    # The JVMs' exporters build their answer from JMX or Flink's registry on every scrape
    # (40-100 ms of a core each): every 10 s keeps their cost within budget.
    prometheus_jvm_scrape_interval: str = "10s"
    prometheus_retention: str = "7d"
    prometheus_retention_size: str = "1GB"
    # Ports of the exporters (not in the contract; loopback only on the native stack).
    exporter_host: str = "127.0.0.1"
    exporter_port: int = 9103
    kafka_jmx_port: int = 9404
    cassandra_jmx_port: int = 9405
    flink_jobmanager_metrics_port: int = 9249
    flink_taskmanager_metrics_port: int = 9250


def binary(name: str = "prometheus") -> str | None:
    """The Debian package's binary (prometheus or promtool), or None when not installed."""
    return shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)


def url(obs: ObservabilitySettings | None = None) -> str:
    obs = obs or ObservabilitySettings()
    return f"http://{endpoints.HOST}:{obs.prometheus_port}"


# --- JVM agents and the Flink reporter (called from kafka.py, cassandra.py, flink.py) ------------


def jmx_agent_args(settings: StackSettings, component: str) -> list[str]:
    """-javaagent for the JMX exporter on the component's port, or nothing before the first
    install (command lines built for `iot status` must not fetch)."""
    jars = sorted(artifacts.lib_dir(settings, NAME).glob(f"{JMX_AGENT_PREFIX}*.jar"))
    if not jars:
        return []
    obs = ObservabilitySettings()
    port = {"kafka": obs.kafka_jmx_port, "cassandra": obs.cassandra_jmx_port}[component]
    config = JMX_CONFIGS / f"{component}.yml"
    return [f"-javaagent:{jars[-1]}=127.0.0.1:{port}:{config}"]


def install_jmx_agent(settings: StackSettings) -> None:
    """Fetch the JMX exporter agent into the shared cache (once)."""
    artifacts.fetch(settings, NAME)


def flink_plugins_dir(settings: StackSettings) -> Path:
    """FLINK_PLUGINS_DIR of our cluster (filled by link_flink_reporter)."""
    return settings.service_dir("flink") / "plugins"


def link_flink_reporter(settings: StackSettings) -> None:
    """Only the Prometheus reporter of the wheel's plugins/, linked: the runtime's own version by
    construction, and loading every shipped plugin would cost memory for nothing."""
    from stack.services.flink import flink_home

    plugins = flink_plugins_dir(settings)
    link = plugins / FLINK_REPORTER_PLUGIN
    source = flink_home() / "plugins" / FLINK_REPORTER_PLUGIN
    if not source.is_dir():
        raise StackError(f"flink: the wheel has no {source}; Flink's metrics cannot be scraped")
    plugins.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() == source.resolve():
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(source, target_is_directory=True)


# What Flink's reporter exports: the operators' record counts and watermarks, the Kafka source's
# offsets (the consumer lag), checkpoints and restarts, the JVMs. Everything else (the Kafka
# clients' own metrics, byte counts, buffers: 85 % of the task manager's 1,000 series) is left out;
# each scrape renders every exported series, which made the task manager's scrape ~100 ms.
# Checked against Flink's DefaultReporterFilters: `*` spans scope levels, `;` separates filters.
FLINK_REPORTER_INCLUDES = ";".join([
    "*.job.task.operator:numRecordsIn,numRecordsOut,numLateRecordsDropped,currentOutputWatermark",
    "*.KafkaSourceReader.topic.partition:currentOffset,committedOffset",
    "jobmanager.job:lastCheckpointDuration,lastCheckpointSize,numberOfCompletedCheckpoints,"
    "numberOfFailedCheckpoints,uptime,numRestarts",
    "jobmanager:numRegisteredTaskManagers,numRunningJobs,taskSlotsAvailable,taskSlotsTotal",
    "*.Status.JVM.*",
])


def flink_reporter_config() -> dict[str, str]:
    """config.yaml keys of the reporter; the port is per role (flink_reporter_port)."""
    return {
        "metrics.reporter.prom.factory.class":
            "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        "metrics.reporter.prom.filter.includes": FLINK_REPORTER_INCLUDES,
    }


def flink_reporter_port(role: str) -> int:
    obs = ObservabilitySettings()
    return {
        "jobmanager": obs.flink_jobmanager_metrics_port,
        "taskmanager": obs.flink_taskmanager_metrics_port,
    }[role]


# --- the scrape configuration -----------------------------------------------------------------


JVM_JOBS = frozenset({"kafka", "cassandra", "flink-jobmanager", "flink-taskmanager"})


def scrape_targets(settings: StackSettings, obs: ObservabilitySettings) -> dict[str, str]:
    """job -> host:port; the web console only once its service exists in this tree."""
    from stack.services import all_services

    targets = {
        "bridge": endpoints.BRIDGE_METRICS_PORT,
        "writer": endpoints.WRITER_METRICS_PORT,
        "query-api": settings.query_api_port,
        "stack-exporter": obs.exporter_port,
        "kafka": obs.kafka_jmx_port,
        "cassandra": obs.cassandra_jmx_port,
        "flink-jobmanager": obs.flink_jobmanager_metrics_port,
        "flink-taskmanager": obs.flink_taskmanager_metrics_port,
        "prometheus": obs.prometheus_port,
    }
    if any(service.name == "console" for service in all_services(settings)):
        targets["console"] = settings.console_port
    return {job: f"127.0.0.1:{port}" for job, port in targets.items()}


def prometheus_config(
    settings: StackSettings, obs: ObservabilitySettings, rules: Path = RULES_FILE
) -> dict[str, Any]:
    interval = obs.prometheus_scrape_interval
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": interval,
            "external_labels": {"stack": "native"},
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}],
             **({"scrape_interval": obs.prometheus_jvm_scrape_interval,
                 "scrape_timeout": obs.prometheus_jvm_scrape_interval} if job in JVM_JOBS else {})}
            for job, target in scrape_targets(settings, obs).items()
        ],
    }


def prometheus_argv(config_file: Path, data_dir: Path, obs: ObservabilitySettings) -> list[str]:
    exe = binary() or "/usr/bin/prometheus"
    return [
        exe,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={obs.prometheus_retention}",
        f"--storage.tsdb.retention.size={obs.prometheus_retention_size}",
        f"--web.listen-address=127.0.0.1:{obs.prometheus_port}",
        # `POST /-/reload` after a rules edit, without a restart.
        "--web.enable-lifecycle",
    ]


def _disable_system_unit() -> None:
    """Debian's package enables its own prometheus.service on 9090 where systemd runs: that one
    would hold our port. We installed the package for the stack only, so switch the unit off."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return
    log.info("prometheus: disabling the package's system service (the stack runs its own)")
    subprocess.run([systemctl, "disable", "--now", "prometheus"], capture_output=True,
                   stdin=subprocess.DEVNULL, check=False)


def ensure_installed() -> None:
    if binary() is None or binary("promtool") is None:
        log.info("installing prometheus from Debian's packages")
        apt_install(["prometheus"])
        _disable_system_unit()


class PrometheusService(Service):
    name = NAME
    stage = 2

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(settings)
        self.obs = ObservabilitySettings()

    config_file = StatePath("prometheus.yml")
    data_dir = StatePath("data")

    def install(self) -> None:
        ensure_installed()
        pki.service_identity(self.settings.pki_dir, EXPORTER_IDENTITY)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # JSON is valid YAML: an exact config without a YAML writer.
        config = prometheus_config(self.settings, self.obs)
        self.config_file.write_text(json.dumps(config, indent=1) + "\n")

    def processes(self) -> list[ProcessSpec]:
        env = {"IOT_STACK_DIR": str(self.settings.stack_dir), "PYTHONUNBUFFERED": "1"}
        return [
            self.spec("stack-exporter", [sys.executable, "-m", "stack.exporter"], env=env),
            self.spec(NAME, prometheus_argv(self.config_file, self.data_dir, self.obs),
                      stop_timeout_s=30.0),
        ]

    def own_ports(self) -> tuple[int, ...]:
        return (self.obs.prometheus_port, self.obs.exporter_port)

    def adopt_marker(self) -> str | None:
        # Each of the two processes has a marker of its own (see start): one marker for both
        # took the Prometheus process for the exporter too, and the exporter was never started.
        return None

    def _markers(self) -> dict[str, str]:
        return {
            NAME: f"--config.file={self.config_file}",
            "stack-exporter": f"{sys.executable} -m stack.exporter",
        }

    def start(self) -> None:
        markers = self._markers()
        for spec in self.processes():
            process.adopt(spec, markers[spec.name])
        super().start()

    def wait_ready(self, timeout_s: float) -> float:
        """Readiness by the real answers alone, then the pid files checked and, where one went
        missing while its process runs (seen once on a first start), recorded again."""
        started = time.monotonic()
        last = "no check ran"
        while time.monotonic() - started < timeout_s:
            try:
                self.check_ready()
                break
            except NotReady as exc:
                last = str(exc)
            time.sleep(0.5)
        else:
            tails = "\n".join(f"--- {spec.log_file}\n{process.log_tail(spec.log_file)}"
                              for spec in self.processes())
            raise StackError(f"{self.name} not ready after {timeout_s:.0f}s; failed check: {last}\n{tails}")
        markers = self._markers()
        for spec in self.processes():
            if not process.is_running(spec):
                process.adopt(spec, markers[spec.name])
        elapsed = time.monotonic() - started
        log.info("%s ready in %.1fs", self.name, elapsed)
        return elapsed

    def check_ready(self) -> None:
        base = url(self.obs)
        try:
            response = httpx.get(f"{base}/-/ready", timeout=2.0)
        except httpx.HTTPError as exc:
            raise NotReady(f"GET {base}/-/ready: {exc.__class__.__name__}") from exc
        if response.status_code != 200:
            raise NotReady(f"GET {base}/-/ready: HTTP {response.status_code}")
        http_ready(f"http://127.0.0.1:{self.obs.exporter_port}/metrics")

    def describe(self) -> str:
        base = url(self.obs)
        try:
            targets = httpx.get(f"{base}/api/v1/targets?state=active", timeout=2.0).json()
            active = targets["data"]["activeTargets"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            return f"{base} ({exc.__class__.__name__})"
        up = sum(1 for t in active if t.get("health") == "up")
        firing = firing_alerts(self.obs)
        alerts = "?" if firing is None else str(len(firing))
        return f"{base}: {up}/{len(active)} targets up, {alerts} alert(s) firing"


def firing_alerts(obs: ObservabilitySettings | None = None) -> list[dict[str, Any]] | None:
    """The alerts Prometheus reports as firing, or None when it does not answer."""
    try:
        response = httpx.get(f"{url(obs)}/api/v1/alerts", timeout=2.0)
        alerts: list[dict[str, Any]] = response.json()["data"]["alerts"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return [alert for alert in alerts if alert.get("state") == "firing"]


def alert_lines(alerts: list[dict[str, Any]]) -> list[str]:
    """One line per firing alert for `iot status`: name, labels that tell which, summary."""
    lines = []
    for alert in sorted(alerts, key=lambda a: str(a.get("labels", {}).get("alertname"))):
        labels = dict(alert.get("labels", {}))
        name = labels.pop("alertname", "?")
        for noise in ("severity", "stack"):
            labels.pop(noise, None)
        which = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        summary = alert.get("annotations", {}).get("summary", "")
        lines.append(f"{name}{'{' + which + '}' if which else ''} since {alert.get('activeAt', '?')}"
                     f"{': ' + summary if summary else ''}")
    return lines
