"""Fixtures for the web app's tests: Debian's Chromium driven by Playwright, against a real server."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Playwright, sync_playwright

from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.support.server import ServerProcess

VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
# One-second segments: the player starts within seconds and a short recording still has many.
LIVE_ENV = {"STREAMPLAT_INGEST__SEGMENT_SECONDS": "1", "STREAMPLAT_INGEST__RECONNECT_WINDOW_SECONDS": "60"}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(name="playwright", scope="package")
def fixture_playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(name="browser", scope="package")
def fixture_browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium (H.264/AAC built in); never a downloaded one."""
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium is required for the browser tests ({CHROMIUM}); `make test` installs it")
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


class PageErrors:
    """Uncaught exceptions and console errors of every page a test opened."""

    def __init__(self) -> None:
        self.uncaught: list[str] = []
        self.console: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda exc: self.uncaught.append(f"{page.url}: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console.append(message.text)


@pytest.fixture(name="open_page")
def fixture_open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open a page: open_page("phone"), or open_page("phone", beside=page) for another tab."""
    contexts = []
    errors = PageErrors()

    def open_page(viewport: str = "desktop", *, beside: Page | None = None, **context_args: Any) -> Page:
        """A page in a new context, or with `beside`: another tab of that page's (signed-in) context."""
        if beside is not None:
            page = beside.context.new_page()
            page.set_viewport_size(VIEWPORTS[viewport])
        else:
            context = browser.new_context(viewport=VIEWPORTS[viewport], **context_args)
            context.set_default_timeout(15_000)
            contexts.append(context)
            page = context.new_page()
        errors.watch(page)
        return page

    yield open_page
    for context in contexts:
        with contextlib.suppress(Error):
            context.close()
    # A page that threw has a bug even if the test's assertions passed.
    assert not errors.uncaught, errors.uncaught


@pytest.fixture(name="db", scope="module")
def fixture_db() -> str:
    """Pages run on SQLite only: they reach the database through the same API that the
    integration suite runs on SQLite and PostgreSQL, and a browser run is the slowest we have."""
    return "sqlite"


@pytest.fixture(name="web")
def fixture_web(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A real server with one-second HLS segments."""
    return server_factory(LIVE_ENV)


@pytest.fixture(name="screenshot")
def fixture_screenshot(tmp_path: Path) -> Callable[[Page, str], Path]:
    """Save a PNG of the page: to docs/screenshots with STREAMPLAT_UPDATE_SCREENSHOTS=1, else to tmp."""
    update = os.environ.get("STREAMPLAT_UPDATE_SCREENSHOTS") == "1"
    target = SCREENSHOTS if update else tmp_path / "screenshots"

    def shoot(page: Page, name: str) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        # Toasts fade on their own; a screenshot should show the page, not the last message.
        page.evaluate("document.getElementById('toasts')?.replaceChildren()")
        # Thumbnails load lazily: wait for those on screen.
        page.wait_for_function(
            """() => [...document.images]
                .filter(img => img.getBoundingClientRect().top < innerHeight)
                .every(img => img.complete)""",
            timeout=5_000,
        )
        path = target / f"{name}.png"
        page.screenshot(path=str(path), animations="disabled", caret="hide")
        assert path.stat().st_size > 5_000, f"{path} looks empty"
        return path

    return shoot
