"""The worker's background loops, around the claim loop, under one supervisor.

- **heartbeat**: extends the leases (and locks) of the attempts the worker holds, picks up
  cancel requests a listener missed, and stops attempts whose lock another worker now holds;
  then renews the worker's presence record (``shared/queue/presence.py``: who is alive and
  what each runs, for the console), one pipelined round trip, idle or not;
- **cancel listener**: hears cancel requests at once (Redis pub/sub, sharded on a cluster);
- **reaper**: recovers the jobs of workers that died (expired leases), every few seconds.

Each is one step run again and again by :func:`supervise`, which survives any store error
(log, wait, carry on) and ends when the worker closes: the skeleton is written once, as in
SAQ's upkeep helper.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import asyncpg
from redis.exceptions import RedisError

from shared.maintenance.recover import recover
from shared.observability import metrics
from shared.observability.logs import get_logger
from shared.queue.presence import RunningJob

if TYPE_CHECKING:
    from worker.pool import Worker

log = get_logger("worker")

# What a store outage looks like from here: the loops log it, wait, and carry on.
STORE_ERRORS = (RedisError, OSError, TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError)


async def supervise(name: str, step: Callable[[], Awaitable[None]],
                    pause: Callable[[], float], closed: Callable[[], bool]) -> None:
    """Run ``step`` then wait ``pause()`` seconds, until ``closed()``; a store error is
    logged and the loop carries on."""
    while not closed():
        try:
            await step()
        except STORE_ERRORS as exc:
            log.warning(f"{name} failed", extra={"error": repr(exc)})
        await asyncio.sleep(pause())


def background(worker: Worker) -> list[asyncio.Task[None]]:
    """Start the worker's loops; they end when ``worker.closed`` is set."""
    settings = worker.settings

    def closed() -> bool:
        return worker.closed

    async def heartbeat() -> None:
        # Leases first: they are what keeps the jobs; the presence record (for the
        # console) is written after, even when the lease step fails, and its own failure
        # is only logged.
        try:
            await keep_leases()
        finally:
            await worker.presence.beat(
                [RunningJob(id=a.job_id, job_type=a.job_type, started_at=a.started_at)
                 for a in worker.running.values() if a.stop is None])

    async def keep_leases() -> None:
        atts = [a for a in worker.running.values() if a.stop is None]
        if not atts:
            return
        kept = {a.job_id for a in atts}
        if not worker.inline_locks:
            kept = set(await worker.stores.locks.extend(list(kept), worker.token,
                                                        settings.lease_seconds))
        cancels, lost = await worker.queue.heartbeat(
            [(a.job_id, a.job_type, a.job_type in worker.limited)
             for a in atts if a.job_id in kept],
            settings.lease_seconds, worker.lock_token)
        for a in atts:
            if a.job_id not in kept or a.job_id in lost:
                log.warning("lock lost, abandoning attempt",
                            extra={"job_id": a.job_id, "job_type": a.job_type,
                                   "attempt": a.number})
                a.interrupt("lost")
        for job_id in cancels:
            worker.cancel(job_id)

    async def listen_for_cancels() -> None:
        # Classic pub/sub on one node, sharded pub/sub on a cluster (shared.queue).
        async with worker.queue.cancel_requests() as feed:
            # Subscribed (again, after a dropped connection or a moved cluster slot): a
            # cancel published while we were not is in the cancel set; act on it now
            # rather than at the next heartbeat.
            for missed in await worker.queue.cancels_among(list(worker.running)):
                worker.cancel(missed)
            while not worker.closed:
                job_id = await feed.next(1.0)
                if job_id is not None:
                    worker.cancel(job_id)

    async def reap() -> None:
        done = await recover(worker.lifecycle, worker.queue, rounds=1)
        if done.any:
            metrics.lease_recoveries_total.labels("requeued").inc(done.requeued)
            metrics.lease_recoveries_total.labels("dead_letter").inc(done.dead_lettered)
            log.warning("recovered expired leases", extra=vars(done))

    reap_every = settings.reap_interval_seconds
    loops = {
        "heartbeat": (heartbeat, lambda: settings.heartbeat_interval),
        "cancel listener": (listen_for_cancels, lambda: 1.0),
        "lease recovery": (reap, lambda: reap_every * random.uniform(0.8, 1.2)),
    }
    return [asyncio.create_task(supervise(name, step, pause, closed), name=name)
            for name, (step, pause) in loops.items()]
