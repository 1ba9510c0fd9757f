"""Retention deletes exactly the finished jobs past their age, with their history, and the
counts behind /jobs/stats stay exact through every transition without scanning the table."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from functions.scheduler.tick import tick
from shared.api_schemas import JobCreate
from shared.core.lifecycle import Outcome
from shared.maintenance.retention import delete_expired
from shared.registry import Registry
from tests.support.waits import eventually

DAY = 86400.0


async def _finished(service: Any, store: Any, db: Any, job_type: str, outcome: str,
                    age_days: float, *, key: str | None = None) -> uuid.UUID:
    """A job driven through real transitions to ``outcome``, finished ``age_days`` ago."""
    row, _ = await service.create(JobCreate(job_type=job_type, payload={}), key)
    if outcome == "CANCELLED":
        await service.cancel(row["id"])
    else:
        await store.claim([row["id"]], "w")
        end = (Outcome.completed(row["id"], 1) if outcome == "COMPLETED" else
               Outcome.after_failure(row["id"], 1, 0, "boom", permanent=True))
        await store.settle([end])
    at = datetime.now(UTC) - timedelta(days=age_days)
    await db.execute("UPDATE jobs SET finished_at = $2, created_at = $2 WHERE id = $1",
                     row["id"], at)
    return uuid.UUID(str(row["id"]))


async def _left(db: Any, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await db.fetch("SELECT id FROM jobs WHERE id = ANY($1::uuid[])", ids)
    return {r["id"] for r in rows}


async def _exact(db: Any) -> dict[tuple[str, str], tuple[int, int]]:
    rows = await db.fetch("SELECT job_type, status, count(*) AS n, "
                          "sum(greatest(attempts - 1, 0)) AS r FROM jobs GROUP BY 1, 2")
    return {(r["job_type"], r["status"]): (r["n"], r["r"]) for r in rows}


async def _counted(store: Any) -> dict[str, int]:
    return {k: v for k, v in (await store.stats())["by_status"].items() if v}


async def test_retention_deletes_exactly_what_is_due_with_its_history(
        service, store, db, settings, registry):
    f = _finished
    gone = [await f(service, store, db, "record", "COMPLETED", 8),
            await f(service, store, db, "record", "CANCELLED", 8),
            await f(service, store, db, "record", "FAILED", 31),
            await f(service, store, db, "noop", "COMPLETED", 2)]  # its type keeps a day
    kept = [await f(service, store, db, "record", "COMPLETED", 6),
            await f(service, store, db, "record", "CANCELLED", 6),
            await f(service, store, db, "record", "FAILED", 29),
            await f(service, store, db, "noop", "FAILED", 29),  # only COMPLETED overridden
            # an idempotency key inside its window keeps its job past retention
            await f(service, store, db, "record", "COMPLETED", 8, key="retried-later")]
    await db.execute("UPDATE jobs SET created_at = now() WHERE idempotency_key IS NOT NULL")
    waiting, _ = await service.create(JobCreate(job_type="record", payload={}))
    await db.execute("UPDATE jobs SET created_at = now() - interval '90 days' WHERE id = $1",
                     waiting["id"])  # old but not finished: never deleted
    types = Registry()
    for jt in registry.all():
        types.add(dataclasses.replace(jt, retention={"COMPLETED": DAY})
                  if jt.name == "noop" else jt)
    history_before = await db.fetchval("SELECT count(*) FROM job_transitions")

    deleted = await delete_expired(store, settings, types)

    assert deleted.by_status == {"COMPLETED": 2, "CANCELLED": 1, "FAILED": 1}
    assert await _left(db, gone) == set()
    assert await _left(db, kept) == set(kept)
    assert await store.get(waiting["id"]) is not None
    assert await db.fetchval("SELECT count(*) FROM job_transitions WHERE job_id = ANY($1)",
                             gone) == 0
    assert await db.fetchval("SELECT count(*) FROM job_transitions WHERE job_id = ANY($1)",
                             kept) > 0
    assert await db.fetchval("SELECT count(*) FROM job_transitions") < history_before
    # A replay of the kept key still returns its job.
    replay, created = await service.create(JobCreate(job_type="record", payload={}),
                                           "retried-later")
    assert created is False and replay["id"] == kept[-1]


async def test_zero_keeps_for_ever_and_a_tick_deletes_in_bounded_batches(
        service, store, db, settings, registry, stores):
    old = [await _finished(service, store, db, "noop", "COMPLETED", 400) for _ in range(25)]
    cancelled = await _finished(service, store, db, "noop", "CANCELLED", 400)
    forever = settings.model_copy(update={"retention_cancelled_seconds": 0.0,
                                          "retention_batch_size": 4,
                                          "retention_max_per_tick": 10})
    first = await delete_expired(store, forever, registry)
    assert first.by_status == {"COMPLETED": 10}
    assert len(await _left(db, old)) == 15
    stores.settings = forever  # the tick reads its settings from the stores
    summary = await tick(stores, registry)
    assert summary["deleted"] == {"COMPLETED": 10}
    await tick(stores, registry)
    assert await _left(db, [*old, cancelled]) == {cancelled}


async def test_stats_counts_stay_exact_through_every_transition(
        service, store, db, stores, registry, start_worker):
    """Counts come from totals plus trigger-written deltas: after a mixed run (inserts,
    claims, retries, dead letters, cancels, redrive, purge, retention) they equal a full
    count of the table, before and after folding, and two folds at once add nothing twice."""
    await service.create_many([JobCreate(job_type="noop", payload={}) for _ in range(30)])
    await service.create_many([JobCreate(job_type="flaky", payload={"fail_times": 1})
                               for _ in range(5)])
    await service.create_many([JobCreate(job_type="broken", payload={}) for _ in range(3)])
    later, _ = await service.create(JobCreate(
        job_type="noop", payload={}, scheduled_at=datetime.now(UTC) + timedelta(hours=2)))
    await service.cancel(later["id"])
    await start_worker()

    async def settled() -> bool:
        return not await db.fetchval("SELECT count(*) FROM jobs WHERE status NOT IN "
                                     "('COMPLETED', 'FAILED', 'CANCELLED')")

    await eventually(settled, timeout=30, what="every job to end")
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'FAILED'") == 3
    await service.redrive(job_type="broken")
    await eventually(settled, timeout=30, what="the redriven jobs to end")
    await service.purge_dead("broken")
    await _finished(service, store, db, "noop", "COMPLETED", 30)
    await delete_expired(store, stores.settings, registry)

    exact = await _exact(db)
    by_status: dict[str, int] = {}
    for (_, status), (n, _) in exact.items():
        by_status[status] = by_status.get(status, 0) + n
    stats = await store.stats()
    assert await _counted(store) == by_status
    assert stats["retries"] == sum(r for _, r in exact.values())
    assert stats["by_type"] == {t: {s: n for (tt, s), (n, _) in exact.items() if tt == t}
                                for t, _ in exact}
    assert sum(await asyncio.gather(store.fold_counts(), store.fold_counts())) > 0
    assert await db.fetchval("SELECT count(*) FROM job_count_deltas") == 0
    assert await _counted(store) == by_status
    assert (await store.stats())["retries"] == stats["retries"]
