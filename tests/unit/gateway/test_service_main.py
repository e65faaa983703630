"""Every `python -m <service>` ends the same way: the exit codes of gateway.service_main."""

from __future__ import annotations

import argparse

import pytest
from pydantic import BaseModel, ValidationError

from gateway import service_main
from gateway.service_main import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_main


class _Expected(RuntimeError):
    pass


class _Settings(BaseModel):
    port: int


def _raise(exc: BaseException) -> int:
    raise exc


def _invalid() -> ValidationError:
    try:
        _Settings.model_validate({"port": "not a port"})
    except ValidationError as exc:
        return exc
    raise AssertionError("validated")


@pytest.mark.parametrize(
    ("body_exc", "code"),
    [
        (None, EXIT_OK),
        (_Expected("Cassandra at c1:9042 is not reachable"), EXIT_FAILED),
        (ValueError("a bug"), EXIT_FAILED),
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
        (_invalid(), EXIT_USAGE),
    ],
)
def test_the_end_of_a_service_is_its_exit_code(body_exc: BaseException | None, code: int) -> None:
    def body(args: argparse.Namespace) -> int:
        return EXIT_OK if body_exc is None else _raise(body_exc)

    assert run_main("iot test", None, body, [], expected=(_Expected,)) == code


def test_bad_arguments_exit_2_and_the_service_options_are_parsed() -> None:
    seen: list[argparse.Namespace] = []

    def body(args: argparse.Namespace) -> int:
        seen.append(args)
        return EXIT_OK

    def arguments(parser: argparse.ArgumentParser) -> None:
        service_main.add_listen_arguments(parser, "TEST")

    with pytest.raises(SystemExit) as exited:
        run_main("iot test", None, body, ["--no-such-option"], arguments=arguments)
    assert exited.value.code == EXIT_USAGE
    assert run_main("iot test", None, body, ["-v", "--port", "8099"], arguments=arguments) == EXIT_OK
    assert seen[0].verbose
    assert service_main.listen_overrides(seen[0], "test") == {"test_port": 8099}
