"""Leases: a long job keeps its lease by heartbeat; only a silent worker loses it."""

from __future__ import annotations

from shared.api_schemas import JobCreate
from tests.support.waits import eventually


async def test_heartbeat_keeps_a_job_longer_than_its_lease(service, store, db, start_worker):
    row, _ = await service.create(JobCreate(job_type="record", payload={"seconds": 3}))
    # lease 1 s, heartbeat every 0.33 s, reapers every 0.2 s on two workers
    await start_worker(lease_seconds=1.0, reap_interval_seconds=0.2)
    await start_worker(lease_seconds=1.0, reap_interval_seconds=0.2)

    async def completed():
        r = await store.get(row["id"])
        return r if r["status"] == "COMPLETED" else None

    final = await eventually(completed, timeout=20, what="completion")
    assert final["attempts"] == 1
    assert await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1", row["id"]) == 1
