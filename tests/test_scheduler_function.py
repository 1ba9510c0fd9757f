"""The scheduler function: the EventBridge event as SAM generates it, a summary back, and
safety when invocations overlap (EventBridge delivers at least once per tick)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from functions.scheduler.tick import tick
from shared.api_schemas import JobCreate
from shared.connections import Stores
from shared.core.lifecycle import Lifecycle
from shared.core.service import JobService
from shared.maintenance.promote import promote

EVENT = Path(__file__).parent / "events" / "scheduled-event.json"


async def _pending(settings, registry, n, seconds_ahead=60.0):
    """n PENDING jobs due within the tick's lookahead (created with lookahead 0)."""
    stores = Stores(settings.model_copy(update={"schedule_lookahead_seconds": 0}))
    try:
        due = datetime.now(UTC) + timedelta(seconds=seconds_ahead)
        rows, _ = await JobService(stores, registry).create_many(
            [JobCreate(job_type="noop", payload={"tag": str(i)}, scheduled_at=due)
             for i in range(n)])
    finally:
        await stores.close()
    assert all(r["status"] == "PENDING" for r in rows)
    return rows


async def _invoke(spawn, *events):
    proc = await spawn("-m", "tests.support.invoke", "functions.scheduler.handler:handler",
                       *map(str, events))
    assert await asyncio.wait_for(proc.wait(), 60) == 0, proc.log_path.read_text()
    lines = proc.log_path.read_text().splitlines()
    return [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]


async def _promotions_per_job(db):
    return await db.fetch(
        "SELECT job_id, count(*) AS n FROM job_transitions "
        "WHERE from_status = 'PENDING' AND to_status = 'QUEUED' GROUP BY job_id")


async def test_handler_takes_the_sam_scheduled_event_and_returns_a_summary(
        settings, registry, stores, spawn):
    rows = await _pending(settings, registry, 3)
    [summary] = await _invoke(spawn, EVENT)
    assert summary["skipped"] is False
    assert summary["promoted"] == 3
    assert summary["event_id"] == "cdc73f9d-aea9-11e3-9d5a-835b769c0d9c"
    for key in ("recovered", "dead_lettered", "reconciled_ready", "leases_restored", "depth"):
        assert key in summary
    assert summary["depth"]["default"]["delayed"] == 3
    delayed = await stores.redis.zrange(stores.queue().k_delayed, 0, -1)
    assert sorted(delayed) == sorted(str(r["id"]) for r in rows)


async def test_handler_refuses_an_event_that_is_not_from_eventbridge(spawn, tmp_path):
    bogus = tmp_path / "bogus.json"
    bogus.write_text(json.dumps({"hello": "world"}))
    proc = await spawn("-m", "tests.support.invoke", "functions.scheduler.handler:handler",
                       str(bogus))
    assert await asyncio.wait_for(proc.wait(), 60) != 0
    assert "ValidationError" in proc.log_path.read_text()


async def test_two_invocations_at_once_enqueue_no_job_twice(settings, registry, stores, db,
                                                            spawn):
    await _pending(settings, registry, 500)
    first, second = await asyncio.gather(_invoke(spawn, EVENT), _invoke(spawn, EVENT))
    # Either both ran (SKIP LOCKED split the work) or one found the other's lock and skipped.
    assert first[0].get("promoted", 0) + second[0].get("promoted", 0) == 500
    promotions = await _promotions_per_job(db)
    assert len(promotions) == 500 and all(p["n"] == 1 for p in promotions)
    assert await stores.redis.zcard(stores.queue().k_delayed) == 500


async def test_overlapping_ticks_in_flight_together(settings, registry, db):
    await _pending(settings, registry, 300)
    a, b = Stores(settings), Stores(settings)
    try:
        results = await asyncio.gather(tick(a, registry), tick(b, registry))
    finally:
        await a.close()
        await b.close()
    assert sum(r.get("promoted", 0) for r in results) == 300
    promotions = await _promotions_per_job(db)
    assert len(promotions) == 300 and all(p["n"] == 1 for p in promotions)


async def test_promotion_alone_is_safe_to_run_concurrently(settings, registry, db):
    """Without the tick's lock, SKIP LOCKED still splits the work instead of doubling it."""
    await _pending(settings, registry, 400)
    a, b = Stores(settings), Stores(settings)
    try:
        counts = await asyncio.gather(
            promote(Lifecycle(await a.store(), a.queue), 90, batch=50),
            promote(Lifecycle(await b.store(), b.queue), 90, batch=50))
        assert sum(c.promoted for c in counts) == 400
        assert await a.redis.zcard(a.queue().k_delayed) == 400
    finally:
        await a.close()
        await b.close()
    promotions = await _promotions_per_job(db)
    assert len(promotions) == 400 and all(p["n"] == 1 for p in promotions)


async def test_tick_recovers_the_leases_of_a_dead_worker(service, stores, registry, store):
    row, _ = await service.create(JobCreate(job_type="noop", payload={}))
    queue = stores.queue()
    claimed, _ = await queue.claim(1, 0.05, registry.limits())  # a worker that then dies
    await store.claim([row["id"]], "dead-worker")
    assert claimed[0][0] == str(row["id"])
    await asyncio.sleep(0.1)  # let the 50 ms lease lapse (the condition under test)
    summary = await tick(stores, registry)
    assert summary["recovered"] == 1
    back = await store.get(row["id"])
    assert (back["status"], back["attempts"]) == ("QUEUED", 1)
    assert await stores.redis.zscore(queue.ready_key("noop"), str(row["id"])) is not None
