"""Fixtures of the browser tests: a real headless Chromium (Debian's, never one Playwright downloads)
and the folder their screenshots go to.

scripts/bootstrap.sh installs the Debian `chromium` package and Playwright (the Python package)
with PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1; these fixtures point Playwright at /usr/bin/chromium.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # screenshots; ignored by git (tests/browser/.gitignore)


@pytest.fixture
async def browser():
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} not found: run scripts/bootstrap.sh (installs the Debian chromium package)")
    async with async_playwright() as playwright:
        # --no-sandbox: CI and the developers' machines run as root, and Chromium refuses to start its
        # sandbox as root. The pages only ever load the test's own route service on loopback.
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
