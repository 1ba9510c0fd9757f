"""Cancellation: at once while waiting, cooperatively while running."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.api_schemas import JobCreate
from shared.errors import Conflict, NotFound
from tests.support.waits import eventually


async def test_queued_job_is_cancelled_at_once_and_never_runs(service, store, stores, db,
                                                              start_worker):
    row, _ = await service.create(JobCreate(job_type="record", payload={}))
    outcome, cancelled = await service.cancel(row["id"])
    assert (outcome, cancelled["status"]) == ("cancelled", "CANCELLED")
    assert await stores.redis.zscore(stores.queue().ready_key("record"), str(row["id"])) is None
    probe, _ = await service.create(JobCreate(job_type="record", payload={}))
    await start_worker()

    async def probe_done():
        return (await store.get(probe["id"]))["status"] == "COMPLETED"

    await eventually(probe_done, what="a later job to run")
    assert await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1", row["id"]) == 0


async def test_pending_and_retrying_jobs_cancel_at_once(service, store, start_worker):
    later, _ = await service.create(JobCreate(
        job_type="noop", payload={}, scheduled_at=datetime.now(UTC) + timedelta(hours=1)))
    assert (await service.cancel(later["id"]))[0] == "cancelled"
    retrying, _ = await service.create(JobCreate(job_type="flaky",
                                                 payload={"fail_times": 1, "retry_after": 30}))
    await start_worker()

    async def is_retrying():
        return (await store.get(retrying["id"]))["status"] == "RETRYING"

    await eventually(is_retrying, what="RETRYING")
    outcome, row = await service.cancel(retrying["id"])
    assert (outcome, row["status"]) == ("cancelled", "CANCELLED")


async def test_running_job_is_interrupted_and_ends_cancelled(service, store, db, start_worker):
    row, _ = await service.create(JobCreate(job_type="record", payload={"seconds": 30}))
    await start_worker()

    async def running():
        return await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1", row["id"])

    await eventually(running, what="the job to start")
    asked = time.monotonic()
    outcome, flagged = await service.cancel(row["id"])
    assert outcome == "requested" and flagged["status"] == "PROCESSING"

    async def cancelled():
        r = await store.get(row["id"])
        return r if r["status"] == "CANCELLED" else None

    final = await eventually(cancelled, what="CANCELLED")
    assert time.monotonic() - asked < 3
    assert final["attempts"] == 1 and final["cancel_requested"]


async def test_finished_or_unknown_job_cannot_be_cancelled(service, store, start_worker):
    row, _ = await service.create(JobCreate(job_type="noop", payload={}))
    await start_worker()

    async def done():
        return (await store.get(row["id"]))["status"] == "COMPLETED"

    await eventually(done, what="completion")
    with pytest.raises(Conflict):
        await service.cancel(row["id"])
    import uuid
    with pytest.raises(NotFound):
        await service.cancel(uuid.uuid4())
