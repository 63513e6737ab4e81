"""A real headless Chromium for the web console tests, driven by selenium.

Debian's `chromium` and `chromium-driver` (`make system-deps` installs them) run
headless with every flag that stops Chromium from reaching the internet on its own
(the machine has no network, and the console must not need one), a fresh profile per
browser, and the browser console and the network (Performance) logs enabled, so a
test can assert that the page logged no error and asked nothing of another origin.

    with chromium() as driver:
        driver.get(url)
        console_errors(driver)           # SEVERE browser log entries
        foreign_requests(driver, origin) # URLs requested outside `origin`
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--no-default-browser-check",
)


def available() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


@contextmanager
def chromium(width: int = 1280, height: int = 900, phone: bool = False) -> Iterator[Any]:
    """A headless Chromium with a fresh profile; skips the test without one installed.

    `phone` emulates a phone's viewport of `width` x `height` CSS pixels (a headless
    window is never narrower than 500 pixels).
    """
    if not available():
        pytest.skip("chromium and chromium-driver are not installed (make system-deps)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    if phone:
        metrics = {"width": width, "height": height, "pixelRatio": 2.0, "mobile": True}
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
    else:
        options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The browser console's SEVERE entries since the last read (errors, CSP reports)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for since the last read, from the Performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


#: Schemes that never leave the machine: the browser's own pages (its new-tab page
#: loads before the first `get`) and inline data.
LOCAL_SCHEMES = ("chrome:", "chrome-untrusted:", "chrome-extension:", "data:", "about:", "blob:")


def foreign_requests(urls: list[str], origin: str) -> list[str]:
    """The URLs that would reach another host than `origin`."""
    return [u for u in urls if not (u.startswith(origin + "/") or u.startswith(LOCAL_SCHEMES))]
