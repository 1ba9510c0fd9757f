"""The console in a real headless Chromium that cannot leave the machine: sign in with a
key, watch a job go from QUEUED to COMPLETED without reloading, filter the list, read a
job's timeline, cancel a scheduled job, redrive a dead one and see it complete, and be
told why a read-only key may not purge. Behind an API Gateway stage prefix too.

One browser, one API server (uvicorn) and one worker process for the module; each test
opens its own context (``Offline``: every non-loopback request is aborted and recorded)
and signs in through the sign-in page. ``AJS_WRITE_SCREENSHOTS=1`` writes each page into
docs/console/ for the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, expect

from shared.settings import Settings
from tests.conftest import (
    ROOT,
    TEST_MODULES,
    create_key,
    drop_namespace,
    migrated_settings,
    settings_env,
)
from tests.support.browser import Offline, api_server, behind_stage, chromium, screenshot
from tests.support.waits import eventually

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]
module_fixture = pytest_asyncio.fixture(scope="module", loop_scope="module")

PREFIX = "/api/v1"
PHONE = {"width": 390, "height": 844}


class Console:
    """What the module's tests share: the server's base URL, keys, an API client."""

    def __init__(self, base: str, settings: Settings, admin: str, reader: str,
                 client: httpx.AsyncClient, browser: Browser) -> None:
        self.base, self.settings, self.admin, self.reader = base, settings, admin, reader
        self.client, self.browser = client, browser
        self.console = f"{base}{PREFIX}/console"

    async def create(self, job_type: str, payload: dict[str, Any], **fields: Any) -> str:
        r = await self.client.post(f"{PREFIX}/jobs", json={
            "job_type": job_type, "payload": payload, **fields})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def status(self, job_id: str) -> str:
        r = await self.client.get(f"{PREFIX}/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return str(r.json()["status"])

    async def reaches(self, job_id: str, status: str) -> None:
        async def there() -> bool:
            return await self.status(job_id) == status
        await eventually(there, timeout=30, interval=0.1, what=f"job {job_id} {status}")


@module_fixture
async def settings() -> AsyncIterator[Settings]:
    namespace = "t_" + secrets.token_hex(5)
    yield await migrated_settings(
        namespace, job_modules=[*TEST_MODULES, "tests.support.console_jobtypes"])
    await drop_namespace(namespace)


@module_fixture
async def worker_process(settings: Settings, tmp_path_factory: pytest.TempPathFactory
                         ) -> AsyncIterator[WorkerProcess]:
    process = WorkerProcess(settings, tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        yield process
    finally:
        await process.stop()


class WorkerProcess:
    """``python -m worker`` with the module's settings, started when a test needs it
    (the first one wants to see a job wait in QUEUED)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings, self.log_path = settings, log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def ensure_running(self) -> None:
        if self.proc is None:
            with open(self.log_path, "wb") as log:
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "worker", cwd=str(ROOT),
                    env=settings_env(self.settings), stdout=log, stderr=log)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


@module_fixture
async def console(settings: Settings, tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[Console]:
    admin = await create_key(settings, "admin", name="on-call")
    reader = await create_key(settings, "jobs:read", name="read-only")
    log_path = tmp_path_factory.mktemp("api") / "uvicorn.log"
    async with api_server(settings, log_path) as base, chromium() as browser, \
            httpx.AsyncClient(base_url=base, timeout=10,
                              headers={"Authorization": f"Bearer {admin}"}) as client:
        yield Console(base, settings, admin, reader, client, browser)


@pytest_asyncio.fixture(loop_scope="module")
async def offline(console: Console) -> AsyncIterator[Offline]:
    context = await Offline.open(console.browser)
    try:
        yield context
    finally:
        await context.close()
    assert context.blocked == []


def problems(offline: Offline) -> list[str]:
    """Failed responses and requests, less the fetches a navigation cut short (a page
    left while its refresh was in flight)."""
    return [e for e in offline.errors if not e.startswith("failed (net::ERR_ABORTED)")]


async def sign_in(offline: Offline, page: Page, url: str, key: str) -> None:
    await page.goto(url)
    await offline.shows(page.get_by_label("API key or JWT"))
    await page.get_by_label("API key or JWT").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(lambda u: "sign-in" not in u)


async def test_sign_in_with_a_key_then_see_the_overview(console: Console,
                                                         offline: Offline) -> None:
    page = await offline.context.new_page()
    # Without a credential every console page sends the browser to sign-in.
    await page.goto(console.console)
    await page.wait_for_url("**/console/sign-in")
    await offline.shows(page.get_by_label("API key or JWT"))
    await screenshot(page, "sign-in")
    await page.get_by_label("API key or JWT").fill("ajs_not_a_key_of_ours")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("Not accepted")
    await page.get_by_label("API key or JWT").fill(console.admin)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(console.console)
    await offline.shows(page.get_by_role("heading", name="Jobs by state"))
    await expect(page.locator(".whoami")).to_contain_text("on-call")
    await console.create("noop", {"tag": "overview"})
    # The overview refreshes itself: the new job's type appears without a reload.
    await expect(page.get_by_role("rowheader", name="noop")).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/console/sign-in")
    assert await page.evaluate("sessionStorage.length") == 0
    assert problems(offline) == [f"401 {console.console}/fragments/whoami"]


async def test_a_created_job_goes_from_queued_to_completed_without_reload(
        console: Console, offline: Offline, worker_process: WorkerProcess) -> None:
    job_id = await console.create("record", {"seconds": 0.3, "tag": "watched"})
    page = await offline.context.new_page()
    await sign_in(offline, page, f"{console.console}/sign-in", console.admin)
    await page.goto(f"{console.console}/jobs/{job_id}")
    status = page.locator("[data-status]")
    await expect(status).to_have_text("QUEUED")
    await page.evaluate("window.notReloaded = true")
    await worker_process.ensure_running()
    await expect(status).to_have_text("COMPLETED", timeout=30_000)
    assert await page.evaluate("window.notReloaded") is True
    timeline = page.locator(".timeline li")
    await expect(timeline).to_have_count(3)
    steps = await timeline.locator(".state").all_inner_texts()
    assert steps == ["QUEUED", "PROCESSING", "COMPLETED"]
    await expect(timeline.nth(2)).to_contain_text("worker ")
    await expect(page.locator("pre.json").first).to_contain_text('"tag": "watched"')
    await expect(page.get_by_role("heading", name="Result")).to_be_visible()
    await screenshot(page, "job")
    assert problems(offline) == []


async def test_filter_the_jobs_list_and_open_a_timeline(console: Console,
                                                        offline: Offline) -> None:
    tag = secrets.token_hex(3)
    noops = [await console.create("noop", {"tag": tag}) for _ in range(2)]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    record = await console.create("record", {"tag": tag}, scheduled_at=later)
    page = await offline.context.new_page()
    await sign_in(offline, page, f"{console.console}/sign-in", console.admin)
    await page.get_by_role("link", name="Jobs", exact=True).click()
    await offline.shows(page.locator(f"tr[data-job='{record}']"))
    await page.get_by_label("State").select_option("PENDING")
    await page.get_by_label("Type").fill("record")
    await page.get_by_role("button", name="Filter").click()
    rows = page.locator("tr[data-job]")
    await expect(rows.first).to_be_visible()
    assert set(await rows.locator("td:nth-child(2)").all_inner_texts()) == {"record"}
    assert set(await rows.locator(".state").all_inner_texts()) == {"PENDING"}
    assert await page.locator(f"tr[data-job='{noops[0]}']").count() == 0
    await page.get_by_role("link", name="Clear").click()
    await offline.shows(page.locator(f"tr[data-job='{noops[0]}']"))
    await screenshot(page, "jobs")
    await page.get_by_label("Job id").fill(noops[1])
    await page.keyboard.press("Enter")  # the form works from the keyboard
    await expect(rows).to_have_count(1)
    await rows.get_by_role("link").click()
    await page.wait_for_url(f"**/console/jobs/{noops[1]}")
    await offline.shows(page.get_by_role("heading", name="Timeline"))
    assert problems(offline) == []


async def test_readable_on_a_phone(console: Console, offline: Offline) -> None:
    page = await offline.context.new_page()
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await sign_in(offline, page, f"{console.console}/sign-in", console.admin)
    await offline.shows(page.get_by_role("heading", name="Jobs by state"))
    # Nothing wider than the screen: wide tables scroll inside their own box.
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await expect(page.get_by_role("link", name="Dead letters")).to_be_visible()
    await screenshot(page, "overview-phone")


async def test_cancel_a_scheduled_job_after_confirming(console: Console,
                                                       offline: Offline) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    job_id = await console.create("noop", {"tag": "to-cancel"}, scheduled_at=later)
    page = await offline.context.new_page()
    await sign_in(offline, page, f"{console.console}/sign-in", console.admin)
    await page.goto(f"{console.console}/jobs/{job_id}")
    await expect(page.locator("[data-status]")).to_have_text("PENDING")
    dialog = page.get_by_role("dialog")
    # Keeping the job (Escape) changes nothing.
    await page.get_by_role("button", name="Cancel job").click()
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text(job_id)
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    assert await console.status(job_id) == "PENDING"
    await page.get_by_role("button", name="Cancel job").click()
    await dialog.get_by_role("button", name="Confirm").click()
    await expect(page.locator("[data-status]")).to_have_text("CANCELLED")
    await expect(page.locator("#flash")).to_have_text("Cancel sent")
    assert await console.status(job_id) == "CANCELLED"
    assert problems(offline) == []


async def test_redrive_dead_jobs_one_and_a_selection_and_see_them_complete(
        console: Console, offline: Offline, worker_process: WorkerProcess) -> None:
    await worker_process.ensure_running()
    one, two, three = [await console.create("fails_first_run", {"tag": f"dead-{i}"})
                       for i in range(3)]
    for job_id in (one, two, three):
        await console.reaches(job_id, "FAILED")
    page = await offline.context.new_page()
    await sign_in(offline, page, f"{console.console}/sign-in", console.admin)
    await page.get_by_role("link", name="Dead letters").click()
    row = page.locator(f"tr[data-job='{one}']")
    await offline.shows(row)
    await expect(page.locator(".dead-group").filter(has=row)).to_contain_text(
        "the downstream service was down")
    await screenshot(page, "dead-letters")
    # One, from its row.
    await row.get_by_role("button", name="Redrive").click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    await expect(page.locator("#flash")).to_contain_text(f"Job {one} redriven")
    await expect(row).to_have_count(0)
    # A selection, ticked from the keyboard.
    await page.get_by_label(f"Select job {two}").focus()
    await page.keyboard.press("Space")
    await page.get_by_label(f"Select job {three}").check()
    await page.get_by_role("button", name="Redrive selected").click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    await expect(page.locator("#flash")).to_have_text("Selected jobs redriven")
    await expect(page.locator(f"tr[data-job='{two}'], tr[data-job='{three}']")).to_have_count(0)
    for job_id in (one, two, three):
        await console.reaches(job_id, "COMPLETED")
    await page.goto(f"{console.console}/jobs/{one}")
    await expect(page.locator("[data-status]")).to_have_text("COMPLETED")
    await expect(page.locator(".timeline")).to_contain_text(
        "redriven from the dead letter queue")
    assert problems(offline) == []


async def test_a_read_only_key_is_told_purge_needs_admin(
        console: Console, offline: Offline, worker_process: WorkerProcess) -> None:
    await worker_process.ensure_running()
    job_id = await console.create("fails_first_run", {"tag": "stays-dead"})
    await console.reaches(job_id, "FAILED")
    page = await offline.context.new_page()
    await sign_in(offline, page, f"{console.console}/sign-in", console.reader)
    await page.get_by_role("link", name="Dead letters").click()
    group = page.locator(".dead-group", has=page.locator(f"tr[data-job='{job_id}']"))
    await offline.shows(group)
    await group.get_by_role("button", name="Purge fails_first_run").click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    await expect(page.locator("#flash")).to_have_text(
        "Not allowed: this needs the admin scope; your credential has jobs:read.")
    assert await console.status(job_id) == "FAILED"
    assert problems(offline) == [f"403 {console.base}{PREFIX}/dead-letters?job_type="
                              "fails_first_run"]


async def test_pause_and_resume_a_schedule(console: Console, offline: Offline) -> None:
    created = await console.client.post(f"{PREFIX}/schedules", json={
        "name": "nightly-cleanup", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
        "job": {"job_type": "noop", "payload": {"tag": "nightly"}}})
    assert created.status_code == 201, created.text
    page = await offline.context.new_page()
    await sign_in(offline, page, f"{console.console}/sign-in", console.admin)
    await page.get_by_role("link", name="Schedules").click()
    row = page.locator("tr[data-schedule='nightly-cleanup']")
    await offline.shows(row)
    await expect(row.locator("time")).to_have_count(3)  # the next fire times
    await screenshot(page, "schedules")
    await row.get_by_role("button", name="Pause").click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    await expect(row).to_contain_text("paused")
    schedule = (await console.client.get(f"{PREFIX}/schedules/{created.json()['id']}")).json()
    assert schedule["paused"] is True
    await row.get_by_role("button", name="Resume").click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    await expect(row.get_by_role("button", name="Pause")).to_be_visible()
    assert problems(offline) == []


async def test_the_console_works_behind_a_gateway_stage(
        console: Console, offline: Offline, worker_process: WorkerProcess) -> None:
    """API Gateway's stage is in the browser's URLs, never in the app's: every link,
    asset, fragment and action must stay inside it."""
    await worker_process.ensure_running()
    job_id = await console.create("noop", {"tag": "staged"})
    await console.reaches(job_id, "COMPLETED")
    page = await offline.context.new_page()
    outside = await behind_stage(page, console.base, "/dev")
    staged = f"{console.base}/dev{PREFIX}/console"
    await page.goto(staged)
    await page.wait_for_url(f"{staged}/sign-in")
    await page.get_by_label("API key or JWT").fill(console.admin)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(staged)
    await offline.shows(page.get_by_role("heading", name="Jobs by state"))
    await page.get_by_role("link", name="Jobs", exact=True).click()
    await page.locator(f"tr[data-job='{job_id}']").get_by_role("link").click()
    await page.wait_for_url(f"{staged}/jobs/{job_id}")
    # A finished job's page stops refreshing: nothing is in flight when the test ends.
    await expect(page.locator("[data-status]")).to_have_text("COMPLETED")
    assert outside == []
    assert problems(offline) == []


async def test_overview_shows_workers_activity_and_what_they_run(
        console: Console, offline: Offline, worker_process: WorkerProcess) -> None:
    await worker_process.ensure_running()
    job_id = await console.create("record", {"seconds": 20, "tag": "long"})
    page = await offline.context.new_page()
    await sign_in(offline, page, f"{console.console}/sign-in", console.admin)
    # The worker's heartbeat lists the job it runs; the overview picks it up by itself.
    running = page.locator(f"tr[data-worker] a[href$='/jobs/{job_id}']")
    await expect(running).to_be_visible(timeout=30_000)
    hour = page.locator("tr[data-window='1h']")
    await expect(hour).to_be_visible()
    assert int((await hour.locator("td").first.inner_text()).replace(",", "")) >= 1
    await screenshot(page, "overview")
    cancelled = await console.client.delete(f"{PREFIX}/jobs/{job_id}")
    assert cancelled.status_code in (200, 202), cancelled.text
    assert problems(offline) == []
