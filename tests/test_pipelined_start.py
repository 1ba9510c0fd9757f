"""The pipelined start: a handler runs while its start's commit is in flight, and an
attempt whose start never commits writes nothing; its job runs again (at least once).

A start's commit is made to fail the way PostgreSQL fails a commit, with a deferred
constraint trigger: the UPDATE succeeds (the worker gets its rows and starts the
handler), the check runs at COMMIT and refuses it, and the transaction rolls back.
"""

from __future__ import annotations

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
