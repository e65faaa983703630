"""The Makefile's choice of interpreter (`make python`), with fake interpreters on PATH."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def fake_bin(tmp_path: Path, **exit_codes: int) -> Path:
    """python3_12=127 -> a `python3.12` that exits 127 (a pyenv shim of an inactive version)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, code in exit_codes.items():
        script = bin_dir / name.replace("_", ".")
        script.write_text(f"#!/bin/sh\nexit {code}\n")
        script.chmod(0o755)
    return bin_dir


def make_python(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    assert make is not None
    return subprocess.run(
        [make, "-s", "-C", str(REPO), "python", *args],
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir)},
        timeout=30,
    )


def test_the_newest_supported_interpreter_that_runs_is_chosen(tmp_path: Path) -> None:
    result = make_python(fake_bin(tmp_path, python3_12=127, python3_11=0, python3=0))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python3.11"


def test_python3_is_taken_when_its_version_is_supported(tmp_path: Path) -> None:
    result = make_python(fake_bin(tmp_path, python3=0))
    assert result.stdout.strip() == "python3"


def test_an_unsupported_choice_says_which_versions_work(tmp_path: Path) -> None:
    result = make_python(fake_bin(tmp_path, python3_10=1, python3_12=0), "PYTHON=python3.10")
    assert result.returncode != 0
    assert "tried: python3.10" in result.stderr
    assert "Supported: Python 3.11 3.12" in result.stderr


def test_no_supported_interpreter_at_all_is_a_clear_error(tmp_path: Path) -> None:
    result = make_python(fake_bin(tmp_path, python3=1))
    assert result.returncode != 0
    assert "No supported Python found (tried: python3.12 python3.11 python3)" in result.stderr
