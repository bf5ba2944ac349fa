"""Driving the control panel in a real browser: the Debian Chromium through Playwright (nothing
downloaded at test time). Screenshots go to test-artifacts/panel/ (MTA_TEST_ARTIFACTS to move
them), kept by CI as the pages' pictures."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.conftest import Running

ARTIFACTS = Path(os.environ.get("MTA_TEST_ARTIFACTS", "test-artifacts")) / "panel"


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("the panel tests need Chromium: apt-get install chromium (.ci/run does)")


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    """A fresh browser context (no cookies) and one page in it."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=["--no-sandbox"]
        )
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        opened = await context.new_page()
        yield opened
        await context.close()
        await browser.close()


async def sign_in(page: Page, running: Running, secret: str | None = None) -> None:
    """Sign in with the test server's primary API key (or `secret`)."""
    await page.goto(running.url + "/cp/")
    await page.get_by_label("API key or admin password").fill(secret or running.key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def screenshot(page: Page, name: str) -> None:
    """Keep a picture of the page as it is now (test-artifacts/panel/<name>.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
    await page.screenshot(path=str(ARTIFACTS / f"{safe}.png"), full_page=True)
