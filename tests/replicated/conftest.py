"""The replicated profile for the tests of this directory: brought up (the default profile, if it
runs, is stopped first and started again afterwards: both use the contract's ports), with the
profile's client settings (addresses, credentials) in this process's environment.

These tests run only when selected (`pytest -m replicated tests/replicated`): the default tiers
never start the replicated profile by accident.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from stack import orchestrator, supervisor, topology
from stack.config import StackSettings
from stack.services import all_services

log = logging.getLogger(__name__)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "replicated" in (config.option.markexpr or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("replicated")]
    if deselected:
        items[:] = [item for item in items if not item.get_closest_marker("replicated")]
        config.hook.pytest_deselected(items=deselected)


def _client_env(settings: StackSettings) -> dict[str, str]:
    env = {}
    for line in (settings.stack_dir / topology.CLIENT_ENV_FILE).read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


@pytest.fixture(scope="session")
def replicated() -> Iterator[StackSettings]:
    """The running replicated profile; its client settings exported for the session."""
    default = StackSettings.for_profile("default")
    default_was_up = StackSettings().profile == "default" and any(
        s.running() for s in all_services(default) if s.processes()
    )
    if default_was_up:
        log.info("stopping the default profile for the replicated one")
        orchestrator.down(default)
    settings = StackSettings.for_profile("replicated")
    orchestrator.up(settings)
    supervisor.ensure_running(settings)
    saved = dict(os.environ)
    os.environ.update(_client_env(settings))
    try:
        yield settings
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if default_was_up:
            orchestrator.down(settings)
            log.info("starting the default profile again")
            default = StackSettings.for_profile("default")
            orchestrator.up(default)
            supervisor.ensure_running(default)
