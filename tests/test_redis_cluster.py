"""The queue on a Redis Cluster: three real masters (``redis-server --cluster-enabled yes``,
joined by ``redis-cli --cluster create``), as ElastiCache and Valkey run cluster mode.

Two parts:

- the queue, claim, lease, limit, cancel, schedule and FLUSHALL-recovery tests of the
  single-node suite, imported from their modules and run again here, where ``settings``
  points every client (API, in-process and real worker processes, scheduler tick) at the
  cluster;
- what only a cluster has: a queue's keys in one slot, queues on different masters, cancel
  signals over sharded pub/sub, every master pinged by /health, a slot moved under
  running workers, an unreachable cluster, the API's connection bound.

One cluster serves the whole session (it starts in about two seconds); every test has its
own key prefix, and tests that FLUSHALL flush every master, as the suite runs one test at a
time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared.api_schemas import JobCreate
from shared.connections import Stores
from shared.core.lifecycle import Move
from shared.queue.redis_queue import Placement, RedisQueue, TypeLimit, connect
from shared.settings import Settings
from tests.conftest import admin_headers
from tests.support.api_checks import closed_port
from tests.support.servers import RedisClusterServers
from tests.support.waits import eventually

# The single-node tests, run again on the cluster (same bodies, this module's fixtures).
from tests.test_api_health import test_health_is_200_when_both_stores_answer  # noqa: F401
from tests.test_api_workers import (  # noqa: F401
    test_a_running_worker_is_listed_with_its_job_and_vanishes_after_sigkill,
    test_a_worker_that_stops_cleanly_leaves_at_once,
)
from tests.test_cancel import (  # noqa: F401
    test_queued_job_is_cancelled_at_once_and_never_runs,
    test_running_job_is_interrupted_and_ends_cancelled,
)
from tests.test_leases import test_heartbeat_keeps_a_job_longer_than_its_lease  # noqa: F401
from tests.test_metrics_summed_counters import (  # noqa: F401
    test_counters_of_many_containers_add_up,
)
from tests.test_queue_scripts import (  # noqa: F401
    test_claim_names_the_types_a_limit_held_back,
    test_claim_skips_types_the_worker_does_not_know,
    test_claim_takes_at_most_the_free_slots_in_priority_then_fifo_order,
    test_claim_takes_each_jobs_lock_and_defers_a_job_locked_elsewhere,
    test_concurrency_limit_is_shared_and_freed_on_settle,
    test_delayed_jobs_are_promoted_when_due_and_not_before,
    test_heartbeat_keeps_our_locks_and_reports_lost_ones,
    test_rate_limit_window_and_wake_hint,
    test_reconcile_gives_a_ready_job_back_the_type_the_claim_looks_for,
)
from tests.test_rate_limits import (  # noqa: F401
    limited_types,  # the module's autouse fixture: the limited job types
    test_concurrency_limit_holds_across_two_workers,
    test_rate_limit_holds_in_every_window_across_two_workers,
)
from tests.test_redis_loss import (  # noqa: F401
    test_flushall_mid_drain_then_tick_runs_each_job_exactly_once,
    test_flushall_with_100_queued_jobs_loses_nothing,
)
from tests.test_scheduler_function import (  # noqa: F401
    test_tick_recovers_the_leases_of_a_dead_worker,
)
from tests.test_schedules import (  # noqa: F401
    test_a_run_starts_within_a_second_of_its_fire_time,
    test_every_fire_time_has_exactly_one_job_under_racing_ticks_and_two_workers,
)
from tests.test_worker_order import (  # noqa: F401
    test_mixed_priorities_run_highest_first_and_fifo_within,
    test_one_slot_never_runs_two_jobs_at_once,
)
from tests.test_worker_processes import test_job_survives_worker_kill  # noqa: F401


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(masters=3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def settings(settings: Settings, redis_cluster: RedisClusterServers) -> Settings:
    """The suite's per-test settings (schema, prefix), on the cluster."""
    return settings.model_copy(update={"redis_url": redis_cluster.url, "redis_cluster": True})


@pytest.fixture
async def private(settings: Settings) -> AsyncIterator[tuple[Stores, Settings]]:
    """test_redis_loss's own server: here the session cluster (FLUSHALL flushes every
    master, and nobody else uses it while a test runs)."""
    stores = Stores(settings)
    try:
        yield stores, settings
    finally:
        await stores.close()


@pytest.fixture
async def masters(redis_cluster: RedisClusterServers) -> AsyncIterator[list[aioredis.Redis]]:
    """A plain client per master: what each node holds, seen from the node itself."""
    clients = [aioredis.Redis.from_url(u, decode_responses=True) for u in redis_cluster.urls]
    try:
        yield clients
    finally:
        for c in clients:
            await c.aclose()


async def _slot_owners(node: aioredis.Redis) -> dict[int, int]:
    """Slot -> port of the master serving it, from CLUSTER SLOTS."""
    owners: dict[int, int] = {}
    for start, end, primary, *_ in await node.execute_command("CLUSTER SLOTS"):
        for slot in range(int(start), int(end) + 1):
            owners[slot] = int(primary[1])
    return owners


def _queues_on_two_masters(prefix: str, owners: dict[int, int]) -> tuple[str, str]:
    """Two queue names of ``prefix`` whose slots two different masters serve (which names
    do depends on the prefix, random per test)."""
    first = "orders"
    first_port = owners[key_slot(f"{prefix}:{first}".encode())]
    for i in range(100):
        name = f"reports{i}"
        if owners[key_slot(f"{prefix}:{name}".encode())] != first_port:
            return first, name
    raise AssertionError("no queue name landed on another master")  # 2/3 chance each


async def _exercise(queue: RedisQueue) -> None:
    """Run every script of the queue, so that every kind of key exists at least once:
    ready (two types), delayed and its meta, lease, reaped, running, rate, lock, cancel,
    signal, types."""
    now = await queue.now_ms()
    jobs = [Placement(uuid.uuid4(), "a", 5, i) for i in range(1, 4)]
    jobs += [Placement(uuid.uuid4(), "b", 2, 10), Placement(uuid.uuid4(), "a", 5, 11, now + 60_000)]
    assert await queue.push(jobs) == 5
    limits = [TypeLimit("a", concurrency=2, rate=10, per_ms=1000), TypeLimit("b")]
    claimed, _ = await queue.claim(10, 30, limits, lock_token="me")
    assert len(claimed) == 3  # b, and two of a (its concurrency limit)
    ids = {c[0]: c[1] for c in claimed}
    await queue.heartbeat([(i, t, t == "a") for i, t in ids.items()], 30, "me")
    first, second, _ = claimed
    await queue.request_cancel(second[0])  # stays in the cancel set: second still runs
    await queue.move([Move.drop(first[0], first[1])], lock_token="me")
    await queue.claim(1, 0.001, [TypeLimit("a")], lock_token="me")  # a lease about to lapse
    await asyncio.sleep(0.01)  # past that 1 ms lease
    assert await queue.reap()
    await queue.remove([(str(jobs[2].job_id), "a")])
    rows = [{"id": p.job_id, "job_type": p.job_type, "status": "QUEUED", "priority": p.priority,
             "seq": p.seq, "run_at": None} for p in jobs]
    await queue.ensure(rows, 30)
    assert (await queue.depth())["leased"] >= 1


async def test_two_queues_live_on_two_masters_each_in_one_slot(
        settings: Settings, stores: Stores, masters: list[aioredis.Redis]) -> None:
    owners = await _slot_owners(masters[0])
    assert len(set(owners.values())) == 3 and len(owners) == 16384  # three masters, all slots
    names = _queues_on_two_masters(settings.redis_prefix, owners)
    queues = [stores.queue(n) for n in names]
    for q in queues:
        await _exercise(q)

    slots = [key_slot(q.base.encode()) for q in queues]
    assert slots[0] != slots[1] and owners[slots[0]] != owners[slots[1]]
    by_queue: dict[str, list[str]] = {q.queue: [] for q in queues}
    for node in masters:
        port = node.connection_pool.connection_kwargs["port"]
        async for key in node.scan_iter(match=f"{{{settings.redis_prefix}:*", count=1000):
            slot = int(await node.execute_command("CLUSTER KEYSLOT", key))
            queue = next(q for q in queues if key.startswith(q.base))
            # in the queue's slot, and on the master that serves that slot
            assert slot == key_slot(queue.base.encode()), key
            assert owners[slot] == port, key
            by_queue[queue.queue].append(key[len(queue.base) + 1:])
    for q in queues:
        kinds = {k.split(":")[0] for k in by_queue[q.queue]}
        # every kind of key a script writes was there, and the per-type/per-job ones too
        assert {"types", "delayed", "dmeta", "lease", "reaped", "cancel", "signal", "ready",
                "running", "rate", "lock"} <= kinds, sorted(kinds)
        assert "ready:b" in by_queue[q.queue]  # placed back by ensure.lua


async def test_a_script_touching_a_key_on_another_master_is_refused(
        settings: Settings, stores: Stores, masters: list[aioredis.Redis]) -> None:
    """Why the layout matters: a script runs on the master of its first key, and Redis
    refuses it a key another master serves, so a key built without the queue's tag fails
    loudly. (A key of another slot that the same master happens to serve is not refused,
    for scripts without flags, but breaks once slots move: the previous test checks the
    slot of every key, not only the node.)"""
    owners = await _slot_owners(masters[0])
    queue = stores.queue()
    here = owners[key_slot(queue.base.encode())]
    script = stores.redis.register_script("return redis.call('GET', ARGV[1])")
    assert await script(keys=[queue.k_lease], args=[f"{queue.base}:lock:x"]) is None
    other = next(k for k in (f"{{{settings.redis_prefix}:q{i}}}:x" for i in range(100))
                 if owners[key_slot(k.encode())] != here)
    with pytest.raises(ResponseError, match="non local key"):
        await script(keys=[queue.k_lease], args=[other])


async def test_worker_drains_cancels_and_recovers_on_the_cluster(
        service: Any, store: Any, stores: Stores, db: Any, registry: Any,
        start_worker: Any) -> None:
    """End to end through JobService: jobs drain, a running one is cancelled through
    sharded pub/sub (the heartbeat, every 10 s here, is too slow to be the one that
    carries it), and a dead worker's job is recovered when its lease runs out."""
    quick, _ = await service.create_many([JobCreate(job_type="record", payload={"tag": str(i)})
                                          for i in range(40)])
    long, _ = await service.create(JobCreate(job_type="record", payload={"seconds": 60}))
    # a worker that claims one job and dies: a 50 ms lease nobody renews
    orphan, _ = await service.create(JobCreate(job_type="noop", payload={}))
    queue = stores.queue()
    taken, _ = await queue.claim(1, 0.05, [TypeLimit("noop")])
    assert taken[0][0] == str(orphan["id"])
    await store.claim([orphan["id"]], "dead-worker")

    await start_worker(lease_seconds=30.0, reap_interval_seconds=0.3, worker_concurrency=8)
    master = stores.redis.get_node_from_key(queue.cancel_channel)
    assert isinstance(stores.redis, RedisCluster) and master is not None

    async def subscribed() -> bool:
        counts = await stores.redis.pubsub_shardnumsub(queue.cancel_channel,
                                                       target_nodes=master)
        return dict(counts).get(queue.cancel_channel, 0) > 0

    await eventually(subscribed, what="the worker's SSUBSCRIBE on the queue's master")

    async def long_running() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1",
                                      long["id"]))

    await eventually(long_running, timeout=20, what="the long job to start")
    asked = time.monotonic()
    outcome, _ = await service.cancel(long["id"])
    assert outcome == "requested"

    async def settled() -> bool:
        rows = await db.fetch("SELECT id, status, attempts FROM jobs")
        return {r["id"]: (r["status"], r["attempts"]) for r in rows} if all(
            r["status"] in ("COMPLETED", "CANCELLED") for r in rows) else False

    final = await eventually(settled, timeout=30, what="every job settled")
    assert final[long["id"]][0] == "CANCELLED" and time.monotonic() - asked < 3
    assert final[orphan["id"]] == ("COMPLETED", 2)  # recovered, run again
    assert all(final[r["id"]] == ("COMPLETED", 1) for r in quick)
    history = [(h["from_status"], h["to_status"], h["reason"])
               for h in await store.history(orphan["id"])]
    assert ("PROCESSING", "QUEUED", "lease expired") in history


async def test_health_pings_every_master(api: Any, redis_cluster: RedisClusterServers,
                                         masters: list[aioredis.Redis]) -> None:
    """/health sends PING to each master (a PING to one node says nothing of the slots
    the others serve)."""
    await asyncio.gather(*(m.config_resetstat() for m in masters))
    r = await api.get("/api/v1/health")
    assert r.status_code == 200, r.text
    for m in masters:
        stats = await m.info("commandstats")
        assert stats.get("cmdstat_ping", {}).get("calls", 0) >= 1


async def test_an_unreachable_cluster_is_a_redis_outage_not_a_crash(
        settings: Settings, registry: Any, store: Any) -> None:
    """redis-py says "no node of the cluster answers" with RedisClusterException, which is
    not a RedisError: the queue turns it into a ConnectionError, so /health is a 503
    naming Redis, and a job created meanwhile is kept PENDING for the sweep (201)."""
    from functions.api.app import create_app

    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0",
                                       "health_timeout": 0.5})
    app = create_app(down)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api",
                                     headers=await admin_headers(down)) as client:
            health = await client.get("/api/v1/health")
            created = await client.post("/api/v1/jobs", json={"job_type": "noop",
                                                              "payload": {}})
    finally:
        await app.state.stores.close()
    assert health.status_code == 503, health.text
    assert [d["loc"] for d in health.json()["error"]["details"]] == [["redis"]]
    assert "unreachable" in health.json()["error"]["details"][0]["msg"]
    assert created.status_code == 201, created.text
    assert (await store.get(created.json()["id"]))["status"] == "PENDING"
    # and a worker's loops see an error they survive (a RedisError), not a crash
    queue = RedisQueue(connect(down.redis_url, cluster=True), down.redis_prefix)
    try:
        with pytest.raises(RedisConnectionError):
            await queue.claim(1, 30, [TypeLimit("noop")])
        with pytest.raises(RedisConnectionError):
            async with queue.cancel_requests():
                pass
    finally:
        await queue.redis.aclose()


async def test_a_queue_keeps_working_while_its_slot_moves_to_another_master(
        service: Any, store: Any, stores: Stores, db: Any, start_worker: Any,
        redis_cluster: RedisClusterServers, masters: list[aioredis.Redis]) -> None:
    """Resharding under a running worker: the queue's slot moves (keys and all) to another
    master; the worker follows it (MOVED), its cancel subscription follows it (the old
    master drops it with an ``sunsubscribe``), and new jobs drain on the new master."""
    long, _ = await service.create(JobCreate(job_type="record", payload={"seconds": 60}))
    await start_worker(lease_seconds=30.0, worker_concurrency=4)  # heartbeat every 10 s

    async def long_running() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM runs WHERE job_id = $1",
                                      long["id"]))

    await eventually(long_running, timeout=20, what="the long job to start")
    queue = stores.queue()
    slot = key_slot(queue.base.encode())
    before = (await _slot_owners(masters[0]))[slot]
    target = next(p for p in redis_cluster.ports if p != before)
    await asyncio.to_thread(redis_cluster.move_slot, slot, target)
    assert (await _slot_owners(masters[0]))[slot] == target

    asked = time.monotonic()
    outcome, _ = await service.cancel(long["id"])
    assert outcome == "requested"

    async def cancelled() -> bool:
        return (await store.get(long["id"]))["status"] == "CANCELLED"

    await eventually(cancelled, timeout=15, what="CANCELLED")
    # not the heartbeat (every 10 s): the listener, subscribed again on the new master
    # (a cancel sent before that is read from the cancel set as it subscribes)
    assert time.monotonic() - asked < 5
    new_master = stores.redis.get_node(host="127.0.0.1", port=target)

    async def subscribed_there() -> bool:
        counts = await stores.redis.pubsub_shardnumsub(queue.cancel_channel,
                                                       target_nodes=new_master)
        return dict(counts).get(queue.cancel_channel, 0) > 0

    assert isinstance(stores.redis, RedisCluster) and new_master is not None
    await eventually(subscribed_there, what="the SSUBSCRIBE on the new master")

    await service.create_many([JobCreate(job_type="record", payload={"tag": str(i)})
                                 for i in range(20)])

    async def drained() -> bool:
        return await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'COMPLETED'") == 20

    await eventually(drained, timeout=20, what="20 jobs completed after the move")
    # a drained queue has no keys left: place one far ahead, and look for it on each master
    await queue.push([Placement(uuid.uuid4(), "noop", 5, 1, await queue.now_ms() + 3_600_000)])
    by_port = {m.connection_pool.connection_kwargs["port"]: m for m in masters}
    assert await by_port[target].zcard(queue.k_delayed) == 1
    assert [k async for k in by_port[before].scan_iter(match=f"{queue.base}*")] == []


async def test_an_idle_worker_blocks_on_the_queues_master_without_polling(
        settings: Settings, stores: Stores, start_worker: Any,
        masters: list[aioredis.Redis]) -> None:
    """BLPOP on the signal list goes to the master of the queue's slot and blocks there:
    a handful of round trips a second across the whole cluster, and a push still wakes
    the worker at once."""
    handle = await start_worker(idle_poll_seconds=1.0)
    await eventually(lambda: _true_if(handle.worker.ready), what="the worker to be ready")
    await asyncio.sleep(0.3)  # its start-up round trips are not what is measured
    await asyncio.gather(*(m.config_resetstat() for m in masters))
    started = time.monotonic()
    await asyncio.sleep(3.0)  # the idle interval being measured (the condition under test)
    stats = await asyncio.gather(*(m.info("commandstats") for m in masters))
    elapsed = time.monotonic() - started
    trips = sum(s.get(f"cmdstat_{c}", {}).get("calls", 0) for s in stats
                for c in ("evalsha", "eval", "blpop", "ping", "get", "set", "exists",
                          "cluster|slots", "cluster|nodes"))
    assert trips / elapsed < 10, f"{trips / elapsed:.1f} round trips/s while idle"
    queue = stores.queue()
    await queue.push([Placement(uuid.uuid4(), "noop", 5, 1)])

    async def taken() -> bool:
        return await stores.redis.zcard(queue.ready_key("noop")) == 0

    await eventually(taken, timeout=2, what="the idle worker to wake and claim")


async def _true_if(value: bool) -> bool:
    return value


async def test_flushall_reaches_every_master(settings: Settings, stores: Stores,
                                             masters: list[aioredis.Redis]) -> None:
    """What the FLUSHALL tests above rely on: redis-py sends it to every master, so all of
    Redis is lost, not only the master of the queue."""
    owners = await _slot_owners(masters[0])
    keys: dict[int, str] = {}
    for i in range(200):  # one key on each master
        key = f"{{{settings.redis_prefix}:k{i}}}"
        keys.setdefault(owners[key_slot(key.encode())], key)
    assert len(keys) == 3
    for key in keys.values():
        await stores.redis.set(key, "1")
    assert all(await asyncio.gather(*(m.dbsize() for m in masters)))
    await stores.redis.flushall()
    assert await asyncio.gather(*(m.dbsize() for m in masters)) == [0, 0, 0]


async def test_moving_the_slot_mid_drain_loses_no_job(
        service: Any, stores: Stores, registry: Any, db: Any, start_worker: Any,
        redis_cluster: RedisClusterServers, masters: list[aioredis.Redis]) -> None:
    """The slot moves one key at a time (half moved for a second) while two workers claim
    and settle as fast as they can. Their scripts fail meanwhile and they retry; with the
    next scheduler tick every job completes, each exactly once."""
    from functions.scheduler.tick import tick

    n = 300
    await service.create_many([JobCreate(job_type="record", payload={"seconds": 0.01,
                                                                     "tag": str(i)})
                               for i in range(n)])
    await start_worker(worker_concurrency=4)
    await start_worker(worker_concurrency=4)

    async def some_ran() -> bool:
        return await db.fetchval("SELECT count(*) FROM runs") >= 30

    await eventually(some_ran, what="the drain to start")
    queue = stores.queue()
    slot = key_slot(queue.base.encode())
    before = (await _slot_owners(masters[0]))[slot]
    await asyncio.to_thread(redis_cluster.move_slot, slot,
                            next(p for p in redis_cluster.ports if p != before), 1, 0.05)
    assert await db.fetchval("SELECT count(*) FROM runs") < n  # it moved mid-drain
    await tick(stores, registry)

    async def all_done() -> bool:
        return await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'COMPLETED'") == n

    await eventually(all_done, timeout=30, what=f"{n} jobs completed")
    dupes = await db.fetchval(
        "SELECT count(*) FROM (SELECT job_id FROM runs GROUP BY job_id HAVING count(*) > 1) d")
    assert dupes == 0


async def test_the_apis_bounded_pool_waits_on_a_cluster_too(
        settings: Settings, namespace: str, redis_cluster: RedisClusterServers,
        masters: list[aioredis.Redis]) -> None:
    """``AJS_API_REDIS_MAX_CONNECTIONS`` on a cluster: a burst beyond the bound waits for
    its turn (redis-py's cluster pool alone would fail it at once) and opens no more than
    that many connections to any master; a turn that does not come in time is a 503."""
    from functions.api.app import create_app

    app = create_app(settings.model_copy(update={
        "redis_url": f"{redis_cluster.url}?client_name={namespace}",
        "api_redis_max_connections": 3, "api_redis_pool_timeout": 0.3}))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api",
                                     headers=await admin_headers(settings)) as api:
            answers = await asyncio.gather(*(api.get("/api/v1/health") for _ in range(40)),
                                           *(api.get("/api/v1/jobs/stats") for _ in range(10)))
            assert [a.status_code for a in answers] == [200] * 50
            for m in masters:
                # (the startup node also keeps the connection that read the slot map)
                opened = sum(1 for c in await m.client_list()
                             if c.get("name") == namespace and c.get("cmd") != "cluster|slots")
                assert opened <= 3, f"{opened} connections to one master for a bound of 3"
            gate = app.state.stores.redis.gate
            for _ in range(3):  # every turn taken
                await gate.acquire()
            try:
                busy = await api.get("/api/v1/jobs/stats")
            finally:
                for _ in range(3):
                    gate.release()
            assert busy.status_code == 503, busy.text
            assert busy.json()["error"]["details"][0]["loc"] == ["redis"]
            assert (await api.get("/api/v1/jobs/stats")).status_code == 200
    finally:
        await app.state.stores.close()
