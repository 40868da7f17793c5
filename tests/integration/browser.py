"""Headless Chromium driven by Selenium for the pages' tests; screenshots go to test-artifacts/."""

import base64
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

ARTIFACTS = Path(os.environ.get("RETRACE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


@contextlib.contextmanager
def chromium(basic_auth=None, height=2200):
    """A WebDriver for Debian's chromium; ``basic_auth=(user, password)`` is sent with every request."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="retrace-chromium-")
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                     "--disable-background-networking", "--disable-component-update", "--ignore-certificate-errors",
                     f"--window-size=1280,{height}", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        if basic_auth:
            token = base64.b64encode(":".join(basic_auth).encode()).decode()
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / name))


def submit_and_wait(driver, button, timeout=30):
    """Click a form's submit ``button`` and wait until the browser has left its page: a click returns before
    the next page loads, and reading the old page then would test nothing."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def left(_driver):
        try:
            button.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as err:
            # Chromium's word, while the next page replaces the document, for a node of the page it left.
            if "does not belong to the document" in str(err):
                return True
            raise
        return False

    button.click()
    WebDriverWait(driver, timeout).until(left)
