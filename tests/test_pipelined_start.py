"""The pipelined start: a handler runs while its start's commit is in flight, and an
attempt whose start never commits writes nothing; its job runs again (at least once).

A start's commit is made to fail the way PostgreSQL fails a commit, with a deferred
constraint trigger: the UPDATE succeeds (the worker gets its rows and starts the
handler), the check runs at COMMIT and refuses it, and the transaction rolls back.
"""

from __future__ import annotations

import asyncio

from shared.api_schemas import JobCreate
from tests.support.waits import eventually

REFUSE_DDL = [
    "CREATE TABLE refuse_start (job_id uuid PRIMARY KEY)",
    """CREATE FUNCTION refuse_marked_start() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF EXISTS (SELECT 1 FROM refuse_start WHERE job_id = NEW.id) THEN
           RAISE EXCEPTION 'start of % refused at commit', NEW.id;
         END IF;
         RETURN NULL;
       END $$""",
    """CREATE CONSTRAINT TRIGGER refuse_marked_start AFTER UPDATE ON jobs
       DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
       WHEN (NEW.status = 'PROCESSING') EXECUTE FUNCTION refuse_marked_start()""",
]


async def test_a_start_that_does_not_commit_writes_nothing_and_runs_again(
        service, store, db, start_worker):
    for ddl in REFUSE_DDL:
        await db.execute(ddl)
    row, _ = await service.create(JobCreate(job_type="record", payload={"seconds": 1.0}))
    await db.execute("INSERT INTO refuse_start VALUES ($1)", row["id"])
    await start_worker(lease_seconds=1.0, reap_interval_seconds=0.2)

    async def handler_started() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1",
                                      row["id"]))

    # The handler ran before the commit was refused: the start was pipelined.
    await eventually(handler_started, timeout=10, what="the handler to start")

    async def abandoned() -> bool:  # the refused start left the row as it was
        r = await store.get(row["id"])
        return r["status"] == "QUEUED" and r["attempts"] == 0

    await eventually(abandoned, timeout=5, what="the refused start to roll back")
    # The outcome of the attempt was never written (it would need the start's token).
    assert (await store.get(row["id"]))["result"] is None

    await db.execute("DELETE FROM refuse_start")

    async def completed():
        r = await store.get(row["id"])
        return r if r["status"] == "COMPLETED" else None

    final = await eventually(completed, timeout=20, what="the job to run again and finish")
    assert final["attempts"] == 1  # the refused start did not spend an attempt
    runs = await db.fetch("SELECT attempt FROM runs WHERE job_id = $1", row["id"])
    # Two runs under attempt number 1: the first start never became durable, so its
    # number was never a token anything was written under, and it is used again.
    assert len(runs) >= 2 and {r["attempt"] for r in runs} == {1}


STALL_DDL = [
    # Every start's COMMIT waits for advisory lock 4242 (shared) while the test holds it.
    """CREATE FUNCTION stall_start() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         PERFORM pg_advisory_xact_lock_shared(4242);
         RETURN NULL;
       END $$""",
    """CREATE CONSTRAINT TRIGGER stall_start AFTER UPDATE ON jobs
       DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
       WHEN (NEW.status = 'PROCESSING') EXECUTE FUNCTION stall_start()""",
]


async def test_while_starts_cannot_commit_the_worker_runs_at_most_twice_its_slots(
        service, store, db, start_worker):
    """A handler frees its slot when it returns, before its start and outcome commit; if
    the commits stall (PostgreSQL slow or unreachable), the worker must not go on running
    the whole queue under starts that may never become durable (each such job runs
    again later). It holds at most twice its concurrency of unsettled attempts."""
    for ddl in STALL_DDL:
        await db.execute(ddl)
    jobs = [JobCreate(job_type="record", payload={"seconds": 0}) for _ in range(40)]
    for job in jobs:
        await service.create(job)
    await db.execute("SELECT pg_advisory_lock(4242)")
    try:
        await start_worker(worker_concurrency=2)

        async def ran(n: int) -> bool:
            return await db.fetchval("SELECT count(*) FROM runs") >= n

        await eventually(lambda: ran(4), timeout=10, what="4 handlers (2 slots x 2)")
        # Nothing more may happen while the commits stall: without the bound the worker
        # went on as far as its connections could hold start transactions open (6 runs
        # here; hundreds at concurrency 100). A window is the only way to see that
        # something does not happen.
        await asyncio.sleep(1.0)
        assert await db.fetchval("SELECT count(*) FROM runs") == 4
    finally:
        await db.execute("SELECT pg_advisory_unlock(4242)")

    async def all_completed() -> bool:
        return await db.fetchval(
            "SELECT count(*) FROM jobs WHERE status = 'COMPLETED'") == 40

    await eventually(all_completed, timeout=30, what="every job once the commits go through")
