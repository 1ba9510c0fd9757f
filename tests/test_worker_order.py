"""Strict priority across job types, FIFO within a priority, one slot at a time."""

from __future__ import annotations

import itertools

from shared.api_schemas import JobCreate
from tests.support.waits import eventually


async def test_mixed_priorities_run_highest_first_and_fifo_within(service, db, start_worker):
    priorities = [5, 1, 10, 3, 5, 1, 7, 3, 10, 2, 5, 1, 9, 4, 6, 2, 8, 3, 5, 1]
    created = []
    for i, p in enumerate(priorities):
        job_type = "record" if i % 2 else "flaky"  # two types: the order holds across types
        payload = {"tag": str(i)} if job_type == "record" else {"fail_times": 0}
        row, _ = await service.create(JobCreate(job_type=job_type, payload=payload, priority=p))
        created.append((p, i, row["id"]))
    await start_worker(worker_concurrency=1)

    async def all_ran():
        return await db.fetchval("SELECT count(*) FROM runs") == len(priorities)

    await eventually(all_ran, what="20 jobs to run")
    order = [r["job_id"] for r in await db.fetch("SELECT job_id FROM runs ORDER BY at")]
    expected = [job_id for _, _, job_id in sorted(created, key=lambda c: (c[0], c[1]))]
    assert order == expected


async def test_one_slot_never_runs_two_jobs_at_once(service, db, start_worker):
    for i in range(6):
        await service.create(JobCreate(job_type="record", payload={"seconds": 0.05,
                                                                   "tag": str(i)}))
    await start_worker(worker_concurrency=1)

    async def done():
        return await db.fetchval(
            "SELECT count(*) FROM jobs WHERE status = 'COMPLETED'") == 6

    await eventually(done, what="6 jobs completed")
    # handler spans (a finished job's outcome may still be committing as the next starts)
    spans = await db.fetch("SELECT started_at, ended_at FROM runs ORDER BY started_at")
    assert len(spans) == 6
    for before, after in itertools.pairwise(spans):
        assert before["ended_at"] <= after["started_at"]
