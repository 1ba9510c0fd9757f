"""Reading jobs: one job with its history, filtered pages, and the stats."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from shared.settings import Settings
from tests.support.api_checks import create, error_of, locs
from tests.support.waits import eventually

JOBS = "/api/v1/jobs"


async def status_of(api: httpx.AsyncClient, job_id: str) -> str:
    return str((await api.get(f"{JOBS}/{job_id}")).json()["status"])


async def reaches(api: httpx.AsyncClient, job_id: str, status: str,
                  timeout: float = 20.0) -> None:
    async def check() -> bool:
        return await status_of(api, job_id) == status

    await eventually(check, timeout, interval=0.05, what=f"job {job_id} to be {status}")


def without_history(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k != "history"}


# --- one job ------------------------------------------------------------------------------------


async def test_get_unknown_job_is_404(api):
    error = error_of(await api.get(f"{JOBS}/{uuid.uuid4()}"), 404)
    assert error["code"] == "not_found"


async def test_get_malformed_id_is_422_naming_it(api):
    for bad in ("xyz", "1234", "00000000-0000-0000-0000-00000000000g"):
        error = error_of(await api.get(f"{JOBS}/{bad}"), 422)
        assert locs(error) == [["path", "job_id"]]


async def test_get_shows_the_transition_history(api, start_worker):
    job = await create(api, "flaky", payload={"fail_times": 1})
    await start_worker()
    await reaches(api, job["id"], "COMPLETED")

    detail = (await api.get(f"{JOBS}/{job['id']}")).json()
    moves = [(h["from_status"], h["to_status"], h["attempt"]) for h in detail["history"]]
    assert moves == [(None, "QUEUED", 0), ("QUEUED", "PROCESSING", 1),
                     ("PROCESSING", "RETRYING", 1), ("RETRYING", "PROCESSING", 2),
                     ("PROCESSING", "COMPLETED", 2)]
    assert all(h["worker"] for h in detail["history"][1:])
    assert detail["history"][2]["reason"].startswith("retry in")
    stamps = [datetime.fromisoformat(h["at"]) for h in detail["history"]]
    assert stamps == sorted(stamps)
    assert detail["attempts"] == 2 and detail["result"] == {"attempt": 2}


# --- lists ------------------------------------------------------------------------------------


async def test_list_filters_by_status_and_type_newest_first(api, settings: Settings):
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    noop_q = [(await create(api, "noop"))["id"] for _ in range(3)]
    record_q = [(await create(api, "record"))["id"] for _ in range(2)]
    noop_p = (await create(api, "noop", scheduled_at=later))["id"]
    record_c = (await create(api, "record"))["id"]
    assert (await api.delete(f"{JOBS}/{record_c}")).status_code == 200

    async def ids(query: str) -> list[str]:
        resp = await api.get(f"{JOBS}?{query}")
        assert resp.status_code == 200, resp.text
        return [j["id"] for j in resp.json()["items"]]

    everything = [*noop_q, *record_q, noop_p, record_c][::-1]
    assert await ids("") == everything
    assert await ids("status=QUEUED") == [*noop_q, *record_q][::-1]
    assert await ids("job_type=record") == [*record_q, record_c][::-1]
    assert await ids("status=QUEUED&job_type=noop") == noop_q[::-1]
    assert await ids("status=PENDING") == [noop_p]
    assert await ids("status=CANCELLED&job_type=record") == [record_c]
    assert await ids("status=COMPLETED") == []
    assert await ids("job_type=nope") == []
    # With and without the trailing slash.
    assert (await api.get(f"{JOBS}/")).json() == (await api.get(JOBS)).json()
    assert (await api.get(f"{JOBS}/?status=QUEUED")).json()["items"] == (
        await api.get(f"{JOBS}?status=QUEUED")).json()["items"]


async def test_list_items_agree_with_get(api, start_worker):
    worker = await start_worker()
    ran = [await create(api, job_type) for job_type in ("noop", "flaky", "record")]
    for job in ran:
        await reaches(api, job["id"], "COMPLETED")
    await worker.stop()  # nothing changes under the comparison from here on
    await create(api, "noop", priority=2)
    await create(api, "noop", scheduled_at=(datetime.now(UTC) + timedelta(days=1)).isoformat())
    gone = await create(api, "record")
    assert (await api.delete(f"{JOBS}/{gone['id']}")).status_code == 200

    page = (await api.get(JOBS)).json()
    assert [j["status"] for j in page["items"]] == [
        "CANCELLED", "PENDING", "QUEUED", "COMPLETED", "COMPLETED", "COMPLETED"]
    for item in page["items"]:
        assert without_history((await api.get(f"{JOBS}/{item['id']}")).json()) == item


async def test_list_limit_is_at_most_500(api):
    assert (await api.get(f"{JOBS}?limit=500")).status_code == 200
    for bad in ("501", "0", "-1", "abc", "99999999999999999999999"):
        error = error_of(await api.get(f"{JOBS}?limit={bad}"), 422)
        assert locs(error) == [["query", "limit"]]


async def test_bad_filters_and_cursors_are_422_naming_them(api):
    big = base64.urlsafe_b64encode(b"s" + b"9" * 30).decode().rstrip("=")
    for cursor in ("zzz", "!!!", "czEyMw", big, "é"):  # "czEyMw" is "s123" without padding
        resp = await api.get(JOBS, params={"cursor": cursor})
        if cursor == "czEyMw":
            assert resp.status_code == 200  # well formed: just no jobs before seq 123
            continue
        error = error_of(resp, 422)
        assert locs(error) == [["query", "cursor"]], cursor
    error = error_of(await api.get(f"{JOBS}?status=DONE"), 422)
    assert locs(error) == [["query", "status"]]
    for bad in ("a\x00b", "x" * 101):
        error = error_of(await api.get(JOBS, params={"job_type": bad}), 422)
        assert locs(error) == [["query", "job_type"]]


async def test_cursor_walks_every_job_once_while_new_jobs_arrive(api):
    batch = [{"job_type": "noop", "payload": {"tag": str(i)}} for i in range(120)]
    created = (await api.post(f"{JOBS}/batch", json={"jobs": batch})).json()["jobs"]
    expected = [j["id"] for j in created][::-1]  # newest first

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(JOBS, params=params)).json()
        pages += 1
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # New jobs between pages must neither shift the walk nor appear in it.
        for _ in range(3):
            await create(api, "noop")
    assert pages == 3
    assert seen == expected
    # The first page now starts with the 6 jobs added during the walk.
    first = (await api.get(JOBS, params={"limit": 50})).json()["items"]
    assert [j["id"] for j in first[6:]] == expected[:44]


async def test_a_page_that_ends_exactly_at_the_last_job_has_no_cursor(api):
    for _ in range(4):
        await create(api)
    page = (await api.get(JOBS, params={"limit": 2})).json()
    assert page["next_cursor"]
    page = (await api.get(JOBS, params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert len(page["items"]) == 2 and page["next_cursor"] is None


# --- stats ------------------------------------------------------------------------------------


async def test_stats_counts_every_state_queue_depth_and_rates(api, start_worker,
                                                              settings: Settings):
    # Finished work, run by a real worker one job at a time.
    await start_worker(worker_concurrency=1)
    finished = [await create(api, "noop") for _ in range(3)]
    flaky = await create(api, "flaky", payload={"fail_times": 1})  # completes on attempt 2
    broken = await create(api, "broken", max_retries=1)  # dead after 2 attempts
    for job in finished:
        await reaches(api, job["id"], "COMPLETED")
    await reaches(api, flaky["id"], "COMPLETED")
    await reaches(api, broken["id"], "FAILED")
    # A long job holds the worker's only slot, so what follows stays queued.
    long = await create(api, "record", payload={"seconds": 30})
    await reaches(api, long["id"], "PROCESSING")

    for priority in (1, 1, 3):
        await create(api, "noop", priority=priority)
    await create(api, "record", priority=10)
    soon = datetime.now(UTC) + timedelta(seconds=settings.schedule_lookahead_seconds / 2)
    await create(api, "noop", scheduled_at=soon.isoformat())  # QUEUED, in the delayed set
    later = datetime.now(UTC) + timedelta(days=1)
    await create(api, "noop", scheduled_at=later.isoformat())  # PENDING, not in Redis
    gone = await create(api, "noop")
    assert (await api.delete(f"{JOBS}/{gone['id']}")).status_code == 200

    stats = (await api.get(f"{JOBS}/stats")).json()
    assert stats["by_status"] == {"PENDING": 1, "QUEUED": 5, "PROCESSING": 1, "RETRYING": 0,
                                  "COMPLETED": 4, "FAILED": 1, "CANCELLED": 1}
    assert stats["by_type"] == {
        "noop": {"COMPLETED": 3, "QUEUED": 4, "PENDING": 1, "CANCELLED": 1},
        "flaky": {"COMPLETED": 1},
        "broken": {"FAILED": 1},
        "record": {"PROCESSING": 1, "QUEUED": 1},
    }
    ready = {str(p): 0 for p in range(1, 11)} | {"1": 2, "3": 1, "10": 1}
    assert stats["queues"] == {"default": {"ready_by_priority": ready, "delayed": 1,
                                           "processing": 1}}
    assert stats["success_rate"] == 4 / 5
    assert stats["retries"] == 2  # flaky's second attempt and broken's second attempt
    assert stats["dead_letter_size"] == 1

    assert (await api.delete(f"{JOBS}/{long['id']}")).status_code == 202  # let it go


async def test_stats_of_an_empty_system(api):
    stats = (await api.get(f"{JOBS}/stats")).json()
    assert set(stats["by_status"].values()) == {0}
    assert stats["by_type"] == {}
    assert stats["success_rate"] is None
    assert stats["retries"] == 0 and stats["dead_letter_size"] == 0
    assert stats["queues"]["default"]["delayed"] == 0
