"""The settler's group commit with two commits in flight (the worker's choice from
concurrency 20 up): a batch of outcomes waits for its own commit only, not for another
batch's. One batch is held at its UPDATE by a row lock the test takes; an outcome
submitted meanwhile must commit while the first batch still waits."""

from __future__ import annotations

import asyncio

from shared.api_schemas import JobCreate
from shared.core.lifecycle import Lifecycle, Outcome
from tests.support.waits import eventually


async def test_a_batch_commits_while_another_batch_waits_for_its_commit(
        service, store, db, stores, settings):
    from worker.settler import Settler

    first, _ = await service.create(JobCreate(job_type="record", payload={"seconds": 0}))
    second, _ = await service.create(JobCreate(job_type="record", payload={"seconds": 0}))
    started = await store.claim([first["id"], second["id"]], "w-test")
    assert len(started) == 2  # both PROCESSING under attempt 1
    settler = Settler(Lifecycle(store, stores.queue), stores.queue(settings.queue),
                      commits_max=2)
    settler.start()
    locker = await db.acquire()
    tr = locker.transaction()
    await tr.start()
    held = None
    try:
        await locker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", first["id"])
        held = asyncio.create_task(settler.submit(Outcome.completed(first["id"], 1)))

        async def first_waits_on_the_lock() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> $1",
                locker.get_server_pid()))

        await eventually(first_waits_on_the_lock, timeout=10,
                         what="the first batch's UPDATE to wait for the row lock")
        # With one commit at a time this would wait behind the first batch.
        status = await asyncio.wait_for(
            settler.submit(Outcome.completed(second["id"], 1)), timeout=10)
        assert status == "COMPLETED"
        assert not held.done()
        assert (await store.get(first["id"]))["status"] == "PROCESSING"
    finally:
        await tr.rollback()
        await db.release(locker)
    try:
        assert await asyncio.wait_for(held, timeout=10) == "COMPLETED"
        assert (await store.get(first["id"]))["status"] == "COMPLETED"
    finally:
        await settler.stop()
