"""Fixtures of the browser tests: one deployment and one headless Chromium for the module, a scan of what it got.

Without Chromium, chromium-driver or selenium the tests are skipped with the reason outside CI; in CI
(``CI=true``), where ``.ci/run`` installs the browser, a missing browser fails them instead of hiding them.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ui.auth_manager import PRIVATE_DAG
from tests.ui.harness import CHROMEDRIVER, CHROMIUM, DAGS, UIDeployment, browser_missing

REPO = Path(__file__).resolve().parents[2]
#: Where the screenshots go: the README's pictures when FINETUNE_SCREENSHOTS=1, a temporary folder otherwise.
SCREENSHOTS = REPO / "docs" / "images"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = browser_missing()
    if reason is None or _in_ci():
        return  # in CI the deployment fixture fails them instead, with the same reason
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"browser tests not run: {reason}"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


class Browser:
    """A headless Chromium signed in as one user, recording every response it receives."""

    def __init__(self, deployment: UIDeployment, responses: list[dict[str, Any]]) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
            "--hide-scrollbars",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.driver.set_page_load_timeout(60)
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.deployment = deployment
        self.responses = responses
        self.user: str | None = None

    def sign_in(self, user: str) -> None:
        """Sign in as Airflow's login does: the token in the ``_token`` cookie (the UI may move it from there)."""
        self.sign_out()
        self.driver.add_cookie({"name": "_token", "value": self.deployment.token(user), "path": "/"})
        self.user = user

    def sign_out(self) -> None:
        """Forget every credential of the origin: its cookies and the token Airflow 3.1's UI keeps in storage."""
        self.driver.get(self.deployment.url + "/api/v2/version")  # any page of the origin
        self.driver.delete_all_cookies()
        self.driver.execute_script("window.localStorage.clear()")
        self.user = None

    def open(self, path: str, *, wait_for: str = "body[data-ready='true']") -> None:
        self.driver.get(self.deployment.url + path)
        self.wait(wait_for)
        self.record()

    def wait(self, css: str, timeout: float = 30) -> Any:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))
        except TimeoutException:
            frames = [f.get_attribute("src") for f in self.find("iframe")]
            text = self.driver.find_element(By.TAG_NAME, "body").text[:1500]
            raise AssertionError(
                f"no {css} after {timeout} s at {self.driver.current_url}\niframes: {frames}\npage text: {text}"
            ) from None

    def find(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def record(self) -> None:
        """Every response the browser got since the last call: URL, headers and body (read through CDP)."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") != "Network.responseReceived":
                continue
            params = message["params"]
            response = params["response"]
            body = ""
            try:
                got = self.driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": params["requestId"]})
                body = base64.b64decode(got["body"]).decode("latin-1") if got.get("base64Encoded") else got["body"]
            except Exception:  # bodies of redirects and of evicted resources are gone: their headers remain
                pass
            self.responses.append({"url": response["url"], "headers": response.get("headers", {}), "body": body})

    def screenshot(self, name: str, tmp: Path) -> Path:
        folder = SCREENSHOTS if os.environ.get("FINETUNE_SCREENSHOTS") == "1" else tmp
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        self.driver.save_screenshot(str(path))
        return path

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIDeployment]:
    reason = browser_missing()
    if reason:
        if _in_ci():
            pytest.fail(f"CI must run the browser tests, but {reason}")
        pytest.skip(f"browser tests not run: {reason}")
    # The private DAG's job is what the ``partial`` user may see, and the only one (test_ui.py).
    ui = UIDeployment(tmp_path_factory.mktemp("ui"), extra_dags=((DAGS / f"{PRIVATE_DAG}.py", PRIVATE_DAG),))
    try:
        ui.up()
        yield ui
    finally:
        ui.down()


@pytest.fixture(scope="module")
def responses() -> list[dict[str, Any]]:
    return []


@pytest.fixture(scope="module")
def browser(deployment: UIDeployment, responses: list[dict[str, Any]]) -> Iterator[Browser]:
    made = Browser(deployment, responses)
    try:
        yield made
    finally:
        made.quit()
