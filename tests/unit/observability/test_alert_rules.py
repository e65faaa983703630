"""observability/prometheus/: the alert rules pass `promtool test rules`, the configs `promtool check`.

promtool comes with Debian's prometheus package, installed here like `make up` installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from stack.config import REPO_ROOT, StackSettings
from stack.errors import StackError
from stack.services import prometheus

RULES_DIR = prometheus.RULES_FILE.parent
# The promises of the pipeline an operator is told about (docs/observability.md).
ALERTS = {
    "ComponentDown", "WindowFreshnessHigh", "ConsumerLagGrowing", "DlqRateHigh",
    "MosquittoDroppingMessages", "CertificateExpiringSoon", "CrlExpiringSoon", "StackDiskFull",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        prometheus.ensure_installed()
    except StackError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"promtool not installable here: {exc}")
    path = prometheus.binary("promtool")
    assert path is not None
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, cwd=RULES_DIR)


def test_rules_are_valid(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(prometheus.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    result = _run(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_and_documented() -> None:
    rules = yaml.safe_load(prometheus.RULES_FILE.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == ALERTS
    tested = yaml.safe_load((RULES_DIR / "alerts_test.yml").read_text())
    named = {t["alertname"] for case in tested["tests"] for t in case.get("alert_rule_test", [])}
    assert named == ALERTS
    doc = (REPO_ROOT / "docs" / "observability.md").read_text()
    for alert in ALERTS:
        assert alert in doc, alert
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
                assert rule["annotations"]["summary"], rule["alert"]


def test_rendered_native_config_is_valid(promtool: str, tmp_path: Path) -> None:
    settings = StackSettings(stack_dir=tmp_path)
    config = prometheus.prometheus_config(settings, prometheus.ObservabilitySettings())
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))
    result = _run(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_config_is_valid(promtool: str, tmp_path: Path) -> None:
    # The compose file mounts the rules beside the config; check them as it lays them out.
    text = (RULES_DIR / "prometheus-docker.yml").read_text()
    config = yaml.safe_load(text)
    config["rule_files"] = [str(prometheus.RULES_FILE)]
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))
    result = _run(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
