"""The status page in real headless Chromium (Debian's chromium, driven by
selenium through Debian's chromedriver), against the real daemon upgrading a
minicloud: the token typed once, the per-host grid changing during the
upgrade, pause from the page pausing it, approve from the page (whose
confirmation names the point of no return) finishing it."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from orchestrator.minicloud.embedded import EmbeddedCloud, embedded_cloud
from orchestrator.playbook import resolve_playbook
from tests.integration.servers import missing_parts
from tests.test_daemon_e2e import Daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = TypeVar("T")
HINT = "install with: sudo apt-get install -y chromium chromium-driver (what .ci/run does)"


def find_chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.access("/usr/bin/chromedriver", os.X_OK) else None
    )
    if browser is None or driver is None:
        missing_parts(f"the web page test needs chromium and chromedriver; {HINT}")
    return browser, driver


class Browser:
    """Blocking selenium calls, run off the event loop that serves the cloud."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def do(self, call: Callable[[], T]) -> T:
        return await asyncio.to_thread(call)

    async def until(self, check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
        """Poll the page until `check` gives something (it sees the DOM as it is)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    found = await self.do(check)
                except WebDriverException:
                    found = None
                if found:
                    return found
                await asyncio.sleep(0.1)
        raise AssertionError(what)  # pragma: no cover - the timeout raises first

    def state(self) -> str | None:
        value = self.driver.find_element(By.ID, "state").get_attribute("data-state")
        return value or None

    def grid(self) -> dict[tuple[str, str], str]:
        cells = self.driver.find_elements(By.CSS_SELECTOR, "#grid td[data-state]")
        return {
            (str(c.get_attribute("data-phase")), str(c.get_attribute("data-host"))): str(
                c.get_attribute("data-state")
            )
            for c in cells
        }

    async def click_and_confirm(self, action: str) -> str:
        """Click a control button, accept its confirmation; the dialog's text."""
        button = f'#controls button[data-action="{action}"]'
        await self.until(
            lambda: self.driver.find_element(By.CSS_SELECTOR, button).is_enabled(),
            f"{action} enabled",
        )
        await self.do(lambda: self.driver.find_element(By.CSS_SELECTOR, button).click())

        def alert_text() -> str | None:
            try:
                alert = self.driver.switch_to.alert
            except NoAlertPresentException:
                return None
            text = alert.text
            alert.accept()
            return text

        return await self.until(alert_text, f"the {action} confirmation")


async def wait_state(daemon: Daemon, upgrade_id: str, *states: str) -> dict[str, Any]:
    async with asyncio.timeout(120):
        while (doc := await daemon.status(upgrade_id))["state"] not in states:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return doc


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    binary, driver_path = find_chromium()
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses root
    driver = await asyncio.to_thread(
        webdriver.Chrome, service=Service(driver_path), options=options
    )
    try:
        yield Browser(driver)
    finally:
        await asyncio.to_thread(driver.quit)


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[EmbeddedCloud]:
    async with embedded_cloud(tmp_path / "cloud", computes=3) as ec:
        yield ec


@pytest.mark.timeout(300)
async def test_the_page_follows_pauses_and_approves_an_upgrade(
    tmp_path: Path, cloud: EmbeddedCloud, browser: Browser
) -> None:
    daemon = Daemon(tmp_path / "state", tmp_path / "daemon.log")
    await daemon.start()
    try:
        page = browser.driver
        await browser.do(lambda: page.get(daemon.url + "/"))
        # the token is typed once, and kept by the tab, not in any URL
        await browser.until(lambda: page.find_element(By.ID, "token").is_displayed(), "login")
        await browser.do(lambda: page.find_element(By.ID, "token").send_keys(daemon.token))
        await browser.do(lambda: page.find_element(By.CSS_SELECTOR, "#login button").click())
        await browser.until(lambda: page.find_element(By.ID, "upgrades").is_displayed(), "list")
        stored: Any = await browser.do(
            lambda: page.execute_script("return sessionStorage.getItem('orchestrator-token')")
        )
        assert stored == daemon.token
        assert daemon.token not in page.current_url

        body = {
            "inventory": cloud.inventory_text,
            "playbook": resolve_playbook("minicloud").read_text(),
            "to_version": "2.0",
        }
        code, answer = await daemon.http("POST", "/v1/upgrades", body)
        assert code == 201, answer
        upgrade_id = answer["id"]
        await browser.do(lambda: page.get(f"{daemon.url}/#{upgrade_id}"))
        first = await browser.until(browser.grid, "the grid")
        assert len({host for _, host in first}) == 7
        # the grid changes as the upgrade goes, from the event stream alone
        changed = await browser.until(
            lambda: (g := browser.grid()) != first and g, "a cell of the grid changed"
        )
        assert changed != first

        said = await browser.click_and_confirm("pause")
        assert said.startswith("Pause it?")
        doc = await wait_state(daemon, upgrade_id, "paused")
        assert doc["state"] == "paused"
        await browser.until(lambda: browser.state() == "paused", "the page shows paused")
        await browser.click_and_confirm("resume")

        await wait_state(daemon, upgrade_id, "waiting_approval")
        said = await browser.click_and_confirm("approve")
        assert "Phase contract-db is the point of no return" in said
        doc = await wait_state(daemon, upgrade_id, "succeeded", "failed", "rolled_back")
        assert doc["state"] == "succeeded", doc["reason"]
        await browser.until(lambda: browser.state() == "succeeded", "the page shows succeeded")
        grid = browser.grid()
        assert grid and set(grid.values()) == {"done"}
        assert [a["phase"] for a in doc["approvals"]] == ["contract-db"]  # from the page
    finally:
        await daemon.stop()
