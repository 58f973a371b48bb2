"""Fixtures shared by the tests: no token in any log (`leaks.no_token_in_logs`, on every
test), and for the browser tests one headless Debian Chromium per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from leaks import no_token_in_logs  # autouse: every test

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["no_token_in_logs", "page", "strict_page"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root, without these Chromium keeps trying to reach hosts this machine cannot.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture
def page() -> Iterator[Page]:
    """A fresh page (1280x800) in a fresh Chromium with a temporary profile. It ignores
    the pages' Content-Security-Policy: Playwright's ``wait_for_function`` evaluates
    strings, which the viewer page's policy (no 'unsafe-eval') forbids. `strict_page`
    keeps the policy (tests/test_tokens.py checks the viewer page under it)."""
    yield from _page(bypass_csp=True)


@pytest.fixture
def strict_page() -> Iterator[Page]:
    """A fresh page like `page`, under the pages' Content-Security-Policy."""
    yield from _page(bypass_csp=False)


def _page(bypass_csp: bool) -> Iterator[Page]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=bypass_csp)
            page.set_default_timeout(30_000)  # a loaded 2-core machine
            yield page
        finally:
            browser.close()
