"""Real worker processes: killed with SIGKILL mid-job, stopped with SIGTERM mid-job."""

from __future__ import annotations

import asyncio
import signal

from shared.api_schemas import JobCreate
from tests.support.waits import eventually


async def _runs(db, job_id):
    return await db.fetch("SELECT attempt, worker, at FROM runs WHERE job_id = $1 ORDER BY at",
                          job_id)


async def test_job_survives_worker_kill(service, store, db, spawn, start_worker):
    row, _ = await service.create(JobCreate(job_type="record", payload={"seconds": 2}))
    victim = await spawn("-m", "worker", worker_concurrency=1, lease_seconds=1.5,
                         worker_id="victim")

    async def started():
        return await _runs(db, row["id"])

    await eventually(started, timeout=20, what="the victim to start the job")
    victim.kill()  # SIGKILL: no drain, no release, the lease just stops being renewed
    await victim.wait()
    assert (await store.get(row["id"]))["status"] == "PROCESSING"

    await start_worker(worker_id="rescuer")

    async def completed():
        r = await store.get(row["id"])
        return r if r["status"] == "COMPLETED" else None

    final = await eventually(completed, timeout=20, what="another worker to complete it")
    assert final["attempts"] == 2  # the killed attempt counts
    runs = await _runs(db, row["id"])
    assert [(r["attempt"], r["worker"]) for r in runs] == [(1, "victim"), (2, "rescuer")]
    history = [(h["from_status"], h["to_status"], h["reason"])
               for h in await store.history(row["id"])]
    assert ("PROCESSING", "QUEUED", "lease expired") in history
    assert history[-1][:2] == ("PROCESSING", "COMPLETED")


async def _sigterm_mid_job(service, db, spawn, payload, grace):
    """Start a job in a worker process, SIGTERM it mid-job, wait for a clean exit."""
    row, _ = await service.create(JobCreate(job_type="record", payload=payload))
    proc = await spawn("-m", "worker", shutdown_grace_seconds=grace)

    async def started():
        return await _runs(db, row["id"])

    await eventually(started, timeout=20, what="the job to start")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    return row


async def test_sigterm_lets_a_short_job_finish_within_the_grace(service, store, db, spawn):
    row = await _sigterm_mid_job(service, db, spawn, {"seconds": 1}, grace=10)
    final = await store.get(row["id"])
    assert (final["status"], final["attempts"]) == ("COMPLETED", 1)


async def test_sigterm_returns_a_long_job_to_the_queue_without_spending_an_attempt(
        service, store, db, spawn, start_worker):
    row = await _sigterm_mid_job(service, db, spawn, {"seconds": 30, "tag": "long"}, grace=0.5)
    back = await store.get(row["id"])
    assert (back["status"], back["attempts"]) == ("QUEUED", 0)
    history = [(h["from_status"], h["to_status"]) for h in await store.history(row["id"])]
    assert history[-1] == ("PROCESSING", "QUEUED")

    # Still queued in Redis: the next worker picks it up as attempt 1 again.
    await db.execute("UPDATE jobs SET payload = '{\"seconds\": 0}'::jsonb WHERE id = $1",
                     row["id"])
    await start_worker()

    async def completed():
        r = await store.get(row["id"])
        return r if r["status"] == "COMPLETED" else None

    final = await eventually(completed, what="the next worker to finish it")
    assert final["attempts"] == 1
