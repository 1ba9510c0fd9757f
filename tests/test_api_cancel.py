"""DELETE /api/v1/jobs/{id}: a waiting job is cancelled at once and leaves Redis; a running
one is signalled (202) and its worker interrupts it; a finished one cannot be cancelled."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from shared.settings import Settings
from tests.support.api_checks import create, error_of, locs, mentions, redis_state
from tests.support.waits import eventually

JOBS = "/api/v1/jobs"


async def reaches(api: httpx.AsyncClient, job_id: str, status: str,
                  timeout: float = 20.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job: dict[str, Any] = (await api.get(f"{JOBS}/{job_id}")).json()
        return job if job["status"] == status else None

    return await eventually(check, timeout, interval=0.02, what=f"job {job_id} {status}")


async def gone_from_redis(namespace: str, job_id: str) -> None:
    async def check() -> bool:
        return not mentions(await redis_state(namespace), job_id)

    await eventually(check, 10, what=f"job {job_id} to leave Redis")


async def assert_cancelled_at_once(api: httpx.AsyncClient, job: dict[str, Any],
                                   namespace: str, was: str) -> None:
    resp = await api.delete(f"{JOBS}/{job['id']}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "CANCELLED" and body["finished_at"]
    detail = (await api.get(f"{JOBS}/{job['id']}")).json()
    assert detail["status"] == "CANCELLED"
    last = detail["history"][-1]
    assert (last["from_status"], last["to_status"]) == (was, "CANCELLED")
    assert last["reason"] == "cancelled by request"
    assert not mentions(await redis_state(namespace), job["id"])


async def test_pending_job_is_cancelled_at_once(api, namespace):
    job = await create(api, scheduled_at=(datetime.now(UTC) + timedelta(days=1)).isoformat())
    assert job["status"] == "PENDING"
    await assert_cancelled_at_once(api, job, namespace, "PENDING")


async def test_queued_job_is_cancelled_at_once_and_never_runs(api, db: asyncpg.Pool,
                                                              namespace, start_worker):
    job = await create(api, "record", payload={"tag": "cancelled"})
    assert mentions(await redis_state(namespace), job["id"]) == [
        f"{{{namespace}:default}}:ready:record"]
    await assert_cancelled_at_once(api, job, namespace, "QUEUED")

    await start_worker()
    marker = await create(api, "record", payload={"tag": "after"})
    await reaches(api, marker["id"], "COMPLETED")
    assert await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1",
                             uuid.UUID(job["id"])) == 0


async def test_queued_job_waiting_in_the_delayed_set_is_cancelled_at_once(
        api, namespace, settings: Settings):
    soon = datetime.now(UTC) + timedelta(seconds=settings.schedule_lookahead_seconds / 2)
    job = await create(api, scheduled_at=soon.isoformat())
    assert set(mentions(await redis_state(namespace), job["id"])) == {
        f"{{{namespace}:default}}:delayed", f"{{{namespace}:default}}:dmeta"}
    await assert_cancelled_at_once(api, job, namespace, "QUEUED")


async def test_retrying_job_is_cancelled_at_once(api, namespace, start_worker):
    job = await create(api, "flaky", payload={"fail_times": 5, "retry_after": 600})
    worker = await start_worker()
    await reaches(api, job["id"], "RETRYING")
    await worker.stop()  # the backoff is 10 minutes: nothing more will happen to it

    async def parked() -> bool:  # settled into the delayed set, lock released
        return set(mentions(await redis_state(namespace), job["id"])) == {
            f"{{{namespace}:default}}:delayed", f"{{{namespace}:default}}:dmeta"}

    await eventually(parked, 10, what="the retry to wait in the delayed set")
    await assert_cancelled_at_once(api, job, namespace, "RETRYING")


async def test_running_job_is_signalled_and_ends_cancelled(api, db: asyncpg.Pool, namespace,
                                                           start_worker):
    job = await create(api, "record", payload={"seconds": 30, "tag": "long"})
    await start_worker()
    await reaches(api, job["id"], "PROCESSING")

    async def started() -> bool:  # the handler itself is running (it records, then sleeps)
        return bool(await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1",
                                      uuid.UUID(job["id"])))

    await eventually(started, 10, what="the handler to start")
    asked = time.monotonic()
    resp = await api.delete(f"{JOBS}/{job['id']}")
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "PROCESSING" and resp.json()["cancel_requested"] is True

    done = await reaches(api, job["id"], "CANCELLED", timeout=25)
    took = time.monotonic() - asked
    assert took < 10, f"handler ran on for {took:.1f} s after the cancel (sleeps 30 s)"
    assert done["result"] is None  # the handler never returned
    assert done["last_error"] == "cancelled while running"
    assert done["attempts"] == 1
    moves = [(h["from_status"], h["to_status"]) for h in done["history"]]
    assert moves[-1] == ("PROCESSING", "CANCELLED")
    await gone_from_redis(namespace, job["id"])

    error = error_of(await api.delete(f"{JOBS}/{job['id']}"), 409)
    assert error["code"] == "conflict"


async def test_finished_jobs_cannot_be_cancelled(api, db, namespace, start_worker):
    completed = await create(api)
    failed = await create(api, "broken", max_retries=0)
    cancelled = await create(api, scheduled_at=(datetime.now(UTC)
                                                + timedelta(days=1)).isoformat())
    assert (await api.delete(f"{JOBS}/{cancelled['id']}")).status_code == 200
    worker = await start_worker()
    await reaches(api, completed["id"], "COMPLETED")
    await reaches(api, failed["id"], "FAILED")
    await worker.stop()
    rows_before = await db.fetch("SELECT * FROM jobs ORDER BY seq")
    redis_before = await redis_state(namespace)
    for job, status in ((completed, "COMPLETED"), (failed, "FAILED"),
                        (cancelled, "CANCELLED")):
        error = error_of(await api.delete(f"{JOBS}/{job['id']}"), 409)
        assert error["code"] == "conflict" and status in error["message"]
        assert (await api.get(f"{JOBS}/{job['id']}")).json()["status"] == status
    assert await db.fetch("SELECT * FROM jobs ORDER BY seq") == rows_before
    assert await redis_state(namespace) == redis_before


async def test_cancel_unknown_job_is_404_and_malformed_id_422(api, db, namespace):
    job = await create(api)
    before = await redis_state(namespace)
    assert error_of(await api.delete(f"{JOBS}/{uuid.uuid4()}"), 404)["code"] == "not_found"
    assert locs(error_of(await api.delete(f"{JOBS}/not-a-uuid"), 422)) == [["path", "job_id"]]
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1",
                             uuid.UUID(job["id"])) == "QUEUED"
    assert await redis_state(namespace) == before
