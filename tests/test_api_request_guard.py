"""What a page on another site cannot make a browser do to the API, unknown Host headers,
and 405 (with every allowed method) for a wrong method on a fixed path."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import admin_headers
from tests.support.api_checks import error_of, job_count, locs, redis_state
from tests.support.job_api import PREFIX, create
from tests.support.waits import eventually

JOBS = f"{PREFIX}/jobs"
DEAD = f"{PREFIX}/dead-letters"


async def dead_letters(api: httpx.AsyncClient, n: int, start_worker: Any) -> None:
    worker = await start_worker()
    for i in range(n):
        await create(api, "broken", {"tag": str(i)}, max_retries=0)

    async def all_dead() -> bool:
        return len((await api.get(DEAD)).json()["items"]) == n

    await eventually(all_dead, 30, interval=0.05, what=f"{n} dead jobs")
    await worker.stop()


@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"])
async def test_a_form_post_cannot_redrive_the_dead_letter_queue(api, db, namespace,
                                                                start_worker, content_type):
    await dead_letters(api, 2, start_worker)
    before = await redis_state(namespace)
    for body in (b"", b"job_type=broken"):
        resp = await api.post(f"{DEAD}/redrive", content=body,
                              headers={"Content-Type": content_type})
        error = error_of(resp, 415)
        assert error["code"] == "unsupported_media_type"
        assert locs(error) == [["header", "Content-Type"]]
    assert len((await api.get(DEAD)).json()["items"]) == 2  # nothing redriven
    assert await redis_state(namespace) == before


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"}, {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://api", "Sec-Fetch-Site": "cross-site"}])
async def test_body_less_cross_site_requests_are_refused(api, db, namespace, start_worker,
                                                         headers):
    await dead_letters(api, 1, start_worker)
    job_id = await create(api, "noop", {}, scheduled_at="2030-01-01T00:00:00Z")
    before = await redis_state(namespace)
    for method, url in (("POST", f"{DEAD}/redrive"), ("DELETE", DEAD),
                        ("DELETE", f"{JOBS}/{job_id}")):
        error = error_of(await api.request(method, url, headers=headers), 403)
        assert error["code"] == "cross_site_refused"
    # JSON from another site is refused too (it would need a CORS preflight anyway).
    resp = await api.post(JOBS, json={"job_type": "noop"}, headers=headers)
    assert error_of(resp, 403)["code"] == "cross_site_refused"
    assert len((await api.get(DEAD)).json()["items"]) == 1
    assert (await api.get(f"{JOBS}/{job_id}")).json()["status"] == "PENDING"
    assert await job_count(db) == 2
    assert await redis_state(namespace) == before


async def test_same_origin_and_non_browser_clients_are_served(api, db):
    same = {"Origin": "http://api", "Sec-Fetch-Site": "same-origin"}
    assert (await api.post(JOBS, json={"job_type": "noop"}, headers=same)).status_code == 201
    assert (await api.post(JOBS, json={"job_type": "noop"},
                           headers={"Sec-Fetch-Site": "none"})).status_code == 201
    # Behind a proxy that rewrites Host, the browser's own Sec-Fetch-Site decides.
    assert (await api.post(JOBS, json={"job_type": "noop"}, headers={
        "Origin": "https://jobs.example.com", "Sec-Fetch-Site": "same-origin"})
            ).status_code == 201
    # No Origin, no Sec-Fetch-Site, no body and no Content-Type: a script or curl.
    assert (await api.post(f"{DEAD}/redrive")).status_code == 200
    assert (await api.post(f"{DEAD}/redrive",
                           headers={"Content-Type": "application/json; charset=utf-8"},
                           content=b'{"job_type": "noop"}')).status_code == 200
    assert (await api.delete(DEAD)).status_code == 200
    assert await job_count(db) == 3


async def test_a_body_without_a_json_content_type_is_415(api, db):
    for headers in ({}, {"Content-Type": "application/xml"}, {"Content-Type": "text/json"}):
        resp = await api.post(JOBS, content=b'{"job_type": "noop"}', headers=headers)
        assert error_of(resp, 415)["code"] == "unsupported_media_type"
    assert await job_count(db) == 0


@pytest.fixture
async def host_checked(settings: Any) -> Any:
    from functions.api.app import create_app

    app = create_app(settings.model_copy(update={
        "api_allowed_hosts": ["api.example.com", "*.internal"]}))
    yield app
    await app.state.stores.close()


@pytest.mark.parametrize(("host", "status"), [
    ("api.example.com", 200), ("API.example.com:8443", 200), ("jobs.internal", 200),
    ("evil.example", 400), ("api.example.com.evil.example", 400), ("internal", 400),
    ("", 400)])
async def test_only_allowed_hosts_are_served(host_checked, settings, host, status):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host_checked),
                                 base_url="http://api",
                                 headers=await admin_headers(settings)) as client:
        resp = await client.get(f"{PREFIX}/job-types", headers={"Host": host})
    if status == 200:
        assert resp.status_code == 200, resp.text
    else:
        assert locs(error_of(resp, 400)) == [["header", "Host"]]


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/jobs/batch", "POST"), ("DELETE", "/jobs/batch", "POST"),
    ("DELETE", "/jobs/stats", "GET"), ("POST", "/jobs/stats", "GET"),
    ("PUT", "/jobs/00000000-0000-0000-0000-000000000001", "DELETE, GET"),
    ("PATCH", "/jobs", "GET, POST"), ("GET", "/dead-letters/redrive", "POST"),
    ("PUT", "/dead-letters", "DELETE, GET"), ("POST", "/health", "GET")])
async def test_a_wrong_method_is_405_with_every_allowed_method(api, db: asyncpg.Pool,
                                                               method, path, allow):
    resp = await api.request(method, PREFIX + path)
    assert error_of(resp, 405)["code"] == "method_not_allowed"
    assert resp.headers["allow"] == allow
    for listed in allow.split(", "):  # what Allow names is really served there
        assert (await api.request(listed, PREFIX + path)).status_code != 405
    assert await job_count(db) == 0


async def test_a_malformed_job_id_is_still_422_naming_it(api):
    for method in ("GET", "DELETE"):
        assert locs(error_of(await api.request(method, f"{JOBS}/batchx"), 422)) == [
            ["path", "job_id"]]


async def test_an_origin_among_the_allowed_hosts_may_change_state(host_checked, settings, db):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host_checked),
                                 base_url="http://api.example.com",
                                 headers=await admin_headers(settings)) as client:
        ok = await client.post(JOBS, json={"job_type": "noop"},
                               headers={"Origin": "https://ui.internal"})
        assert ok.status_code == 201, ok.text
        refused = await client.post(JOBS, json={"job_type": "noop"},
                                    headers={"Origin": "https://evil.example"})
        assert error_of(refused, 403)["code"] == "cross_site_refused"
    assert await job_count(db) == 1
