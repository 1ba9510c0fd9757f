"""Fencing tokens and the Redlock: a late attempt cannot overwrite a newer one."""

from __future__ import annotations

import uuid

from shared.api_schemas import JobCreate
from shared.core.lifecycle import Lifecycle, Outcome
from shared.queue.locks import Redlock
from tests.support.servers import redis_servers
from tests.support.waits import eventually


async def test_late_attempt_is_fenced_out(service, store):
    row, _ = await service.create(JobCreate(job_type="noop", payload={}))
    first = await store.claim([row["id"]], "worker-a")
    assert first[0]["attempts"] == 1
    # worker-a pauses; its lease expires and the job is recovered and claimed again
    recovered = await store.settle([Outcome.after_failure(row["id"], 1, 3, "lease expired")])
    assert recovered[0]["status"] == "QUEUED"
    second = await store.claim([row["id"]], "worker-b")
    assert second[0]["attempts"] == 2

    late = await store.settle([Outcome.completed(row["id"], 1, {"by": "a"})])
    assert late == []
    current = await store.settle([Outcome.completed(row["id"], 2, {"by": "b"})])
    assert [r["id"] for r in current] == [row["id"]]
    final = await store.get(row["id"])
    assert final["result"] == {"by": "b"} and final["attempts"] == 2


async def test_claim_refuses_jobs_no_longer_waiting(service, store):
    row, _ = await service.create(JobCreate(job_type="noop", payload={}))
    await service.cancel(row["id"])
    assert await store.claim([row["id"]], "worker-a") == []


async def test_graceful_release_keeps_the_attempt_count(service, store, stores):
    row, _ = await service.create(JobCreate(job_type="noop", payload={}))
    await store.claim([row["id"]], "worker-a")
    settled = await Lifecycle(store, stores.queue).settle([Outcome.released(row["id"], 1)])
    assert [r["id"] for r in settled.rows] == [row["id"]]
    again = await store.get(row["id"])
    assert (again["status"], again["attempts"]) == ("QUEUED", 0)


async def test_redlock_needs_a_majority_of_independent_nodes():
    with redis_servers(3) as nodes:
        lock = Redlock.from_urls([n.url for n in nodes], "t")
        a, b = Redlock.new_token("a"), Redlock.new_token("b")
        names = [str(uuid.uuid4()) for _ in range(3)]
        try:
            held, busy = await lock.acquire(names, a, 10)
            assert held == names and busy == {}
            held_b, busy_b = await lock.acquire(names, b, 10)
            assert held_b == [] and set(busy_b) == set(names)
            assert all(0 < wait <= 10 for wait in busy_b.values())

            nodes[0].stop()  # one node down of three: a majority remains
            assert await lock.extend(names, a, 10) == names
            await lock.release(names, a)
            held_b, _ = await lock.acquire(names, b, 10)
            assert held_b == names

            nodes[1].stop()  # two down: no majority, nothing can be locked
            fresh = [str(uuid.uuid4())]
            held_c, busy_c = await lock.acquire(fresh, a, 10)
            assert held_c == [] and list(busy_c) == fresh
        finally:
            await lock.close()


async def test_worker_with_a_redlock_over_three_nodes_survives_losing_one(service, store,
                                                                          start_worker):
    with redis_servers(3) as nodes:
        await start_worker(lock_redis_urls=[n.url for n in nodes], worker_concurrency=4)
        first = [(await service.create(JobCreate(job_type="record", payload={})))[0]["id"]
                 for _ in range(5)]
        await _all_completed(store, first)
        nodes[2].stop()  # a majority of lock nodes remains
        second = [(await service.create(JobCreate(job_type="record", payload={})))[0]["id"]
                  for _ in range(5)]
        await _all_completed(store, second)


async def _all_completed(store, ids):
    async def done():
        rows = [await store.get(i) for i in ids]
        return all(r["status"] == "COMPLETED" for r in rows)

    await eventually(done, timeout=20, what="jobs completed")
