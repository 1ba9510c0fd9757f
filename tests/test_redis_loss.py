"""Redis is derived state: after FLUSHALL the next scheduler tick rebuilds it from
PostgreSQL, and every job still runs exactly once. (A private redis-server, so the
FLUSHALL touches nobody else's keys.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from functions.scheduler.tick import tick
from shared.api_schemas import JobCreate
from shared.connections import Stores
from shared.core.service import JobService
from tests.support.servers import RedisServer
from tests.support.waits import eventually


@pytest.fixture
async def private(settings) -> AsyncIterator[tuple[Stores, object]]:
    server = RedisServer()
    s = settings.model_copy(update={"redis_url": server.url})
    stores = Stores(s)
    try:
        yield stores, s
    finally:
        await stores.close()
        server.stop()


async def _exactly_once(db, n):
    async def all_done():
        return await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'COMPLETED'") == n

    await eventually(all_done, timeout=30, what=f"{n} jobs completed")
    dupes = await db.fetchval(
        "SELECT count(*) FROM (SELECT job_id FROM runs GROUP BY job_id HAVING count(*) > 1) d")
    assert dupes == 0
    assert await db.fetchval("SELECT count(DISTINCT job_id) FROM runs") == n


async def test_flushall_with_100_queued_jobs_loses_nothing(private, registry, db,
                                                           start_worker):
    stores, s = private
    service = JobService(stores, registry)
    specs = [JobCreate(job_type="record", payload={"tag": str(i)}, priority=1 + i % 10)
             for i in range(100)]
    await service.create_many(specs)
    assert sum((await stores.queue().depth())["ready_by_priority"].values()) == 100
    await stores.redis.flushall()
    assert sum((await stores.queue().depth())["ready_by_priority"].values()) == 0

    summary = await tick(stores, registry)
    assert summary["reconciled_ready"] == 100
    await start_worker(redis_url=s.redis_url, worker_concurrency=10)
    await _exactly_once(db, 100)


async def test_flushall_mid_drain_then_tick_runs_each_job_exactly_once(private, registry, db,
                                                                       start_worker):
    stores, s = private
    service = JobService(stores, registry)
    await service.create_many([JobCreate(job_type="record", payload={"seconds": 0.05})
                               for _ in range(100)])
    await start_worker(redis_url=s.redis_url, worker_concurrency=4)

    async def some_ran():
        return await db.fetchval("SELECT count(*) FROM runs") >= 10

    await eventually(some_ran, what="the drain to start")
    await stores.redis.flushall()  # ready jobs, leases, locks: all gone
    await tick(stores, registry)
    await _exactly_once(db, 100)
