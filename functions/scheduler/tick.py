"""One scheduler tick: sync the schedules declared in code and fire the recurring schedules
due within the look-ahead, promote due jobs, recover expired leases, reconcile Redis with
PostgreSQL, delete finished jobs past their retention, fold the count deltas, publish the
gauges. Safe to run twice at once, and impossible to wedge.

EventBridge fires at most once a minute and sometimes twice, so a tick takes a lock and an
overlapping tick returns at once. The lock lives in Redis (a token with an expiry), not in a
PostgreSQL session: behind pgbouncer or RDS Proxy a session lock can be taken on one server
connection and released on another, and a leaked one would skip every later tick. Its
time-to-live is two ticks (``AJS_SCHEDULER_TICK_SECONDS``), it is extended between passes,
and it is released in a ``finally`` that also covers getting the tick's PostgreSQL
connection: a tick that fails (PostgreSQL restarting, say) never blocks the next one, and
one whose process died holds it for two ticks at most. Every pass is idempotent anyway:
promotion uses SKIP LOCKED, recovery is fenced, reconcile checks before it places.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from functions.scheduler.publish import publish
from shared.connections import Stores
from shared.core.lifecycle import Lifecycle, Recovered
from shared.core.schedule_service import ScheduleService
from shared.core.service import JobService
from shared.maintenance.promote import promote
from shared.maintenance.reconcile import reconcile
from shared.maintenance.recover import recover
from shared.maintenance.retention import delete_expired
from shared.maintenance.schedules import fire_schedules, set_next_fire_gauges
from shared.queue.locks import Redlock
from shared.registry import Registry
from shared.store.jobs import JobStore
from shared.store.schedules import ScheduleStore

LOCK_NAME = "scheduler-tick"


async def tick(stores: Stores, registry: Registry) -> dict[str, Any]:
    settings = stores.settings
    names = sorted({settings.queue, *(jt.queue for jt in registry.all())})
    ttl = 2 * settings.scheduler_tick_seconds
    lock = Redlock([stores.redis], f"{settings.redis_prefix}:{settings.db_schema}")
    token = Redlock.new_token("tick")
    try:
        # Inside the try: a failure between acquiring and the end still releases.
        held, _ = await lock.acquire([LOCK_NAME], token, ttl, raise_errors=True)
        if not held:
            return {"skipped": True, "reason": "another tick holds the lock"}
        pool = await stores.pool()
        # Before the tick takes its connection: a Lambda pool holds only one.
        synced = await ScheduleService(JobService(stores, registry)).sync(registry)
        async with pool.acquire() as conn:
            store = JobStore(conn)
            lifecycle = Lifecycle(store, stores.queue)
            fired = await fire_schedules(
                lifecycle, lookahead_seconds=settings.schedule_lookahead_seconds,
                grace_seconds=settings.schedule_misfire_grace_seconds,
                max_runs=settings.schedule_max_runs_per_tick, batch=settings.schedule_batch)
            await lock.extend([LOCK_NAME], token, ttl)
            promoted = await promote(lifecycle, settings.schedule_lookahead_seconds)
            await lock.extend([LOCK_NAME], token, ttl)
            recovered = Recovered()
            for name in names:
                part = await recover(lifecycle, stores.queue(name))
                recovered.requeued += part.requeued
                recovered.dead_lettered += part.dead_lettered
                recovered.cancelled += part.cancelled
            await lock.extend([LOCK_NAME], token, ttl)
            reconciled = await reconcile(store, stores.queue, settings.lease_seconds,
                                         settings.reconcile_page_size)
            await lock.extend([LOCK_NAME], token, ttl)
            deleted = await delete_expired(store, settings, registry)
            folded = await store.fold_counts()
            depth = {name: await stores.queue(name).depth() for name in names}
            await set_next_fire_gauges(ScheduleStore(conn))
            # Inside the lock: one publisher at a time (see functions/scheduler/publish.py).
            published = await publish(stores, store, registry.names(), recovered, depth)
    finally:
        await lock.release([LOCK_NAME], token)
    return {"skipped": False, "schedules_fired": fired.schedules,
            "schedule_runs": fired.enqueued, "schedule_runs_missed": fired.skipped_misfire,
            "schedules_synced": len(synced.created) + len(synced.updated),
            **asdict(promoted), "recovered": recovered.requeued,
            "dead_lettered": recovered.dead_lettered, "cancelled": recovered.cancelled,
            **asdict(reconciled), "deleted": deleted.by_status, "counts_folded": folded,
            "depth": depth, "metrics_published": published}
