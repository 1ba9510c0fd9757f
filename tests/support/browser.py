"""Browser tests: Playwright for Python driving Debian's Chromium (``apt-get install -y
chromium``), against the real API served by uvicorn in a child process on a free loopback
port.

Playwright's own browser download (``playwright install``) needs the internet, so it is
never used: the Debian package is the browser. Without it these tests skip locally and
fail in CI (``CI`` set), like the other tool-backed tests.

Every request that would leave the machine is aborted and recorded (``Offline``), so a
page that silently depends on a CDN fails its test instead of passing on a developer's
laptop and going blank in a VPC.

``AJS_WRITE_SCREENSHOTS=1`` makes the tests that take screenshots write them into
``docs/console/`` (the README shows them); without it they write nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Request,
    Response,
    Route,
    ViewportSize,
    async_playwright,
)
from playwright.async_api import TimeoutError as PlaywrightTimeout

from shared.settings import Settings
from tests.conftest import ROOT, settings_env
from tests.support.servers import free_port
from tests.support.waits import eventually

CHROMIUM = "/usr/bin/chromium"
# Headless and quiet: no GPU, no QUIC, and none of Chromium's own background traffic
# (updates, sync, field trials), which would otherwise show up as blocked requests.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
SCREENSHOT_DIR = ROOT / "docs" / "console"
# Playwright's timeouts, in milliseconds: generous for a shared 2-CPU machine, far
# below the test timeout so a missing element fails with its own message.
TIMEOUT_MS = 15_000


def chromium_path() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} not found (apt-get install -y chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, closed on the way out."""
    path = chromium_path()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS,
                                           timeout=TIMEOUT_MS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Offline:
    """A browser context that cannot leave the machine: every request to a host other
    than loopback is aborted and recorded in ``blocked``; loopback responses of 400 and
    above and loopback requests that failed are recorded too, so a test can assert that
    a page needed nothing it could not have."""

    context: BrowserContext
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    async def open(cls, browser: Browser) -> Offline:
        # Service workers could fetch outside the context's routing: refuse them.
        context = await browser.new_context(viewport=VIEWPORT, service_workers="block")
        context.set_default_timeout(TIMEOUT_MS)
        offline = cls(context)
        await context.route("**/*", offline._route)
        context.on("response", offline._response)
        context.on("requestfailed", offline._failed)
        return offline

    async def _route(self, route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOOPBACK:
            await route.continue_()
        else:
            self.blocked.append(route.request.url)
            await route.abort("internetdisconnected")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.errors.append(f"{response.status} {response.url}")

    def _failed(self, request: Request) -> None:
        if request.url not in self.blocked:
            self.errors.append(f"failed ({request.failure}) {request.url}")

    async def shows(self, locator: Locator) -> None:
        """Wait for ``locator`` to be visible; on timeout, fail naming what the page
        asked for and could not have (a blank page is usually a blocked script)."""
        try:
            await locator.first.wait_for()
        except PlaywrightTimeout:
            raise AssertionError(f"{locator} never became visible; blocked: {self.blocked}, "
                                 f"errors: {self.errors}") from None

    async def close(self) -> None:
        await self.context.close()


async def behind_stage(page: Page, base: str, stage: str) -> list[str]:
    """Make ``base + stage + path`` reach the app as ``base + path``, as API Gateway does
    with a named stage (or a custom domain with a base path) before the app sees the
    request. Requests to ``base`` outside the stage, which a real gateway would not route
    to the app, are refused and listed in the returned list (filled as the page loads)."""
    outside: list[str] = []

    async def strip(route: Route) -> None:
        url = route.request.url
        if url.startswith(base + stage + "/"):
            response = await route.fetch(url=base + url[len(base + stage):])
            await route.fulfill(response=response)
        else:
            outside.append(url)
            await route.abort("addressunreachable")

    await page.route(f"{base}/**", strip)
    return outside


async def screenshot(page: Page, name: str) -> Path | None:
    """Write ``docs/console/<name>.png`` when ``AJS_WRITE_SCREENSHOTS`` asks for it."""
    if os.environ.get("AJS_WRITE_SCREENSHOTS", "") in ("", "0"):
        return None
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    await page.screenshot(path=str(path))
    return path


@contextlib.asynccontextmanager
async def api_server(settings: Settings, log_path: Path) -> AsyncIterator[str]:
    """The real app (``create_app()`` under uvicorn, as ``scripts/dev.sh`` runs it) in a
    child process with ``settings``; yields its base URL once it answers, and stops it
    (SIGTERM, then SIGKILL after 5 s) on the way out."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "uvicorn", "--factory", "functions.api.app:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
            cwd=ROOT, env=settings_env(settings), stdout=log, stderr=log)
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            async def up() -> bool:
                if proc.returncode is not None:
                    raise RuntimeError(f"uvicorn exited {proc.returncode}; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    url = f"{base}{settings.api_prefix}/openapi.json"
                    return (await client.get(url)).status_code == 200
                return False

            await eventually(up, timeout=30, interval=0.05, what=f"uvicorn on {base}")
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
