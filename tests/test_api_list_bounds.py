"""List pages are bounded in bytes as well as in count (``api_page_max_bytes``), continue with
``next_cursor``, and can leave payloads and results out (``fields=summary``): for /jobs and
/dead-letters, and measured on a real uvicorn process's memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
import pytest

from shared.settings import Settings
from tests.conftest import admin_headers
from tests.support.api_checks import error_of
from tests.support.job_api import PREFIX
from tests.support.servers import free_port
from tests.support.waits import eventually

JOBS = f"{PREFIX}/jobs"
DEAD = f"{PREFIX}/dead-letters"
BUDGET = 64 * 1024


@pytest.fixture
async def small_pages(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a 64 KiB page budget."""
    from functions.api.app import create_app

    app = create_app(settings.model_copy(update={"api_page_max_bytes": BUDGET}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                 headers=await admin_headers(settings)) as client:
        yield client
    await app.state.stores.close()


async def create_jobs(api: httpx.AsyncClient, sizes: list[int], job_type: str = "noop",
                      **fields: Any) -> list[str]:
    ids = []
    for i, size in enumerate(sizes):
        r = await api.post(JOBS, json={"job_type": job_type,
                                       "payload": {"tag": f"{i}:" + "x" * size}, **fields})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


async def walk(api: httpx.AsyncClient, url: str, **params: Any) -> list[httpx.Response]:
    """Every page, following next_cursor."""
    pages = []
    cursor = None
    while True:
        r = await api.get(url, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        pages.append(r)
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100


async def test_a_page_stops_at_its_byte_budget_and_the_cursor_continues(small_pages):
    ids = await create_jobs(small_pages, [20_000] * 10)
    pages = await walk(small_pages, JOBS, limit=500)
    assert len(pages) >= 4  # 10 jobs of 20 kB cannot share a 64 KiB page by threes
    for page in pages:
        assert len(page.content) <= BUDGET
        assert page.json()["items"]
    listed = [j["id"] for p in pages for j in p.json()["items"]]
    assert listed == ids[::-1]  # every job once, newest first
    assert all(len(j["payload"]["tag"]) > 20_000 for p in pages for j in p.json()["items"])


async def test_a_job_larger_than_the_budget_comes_back_alone(small_pages):
    ids = await create_jobs(small_pages, [1_000, 100_000, 1_000])
    pages = await walk(small_pages, JOBS, limit=50)
    by_page = [[j["id"] for j in p.json()["items"]] for p in pages]
    assert [ids[1]] in by_page  # alone on its page, whole
    assert [j for p in by_page for j in p] == ids[::-1]


async def test_summary_leaves_payload_and_result_out(small_pages):
    ids = await create_jobs(small_pages, [20_000] * 10)
    r = await small_pages.get(JOBS, params={"limit": 500, "fields": "summary"})
    assert r.status_code == 200
    page = r.json()
    assert [j["id"] for j in page["items"]] == ids[::-1]  # all on one page: they are small
    assert page["next_cursor"] is None
    assert len(r.content) < 10_000
    for job in page["items"]:
        assert "payload" not in job and "result" not in job
        assert job["status"] == "QUEUED" and job["job_type"] == "noop"
    bad = error_of(await small_pages.get(JOBS, params={"fields": "payload"}), 422)
    assert bad["details"][0]["loc"] == ["query", "fields"]


async def test_dead_letter_pages_are_bounded_the_same_way(small_pages, start_worker):
    await start_worker()
    ids = await create_jobs(small_pages, [20_000] * 6, job_type="broken", max_retries=0)

    async def all_dead() -> bool:
        r = await small_pages.get(DEAD, params={"fields": "summary", "limit": 500})
        return len(r.json()["items"]) == len(ids)

    await eventually(all_dead, 30, interval=0.1, what="every job in the dead letter queue")
    pages = await walk(small_pages, DEAD, limit=500)
    assert len(pages) >= 2
    assert all(len(p.content) <= BUDGET for p in pages)
    assert [j["id"] for p in pages for j in p.json()["items"]] == ids[::-1]
    summary = (await small_pages.get(DEAD, params={"fields": "summary"})).json()
    assert all("payload" not in j for j in summary["items"])


async def test_concurrent_lists_of_large_jobs_keep_the_api_small(settings, spawn):
    """100 jobs of 200 kB, four lists of limit=500 at once, on a real uvicorn process: each
    answer stays within the default 1 MiB budget and the process grows by little."""
    port = free_port()
    proc = await spawn("-m", "uvicorn", "--factory", "functions.api.app:create_app",
                       "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning")
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 headers=await admin_headers(settings)) as client:
        async def up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await client.get(f"{PREFIX}/health")).status_code == 200
            return False

        await eventually(up, 30, what="the API to answer")
        tag = "x" * 200_000
        for b in range(5):
            batch = [{"job_type": "noop", "payload": {"tag": f"{b}-{i}{tag}"}}
                     for i in range(20)]
            r = await client.post(f"{JOBS}/batch", json={"jobs": batch})
            assert r.status_code == 201, r.text[:300]
        assert (await client.get(JOBS, params={"limit": 2})).status_code == 200  # warm
        process = psutil.Process(proc.pid)
        before = process.memory_info().rss
        peak = before
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        try:
            answers = await asyncio.gather(*(client.get(JOBS, params={"limit": 500})
                                             for _ in range(4)))
        finally:
            done.set()
            await sampler
    grown = (peak - before) / 2**20
    print(f"API RSS {before / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB "
          f"(+{grown:.0f} MiB); answers {[len(a.content) for a in answers]} bytes")
    for answer in answers:
        assert answer.status_code == 200
        assert len(answer.content) <= settings.api_page_max_bytes
        assert answer.json()["next_cursor"] is not None
    assert grown < 48, f"four list requests grew the API by {grown:.0f} MiB"
