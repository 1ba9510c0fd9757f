"""The Redis scripts on their own: claim order and batch size, limits, idle waiting."""

from __future__ import annotations

import asyncio
import time
import uuid

from shared.core.lifecycle import Move
from shared.queue.redis_queue import Placement, RedisQueue, TypeLimit, connect, ready_score
from tests.support.servers import RedisServer


def _placements(n: int, job_type: str = "a", priority: int = 5, start: int = 1,
                due_ms: int = 0) -> list[Placement]:
    return [Placement(uuid.uuid4(), job_type, priority, start + i, due_ms) for i in range(n)]


TYPES = [TypeLimit("a"), TypeLimit("b")]


async def test_claim_takes_at_most_the_free_slots_in_priority_then_fifo_order(stores):
    queue = stores.queue()
    low = _placements(5, "a", priority=9, start=1)
    high = _placements(5, "b", priority=2, start=100)
    await queue.push(low + high)
    claimed, _ = await queue.claim(7, 30, TYPES)
    assert [c[0] for c in claimed] == [str(p.job_id) for p in high + low[:2]]
    rest, _ = await queue.claim(10, 30, TYPES)
    assert [c[0] for c in rest] == [str(p.job_id) for p in low[2:]]
    assert await stores.redis.zcard(queue.k_lease) == 10


async def test_push_places_a_large_mixed_batch_once_each_and_keeps_earlier_places(stores):
    """push.lua adds ready jobs with one ZADD per type, in slices: more jobs than a slice,
    two types, delayed ones among them, and a job pushed again keeps its first score."""
    queue = stores.queue()
    earlier = _placements(1, "a", priority=1, start=1)
    assert await queue.push(earlier) == 1
    ready_a = _placements(2_500, "a", start=10)
    ready_b = _placements(1_200, "b", start=5_000)
    delayed = _placements(3, "a", start=9_000, due_ms=await queue.now_ms() + 3_600_000)
    again = [Placement(earlier[0].job_id, "a", 9, 99_999)]
    mixed = [*ready_a[:1_000], *ready_b, *delayed, *again, *ready_a[1_000:]]
    assert await queue.push(mixed) == 2_500 + 1_200 + 3
    r = stores.redis
    assert await r.zcard(queue.ready_key("a")) == 2_501
    assert await r.zcard(queue.ready_key("b")) == 1_200
    assert await r.zcard(queue.k_delayed) == 3
    assert await r.zscore(queue.ready_key("a"), str(earlier[0].job_id)) == ready_score(1, 1)
    assert await r.zscore(queue.ready_key("b"), str(ready_b[-1].job_id)) == ready_score(5, 6_199)
    assert await r.smembers(queue.k_types) >= {"a", "b"}


async def test_claim_skips_types_the_worker_does_not_know(stores):
    queue = stores.queue()
    await queue.push(_placements(3, "unknown"))
    claimed, _ = await queue.claim(10, 30, TYPES)
    assert claimed == []


async def test_concurrency_limit_is_shared_and_freed_on_settle(stores):
    queue = stores.queue()
    await queue.push(_placements(5, "a"))
    limited = [TypeLimit("a", concurrency=2)]
    first, _ = await queue.claim(10, 30, limited)
    second, _ = await queue.claim(10, 30, limited)  # another worker: none left under the cap
    assert len(first) == 2 and second == []
    await queue.move([Move.drop(first[0][0], "a")])
    third, _ = await queue.claim(10, 30, limited)
    assert len(third) == 1


async def test_rate_limit_window_and_wake_hint(stores):
    queue = stores.queue()
    await queue.push(_placements(5, "a"))
    limited = [TypeLimit("a", rate=2, per_ms=500)]
    first, _ = await queue.claim(10, 30, limited)
    second, wake = await queue.claim(10, 30, limited)
    assert len(first) == 2 and second == []
    assert wake is not None and 0 < wake <= 0.501
    await asyncio.sleep(wake)  # the window the script named has passed
    third, _ = await queue.claim(10, 30, limited)
    assert len(third) == 2


async def test_delayed_jobs_are_promoted_when_due_and_not_before(stores):
    queue = stores.queue()
    now = await queue.now_ms()
    [job] = _placements(1, "a", due_ms=now + 300)
    await queue.push([job])
    claimed, wake = await queue.claim(10, 30, TYPES)
    assert claimed == [] and wake is not None and 0 < wake <= 0.3
    await asyncio.sleep(wake)
    claimed, _ = await queue.claim(10, 30, TYPES)
    assert [c[0] for c in claimed] == [str(job.job_id)]
    assert await queue.now_ms() >= now + 300


async def test_idle_worker_does_not_busy_poll(settings, registry, start_worker):
    """An idle worker blocks on the signal list: a handful of commands per second."""
    server = RedisServer()
    try:
        s = settings.model_copy(update={"redis_url": server.url})
        handle = await start_worker(redis_url=server.url, idle_poll_seconds=1.0)
        probe = connect(server.url)
        try:
            for _ in range(100):  # until the worker is up and waiting
                if handle.worker.ready:
                    break
                await asyncio.sleep(0.05)
            await probe.config_resetstat()
            started = time.monotonic()
            await asyncio.sleep(3.0)  # the interval being measured
            stats = await probe.info("commandstats")
            elapsed = time.monotonic() - started
        finally:
            await probe.aclose()
        # Round trips the worker made (commands run inside scripts do not count).
        trips = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0)
                    for c in ("evalsha", "eval", "blpop", "ping", "get", "set"))
        per_second = trips / elapsed
        assert per_second < 10, f"{per_second:.1f} commands/s while idle"
        # and it still wakes at once when work arrives
        queue = RedisQueue(connect(s.redis_url), s.redis_prefix)
        try:
            await queue.push(_placements(1, "noop"))
            for _ in range(100):
                if not await queue.redis.zcard(queue.ready_key("noop")):
                    break
                await asyncio.sleep(0.01)
            assert await queue.redis.zcard(queue.ready_key("noop")) == 0
        finally:
            await queue.redis.aclose()
        await handle.stop()
    finally:
        server.stop()


async def test_claim_takes_each_jobs_lock_and_defers_a_job_locked_elsewhere(stores):
    queue = stores.queue()
    first, second = _placements(2, "a")
    await queue.push([first, second])
    # another holder (a worker presumed dead) still holds the first job's lock for 300 ms
    await stores.redis.set(f"{queue.base}:lock:{first.job_id}", "old-holder", px=300)
    claimed, wake = await queue.claim(10, 30, TYPES, lock_token="me")
    assert [c[0] for c in claimed] == [str(second.job_id)]
    assert await stores.redis.get(f"{queue.base}:lock:{second.job_id}") == "me"
    assert await stores.redis.zscore(queue.k_delayed, str(first.job_id)) is not None
    assert wake is not None and 0 < wake <= 0.302
    await asyncio.sleep(wake)  # the old holder's lock runs out (the condition under test)
    again, _ = await queue.claim(10, 30, TYPES, lock_token="me")
    assert [c[0] for c in again] == [str(first.job_id)]
    # settling releases only a lock that is still ours
    await stores.redis.set(f"{queue.base}:lock:{second.job_id}", "someone-else")
    await queue.move([Move.drop(first.job_id, "a"), Move.unlock(second.job_id)],
                     lock_token="me")
    assert await stores.redis.get(f"{queue.base}:lock:{first.job_id}") is None
    assert await stores.redis.get(f"{queue.base}:lock:{second.job_id}") == "someone-else"


async def test_heartbeat_keeps_our_locks_and_reports_lost_ones(stores):
    queue = stores.queue()
    mine, taken = _placements(2, "a")
    await queue.push([mine, taken])
    await queue.claim(10, 30, TYPES, lock_token="me")
    await stores.redis.delete(f"{queue.base}:lock:{mine.job_id}")  # Redis lost it
    await stores.redis.set(f"{queue.base}:lock:{taken.job_id}", "other")  # someone took it
    cancels, lost = await queue.heartbeat(
        [(str(mine.job_id), "a", False), (str(taken.job_id), "a", False)], 30, "me")
    assert cancels == [] and lost == [str(taken.job_id)]
    assert await stores.redis.get(f"{queue.base}:lock:{mine.job_id}") == "me"


async def test_claim_names_the_types_a_limit_held_back(stores):
    queue = stores.queue()
    await queue.push(_placements(3, "a") + _placements(3, "b"))
    limits = [TypeLimit("a", rate=1, per_ms=60_000), TypeLimit("b", concurrency=1)]
    first, _ = await queue.claim(10, 30, limits)
    assert len(first) == 2 and queue.held == []  # one of each went; nothing held yet
    second, _ = await queue.claim(10, 30, limits)
    assert second == []
    assert sorted(queue.held) == [("a", "rate"), ("b", "concurrency")]


async def test_reconcile_gives_a_ready_job_back_the_type_the_claim_looks_for(stores):
    """The claim visits only the types in the types set; a set that lost one (a script
    cut short while a cluster slot moved) must not strand its ready jobs past a tick."""
    queue = stores.queue()
    [job] = _placements(1, "a")
    await queue.push([job])
    await stores.redis.srem(queue.k_types, "a")
    assert (await queue.claim(10, 30, TYPES))[0] == []
    row = {"id": job.job_id, "job_type": "a", "status": "QUEUED", "priority": job.priority,
           "seq": job.seq, "run_at": None}
    assert await queue.ensure([row], 30) == (0, 0, 0)  # nothing placed again: it was there
    claimed, _ = await queue.claim(10, 30, TYPES)
    assert [c[0] for c in claimed] == [str(job.job_id)]
