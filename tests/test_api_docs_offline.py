"""Swagger UI and ReDoc render in a real browser that cannot reach the internet, as in a
VPC: the API serves every script and style the pages need, and both pages list every
operation of the schema (a page that loads its assets from a CDN is blank there).

Debian's Chromium through Playwright (tests/support/browser.py); the API is the real app
under uvicorn on a loopback port. ``AJS_WRITE_SCREENSHOTS=1`` saves each page into
docs/console/ for the README.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import expect

from shared.settings import Settings
from tests.support.browser import Offline, api_server, behind_stage, chromium, screenshot

pytestmark = pytest.mark.timeout(90)

# ReDoc's sidebar footer ("API docs by Redocly") shows a logo from Redocly's CDN, in code
# we cannot configure; the image removes itself when it fails to load. It is the one
# outside request either page may try, and the test checks the page renders without it.
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture
async def server(settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    async with api_server(settings, tmp_path / "uvicorn.log") as base:
        yield base


@pytest.fixture
def live_api(server: str, settings: Settings) -> str:
    return server + settings.api_prefix


@pytest.fixture
async def offline() -> AsyncIterator[Offline]:
    async with chromium() as browser:
        context = await Offline.open(browser)
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def operations(live_api: str) -> dict[str, str]:
    """operationId -> summary of every operation the API documents."""
    async with httpx.AsyncClient() as client:
        schema: dict[str, Any] = (await client.get(f"{live_api}/openapi.json")).json()
    ops = {op["operationId"]: op["summary"]
           for methods in schema["paths"].values() for op in methods.values()}
    assert "Create a job" in ops.values() and len(ops) >= 12
    return ops


async def test_swagger_ui_lists_every_operation_without_internet(
        live_api: str, offline: Offline, operations: dict[str, str]) -> None:
    page = await offline.context.new_page()
    await page.goto(f"{live_api}/docs")
    summaries = page.locator(".opblock-summary-description")
    await offline.shows(summaries.filter(has_text="Create a job"))
    assert sorted(await summaries.all_inner_texts()) == sorted(operations.values())
    # Each operation block links to its operationId (deep linking).
    links = await page.locator(".opblock-summary-path a").evaluate_all(
        "links => links.map(a => a.getAttribute('href'))")
    assert sorted(link.rsplit("/", 1)[1] for link in links) == sorted(operations)
    assert offline.blocked == []
    assert offline.errors == []
    await screenshot(page, "api-docs-swagger-ui")


async def test_redoc_lists_every_operation_without_internet(
        live_api: str, offline: Offline, operations: dict[str, str]) -> None:
    page = await offline.context.new_page()
    await page.goto(f"{live_api}/redoc")
    await offline.shows(page.get_by_role("heading", name="Create a job"))
    # Each operation's heading holds an anchor to its operationId.
    headings = page.locator("h2:has(a[href*='/operation/'])")
    shown = await headings.evaluate_all("""hs => hs.map(h => [
        h.querySelector('a').getAttribute('href').split('/operation/')[1],
        h.textContent.trim()])""")
    assert dict(shown) == operations
    assert len(shown) == len(operations)
    assert set(offline.blocked) <= {REDOCLY_LOGO}
    await expect(page.locator("img[alt='redocly logo']")).to_have_count(0)
    assert offline.errors == []
    await screenshot(page, "api-docs-redoc")


async def test_both_pages_work_under_a_gateway_stage(
        server: str, settings: Settings, offline: Offline, operations: dict[str, str]) -> None:
    """Behind a named API Gateway stage the browser sees /dev/api/v1/docs while the app
    sees /api/v1/docs: every URL the pages use must stay inside /dev."""
    page = await offline.context.new_page()
    outside = await behind_stage(page, server, "/dev")
    await page.goto(f"{server}/dev{settings.api_prefix}/docs")
    await offline.shows(page.locator(".opblock-summary-description", has_text="Create a job"))
    assert await page.locator(".opblock").count() == len(operations)
    await page.goto(f"{server}/dev{settings.api_prefix}/redoc")
    await offline.shows(page.get_by_role("heading", name="Create a job"))
    assert await page.locator("h2:has(a[href*='/operation/'])").count() == len(operations)
    assert outside == []
    assert set(offline.blocked) <= {REDOCLY_LOGO}
    assert offline.errors == []
