"""The Flink session cluster through the stack runner: a task manager offering slots over REST."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from stack.config import StackSettings
from stack.services.flink import kafka_connector_jar, rest_url

pytestmark = pytest.mark.integration

Services = Callable[..., AbstractContextManager[StackSettings]]


@pytest.fixture(scope="session")
def flink(services: Services) -> Iterator[StackSettings]:
    with services({"flink"}) as settings:
        yield settings


def _get(settings: StackSettings, path: str) -> Any:
    response = httpx.get(f"{rest_url(settings)}{path}", timeout=10.0)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_task_manager_offers_slots(flink: StackSettings) -> None:
    overview = _get(flink, "/overview")
    assert overview["taskmanagers"] >= 1
    assert overview["slots-total"] >= 1
    if overview["jobs-running"] == 0:
        # Nothing holds a slot, so every slot must be free.
        assert overview["slots-available"] == overview["slots-total"]
    managers = _get(flink, "/taskmanagers")["taskmanagers"]
    assert sum(manager["slotsNumber"] for manager in managers) == overview["slots-total"]


def test_cluster_retains_checkpoints_and_restarts_jobs(flink: StackSettings) -> None:
    config = {entry["key"]: entry["value"] for entry in _get(flink, "/jobmanager/config")}
    assert config["execution.checkpointing.externalized-checkpoint-retention"] == (
        "RETAIN_ON_CANCELLATION"
    )
    assert config["execution.checkpointing.dir"].startswith("file:")
    assert config["restart-strategy.type"] == "fixed-delay"


def test_kafka_connector_jar_is_cached(flink: StackSettings) -> None:
    jar = kafka_connector_jar(flink)
    assert jar.is_file()
    assert jar.name.startswith("flink-sql-connector-kafka-")
