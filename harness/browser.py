"""Debian's chromium driven through chromium-driver (selenium), for the console's browser tests
and its benchmark. Installed with apt-get when missing; no browser is ever downloaded."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from stack.system import apt_install

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def ensure_chromium() -> None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        apt_install(["chromium", "chromium-driver"])


@contextmanager
def browser(width: int = 1280, height: int = 1000) -> Iterator[WebDriver]:
    """A fresh headless chromium: its own profile, so no cookie survives between browsers."""
    ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str, timeout_s: float = 15.0) -> None:
    WebDriverWait(driver, timeout_s).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


def sign_in(
    driver: WebDriver, base: str, user: str, password: str = "temp", next_path: str = "/devices"
) -> None:
    """Through Keycloak's own login form, as a person would."""
    driver.get(f"{base}/login?next={next_path}")
    wait_for(driver, "#username")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "kc-login").click()
    WebDriverWait(driver, 15).until(
        lambda d: d.current_url.startswith(base) and "/auth/callback" not in d.current_url
    )


def screenshot(driver: WebDriver, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    # The whole page: as tall as its content.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, min(int(height) + 40, 4000)))
    driver.save_screenshot(str(path))
    return path


def has_binaries() -> bool:
    return shutil.which("apt-get") is not None or (CHROMIUM.exists() and CHROMEDRIVER.exists())
