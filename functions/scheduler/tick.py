"""One scheduler tick: what DESIGN.md section 5 lists, safe to run twice at once.

EventBridge fires at most once a minute and sometimes twice, so a tick takes a
PostgreSQL advisory lock (per schema) and an overlapping tick returns at once. Every step
is idempotent anyway: promotion uses SKIP LOCKED, recovery and reconcile are Lua scripts
that check before they move.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from functions.scheduler.publish import publish
from shared.maintenance import Summary, promote_due, reconcile, recover_expired
from shared.registry import Registry
from shared.store import JobStore
from shared.stores import Stores

LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext('ajs-scheduler-tick:' || current_schema()))"
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtext('ajs-scheduler-tick:' || current_schema()))"


async def tick(stores: Stores, registry: Registry) -> dict[str, Any]:
    settings = stores.settings
    names = {settings.queue, *(jt.queue for jt in registry.all())}
    queues = {name: stores.queue(name) for name in sorted(names)}
    pool = await stores.pool()
    async with pool.acquire() as conn:
        if not await conn.fetchval(LOCK_SQL):
            return {"skipped": True, "reason": "another tick holds the lock"}
        try:
            store = JobStore(conn)
            summary = Summary()
            summary.promoted = await promote_due(store, queues,
                                                 settings.schedule_lookahead_seconds)
            for queue in queues.values():
                while True:
                    part = await recover_expired(store, queue)
                    summary.add(part)
                    if not (part.recovered or part.dead_lettered or part.cancelled):
                        break
            summary.add(await reconcile(store, queues, settings.lease_seconds,
                                        settings.reconcile_page_size))
            summary.depth = {name: await q.depth() for name, q in queues.items()}
            # Inside the lock: one publisher at a time (see functions/scheduler/publish.py).
            published = await publish(stores, store, registry.names(), summary)
        finally:
            await conn.fetchval(UNLOCK_SQL)
    return {"skipped": False, **asdict(summary), "metrics_published": published}
