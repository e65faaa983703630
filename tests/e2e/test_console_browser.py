"""The web console in a real browser (Debian's chromium): sign-in through Keycloak, tenant
isolation, the dead-letter browser, sign-out. Screenshots of each view go to
.stack/test-output/console/ (IOT_STACK_DIR)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from selenium.webdriver.common.by import By

from gateway import endpoints, pki, topics
from gateway.registry import DeviceRegistry, provision_device
from gateway.registry import connect as registry_session
from gateway.settings import CassandraConnection
from harness.browser import browser, screenshot, sign_in, wait_for
from harness.query_api import password_token, user_password
from stack.config import StackSettings

pytestmark = pytest.mark.e2e

SERVICES = {
    "mosquitto", "kafka", "cassandra", "keycloak", "flink", "flink-job", "writer", "bridge",
    "query-api", "emulator", "console",
}  # fmt: skip
DEVICE = "dev-00000"  # the default emulator's first device, tenant-a


@pytest.fixture(scope="module")
def stack(services: Any) -> Iterator[StackSettings]:
    with services(SERVICES) as settings:
        yield settings


@pytest.fixture(scope="module")
def base(stack: StackSettings) -> str:
    return f"http://localhost:{stack.console_port}"


@pytest.fixture(scope="module")
def shots(stack: StackSettings) -> Path:
    return stack.stack_dir / "test-output" / "console"


@pytest.fixture(scope="module")
def windows_of_dev0(stack: StackSettings) -> None:
    """dev-00000 has closed 1m windows (the emulator's first one needs about a minute)."""
    token = password_token("client1", user_password("client1"))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        response = httpx.get(
            f"http://localhost:{stack.query_api_port}/query/{DEVICE}/1m",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        if response.status_code == 200 and response.json()["items"]:
            return
        time.sleep(5)
    pytest.fail(f"{DEVICE} has no 1m window after 4 minutes")


def test_client1_sees_dev0_with_a_chart_that_has_data(base: str, shots: Path, windows_of_dev0: None) -> None:
    with browser() as driver:
        sign_in(driver, base, "client1", user_password("client1"))
        assert driver.current_url == f"{base}/devices"
        driver.get(f"{base}/devices?q={DEVICE}")
        wait_for(driver, "#devices")
        assert DEVICE in [a.text for a in driver.find_elements(By.CSS_SELECTOR, "a.device")]
        screenshot(driver, shots, "client1-devices")
        # No script can read the session: the cookie is HttpOnly, and no token is in the page.
        assert "iot_console" not in driver.execute_script("return document.cookie")
        assert "eyJ" not in driver.page_source
        driver.get(f"{base}/devices/{DEVICE}")
        wait_for(driver, "body[data-first-chart-ms]", 20)
        charts = driver.find_elements(By.CSS_SELECTOR, ".chart[data-points]")
        assert charts and all(int(c.get_attribute("data-points") or 0) > 0 for c in charts)
        assert driver.find_elements(By.CSS_SELECTOR, ".chart canvas")
        assert "eyJ" not in driver.current_url
        screenshot(driver, shots, "client1-device")


def test_client2_does_not_see_tenant_a(base: str, shots: Path) -> None:
    with browser() as driver:
        sign_in(driver, base, "client2", user_password("client2"))
        driver.get(f"{base}/devices?q={DEVICE}")
        wait_for(driver, "#no-devices")
        assert not driver.find_elements(By.CSS_SELECTOR, "a.device")
        driver.get(f"{base}/devices")
        wait_for(driver, "#devices, #no-devices")
        assert DEVICE not in [a.text for a in driver.find_elements(By.CSS_SELECTOR, "a.device")]
        screenshot(driver, shots, "client2-devices")
        driver.get(f"{base}/devices/{DEVICE}")
        wait_for(driver, "#error")
        foreign = driver.find_element(By.CSS_SELECTOR, "#error")
        assert foreign.get_attribute("data-status") == "404"
        foreign_text = foreign.text
        screenshot(driver, shots, "client2-foreign-device")
        unknown_id = f"no-such-{uuid.uuid4().hex[:8]}"
        driver.get(f"{base}/devices/{unknown_id}")
        wait_for(driver, "#error")
        unknown = driver.find_element(By.CSS_SELECTOR, "#error")
        assert unknown.get_attribute("data-status") == "404"
        # Word for word the same answer, but for the id itself.
        assert foreign_text.replace(DEVICE, "ID") == unknown.text.replace(unknown_id, "ID")
        # Not an operator either.
        driver.get(f"{base}/ops/dlq")
        wait_for(driver, "#error")
        assert driver.find_element(By.CSS_SELECTOR, "#error").get_attribute("data-status") == "403"


@pytest.fixture(scope="module")
def malformed_sent(stack: StackSettings) -> str:
    """A provisioned device publishes one reading without `ts`: a dead letter with a reason."""
    device_id = f"e2e-console-{uuid.uuid4().hex[:8]}"
    session = registry_session(CassandraConnection(cassandra_port=stack.cassandra_port))
    try:
        identity: pki.Identity = provision_device(
            stack.pki_dir, DeviceRegistry(session), device_id, "tenant-b"
        )
    finally:
        session.cluster.shutdown()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
    client.tls_set(
        ca_certs=str(stack.pki_dir / "ca.crt"), certfile=str(identity.cert), keyfile=str(identity.key)
    )
    client.connect(endpoints.HOST, stack.mqtt_port)
    client.loop_start()
    try:
        info = client.publish(
            topics.telemetry_topic(device_id), json.dumps({"metrics": {"temperature": 1.5}}), qos=1
        )
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()
    return device_id


def test_admin1_finds_the_malformed_message_with_its_reason(
    base: str, shots: Path, malformed_sent: str
) -> None:
    with browser() as driver:
        sign_in(driver, base, "admin1", user_password("admin1"))
        rows: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            driver.get(f"{base}/ops/dlq?device={malformed_sent}")
            wait_for(driver, "#dead-letters, #no-letters")
            rows = driver.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr")
            if rows:
                break
            time.sleep(2)
        assert rows, f"no dead letter of {malformed_sent} in the browser"
        assert rows[0].find_element(By.CSS_SELECTOR, ".reason").text == "missing_ts"
        assert rows[0].find_element(By.CSS_SELECTOR, ".device").text == malformed_sent
        assert "temperature" in rows[0].find_element(By.CSS_SELECTOR, ".preview").text
        screenshot(driver, shots, "admin1-dead-letters")
        for view, marker in (
            ("health", "#components"),
            ("kafka", "#topics"),
            (f"cassandra?device={DEVICE}", "#tables"),
        ):
            driver.get(f"{base}/ops/{view}")
            wait_for(driver, marker, 30)
            screenshot(driver, shots, f"admin1-{view.split('?')[0]}")
        driver.get(f"{base}/devices/{DEVICE}")  # an operator reads every tenant
        wait_for(driver, "body[data-first-chart-ms]", 20)


def test_sign_out_ends_the_session(base: str, shots: Path) -> None:
    with browser() as driver:
        sign_in(driver, base, "client1", user_password("client1"))
        cookie = driver.get_cookie("iot_console")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        driver.find_element(By.ID, "sign-out").click()
        wait_for(driver, "#signed-out")
        screenshot(driver, shots, "signed-out")
        # The old cookie opens nothing any more...
        replay = httpx.get(
            f"{base}/devices", cookies={"iot_console": cookie["value"]}, follow_redirects=False
        )
        assert replay.status_code == 303 and replay.headers["location"].startswith("/login")
        # ...and Keycloak's session ended too: signing in asks for the password again.
        driver.get(f"{base}/devices")
        wait_for(driver, "#username")
        assert driver.current_url.startswith(endpoints.KEYCLOAK_URL)
