"""`python -m bench NAMES [--profile NAME]`: the names and the profile read from the command line."""

from __future__ import annotations

import pytest

from bench.__main__ import BENCHES, _profile


def test_the_profile_is_default_unless_named() -> None:
    assert _profile(["capacity"]) == (["capacity"], "default")
    assert _profile([]) == ([], "default")


def test_the_profile_is_taken_out_of_the_names_wherever_it_stands() -> None:
    assert _profile(["--profile", "replicated", "capacity"]) == (["capacity"], "replicated")
    assert _profile(["capacity", "--profile", "replicated"]) == (["capacity"], "replicated")


def test_a_profile_without_a_name_is_an_error() -> None:
    with pytest.raises(SystemExit):
        _profile(["capacity", "--profile"])


def test_capacity_runs_in_make_bench() -> None:
    assert "capacity" in BENCHES
