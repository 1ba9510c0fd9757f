"""Group commit of single creates (shared.core.enqueue_coalescer), on the real stores.

The enqueue the coalescer calls is the real ``Lifecycle.enqueue``; the tests only note
how many jobs each call carried, to see that concurrent creates did share one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest

from shared.connections import Stores
from shared.core.enqueue_coalescer import EnqueueCoalescer
from shared.core.lifecycle import Lifecycle
from shared.core.service import JobService
from shared.registry import Registry
from shared.settings import Settings
from shared.store.jobs import NewJob, Row
from tests.support.waits import eventually


def job(tag: str, priority: int = 5) -> NewJob:
    return NewJob(job_type="record", payload={"seconds": 0.0, "tag": tag}, priority=priority,
                  max_retries=0, timeout_seconds=30.0)


class Recorded:
    """The real enqueue, noting the size of every call; ``gate`` holds calls back."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.sizes: list[int] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, jobs: Sequence[NewJob]) -> list[Row]:
        self.sizes.append(len(jobs))
        if self.gate is not None:
            await self.gate.wait()
        return await Lifecycle(await self.stores.store(), self.stores.queue).enqueue(jobs)


async def stored(db: asyncpg.Pool, tag: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM jobs WHERE payload->>'tag' = $1", tag))


async def test_concurrent_creates_share_one_insert_and_each_gets_its_own_committed_row(
        stores: Stores, db: asyncpg.Pool) -> None:
    enqueue = Recorded(stores)
    coalescer = EnqueueCoalescer(enqueue)

    async def create(i: int) -> None:
        row = await coalescer.enqueue(job(f"t{i}"))
        assert row["payload"]["tag"] == f"t{i}"
        assert await stored(db, f"t{i}") == 1  # committed before the answer

    await asyncio.gather(*(create(i) for i in range(50)))
    assert sum(enqueue.sizes) == 50
    assert len(enqueue.sizes) < 50, enqueue.sizes
    queue = stores.queue("default")
    assert await stores.redis.zcard(queue.ready_key("record")) == 50  # and pushed


async def test_a_job_the_server_refuses_fails_alone(stores: Stores, db: asyncpg.Pool) -> None:
    enqueue = Recorded(stores)
    coalescer = EnqueueCoalescer(enqueue)
    # The service never sends a priority outside 1..10; the table's CHECK refuses it, and
    # with it the whole shared statement.
    bad = job("bad", priority=0)
    results = await asyncio.gather(coalescer.enqueue(job("a")), coalescer.enqueue(bad),
                                   coalescer.enqueue(job("b")), return_exceptions=True)
    assert enqueue.sizes[0] == 3  # they did share the first statement
    assert isinstance(results[1], asyncpg.PostgresError)
    assert results[0]["payload"]["tag"] == "a" and results[2]["payload"]["tag"] == "b"
    assert await db.fetchval("SELECT count(*) FROM jobs") == 2


async def test_a_caller_that_gives_up_before_its_flush_leaves_no_job(
        stores: Stores, db: asyncpg.Pool) -> None:
    enqueue = Recorded(stores)
    enqueue.gate = asyncio.Event()
    coalescer = EnqueueCoalescer(enqueue, max_in_flight=1)
    first = asyncio.create_task(coalescer.enqueue(job("first")))
    await eventually(lambda: _true(enqueue.sizes == [1]), what="the first flush started")
    waiting = asyncio.create_task(coalescer.enqueue(job("gave-up")))
    await eventually(lambda: _true(len(coalescer._waiting) == 1), what="second job queued")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    enqueue.gate.set()
    assert (await first)["payload"]["tag"] == "first"
    later = await coalescer.enqueue(job("later"))  # the coalescer still flushes
    assert later["payload"]["tag"] == "later"
    assert await stored(db, "gave-up") == 0
    assert await db.fetchval("SELECT count(*) FROM jobs") == 2


async def test_the_service_coalesces_only_plain_single_creates(
        stores: Stores, registry: Registry, db: asyncpg.Pool) -> None:
    from shared.api_schemas import JobCreate

    service = JobService(stores, registry, coalesce_creates=True)
    spec = JobCreate(job_type="record", payload={"tag": "k"})
    rows = await asyncio.gather(*(service.create(spec) for _ in range(5)))
    assert all(created for _, created in rows)
    assert len({r["id"] for r, _ in rows}) == 5
    # An idempotency key keeps its own all-or-nothing path: a replay, not a second job.
    first, created = await service.create(spec, "key-1")
    again, created_again = await service.create(spec, "key-1")
    assert created and not created_again and again["id"] == first["id"]
    assert await db.fetchval("SELECT count(*) FROM jobs") == 6


async def _true(value: bool) -> bool:
    return value


def test_a_loop_dropped_mid_flush_does_not_wedge_the_next_one(settings: Settings) -> None:
    """A flush left in flight on an event loop that is dropped (closed without finishing
    its tasks): creates on the next loop must still flush, not wait for it forever."""
    second: list[Stores] = []

    async def enqueue(jobs: Sequence[NewJob]) -> list[Row]:
        if not second:  # on the dropped loop: never returns
            await asyncio.Event().wait()
        stores = second[0]
        return await Lifecycle(await stores.store(), stores.queue).enqueue(jobs)

    coalescer = EnqueueCoalescer(enqueue, max_in_flight=1)

    async def stuck_in_flight() -> None:
        asyncio.get_running_loop().create_task(coalescer.enqueue(job("first loop")))
        for _ in range(100):  # a few turns of the loop: queued, flushed, in flight
            if coalescer._in_flight:
                return
            await asyncio.sleep(0)
        raise AssertionError("the first flush never started")

    dropped = asyncio.new_event_loop()
    try:
        dropped.run_until_complete(stuck_in_flight())
    finally:
        dropped.close()  # its pending tasks are dropped with it (asyncio logs them, as expected)

    async def later() -> str:
        stores = Stores(settings)
        second.append(stores)
        try:
            row = await asyncio.wait_for(coalescer.enqueue(job("second loop")), 10)
            return str(row["payload"]["tag"])
        finally:
            await stores.close()

    assert asyncio.run(later()) == "second loop"


async def test_a_flush_cancelled_before_its_first_step_answers_its_callers(
        stores: Stores, db: asyncpg.Pool) -> None:
    enqueue = Recorded(stores)
    coalescer = EnqueueCoalescer(enqueue, max_in_flight=1)
    caller = asyncio.create_task(coalescer.enqueue(job("never")))
    await asyncio.sleep(0)  # the caller queues its job and schedules a flush
    await asyncio.sleep(0)  # the flush task is created; it has not run yet
    assert coalescer._tasks
    for flush in list(coalescer._tasks):
        flush.cancel()  # before it ran a single step
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, 5)
    assert enqueue.sizes == [] and await stored(db, "never") == 0
    # Its place in flight came back: the next create goes out (max_in_flight is 1).
    row = await asyncio.wait_for(coalescer.enqueue(job("next")), 5)
    assert row["payload"]["tag"] == "next"
