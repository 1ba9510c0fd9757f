"""One scheduler tick: what DESIGN.md section 5 lists, safe to run twice at once.

EventBridge fires at most once a minute and sometimes twice, so a tick takes a lock and
an overlapping tick returns at once. The lock lives in Redis (a token with an expiry), not
in a PostgreSQL session: behind pgbouncer or RDS Proxy a session lock can be taken on one
server connection and released on another, and a leaked one would skip every later tick;
a lost Redis lock just expires. Every step is idempotent anyway: promotion uses SKIP
LOCKED, recovery and reconcile are Lua scripts that check before they move.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from functions.scheduler.publish import publish
from shared.connections import Stores
from shared.maintenance import Summary, promote_due, reconcile, recover_expired
from shared.queue.locks import Redlock
from shared.registry import Registry
from shared.store.jobs import JobStore

LOCK_NAME = "scheduler-tick"
LOCK_SECONDS = 300.0  # longer than any tick; released at the end of each one


async def tick(stores: Stores, registry: Registry) -> dict[str, Any]:
    settings = stores.settings
    names = {settings.queue, *(jt.queue for jt in registry.all())}
    queues = {name: stores.queue(name) for name in sorted(names)}
    lock = Redlock([stores.redis], f"{settings.redis_prefix}:{settings.db_schema}")
    token = Redlock.new_token("tick")
    held, _ = await lock.acquire([LOCK_NAME], token, LOCK_SECONDS)
    if not held:
        return {"skipped": True, "reason": "another tick holds the lock"}
    pool = await stores.pool()
    async with pool.acquire() as conn:
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
            await lock.release([LOCK_NAME], token)
    return {"skipped": False, **asdict(summary), "metrics_published": published}
