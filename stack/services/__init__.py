"""The stack's services in start order. Each module holds one Service subclass."""

from __future__ import annotations

import importlib
import logging

from stack.config import StackSettings
from stack.service import Service

log = logging.getLogger(__name__)

# (module, class). Stage 0: infrastructure, started together; stage 1: our own programs.
_REGISTRY: list[tuple[str, str]] = [
    ("stack.services.mosquitto", "MosquittoService"),
    ("stack.services.kafka", "KafkaService"),
    ("stack.services.cassandra", "CassandraService"),
    ("stack.services.keycloak", "KeycloakService"),
    ("stack.services.flink", "FlinkService"),
    ("stack.services.apps", "FlinkJobService"),
    ("stack.services.apps", "WriterService"),
    ("stack.services.apps", "BridgeService"),
    ("stack.services.apps", "QueryApiService"),
    ("stack.services.apps", "EmulatorService"),
    ("stack.services.console", "ConsoleService"),
    ("stack.services.prometheus", "PrometheusService"),
]


# The replicated profile's services: these run several nodes or instances, each its own Service
# (its own row in `iot status`, its own process to kill); the web console and Prometheus are
# left out (one port per node would be needed for their targets).
_REPLICATED_COUNTS = {
    "KafkaService": "replicated_kafka_brokers",
    "CassandraService": "replicated_cassandra_nodes",
    "WriterService": "replicated_writers",
    "BridgeService": "replicated_bridges",
}
_REPLICATED_LEFT_OUT = {"ConsoleService", "PrometheusService"}


def all_services(settings: StackSettings) -> list[Service]:
    services: list[Service] = []
    for module_name, class_name in _REGISTRY:
        if settings.replicated and class_name in _REPLICATED_LEFT_OUT:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A service not written yet (parallel work) must not break the others; any other
            # missing import inside an existing module still fails loudly.
            if exc.name != module_name:
                raise
            log.debug("service module %s not present, skipped", module_name)
            continue
        cls = getattr(module, class_name)
        count_field = _REPLICATED_COUNTS.get(class_name) if settings.replicated else None
        if count_field is None:
            services.append(cls(settings))
        else:
            services.extend(cls(settings, n) for n in range(1, getattr(settings, count_field) + 1))
    return services


def by_name(settings: StackSettings, name: str) -> Service:
    for service in all_services(settings):
        if service.name == name:
            return service
    names = ", ".join(s.name for s in all_services(settings))
    raise KeyError(f"unknown service {name!r}; one of: {names}")
