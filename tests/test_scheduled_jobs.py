"""Scheduled jobs: PENDING in PostgreSQL, moved to Redis's delayed set by a scheduler
tick, promoted by a worker at the due millisecond."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from functions.scheduler.tick import tick
from shared.api_schemas import JobCreate
from shared.connections import Stores
from shared.core.service import JobService
from tests.support.waits import eventually


async def test_job_scheduled_two_seconds_ahead_starts_within_a_second_of_its_time(
        settings, registry, stores, db, start_worker):
    # The API side keeps every future job PENDING, so only the tick can hand it to Redis.
    api_stores = Stores(settings.model_copy(update={"schedule_lookahead_seconds": 0}))
    try:
        due = datetime.now(UTC) + timedelta(seconds=2)
        row, _ = await JobService(api_stores, registry).create(
            JobCreate(job_type="record", payload={}, scheduled_at=due))
    finally:
        await api_stores.close()
    assert row["status"] == "PENDING"
    await start_worker()
    summary = await tick(stores, registry)  # lookahead 90 s: moves it to the delayed set
    assert summary["promoted"] == 1
    assert await stores.redis.zscore(stores.queue().k_delayed, str(row["id"])) is not None

    async def started():
        return await db.fetchval("SELECT started_at FROM runs WHERE job_id = $1", row["id"])

    started_at = await eventually(started, timeout=10, what="the scheduled job to start")
    lateness = (started_at - due).total_seconds()
    assert 0 <= lateness < 1.0, f"started {lateness:+.3f} s from its time"


async def test_job_due_within_lookahead_skips_the_tick(service, db, start_worker):
    due = datetime.now(UTC) + timedelta(seconds=1)
    row, _ = await service.create(JobCreate(job_type="record", payload={}, scheduled_at=due))
    assert row["status"] == "QUEUED"  # straight into Redis's delayed set
    await start_worker()

    async def started():
        return await db.fetchval("SELECT started_at FROM runs WHERE job_id = $1", row["id"])

    started_at = await eventually(started, timeout=10, what="the scheduled job to start")
    assert 0 <= (started_at - due).total_seconds() < 1.0


async def test_job_scheduled_in_the_past_runs_now(service, store, start_worker):
    row, _ = await service.create(JobCreate(
        job_type="noop", payload={}, scheduled_at=datetime.now(UTC) - timedelta(hours=1)))
    assert row["status"] == "QUEUED"
    await start_worker()

    async def completed():
        return (await store.get(row["id"]))["status"] == "COMPLETED"

    await eventually(completed, what="past-due job completed")


async def test_far_future_job_stays_pending_through_a_tick(service, stores, registry, store):
    row, _ = await service.create(JobCreate(
        job_type="noop", payload={}, scheduled_at=datetime.now(UTC) + timedelta(hours=2)))
    summary = await tick(stores, registry)
    assert summary["promoted"] == 0
    assert (await store.get(row["id"]))["status"] == "PENDING"
