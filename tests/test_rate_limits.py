"""Per-type rate and concurrency limits hold across two workers together.

What is limited is the *claim*: the claim script admits a job of a rate-limited type only
while fewer than N claims of that type carry a Redis TIME stamp within the last period,
and it writes each admitted claim into the ``rate:<type>`` log with that stamp. The test
samples that log while the jobs run, checks it saw every claim (so no window can hide
an unseen one), and checks every window of one period. Handler start times would be the
wrong measure: a claim at 0.999 s whose handler starts at 1.001 s is legal, yet would
look like a sixth start in the window [0.001, 1.001).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from shared.connections import Stores
from shared.registry import JobContext, JobType
from tests.support import job_api
from tests.support.registry_scope import scoped_registrations
from tests.support.waits import eventually

RATE, PERIOD_MS = 5, 1000
CONCURRENCY = 2


class Tagged(BaseModel):
    tag: str | None = None


async def _record(ctx: JobContext) -> None:
    await ctx.db.execute("INSERT INTO runs (job_id, attempt, worker) VALUES ($1, $2, $3)",
                         ctx.job_id, ctx.attempt, ctx.settings.worker_id)


async def rate_limited(payload: Tagged, ctx: JobContext) -> None:
    """Record the run; a test type with a rate limit of 5 per second."""
    await _record(ctx)
    await asyncio.sleep(0.05)


def _inflight_key(ctx_prefix: str) -> str:
    return f"{ctx_prefix}:test:inflight"


async def concurrency_limited(payload: Tagged, ctx: JobContext) -> None:
    """Count how many run at once (in Redis, across workers); at most 2 may."""
    key = _inflight_key(ctx.settings.redis_prefix)
    now = await ctx.redis.incr(key)
    try:
        await ctx.redis.rpush(key + ":seen", now)
        await _record(ctx)
        await asyncio.sleep(0.15)
    finally:
        await ctx.redis.decr(key)


@pytest.fixture(autouse=True)
def limited_types() -> Iterator[None]:
    """Registered for these tests only (workers started here claim them with their limits)."""
    with scoped_registrations() as registry:
        registry.add(JobType("rate_limited", Tagged, rate_limited,
                             rate_limit=(RATE, PERIOD_MS / 1000)))
        registry.add(JobType("concurrency_limited", Tagged, concurrency_limited,
                             concurrency_limit=CONCURRENCY))
        yield


async def _create(api: Any, job_type: str, n: int) -> list[str]:
    r = await api.post("/api/v1/jobs/batch", json={"jobs": [
        {"job_type": job_type, "payload": {"tag": str(i)}} for i in range(n)]})
    assert r.status_code == 201, r.text
    return [j["id"] for j in r.json()["jobs"]]


async def _all_completed(api: Any, ids: list[str], timeout: float) -> None:
    async def done() -> bool:
        for job_id in ids:
            if (await job_api.get(api, job_id))["status"] != "COMPLETED":
                return False
        return True
    await eventually(done, timeout, interval=0.2, what="every job completed")


async def test_rate_limit_holds_in_every_window_across_two_workers(
        api: Any, start_worker: Any, stores: Stores, db: Any) -> None:
    log_key = f"{stores.queue('default').base}:rate:rate_limited"
    claims: dict[str, int] = {}  # "id:ms" -> Redis TIME of the claim, in ms

    async def sample() -> None:
        entries = await stores.redis.zrange(log_key, 0, -1, withscores=True)
        claims.update({member: int(score) for member, score in entries})

    async def sampler() -> None:
        while True:
            await sample()
            await asyncio.sleep(0.05)

    ids = await _create(api, "rate_limited", 30)  # all ready at once: the hardest burst
    task = asyncio.create_task(sampler())
    try:
        await start_worker(worker_concurrency=2)
        await start_worker(worker_concurrency=2)
        await _all_completed(api, ids, timeout=40)
        await sample()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # Every claim was seen (one per job: none was retried), so the windows are complete.
    assert sorted(m.split(":")[0] for m in claims) == sorted(ids)
    stamps = sorted(claims.values())
    busiest = max(sum(1 for t in stamps if s <= t < s + PERIOD_MS) for s in stamps)
    assert busiest <= RATE, f"{busiest} claims within {PERIOD_MS} ms: {stamps}"
    # And the limit did the pacing: 30 claims at 5 per second span at least 5 periods.
    assert stamps[-1] - stamps[0] >= (len(ids) // RATE - 1) * PERIOD_MS
    workers = await db.fetch("SELECT worker, count(*) FROM runs GROUP BY worker")
    assert len(workers) == 2, workers  # both workers took part


async def test_concurrency_limit_holds_across_two_workers(
        api: Any, start_worker: Any, settings: Any, stores: Stores, db: Any) -> None:
    ids = await _create(api, "concurrency_limited", 12)
    await start_worker(worker_concurrency=3)
    await start_worker(worker_concurrency=3)
    await _all_completed(api, ids, timeout=30)
    seen = [int(n) for n in await stores.redis.lrange(
        _inflight_key(settings.redis_prefix) + ":seen", 0, -1)]
    assert len(seen) == 12
    assert max(seen) == CONCURRENCY  # the limit was reached, and never passed
    workers = await db.fetch("SELECT worker, count(*) FROM runs GROUP BY worker")
    assert len(workers) == 2, workers
