"""Shared test helpers: services made ready for a test module (harness.services), stopped after
the session."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from harness.services import ensure_services, stop_started
from stack.config import StackSettings


@pytest.fixture(scope="session", autouse=True)
def _stop_what_the_tests_started() -> Iterator[None]:
    yield
    stop_started()


@pytest.fixture(scope="session")
def services() -> Callable[..., contextlib.AbstractContextManager[StackSettings]]:
    """`with services({"kafka"}) as settings:` in a session fixture of a test module."""
    return ensure_services
