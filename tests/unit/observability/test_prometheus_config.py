"""The native Prometheus's configuration and the exporters' wiring into the JVM services."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import endpoints
from stack import artifacts
from stack.config import StackSettings
from stack.services import prometheus
from stack.services.cassandra import CassandraService
from stack.services.flink import cluster_config, jobmanager_spec, taskmanager_spec
from stack.services.kafka import KafkaService


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def test_every_component_is_scraped_every_5_to_10_seconds(tmp_path: Path) -> None:
    settings = StackSettings(stack_dir=tmp_path)
    obs = prometheus.ObservabilitySettings()
    config = prometheus.prometheus_config(settings, obs)
    assert 5 <= _seconds(config["global"]["scrape_interval"]) <= 10
    for job in config["scrape_configs"]:
        assert 5 <= _seconds(job.get("scrape_interval", config["global"]["scrape_interval"])) <= 10
    jvm = {c["job_name"] for c in config["scrape_configs"] if "scrape_interval" in c}
    assert jvm == prometheus.JVM_JOBS
    jobs = {c["job_name"]: c["static_configs"][0]["targets"][0] for c in config["scrape_configs"]}
    assert {"bridge", "writer", "query-api", "stack-exporter", "kafka", "cassandra",
            "flink-jobmanager", "flink-taskmanager", "prometheus"} <= set(jobs)
    assert jobs["bridge"] == f"127.0.0.1:{endpoints.BRIDGE_METRICS_PORT}"
    assert jobs["writer"] == f"127.0.0.1:{endpoints.WRITER_METRICS_PORT}"
    assert jobs["query-api"] == f"127.0.0.1:{endpoints.QUERY_API_PORT}"
    assert jobs["prometheus"] == f"127.0.0.1:{endpoints.PROMETHEUS_PORT}"
    # Every target on its own port.
    assert len(set(jobs.values())) == len(jobs)
    assert config["rule_files"] == [str(prometheus.RULES_FILE)]
    assert prometheus.RULES_FILE.is_file()


def test_prometheus_listens_on_loopback_with_its_state_under_the_stack_dir(tmp_path: Path) -> None:
    service = prometheus.PrometheusService(StackSettings(stack_dir=tmp_path))
    argv = next(s for s in service.processes() if s.name == "prometheus").argv
    assert f"--web.listen-address=127.0.0.1:{endpoints.PROMETHEUS_PORT}" in argv
    assert f"--storage.tsdb.path={tmp_path / 'prometheus' / 'data'}" in argv
    assert f"--config.file={tmp_path / 'prometheus' / 'prometheus.yml'}" in argv
    exporter = next(s for s in service.processes() if s.name == "stack-exporter")
    assert exporter.argv[-2:] == ["-m", "stack.exporter"]
    assert service.own_ports() == (endpoints.PROMETHEUS_PORT, 9103)


@pytest.fixture
def agent_jar(tmp_path: Path) -> StackSettings:
    """A settings whose cache holds a (fake) agent jar where artifacts.fetch would put it."""
    settings = StackSettings(stack_dir=tmp_path / "stack", cache_dir=tmp_path / "cache")
    lib = artifacts.lib_dir(settings, prometheus.NAME)
    lib.mkdir(parents=True)
    (lib / "jmx_prometheus_javaagent-1.0.1.jar").write_bytes(b"")
    return settings


def test_kafka_and_cassandra_run_the_jmx_agent_with_their_rules(agent_jar: StackSettings) -> None:
    for service, port in ((KafkaService(agent_jar), 9404), (CassandraService(agent_jar), 9405)):
        argv = list(service.processes()[0].argv)
        agents = [a for a in argv if a.startswith("-javaagent:") and "jmx_prometheus" in a]
        assert len(agents) == 1, service.name
        _jar, address = agents[0].removeprefix("-javaagent:").split("=", 1)
        host, agent_port, config = address.split(":", 2)
        assert (host, int(agent_port)) == ("127.0.0.1", port)
        assert Path(config) == prometheus.JMX_CONFIGS / f"{service.name}.yml"
        assert Path(config).is_file()
        # Before the main class: after it the JVM would pass it to the program.
        main = "kafka.Kafka" if service.name == "kafka" else "org.apache.cassandra.service.CassandraDaemon"
        assert argv.index(agents[0]) < argv.index(main)


def test_no_agent_before_the_jar_is_fetched(tmp_path: Path) -> None:
    settings = StackSettings(stack_dir=tmp_path / "stack", cache_dir=tmp_path / "cache")
    assert prometheus.jmx_agent_args(settings, "kafka") == []


def test_flink_daemons_report_on_fixed_ports(tmp_path: Path) -> None:
    settings = StackSettings(stack_dir=tmp_path)
    config = cluster_config(settings)
    assert config["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
    for spec, port in ((jobmanager_spec(settings), 9249), (taskmanager_spec(settings), 9250)):
        argv = list(spec.argv)
        assert f"metrics.reporter.prom.port={port}" in argv
        assert argv[argv.index(f"metrics.reporter.prom.port={port}") - 1] == "-D"
        assert spec.env["FLINK_PLUGINS_DIR"] == str(prometheus.flink_plugins_dir(settings))


def test_flink_plugins_dir_holds_only_the_wheels_prometheus_reporter(tmp_path: Path) -> None:
    settings = StackSettings(stack_dir=tmp_path)
    prometheus.link_flink_reporter(settings)
    prometheus.link_flink_reporter(settings)  # idempotent
    plugins = prometheus.flink_plugins_dir(settings)
    assert [p.name for p in plugins.iterdir()] == ["metrics-prometheus"]
    jars = [j.name for j in (plugins / "metrics-prometheus").iterdir()]
    assert any(name.startswith("flink-metrics-prometheus") for name in jars)


def test_firing_alerts_are_listed_one_per_line() -> None:
    alerts = [
        {"labels": {"alertname": "ComponentDown", "job": "writer", "instance": "127.0.0.1:9102",
                    "severity": "critical"},
         "annotations": {"summary": "writer does not answer"}, "state": "firing",
         "activeAt": "2026-12-01T10:00:00Z"},
        {"labels": {"alertname": "CrlExpiringSoon", "severity": "critical"},
         "annotations": {}, "state": "firing", "activeAt": "2026-12-01T09:00:00Z"},
    ]
    assert prometheus.alert_lines(alerts) == [
        "ComponentDown{instance=127.0.0.1:9102,job=writer} since 2026-12-01T10:00:00Z: "
        "writer does not answer",
        "CrlExpiringSoon since 2026-12-01T09:00:00Z",
    ]


def test_firing_alerts_is_none_when_prometheus_does_not_answer() -> None:
    obs = prometheus.ObservabilitySettings(prometheus_port=1)
    assert prometheus.firing_alerts(obs) is None
