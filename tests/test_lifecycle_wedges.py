"""Nothing wedges the system: the findings of a fault-injection run and a bad-input audit
(issue 8), one regression test each, and a storm of cancels around the start of jobs.

A wedge is a slot, a lease, a lock or an outcome that nothing gives back: a job left
PROCESSING for ever, a worker running fewer jobs than its concurrency, a scheduler that
skips its ticks.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from functions.scheduler.tick import LOCK_NAME, tick
from shared.api_schemas import JobCreate
from shared.connections import Stores
from shared.core.service import JobService
from shared.queue.locks import Redlock
from shared.store import migrate
from shared.store.api_keys import new_key
from tests.conftest import WorkerHandle, drop_namespace, make_settings
from tests.support.servers import PostgresServer, redis_servers
from tests.support.waits import eventually

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/api/v1"


async def _status(store: Any, job_id: Any) -> str:
    return str((await store.get(job_id))["status"])


# --- 1. a job scheduled at year 1 -------------------------------------------------------------


@pytest.mark.parametrize("when", [
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "1969-12-31T23:59:59Z",
    (datetime.now(UTC) + timedelta(days=3700)).isoformat(), 0, 1767225600, 1.5, True])
async def test_scheduled_at_outside_its_window_is_refused_with_the_window(api, when):
    r = await api.post(f"{PREFIX}/jobs", json={"job_type": "noop", "scheduled_at": when})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["details"][0]["loc"] == ["body", "scheduled_at"]
    if isinstance(when, str):  # a string in the wrong years: the message says the window
        assert "1970" in error["message"] and "10 years" in error["message"]
    assert (await api.get(f"{PREFIX}/jobs")).json()["items"] == []  # nothing written


async def test_timeout_below_one_second_is_refused(api):
    r = await api.post(f"{PREFIX}/jobs", json={"job_type": "noop", "timeout_seconds": 0.5})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == [
        "body", "timeout_seconds"]


async def test_rows_holding_infinite_times_run_and_the_tick_survives_them(
        service, store, db, stores, registry, start_worker):
    """Rows written before the bound existed: asyncpg reads -infinity as a naive
    datetime.min, which once broke the worker's wait metric and every tick."""
    a, _ = await service.create(JobCreate(job_type="noop", payload={}))
    b, _ = await service.create(JobCreate(job_type="noop", payload={}))
    await db.execute("UPDATE jobs SET scheduled_at = '-infinity' WHERE id = $1", a["id"])
    await db.execute("UPDATE jobs SET run_at = '-infinity' WHERE id = $1", b["id"])
    await stores.redis.flushdb()  # the tick must re-place b from its row
    summary = await tick(stores, registry)
    assert summary["skipped"] is False and summary["reconciled_ready"] == 2
    await start_worker()
    for job in (a, b):
        await eventually(lambda j=job: _is(store, j["id"], "COMPLETED"), what="completed")


async def _is(store: Any, job_id: Any, status: str) -> bool:
    return await _status(store, job_id) == status


async def test_an_error_outside_the_handler_settles_the_attempt(service, store, db,
                                                                start_worker):
    row, _ = await service.create(JobCreate(job_type="doomed", payload={}))
    # The worker parses the stored payload with a model that now raises a TypeError,
    # outside the handler's own guard.
    await db.execute("""UPDATE jobs SET payload = '{"boom_in_worker": true}' WHERE id = $1""",
                     row["id"])
    handle = await start_worker(worker_concurrency=1)
    await eventually(lambda: _is(store, row["id"], "FAILED"), what="dead-lettered")
    job = await store.get(row["id"])
    assert job["attempts"] == 2 and "worker error: TypeError" in job["last_error"]
    probe, _ = await service.create(JobCreate(job_type="noop", payload={}))
    await eventually(lambda: _is(store, probe["id"], "COMPLETED"), what="the slot to work")
    await eventually(lambda: _free(handle.worker), what="every slot back")


async def _free(worker: Any) -> bool:
    return worker.slots.used == 0 and not worker.running


# --- 2. cancels racing starts ------------------------------------------------------------------


# 8: pipelined starts, one settle commit at a time; 32: starts committed in their one
# statement, two settle commits at once (``worker.pool``: from 20 slots up).
@pytest.mark.parametrize("concurrency", [8, 32])
async def test_cancels_at_random_moments_around_start_leave_no_slot_behind(
        service, store, db, start_worker, concurrency):
    batches, per_batch = 40, 50  # 2,000 jobs, each cancelled once
    handle = await start_worker(worker_concurrency=concurrency)
    rng = random.Random(8)
    answers: dict[uuid.UUID, str] = {}
    gate = asyncio.Semaphore(16)

    async def cancel_later(job_id: uuid.UUID, delay: float) -> None:
        await asyncio.sleep(delay)
        async with gate:
            try:
                answers[job_id] = (await service.cancel(job_id))[0]
            except Exception as exc:  # 409: it finished first
                answers[job_id] = type(exc).__name__

    cancels = []
    for _ in range(batches):
        rows, _ = await service.create_many([
            JobCreate(job_type="record", payload={"seconds": rng.choice([0, 0.002, 0.01])})
            for _ in range(per_batch)])
        cancels += [asyncio.create_task(cancel_later(r["id"], rng.uniform(0, 0.008)))
                    for r in rows]
        await asyncio.sleep(0.01)
    await asyncio.gather(*cancels)
    ids = list(answers)

    async def all_ended() -> bool:
        n = await db.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND "
                              "status IN ('COMPLETED', 'CANCELLED')", ids)
        return bool(n == len(ids))

    await eventually(all_ended, timeout=60, what="every job to end")
    final = {r["id"]: r["status"] for r in await db.fetch(
        "SELECT id, status FROM jobs WHERE id = ANY($1::uuid[])", ids)}
    accepted = [i for i, a in answers.items() if a in ("cancelled", "requested")]
    assert len(accepted) > 1000  # most cancels land while the job waits or runs
    assert sum(1 for a in answers.values() if a == "requested") > 0  # some while running
    assert [i for i in accepted if final[i] != "CANCELLED"] == []
    assert all(final[i] == "COMPLETED" for i, a in answers.items() if a == "Conflict")
    assert await db.fetchval(
        "SELECT count(*) FROM job_transitions WHERE reason = 'lease expired'") == 0
    await eventually(lambda: _free(handle.worker), what="every slot back")

    # The worker still runs `concurrency` jobs at once.
    rows, _ = await service.create_many([JobCreate(job_type="record", payload={
        "seconds": 1.0, "tag": "after"}) for _ in range(concurrency)])
    await eventually(lambda: _all(store, rows, "COMPLETED"), timeout=30, what="the probes")
    overlap = await db.fetchval("""
        SELECT max(n) FROM (SELECT (SELECT count(*) FROM runs o WHERE o.tag = 'after'
                                    AND o.started_at <= r.started_at
                                    AND o.ended_at > r.started_at) AS n
                            FROM runs r WHERE r.tag = 'after') s""")
    assert overlap == concurrency


async def _all(store: Any, rows: list[Any], status: str) -> bool:
    return all([await _is(store, r["id"], status) for r in rows])


# --- 3. a tick that fails on PostgreSQL ---------------------------------------------------------


async def test_a_tick_failing_on_postgres_does_not_block_the_next(namespace, registry):
    pg = PostgresServer()
    settings = make_settings(namespace, namespace, database_url=pg.url,
                             scheduler_tick_seconds=60.0)
    stores = Stores(settings)
    try:
        await asyncio.to_thread(migrate.upgrade, pg.url, namespace)
        assert (await tick(stores, registry))["skipped"] is False
        pg.stop("immediate")  # PostgreSQL goes away between ticks, mid-restart
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await tick(stores, registry)
        lock = Redlock([stores.redis], f"{settings.redis_prefix}:{settings.db_schema}")
        assert await stores.redis.exists(lock.key(LOCK_NAME)) == 0  # released, not leaked
        pg.start()
        service = JobService(stores, registry)
        due = datetime.now(UTC) + timedelta(seconds=settings.schedule_lookahead_seconds + 30)

        async def create_and_tick() -> dict[str, Any] | None:
            try:  # the pool notices the restart on its first use
                await service.create(JobCreate(job_type="noop", payload={}, scheduled_at=due))
                return await tick(stores, registry)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return None

        # The next tick runs as soon as PostgreSQL is back: well within one tick interval.
        summary = await eventually(create_and_tick, timeout=10, what="a tick")
        assert summary is not None and summary["skipped"] is False
    finally:
        await stores.close()
        pg.remove()
        await drop_namespace(namespace)


# --- 4. outcomes while Redis is down ---------------------------------------------------------


async def test_outcomes_reach_postgres_within_a_second_while_redis_is_down(settings, registry,
                                                                           db):
    with redis_servers(1) as (node,):
        private = settings.model_copy(update={"redis_url": node.url})
        stores = Stores(private)
        service = JobService(stores, registry)
        handle = None
        try:
            await service.create_many([JobCreate(
                job_type="record", payload={"seconds": 1.0}) for _ in range(6)])
            handle = WorkerHandle(private.model_copy(update={"worker_id": "w-redis-down"}),
                                  registry)

            async def all_running() -> bool:
                return bool(await db.fetchval("SELECT count(*) FROM runs") == 6)

            await eventually(all_running, what="the jobs to start")
            node.stop()  # Redis goes away while the handlers still run

            async def all_written() -> bool:
                return bool(await db.fetchval(
                    "SELECT count(*) FROM jobs WHERE status = 'COMPLETED'") == 6)

            await eventually(all_written, timeout=10, what="the outcomes in PostgreSQL")
            lag = await db.fetchval("""
                SELECT max(extract(epoch FROM j.finished_at - r.ended_at))
                FROM jobs j JOIN runs r ON r.job_id = j.id""")
            assert lag < 1.0, f"outcomes reached PostgreSQL {lag:.2f} s after the handlers"
        finally:
            if handle is not None:
                await asyncio.wait_for(handle.stop(), 40)  # a drain with Redis down ends
            await stores.close()


# --- 5. a cancel that lands before a permanent failure --------------------------------------


async def test_an_accepted_cancel_ends_cancelled_when_the_attempt_then_fails(
        service, store, db, start_worker):
    row, _ = await service.create(JobCreate(job_type="doomed", payload={"seconds": 0.5}))
    await start_worker()

    async def running() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1",
                                      row["id"]))

    await eventually(running, what="the job to start")
    # Accepted in PostgreSQL, while the worker's message is lost: the attempt goes on and
    # fails permanently. The job must still end CANCELLED, not in the dead letter queue.
    outcome, _ = await store.cancel(row["id"], "cancelled by request")
    assert outcome == "requested"
    await eventually(lambda: _ended(store, row["id"]), what="the job to end")
    assert await _status(store, row["id"]) == "CANCELLED"
    assert await service.redrive() == []  # nothing for a redrive-all to run again
    assert await _status(store, row["id"]) == "CANCELLED"


async def _ended(store: Any, job_id: Any) -> bool:
    return await _status(store, job_id) in ("COMPLETED", "FAILED", "CANCELLED")


# --- 6. store start-up errors and deep payloads -------------------------------------------------


async def test_postgres_starting_up_is_a_503(namespace):
    from functions.api.app import create_app

    pg = PostgresServer(standby=True)  # answers every connection with SQLSTATE 57P03
    app = create_app(make_settings(namespace, namespace, database_url=pg.url,
                                   db_connect_timeout=2.0))
    try:
        # Any well-formed key: checking it is the first query, and it meets the same 503.
        key = {"Authorization": f"Bearer {new_key()}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api", headers=key) as client:
            for r in (await client.get(f"{PREFIX}/jobs/{uuid.uuid4()}"),
                      await client.post(f"{PREFIX}/jobs", json={"job_type": "noop"})):
                assert r.status_code == 503, r.text
                assert r.json()["error"]["details"][0]["loc"] == ["postgres"]
    finally:
        await app.state.stores.close()
        pg.remove()
        await drop_namespace(namespace)


def _nested(depth: int) -> dict[str, Any]:
    """A payload ``depth`` objects deep (the payload itself is the first)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


@pytest.mark.parametrize(("depth", "status"), [(64, 201), (65, 422), (300, 422), (900, 422)])
async def test_payload_nesting_is_bounded(api, depth, status):
    r = await api.post(f"{PREFIX}/jobs", json={"job_type": "noop", "payload": _nested(depth)})
    assert r.status_code == status, r.text[:300]
    if status == 422:
        assert "64 levels" in r.json()["error"]["message"]


# --- 7. the documents say what the code does -----------------------------------------------------


def test_documents_describe_the_tick_lock_as_it_is():
    texts = {name: (ROOT / name).read_text() for name in (
        "README.md", "shared/store/jobs.py", "functions/scheduler/tick.py")}
    for name, text in texts.items():
        assert not re.search(r"under a PostgreSQL advisory lock|holds its advisory lock",
                             text), name
    assert "DESIGN.md" not in texts["functions/scheduler/tick.py"]
    assert "lock in Redis" in texts["README.md"] or "Redis lock" in texts["README.md"]

